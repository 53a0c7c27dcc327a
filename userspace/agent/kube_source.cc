#include "agent/kube_source.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "common/json_text.h"
#include "common/log.h"
#include "common/time_text.h"
#include "k8s/cluster_config.h"

namespace egressd {

namespace {

k8s::Reflector::Options watch_of(k8s::Resource resource, k8s::ObjectTransform transform) {
    k8s::Reflector::Options options;
    options.resource = std::move(resource);
    options.transform = std::move(transform);
    return options;
}

Result<std::shared_ptr<k8s::Client>> connect(const KubernetesSettings& settings) {
    auto cluster = settings.kubeconfig.empty() ? k8s::in_cluster_config() : k8s::load_kubeconfig(settings.kubeconfig);
    if (!cluster) return cluster.error().with_context("kubernetes");
    return k8s::Client::create(std::move(*cluster));
}

std::string node_name_of(const KubernetesSettings& settings) {
    if (!settings.node_name.empty()) return settings.node_name;
    const char* env = std::getenv("NODE_NAME");
    return env ? env : "";
}

nlohmann::json stats_json(const k8s::Reflector& reflector, const std::string& resource) {
    const k8s::ReflectorStats s = reflector.stats();
    auto time_or_null = [](std::chrono::system_clock::time_point t) {
        return t == std::chrono::system_clock::time_point{}
                   ? nlohmann::json(nullptr)
                   : nlohmann::json(rfc3339_ms(
                         std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count()));
    };
    return {{"resource", resource},
            {"synced", s.synced},
            {"missing", s.missing},
            {"resourceVersion", s.resource_version},
            {"version", s.served_version},
            {"lists", s.lists},
            {"relists", s.relists},
            {"watchRestarts", s.watch_restarts},
            {"gone", s.gone},
            {"errors", s.errors},
            {"lastSync", time_or_null(s.last_sync)},
            {"lastEvent", time_or_null(s.last_event)},
            {"lastError", s.last_error}};
}

}  // namespace

KubeSource::KubeSource(const AgentConfig& config, std::filesystem::path cgroup_mount, k8s::PodsRoot pods_root)
    : config_(config),
      cgroup_mount_(std::move(cgroup_mount)),
      pods_root_(std::move(pods_root)),
      node_name_(node_name_of(*config.kubernetes)) {}

KubeSource::~KubeSource() {
    // The reflectors' threads call notify(): stop them before the eventfd goes.
    dns_slices_.reset();
    dns_services_.reset();
    service_cidrs_.reset();
    nodes_.reset();
    pods_.reset();
    namespaces_.reset();
    egresses_.reset();
    mesh_configs_.reset();
}

Result<std::unique_ptr<KubeSource>> KubeSource::start(const AgentConfig& config, std::filesystem::path cgroup_mount,
                                                      k8s::PodsRoot pods_root) {
    std::unique_ptr<KubeSource> source(new KubeSource(config, std::move(cgroup_mount), std::move(pods_root)));
    if (source->node_name_.empty())
        return make_error(config.source_file.string() +
                          ": kubernetes.nodeName: not set, and $NODE_NAME is empty (the DaemonSet sets it from "
                          "spec.nodeName)");
    source->wake_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!source->wake_.valid()) return system_error("eventfd");
    auto waiter = k8s::CgroupWaiter::create(source->cgroup_mount_, source->pods_root_);
    if (!waiter) return waiter.error().with_context("watching the pods' cgroups");
    source->cgroups_ = std::move(*waiter);
    auto client = connect(*config.kubernetes);
    if (!client) return client.error();
    source->client_ = std::move(*client);
    if (auto started = source->start_reflectors(); !started) return started.error();
    return source;
}

Status KubeSource::start_reflectors() {
    const KubernetesSettings& k8s = *config_.kubernetes;
    const MeshConventions& mesh = mesh_conventions(k8s.mesh);
    auto wake = [this] { notify(); };
    // Each store keeps only what kube_objects reads (kube_objects.h).
    const k8s::ObjectTransform spec_object = [](nlohmann::json&& o) { return kube::kept_spec_object(std::move(o)); };
    const std::tuple<std::unique_ptr<k8s::Reflector>*, k8s::Resource, k8s::ObjectTransform> watches[] = {
        {&mesh_configs_,
         {mesh.mesh_config_group, "", "meshconfigs", k8s.mesh_config_namespace, "metadata.name=" + k8s.mesh_config_name,
          ""},
         spec_object},
        {&egresses_, {mesh.egress_group, "", "egresses", "", "", ""}, spec_object},
        {&namespaces_,
         {"", "v1", "namespaces", "", "", ""},
         [&mesh](nlohmann::json&& o) { return kube::kept_namespace(std::move(o), mesh); }},
        {&pods_,
         {"", "v1", "pods", "", "spec.nodeName=" + node_name_, ""},
         [&mesh](nlohmann::json&& o) { return kube::kept_pod(std::move(o), mesh); }},
    };
    for (const auto& [reflector, resource, transform] : watches) {
        auto started = k8s::Reflector::start(client_, watch_of(resource, transform), wake);
        if (!started) return started.error().with_context("watching " + resource.describe());
        *reflector = std::move(*started);
    }
    if (config_.dns_servers.empty()) {
        // The cluster DNS (the conventional kube-system/kube-dns, CoreDNS's too).
        const std::tuple<std::unique_ptr<k8s::Reflector>*, k8s::Resource, k8s::ObjectTransform> dns[] = {
            {&dns_services_,
             {"", "v1", "services", "kube-system", "metadata.name=kube-dns", ""},
             [](nlohmann::json&& o) { return kube::kept_service(std::move(o)); }},
            {&dns_slices_,
             {"discovery.k8s.io", "v1", "endpointslices", "kube-system", "", "kubernetes.io/service-name=kube-dns"},
             [](nlohmann::json&& o) { return kube::kept_endpoint_slice(std::move(o)); }},
        };
        for (const auto& [reflector, resource, transform] : dns) {
            auto started = k8s::Reflector::start(client_, watch_of(resource, transform), wake);
            if (!started) return started.error().with_context("watching " + resource.describe());
            *reflector = std::move(*started);
        }
    }
    if (!config_.mesh_cidrs.empty()) return {};
    const std::tuple<std::unique_ptr<k8s::Reflector>*, k8s::Resource, k8s::ObjectTransform> ranges[] = {
        {&nodes_, {"", "v1", "nodes", "", "", ""}, [](nlohmann::json&& o) { return kube::kept_node(std::move(o)); }},
        {&service_cidrs_, {"networking.k8s.io", "", "servicecidrs", "", "", ""}, spec_object},
    };
    for (const auto& [reflector, resource, transform] : ranges) {
        auto started = k8s::Reflector::start(client_, watch_of(resource, transform), wake);
        if (!started) return started.error().with_context("watching " + resource.describe());
        *reflector = std::move(*started);
    }
    return {};
}

void KubeSource::notify() {
    int64_t none = 0;
    const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    first_notice_ns_.compare_exchange_strong(none, now);  // keeps the oldest
    const uint64_t one = 1;
    (void)::write(wake_.get(), &one, sizeof one);  // EAGAIN: already readable, nothing lost
}

std::optional<std::chrono::steady_clock::time_point> KubeSource::take_changed_since() {
    return std::exchange(changed_since_, std::nullopt);
}

unsigned KubeSource::pending() {
    uint64_t count = 0;
    (void)::read(wake_.get(), &count, sizeof count);
    if (const int64_t first = first_notice_ns_.exchange(0); first != 0) {
        const std::chrono::steady_clock::time_point at{std::chrono::steady_clock::duration(first)};
        if (!changed_since_ || at < *changed_since_) changed_since_ = at;
    }
    unsigned inputs = 0;
    if (cgroups_ && cgroups_->drain()) {
        inputs |= kWorkloads;
        k8s::CgroupWaiter::Changes changes = cgroups_->take_changes();
        cgroup_changes_.everything |= changes.everything;
        for (auto& name : changes.names) cgroup_changes_.names.push_back(std::move(name));
    }
    if (mesh_configs_->revision() != seen_mesh_) inputs |= kMesh;
    if (egresses_->revision() != seen_egresses_) inputs |= kPolicies;
    if (namespaces_->revision() != seen_namespaces_ || pods_->revision() != seen_pods_) inputs |= kWorkloads;
    if (nodes_ && nodes_->revision() + service_cidrs_->revision() != seen_ranges_) inputs |= kMeshCidrs;
    if (dns_services_ && dns_services_->revision() + dns_slices_->revision() != seen_dns_) inputs |= kDnsServers;
    return inputs;
}

bool KubeSource::synced() const {
    // A missing Egress CRD is not a reason to wait: no policies, said in status.
    const bool ranges_synced =
        !nodes_ || (nodes_->stats().synced && (service_cidrs_->stats().synced || service_cidrs_->stats().missing));
    return mesh_configs_->stats().synced && (egresses_->stats().synced || egresses_->stats().missing) &&
           namespaces_->stats().synced && pods_->stats().synced && ranges_synced;
}

std::string KubeSource::not_ready_reason(std::chrono::system_clock::time_point now) const {
    const std::pair<const k8s::Reflector*, const char*> all[] = {{mesh_configs_.get(), "MeshConfig"},
                                                                 {egresses_.get(), "Egress"},
                                                                 {namespaces_.get(), "Namespaces"},
                                                                 {pods_.get(), "Pods"}};
    for (const auto& [reflector, what] : all) {
        const k8s::ReflectorStats s = reflector->stats();
        if (!s.synced && !(s.missing && reflector == egresses_.get()))
            return fmt::format("waiting for the first list of {} from the API server{}", what,
                               s.last_error.empty() ? "" : ": " + s.last_error);
    }
    for (const auto& [reflector, what] : all) {
        const k8s::ReflectorStats s = reflector->stats();
        if (!s.last_error.empty() && !s.missing && now - s.failing_since >= kStaleAfter) {
            const auto since = std::chrono::duration_cast<std::chrono::nanoseconds>(s.failing_since.time_since_epoch());
            return fmt::format("{} from the API server may be stale since {}: {}; the last state stays enforced", what,
                               rfc3339_ms(since.count()), s.last_error);
        }
    }
    return "";
}

std::optional<std::chrono::system_clock::time_point> KubeSource::next_stale_at(
    std::chrono::system_clock::time_point now) const {
    std::optional<std::chrono::system_clock::time_point> next;
    for (const k8s::Reflector* reflector : {mesh_configs_.get(), egresses_.get(), namespaces_.get(), pods_.get()}) {
        const k8s::ReflectorStats s = reflector->stats();
        if (s.last_error.empty() || s.missing) continue;
        const auto stale_at = s.failing_since + kStaleAfter;
        if (stale_at > now && (!next || stale_at < *next)) next = stale_at;
    }
    return next;
}

Result<std::optional<MeshConfig>> KubeSource::read_mesh() {
    seen_mesh_ = mesh_configs_->revision();
    const auto objects = mesh_configs_->objects();
    const KubernetesSettings& k8s = *config_.kubernetes;
    const std::string key = k8s.mesh_config_namespace + "/" + k8s.mesh_config_name;
    auto it = objects->find(key);
    if (it == objects->end()) {
        mesh_json_.reset();
        return make_error(fmt::format("MeshConfig {} not found on the API server", key));
    }
    std::string text = json_text(it->second.contains("spec") ? it->second["spec"] : nlohmann::json());
    if (mesh_json_ == text) return std::optional<MeshConfig>();
    auto mesh = kube::mesh_config_from_object(it->second);
    if (!mesh) return mesh.error();
    mesh_json_ = std::move(text);
    return std::optional<MeshConfig>(std::move(*mesh));
}

std::optional<std::vector<Cidr>> KubeSource::read_mesh_cidrs(std::vector<std::string>& problems) {
    if (!nodes_) return std::nullopt;
    seen_ranges_ = nodes_->revision() + service_cidrs_->revision();
    return kube::cluster_cidrs(*nodes_->objects(), *service_cidrs_->objects(), problems);
}

std::optional<std::vector<IpAddress>> KubeSource::read_dns_servers() {
    if (!dns_services_) return std::nullopt;
    seen_dns_ = dns_services_->revision() + dns_slices_->revision();
    return kube::cluster_dns_addresses(*dns_services_->objects(), *dns_slices_->objects());
}

PolicySet KubeSource::read_policies() {
    seen_egresses_ = egresses_->revision();
    return egress_reader_.read(*egresses_->objects());
}

std::vector<Workload> KubeSource::read_workloads() {
    seen_namespaces_ = namespaces_->revision();
    seen_pods_ = pods_->revision();
    const KubernetesSettings& k8s = *config_.kubernetes;
    selection_ =
        kube::meshed_pods(*pods_->objects(), *namespaces_->objects(), mesh_conventions(k8s.mesh), k8s.mesh_name);
    std::vector<Workload> workloads;
    std::map<std::string, FoundCgroup> found;
    pods_waiting_.clear();
    for (const auto& pod : selection_.pods) {
        std::optional<FoundCgroup> cgroup;
        if (auto known = cgroups_found_.find(pod.uid); known != cgroups_found_.end() && !named_in_changes(pod.uid))
            cgroup = known->second;
        else
            cgroup = locate(pod);
        if (!cgroup) {
            pods_waiting_.push_back(pod.namespace_ + "/" + pod.name);
            continue;
        }
        workloads.push_back(Workload{(cgroup_mount_ / cgroup->path).string(), pod.identity, pod.uid, cgroup->id});
        found.emplace(pod.uid, std::move(*cgroup));
    }
    cgroups_found_ = std::move(found);  // a pod gone leaves nothing behind
    cgroup_changes_ = {};
    return workloads;
}

bool KubeSource::named_in_changes(const std::string& uid) const {
    if (cgroup_changes_.everything) return true;
    // Both drivers name a pod's cgroup after its uid, systemd's with '_' for '-'.
    std::string underscored = uid;
    std::replace(underscored.begin(), underscored.end(), '-', '_');
    for (const auto& name : cgroup_changes_.names)
        if (name.find(uid) != std::string::npos || name.find(underscored) != std::string::npos) return true;
    return false;
}

std::optional<KubeSource::FoundCgroup> KubeSource::locate(const kube::MeshedPod& pod) const {
    k8s::PodCgroupQuery query{pod.uid, k8s::QosClass::besteffort};
    if (auto qos = k8s::parse_qos_class(pod.qos_class); qos.ok()) query.qos = *qos;
    auto path = k8s::find_pod_cgroup(cgroup_mount_, pods_root_, query);
    if (!path) return std::nullopt;
    struct stat st {};
    if (::stat((cgroup_mount_ / *path).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
    return FoundCgroup{std::move(*path), static_cast<uint64_t>(st.st_ino)};
}

std::vector<Telemetry::WatchedResource> KubeSource::watched_resources() const {
    std::vector<Telemetry::WatchedResource> all;
    const std::pair<const k8s::Reflector*, const char*> reflectors[] = {{mesh_configs_.get(), "meshconfigs"},
                                                                        {egresses_.get(), "egresses"},
                                                                        {namespaces_.get(), "namespaces"},
                                                                        {pods_.get(), "pods"},
                                                                        {nodes_.get(), "nodes"},
                                                                        {service_cidrs_.get(), "servicecidrs"},
                                                                        {dns_services_.get(), "services"},
                                                                        {dns_slices_.get(), "endpointslices"}};
    for (const auto& [reflector, name] : reflectors) {
        if (!reflector) continue;
        const k8s::ReflectorStats s = reflector->stats();
        const double last_sync = s.last_sync == std::chrono::system_clock::time_point{}
                                     ? 0
                                     : std::chrono::duration<double>(s.last_sync.time_since_epoch()).count();
        all.push_back({name, s.synced, s.lists, s.relists, s.watch_restarts, s.errors, last_sync});
    }
    return all;
}

nlohmann::json KubeSource::status() const {
    const KubernetesSettings& k8s = *config_.kubernetes;
    nlohmann::json pods = nlohmann::json::array();
    for (const auto& pod : selection_.pods) {
        pods.push_back({{"pod", pod.namespace_ + "/" + pod.name}, {"uid", pod.uid}, {"identity", pod.identity.str()}});
    }
    nlohmann::json resources = {stats_json(*mesh_configs_, "meshconfigs"), stats_json(*egresses_, "egresses"),
                                stats_json(*namespaces_, "namespaces"), stats_json(*pods_, "pods")};
    if (nodes_) {
        resources.push_back(stats_json(*nodes_, "nodes"));
        resources.push_back(stats_json(*service_cidrs_, "servicecidrs"));
    }
    if (dns_services_) {
        resources.push_back(stats_json(*dns_services_, "services"));
        resources.push_back(stats_json(*dns_slices_, "endpointslices"));
    }
    return {{"source", "api-server"},
            {"server", client_->config().server},
            {"credentials", client_->config().source},
            {"node", node_name_},
            {"mesh", std::string(mesh_name(k8s.mesh))},
            {"meshName", k8s.mesh_name},
            {"podsRoot", pods_root_.path},
            {"resources", resources},
            {"meshedPods", pods},
            {"podsWaitingForCgroup", pods_waiting_},
            {"podsNotMeshed", selection_.not_meshed},
            {"podsHostNetwork", selection_.host_network}};
}

}  // namespace egressd
