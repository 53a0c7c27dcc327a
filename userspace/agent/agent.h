// The egressd agent: keeps the kernel maps equal to its inputs (the
// MeshConfig file, the Egress policy directory, the workloads file and the
// DNS answers for the policies' hosts).
#pragma once

#include <signal.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/image.h"
#include "core/policy_rule_cache.h"
#include "core/meshconfig.h"
#include "core/workloads.h"
#include "agent/telemetry.h"
#include "dns/host_resolver.h"
#include "kernel/datapath.h"
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
    enum Input : unsigned { kMesh = 1, kPolicies = 2, kWorkloads = 4, kHosts = 8, kAll = 15 };

    Agent() = default;
    // Re-reads the inputs named by `inputs` and applies a new generation if
    // anything that matters changed. `force` re-reads even identical bytes.
    void on_inputs_changed(unsigned inputs, bool force);
    bool reload_mesh_config(bool force);
    bool reload_policies();
    bool reload_workloads();
    bool reload_hosts();
    // Decision events from the kernel: named, logged, kept for /events.
    void on_kernel_events();
    void on_kernel_event(const egressd_event& event);
    void publish_telemetry();
    // Builds and publishes the next generation from the current inputs.
    Status rebuild();
    // Writes identity names and workload cgroups when they differ from what the kernel has.
    Status push_identities(const std::map<uint64_t, uint32_t>& workload_ids);
    void schedule_memory_release();
    Status watch_inputs();
    void record_error(const std::string& message);
    // Writes the status file when its content changed since the last write.
    void write_status();
    // The inputs an inotify batch concerns; events for the agent's own files are not inputs.
    unsigned inputs_of(const char* events, size_t length, bool& overflow) const;
    void on_inotify();
    // Handles pending signals (SIGHUP re-reads every input); the signal to exit on, if any.
    std::optional<int> on_signals(int signal_fd);

    AgentConfig config_;
    std::optional<AgentLock> lock_;
    CgroupTarget cgroup_;
    uint32_t cgroup_level_ = 0;
    std::unique_ptr<Datapath> datapath_;
    std::unique_ptr<HostResolver> resolver_;
    std::unique_ptr<Telemetry> telemetry_;
    std::unique_ptr<EventReader> events_;
    std::map<uint32_t, PolicyRef> policy_names_seen_;  // names events may refer to after a policy is gone
    int64_t boottime_offset_ns_ = 0;
    IdentityRegistry identities_;
    PolicyRegistry policy_numbers_;

    // Inputs as last read and accepted.
    MeshConfig mesh_;
    std::optional<std::string> mesh_text_;  // the MeshConfig bytes last read
    std::optional<PolicyDirLoader> policy_loader_;  // re-parses only changed files
    PolicySet policies_;
    std::vector<Workload> workloads_;
    std::map<std::string, HostState> hosts_;

    // What the kernel enforces.
    MeshConfig applied_mesh_;
    std::shared_ptr<const MapImage> applied_image_ = std::make_shared<const MapImage>();
    std::vector<EgressPolicy> applied_policies_;
    PolicyRuleCache policy_rule_cache_;
    UniqueFd memory_release_;  // timerfd: malloc_trim a second after the last change
    std::optional<uint64_t> pushed_identities_revision_;  // identities_.revision() the kernel has

    std::string started_at_;
    std::string applied_at_;
    std::string last_change_;
    double last_apply_ms_ = 0;
    std::optional<std::string> last_error_;
    std::string last_error_at_;
    std::string status_written_;  // the status file's content as last written
    UniqueFd inotify_;
    struct Watch {
        std::filesystem::path dir;  // weakly canonical
        unsigned inputs = 0;        // the inputs in that directory
    };
    std::map<int, Watch> watches_;  // by inotify watch descriptor
    // Files the agent itself writes (the status file and its temporary), by
    // weakly canonical path: in a watched directory their events are not
    // input changes, or each status write would trigger the next.
    std::set<std::filesystem::path> own_files_;
};

}  // namespace egressd
