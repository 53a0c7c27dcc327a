// The egressd agent: start-up (adopt or attach), the event loop, and the
// reporting around the reconciler, which keeps the kernel maps equal to the
// inputs (the MeshConfig file, the Egress policy directory, the workloads
// file and the DNS answers for the policies' hosts).
#pragma once

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "core/agent_config.h"
#include "core/meshconfig.h"
#include "core/workloads.h"
#include "agent/file_sources.h"
#include "agent/kube_source.h"
#include "agent/reconciler.h"
#include "agent/telemetry.h"
#include "dns/host_resolver.h"
#include "kernel/datapath.h"
#include "kernel/revoker.h"
#include "kernel/event_reader.h"
#include "kernel/cgroup.h"
#include "agent/agent_state.h"

namespace egressd {

class Agent {
public:
    // Reads every input, loads the programs, publishes the first generation
    // and attaches (or adopts what is pinned) without a window in which the
    // cgroup is unenforced. Refuses, attaching nothing, when the MeshConfig
    // is not valid.
    static Result<std::unique_ptr<Agent>> start(const AgentConfig& config);

    // The signals run() handles. They must be blocked in every thread, so
    // main() blocks them before start() creates any.
    static sigset_t handled_signals();

    // Watches the inputs and applies each change until SIGTERM/SIGINT.
    // SIGHUP re-reads everything. Returns the process exit code.
    int run();

private:
    enum Input : unsigned {
        kMesh = FileSources::kMesh,
        kPolicies = FileSources::kPolicies,
        kWorkloads = FileSources::kWorkloads,
        kHosts = 8,
        kMeshCidrs = KubeSource::kMeshCidrs,
        kDnsServers = KubeSource::kDnsServers,
        kAll = FileSources::kAll | kHosts | kMeshCidrs | kDnsServers
    };

    explicit Agent(const AgentConfig& config) : config_(config) {}
    // Start-up steps, in order. In Kubernetes mode (agent_kubernetes.cc) the
    // inputs come later, from the API server: prepare_kubernetes,
    // load_and_adopt (publishing nothing before the first sync),
    // start_telemetry_and_events, wait_for_first_sync.
    Status prepare_cgroup_and_lock();
    Status read_first_inputs();
    Status load_datapath();
    Status start_telemetry_and_events();
    Status attach_and_report();
    Status prepare_kubernetes();
    Status load_and_adopt();
    Status wait_for_first_sync();
    // Kubernetes mode: the API server's stores or the pods' cgroups changed.
    void on_kubernetes_changed();
    void update_kubernetes_readiness();
    // The first generation from the API server, once every collection is listed.
    void apply_first_sync();

    // Re-reads the inputs named by `inputs` and applies a new generation if
    // anything that matters changed. `force` re-reads even identical bytes.
    void on_inputs_changed(unsigned inputs, bool force);
    bool reload_mesh_config(bool force);
    bool reload_policies(bool reread = false);
    bool reload_workloads();
    bool reload_hosts();
    bool reload_mesh_cidrs();
    void reload_dns_servers();
    // True when the generation was applied.
    bool apply_inputs(std::chrono::steady_clock::time_point started);
    // Decision events from the kernel: named, logged, kept for /events.
    void on_kernel_events();
    void on_kernel_event(const egressd_event& event);
    // Revocation (docs/decision.md): what is enforced before a change, and
    // after it the teardown of the open connections it now denies.
    struct Enforced {
        std::shared_ptr<const MapImage> image;
        std::map<uint64_t, uint32_t> workloads;
        std::map<std::string, CgroupTarget> attached;
    };
    Enforced enforced_now();  // empty without a revoker
    void revoke_tightened(const Enforced& before, std::chrono::steady_clock::time_point flipped);
    // The revoker's load (parsing the kernel's BTF: tens of ms) runs in a
    // thread while the first generation is written and attached; revoker()
    // takes its result at the first use, and is the only way to the revoker.
    void start_loading_revoker();
    Revoker* revoker();  // null: revokeOnTighten off, or unavailable
    // Every second: is the kernel still enforcing what the inputs say? Pins
    // lost are pinned again; in file mode, a cgroup made anew is attached
    // again. What cannot be repaired makes /readyz fail, with the reason.
    void check_enforcement();
    std::string repair_enforcement();
    void publish_telemetry();
    void schedule_memory_release();
    void record_error(const std::string& message);
    // The status file follows: now, or in the event loop once the burst of
    // changes is over. It is written only when its content changed.
    void write_status();
    void flush_status();  // builds and writes the status file now
    // Handles one ready descriptor of the event loop; the exit code when it is time to exit.
    std::optional<int> on_ready(int fd, int signal_fd);
    // Handles pending signals (SIGHUP re-reads every input); the signal to exit on, if any.
    std::optional<int> on_signals(int signal_fd);

    const AgentConfig config_;
    std::optional<AgentLock> lock_;
    CgroupTarget cgroup_;
    uint32_t cgroup_level_ = 0;
    std::unique_ptr<FileSources> sources_;  // file mode
    std::unique_ptr<KubeSource> kube_;      // Kubernetes mode
    bool first_sync_applied_ = false;       // Kubernetes mode: a generation from the API server is in force
    std::unique_ptr<HostResolver> resolver_;
    std::unique_ptr<Datapath> datapath_;
    std::unique_ptr<Reconciler> reconciler_;
    std::unique_ptr<Telemetry> telemetry_;
    std::unique_ptr<EventReader> events_;
    std::unique_ptr<Revoker> revoker_;  // null: revokeOnTighten off, or unavailable (revocation_ says why)
    std::future<Result<std::unique_ptr<Revoker>>> revoker_loading_;
    std::string revocation_ = "off";
    std::filesystem::path cgroup_mount_;
    int64_t boottime_offset_ns_ = 0;

    // Inputs as last read and accepted (the reconciler has their values).
    MeshConfig mesh_;
    // The valid policies, one immutable list handed to the reconciler as it
    // is (a MeshConfig change does not compare 100k rules' policies again),
    // and the errors and notes of the last load.
    std::shared_ptr<const PolicyList> policies_ = std::make_shared<const PolicyList>();
    std::vector<std::string> policy_errors_, policy_notes_;
    std::vector<Workload> workloads_;
    std::map<std::string, HostState> hosts_;
    std::optional<std::vector<Cidr>> cluster_cidrs_;  // Kubernetes mode without meshCIDRs in the settings
    // Whose DNS answers are learned from: the settings', else /etc/resolv.conf's
    // (and, on Kubernetes, the cluster DNS's as found: cluster_dns_).
    std::vector<IpAddress> resolvers_;
    std::vector<IpAddress> cluster_dns_;

    UniqueFd memory_release_;  // timerfd: malloc_trim a second after the last change
    UniqueFd health_check_;    // timerfd: check_enforcement() every second
    std::string enforcement_problem_;
    UniqueFd stale_check_;     // Kubernetes mode, timerfd: when a failing watch becomes stale
    std::string started_at_;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    // File mode: the first generation is enforced from one slot; the other is
    // written once the event loop starts, as after every change (converge).
    bool converge_after_start_ = false;
    double last_apply_ms_ = 0;
    std::optional<std::string> last_error_;
    std::string last_error_at_;
    std::string status_written_;  // the status file's content as last written
    // In the event loop the status file is written when no event waits, or
    // kStatusFlushEvery after the first change not yet written.
    static constexpr std::chrono::milliseconds kStatusFlushEvery{100};
    bool in_event_loop_ = false;
    std::optional<std::chrono::steady_clock::time_point> status_dirty_since_;
};

}  // namespace egressd
