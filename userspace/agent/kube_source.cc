#include "agent/kube_source.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>

#include "common/json_text.h"
#include "common/log.h"
#include "common/time_text.h"
#include "k8s/cluster_config.h"

namespace egressd {

namespace {

k8s::Reflector::Options watch_of(k8s::Resource resource) {
    k8s::Reflector::Options options;
    options.resource = std::move(resource);
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
    const std::pair<std::unique_ptr<k8s::Reflector>*, k8s::Resource> watches[] = {
        {&mesh_configs_,
         {mesh.mesh_config_group, "", "meshconfigs", k8s.mesh_config_namespace, "metadata.name=" + k8s.mesh_config_name,
          ""}},
        {&egresses_, {mesh.egress_group, "", "egresses", "", "", ""}},
        {&namespaces_, {"", "v1", "namespaces", "", "", ""}},
        {&pods_, {"", "v1", "pods", "", "spec.nodeName=" + node_name_, ""}},
    };
    for (const auto& [reflector, resource] : watches) {
        auto started = k8s::Reflector::start(client_, watch_of(resource), wake);
        if (!started) return started.error().with_context("watching " + resource.describe());
        *reflector = std::move(*started);
    }
    if (!config_.mesh_cidrs.empty()) return {};
    const std::pair<std::unique_ptr<k8s::Reflector>*, k8s::Resource> ranges[] = {
        {&nodes_, {"", "v1", "nodes", "", "", ""}},
        {&service_cidrs_, {"networking.k8s.io", "", "servicecidrs", "", "", ""}},
    };
    for (const auto& [reflector, resource] : ranges) {
        auto started = k8s::Reflector::start(client_, watch_of(resource), wake);
        if (!started) return started.error().with_context("watching " + resource.describe());
        *reflector = std::move(*started);
    }
    return {};
}

void KubeSource::notify() {
    const uint64_t one = 1;
    (void)::write(wake_.get(), &one, sizeof one);  // EAGAIN: already readable, nothing lost
}

unsigned KubeSource::pending() {
    uint64_t count = 0;
    (void)::read(wake_.get(), &count, sizeof count);
    unsigned inputs = 0;
    if (cgroups_ && cgroups_->drain()) inputs |= kWorkloads;
    if (mesh_configs_->revision() != seen_mesh_) inputs |= kMesh;
    if (egresses_->revision() != seen_egresses_) inputs |= kPolicies;
    if (namespaces_->revision() != seen_namespaces_ || pods_->revision() != seen_pods_) inputs |= kWorkloads;
    if (nodes_ && nodes_->revision() + service_cidrs_->revision() != seen_ranges_) inputs |= kMeshCidrs;
    return inputs;
}

bool KubeSource::synced() const {
    // A missing Egress CRD is not a reason to wait: no policies, said in status.
    const bool ranges_synced =
        !nodes_ || (nodes_->stats().synced && (service_cidrs_->stats().synced || service_cidrs_->stats().missing));
    return mesh_configs_->stats().synced && (egresses_->stats().synced || egresses_->stats().missing) &&
           namespaces_->stats().synced && pods_->stats().synced && ranges_synced;
}

std::string KubeSource::not_ready_reason() const {
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
        if (!s.last_error.empty() && !s.missing) {
            const auto since = std::chrono::duration_cast<std::chrono::nanoseconds>(s.failing_since.time_since_epoch());
            return fmt::format("{} from the API server may be stale since {}: {}; the last state stays enforced", what,
                               rfc3339_ms(since.count()), s.last_error);
        }
    }
    return "";
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

PolicySet KubeSource::read_policies() {
    seen_egresses_ = egresses_->revision();
    return kube::policies_from_objects(*egresses_->objects());
}

std::vector<Workload> KubeSource::read_workloads() {
    seen_namespaces_ = namespaces_->revision();
    seen_pods_ = pods_->revision();
    const KubernetesSettings& k8s = *config_.kubernetes;
    selection_ =
        kube::meshed_pods(*pods_->objects(), *namespaces_->objects(), mesh_conventions(k8s.mesh), k8s.mesh_name);
    std::vector<Workload> workloads;
    pods_waiting_.clear();
    for (const auto& pod : selection_.pods) {
        k8s::PodCgroupQuery query{pod.uid, k8s::QosClass::besteffort};
        if (auto qos = k8s::parse_qos_class(pod.qos_class); qos.ok()) query.qos = *qos;
        auto found = k8s::find_pod_cgroup(cgroup_mount_, pods_root_, query);
        if (!found) {
            pods_waiting_.push_back(pod.namespace_ + "/" + pod.name);
            continue;
        }
        workloads.push_back(Workload{(cgroup_mount_ / *found).string(), pod.identity, pod.uid});
    }
    return workloads;
}

std::vector<Telemetry::WatchedResource> KubeSource::watched_resources() const {
    std::vector<Telemetry::WatchedResource> all;
    const std::pair<const k8s::Reflector*, const char*> reflectors[] = {{mesh_configs_.get(), "meshconfigs"},
                                                                        {egresses_.get(), "egresses"},
                                                                        {namespaces_.get(), "namespaces"},
                                                                        {pods_.get(), "pods"},
                                                                        {nodes_.get(), "nodes"},
                                                                        {service_cidrs_.get(), "servicecidrs"}};
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
