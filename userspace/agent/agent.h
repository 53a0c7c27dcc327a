// The egressd agent: keeps the kernel maps equal to the MeshConfig file.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "common/fd.h"
#include "common/result.h"
#include "core/agent_config.h"
#include "core/image.h"
#include "core/meshconfig.h"
#include "kernel/bpf_adapter.h"
#include "kernel/cgroup.h"
#include "kernel/runtime.h"

namespace egressd {

class Agent {
public:
    // Reads the MeshConfig, loads the programs, publishes the first
    // generation and attaches (or adopts what is pinned) without a window in
    // which the cgroup is unenforced. Refuses, attaching nothing, when the
    // MeshConfig is not valid.
    static Result<std::unique_ptr<Agent>> start(const AgentConfig& config);

    // Watches the MeshConfig and applies each change until SIGTERM/SIGINT.
    // SIGHUP re-reads the file. Returns the process exit code.
    int run();

private:
    Agent() = default;
    void on_mesh_config_event(bool force);
    Status apply(const MeshConfig& mesh);
    Status watch_mesh_config();
    void write_status() const;

    AgentConfig config_;
    std::optional<AgentLock> lock_;
    CgroupTarget cgroup_;
    std::unique_ptr<Datapath> datapath_;
    MeshConfig applied_mesh_;
    MapImage applied_image_;
    std::optional<std::string> last_seen_text_;  // the MeshConfig bytes last read
    std::string started_at_;
    std::string applied_at_;
    std::string last_change_;
    double last_apply_ms_ = 0;
    std::optional<std::string> last_error_;
    std::string last_error_at_;
    UniqueFd inotify_;
};

}  // namespace egressd
