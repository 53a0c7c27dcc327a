// The agent in Kubernetes mode: start-up, and the first generation after the
// first full sync. The inputs come from the API server (agent/kube_source.h);
// until every collection is listed the agent is not ready, and whatever an
// earlier agent pinned keeps enforcing: nothing is flushed, nothing opens.
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "agent/agent.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include "common/log.h"
#include "kernel/mounts.h"
#include "kernel/pins.h"

namespace egressd {

namespace fs = std::filesystem;

// The pods' parent cgroup is found on the host's cgroup2 mount (cgroupMount:
// in a pod, /proc/mounts shows the container's own cgroup namespace).
Status Agent::prepare_kubernetes() {
    fs::path mount = config_.cgroup_mount;
    if (mount.empty()) {
        auto found = find_cgroup2_mount();
        if (!found) return found.error();
        mount = *found;
    }
    auto root = k8s::detect_pods_root(mount, config_.cgroup);
    if (!root) return root.error().with_context(config_.source_file.string() + ": cgroup");
    auto pods_root = open_existing_cgroup(mount / root->path);
    if (!pods_root) return pods_root.error();
    cgroup_ = *pods_root;
    cgroup_level_ = cgroup_level(cgroup_.path, mount);
    cgroup_mount_ = mount;
    if (auto ok = ensure_bpffs_dir(config_.bpffs); !ok) return ok.error();
    auto lock = AgentLock::acquire(config_.bpffs);
    if (!lock) return lock.error();
    lock_.emplace(std::move(*lock));
    HostResolver::Options options;
    options.dns_server = fmt::format("{}", fmt::join(config_.dns_servers, ","));
    auto resolver = HostResolver::start(options);
    if (!resolver) return resolver.error().with_context(config_.source_file.string() + ": dnsServer");
    resolver_ = std::move(*resolver);
    auto source = KubeSource::start(config_, mount, *root);
    if (!source) return source.error();
    kube_ = std::move(*source);
    stale_check_.reset(::timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!stale_check_.valid()) return system_error("timerfd_create");
    log::info("Kubernetes mode: node {}, pods under {} (level {}), {} from {}",
              kube_->status()["node"].get<std::string>(), cgroup_.path.string(), cgroup_level_,
              std::string(mesh_name(config_.kubernetes->mesh)), kube_->status()["server"].get<std::string>());
    return {};
}

Status Agent::wait_for_first_sync() {
    (void)revoker();  // the status says whether revocation is on while the sync is awaited
    if (auto watched = telemetry_->watch_resources([source = kube_.get()] { return source->watched_resources(); });
        !watched)
        return watched.error();
    telemetry_->set_ready(false, "waiting for the first sync from the API server");
    write_status();
    on_kubernetes_changed();  // the reflectors may have listed already
    return {};
}

void Agent::on_kubernetes_changed() {
    const unsigned inputs = kube_->pending();
    const auto changed_since = kube_->take_changed_since();
    if (!kube_->synced()) {
        update_kubernetes_readiness();
        write_status();
        return;
    }
    if (!first_sync_applied_) {
        apply_first_sync();
        return;
    }
    if (inputs != 0) {
        const uint64_t generation = reconciler_->applied().generation;
        on_inputs_changed(inputs, false);
        if (changed_since && reconciler_->applied().generation != generation)
            telemetry_->record_kubernetes_apply_lag(
                std::chrono::duration<double>(std::chrono::steady_clock::now() - *changed_since).count());
    }
    update_kubernetes_readiness();
    write_status();
}

// Ready while enforcing what the API server says. A watch failing for
// KubeSource::kStaleAfter makes the inputs stale: say what, and since when.
// A failure not yet that old arms a timer for the moment it would be.
void Agent::update_kubernetes_readiness() {
    const auto now = std::chrono::system_clock::now();
    const std::string reason = kube_->not_ready_reason(now);
    telemetry_->set_ready(reason.empty() && first_sync_applied_, reason);
    itimerspec when{};  // zero: disarmed
    if (const auto stale_at = kube_->next_stale_at(now)) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(stale_at->time_since_epoch()).count();
        when.it_value = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    }
    if (::timerfd_settime(stale_check_.get(), TFD_TIMER_ABSTIME, &when, nullptr) != 0)
        log::error("arming the readiness timer: {}", std::strerror(errno));
}

void Agent::apply_first_sync() {
    const auto started = std::chrono::steady_clock::now();
    if (!reload_mesh_config(true) && mesh_.name.empty()) {
        write_status();  // the error is recorded: not ready, retried on the next change
        return;
    }
    reload_policies();
    reload_hosts();
    reload_workloads();
    reload_mesh_cidrs();
    reload_dns_servers();
    if (config_.mesh_cidrs.empty() && (!cluster_cidrs_ || cluster_cidrs_->empty())) {
        // In-mesh traffic would be denied: enforce nothing rather than that.
        record_error(
            "no meshCIDRs: none in the settings, and no node has spec.podCIDRs and no ServiceCIDR is served; "
            "set meshCIDRs to the pod and service ranges");
        write_status();
        return;
    }
    // The list of pods is complete: pods pinned by an earlier agent and gone
    // meanwhile are detached now, the others adopted.
    reconciler_->adopt_pinned_workloads(pinned_workload_keys(config_.bpffs));
    if (!apply_inputs(started)) return;
    if (auto pinned = datapath_->pin_maps_once(); !pinned) {
        record_error("pinning the maps: " + pinned.error().describe());
        return;
    }
    first_sync_applied_ = true;
    telemetry_->set_ready(true, "");
    log::info("first sync applied: generation {}, {} policies, {} pods enforced, {} waiting for their cgroup",
              reconciler_->applied().generation, reconciler_->applied_policies(), reconciler_->attached().size(),
              reconciler_->waiting().size());
    publish_telemetry();
    write_status();
}

// The cluster DNS (kube-system/kube-dns), trusted beside the settings' or
// resolv.conf's resolvers when the settings name none.
void Agent::reload_dns_servers() {
    if (!kube_) return;
    auto found = kube_->read_dns_servers();
    if (!found || *found == cluster_dns_) return;
    cluster_dns_ = std::move(*found);
    std::vector<IpAddress> trusted = resolvers_;
    for (const IpAddress& address : cluster_dns_)
        if (std::find(trusted.begin(), trusted.end(), address) == trusted.end()) trusted.push_back(address);
    if (auto set = datapath_->set_dns_learning(config_.dns_learning, trusted); !set) {
        record_error("trusting the cluster DNS's answers: " + set.error().describe());
        return;
    }
    std::string list;
    for (const IpAddress& address : cluster_dns_) list += (list.empty() ? "" : ", ") + address.str();
    log::info("DNS answers are learned from the cluster DNS: {}", list.empty() ? "(none found)" : list);
}

// The cluster's ranges as meshCIDRs (without meshCIDRs in the settings). An
// empty set after the first sync keeps the last good one.
bool Agent::reload_mesh_cidrs() {
    if (!kube_) return false;
    std::vector<std::string> problems;
    auto found = kube_->read_mesh_cidrs(problems);
    for (const auto& problem : problems) log::error("meshCIDRs: {} (left out)", problem);
    if (!found || found == cluster_cidrs_) return false;
    if (found->empty() && cluster_cidrs_) {
        record_error("no pod or service ranges left in the cluster; the last meshCIDRs stay in force");
        return false;
    }
    std::string ranges;
    for (const auto& cidr : *found) ranges += (ranges.empty() ? "" : ", ") + cidr.str();
    log::info("meshCIDRs from the cluster: {}", ranges.empty() ? "(none)" : ranges);
    cluster_cidrs_ = std::move(*found);
    return true;
}

}  // namespace egressd
