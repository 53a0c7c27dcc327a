// The inputs from the API server (Kubernetes mode): the MeshConfig, the
// Egress policies, and the meshed pods of this node with their cgroups. One
// reflector per collection (k8s/reflector.h) keeps each in memory; this class
// turns their stores into the reconciler's inputs, and finds the pods'
// cgroups, waiting for those that do not exist yet (k8s/cgroup_waiter.h).
//
// The agent polls nothing: fd() becomes readable when a store changed or a
// cgroup appeared or went, and the agent then asks for what changed.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/fd.h"
#include "common/result.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/kube_objects.h"
#include "core/meshconfig.h"
#include "core/workloads.h"
#include "agent/telemetry.h"
#include "k8s/cgroup_waiter.h"
#include "k8s/pod_cgroup.h"
#include "k8s/reflector.h"

namespace egressd {

class KubeSource {
public:
    enum Input : unsigned {
        kMesh = 1,
        kPolicies = 2,
        kWorkloads = 4,
        kMeshCidrs = 16,
        kDnsServers = 32,
        kAll = 7 | 16 | 32
    };

    // Connects with the settings' credentials (kubeconfig or in-cluster) and
    // starts the reflectors. `pods_root` is where the node's pod cgroups are.
    static Result<std::unique_ptr<KubeSource>> start(const AgentConfig& config, std::filesystem::path cgroup_mount,
                                                     k8s::PodsRoot pods_root);
    ~KubeSource();

    int fd() const { return wake_.get(); }
    // Also readable on changes: pod cgroups made or removed below the pods root.
    int cgroup_fd() const { return cgroups_->fd(); }
    // The inputs whose store (or, for workloads, cgroups) changed since the last call.
    unsigned pending();
    // When the oldest change not yet taken arrived (a reflector's notice),
    // for the apply-lag metric; taken once.
    std::optional<std::chrono::steady_clock::time_point> take_changed_since();

    // Every collection has completed its first LIST: the inputs are complete.
    bool synced() const;
    // A watch that fails for less than this is not reported: the reflector
    // reconnects within a backoff step, and the API server's watch resets
    // (its restarts, timeouts, a load balancer) must not flap readiness.
    static constexpr std::chrono::seconds kStaleAfter{5};
    // Why the agent is not ready yet (or what has been stale for kStaleAfter
    // or more, at `now`), "" when all is well.
    std::string not_ready_reason(std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const;
    // When a failure going on now becomes stale, if one does: the agent
    // looks again then.
    std::optional<std::chrono::system_clock::time_point> next_stale_at(std::chrono::system_clock::time_point now) const;

    // The MeshConfig when it changed; an error when it is missing or invalid
    // (the agent keeps the last good one).
    Result<std::optional<MeshConfig>> read_mesh();
    PolicySet read_policies();
    // meshCIDRs found in the cluster (nodes' pod ranges, ServiceCIDRs), when
    // the settings give none; nullopt when the settings give them.
    std::optional<std::vector<Cidr>> read_mesh_cidrs(std::vector<std::string>& problems);
    // The cluster DNS's addresses (kube-system/kube-dns: its cluster IPs and
    // endpoints), when the settings name no resolver; nullopt when they do.
    std::optional<std::vector<IpAddress>> read_dns_servers();
    // The meshed pods of this node whose cgroup exists, as workloads with
    // attach keys; those whose cgroup is missing are counted in status().
    std::vector<Workload> read_workloads();

    // For the status file and egressctl status: per resource, what was
    // listed and watched; the enforced pods.
    nlohmann::json status() const;
    // Each watched resource's counters, for /metrics (thread-safe).
    std::vector<Telemetry::WatchedResource> watched_resources() const;

private:
    KubeSource(const AgentConfig& config, std::filesystem::path cgroup_mount, k8s::PodsRoot pods_root);
    Status start_reflectors();
    void notify();

    const AgentConfig& config_;
    const std::filesystem::path cgroup_mount_;
    const k8s::PodsRoot pods_root_;
    const std::string node_name_;
    UniqueFd wake_;  // eventfd, written by the reflectors' threads
    // steady_clock nanoseconds of the first notice not yet taken; 0: none.
    std::atomic<int64_t> first_notice_ns_{0};
    std::optional<std::chrono::steady_clock::time_point> changed_since_;
    std::shared_ptr<k8s::Client> client_;
    std::unique_ptr<k8s::CgroupWaiter> cgroups_;
    std::unique_ptr<k8s::Reflector> mesh_configs_, egresses_, namespaces_, pods_;
    // Only without meshCIDRs in the settings: where the cluster's ranges are.
    std::unique_ptr<k8s::Reflector> nodes_, service_cidrs_;
    // Only without dnsServer in the settings: the cluster DNS, whose answers are trusted.
    std::unique_ptr<k8s::Reflector> dns_services_, dns_slices_;
    uint64_t seen_dns_ = 0;
    uint64_t seen_mesh_ = 0, seen_egresses_ = 0, seen_namespaces_ = 0, seen_pods_ = 0, seen_ranges_ = 0;
    std::optional<std::string> mesh_json_;  // the MeshConfig object last read, as JSON text
    kube::EgressReader egress_reader_;      // parses only the Egress objects that changed
    kube::PodSelection selection_;
    std::vector<std::string> pods_waiting_;  // meshed pods whose cgroup is not there yet
    // Each meshed pod's cgroup as last found, by pod uid (or config hash): a
    // pod event looks only for the new pods' cgroups, a cgroup event only at
    // the pods it names (CgroupWaiter::take_changes).
    struct FoundCgroup {
        std::string path;  // relative to the mount
        uint64_t id = 0;   // its inode: a cgroup made again at the same path is another one
    };
    std::map<std::string, FoundCgroup> cgroups_found_;
    k8s::CgroupWaiter::Changes cgroup_changes_{true, {}};
    std::optional<FoundCgroup> locate(const kube::MeshedPod& pod) const;
    bool named_in_changes(const std::string& uid) const;
};

}  // namespace egressd
