// The inputs as files: the MeshConfig, the Egress policy directory and the
// workloads file, watched with inotify. Each read says whether its input
// changed; what changed goes to the reconciler. A file that cannot be read or
// parsed is an error for its input only: the reconciler keeps the last good
// value.
#pragma once

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
#include "core/meshconfig.h"
#include "core/workloads.h"

namespace egressd {

class FileSources {
public:
    enum Input : unsigned { kMesh = 1, kPolicies = 2, kWorkloads = 4, kAll = 7 };

    // Watches the inputs' directories (created for the policies and the
    // workloads if missing). Events for `own_files` (files the agent writes
    // in those directories) are not input changes. Call before the first
    // reads, so that no change between a read and the watch is missed.
    static Result<std::unique_ptr<FileSources>> watch(const AgentConfig& config,
                                                      const std::set<std::filesystem::path>& own_files);

    int fd() const { return inotify_.get(); }  // readable when inputs may have changed
    // The inputs the waiting events concern; `lost` when the kernel dropped
    // events (then every input is named and must be re-read in full).
    unsigned pending(bool& lost);

    // The MeshConfig when its bytes changed since the last read (or `force`),
    // nullopt when they did not; an error when it cannot be read or parsed.
    Result<std::optional<MeshConfig>> read_mesh(bool force);
    // The policy directory, re-parsing only changed files (an empty set without policyDir);
    // `reread`: every file read again, whatever its stamp (SIGHUP).
    PolicySet read_policies(bool reread = false);
    // The workloads file (none without the setting, or while it does not exist).
    Result<std::vector<Workload>> read_workloads() const;

private:
    explicit FileSources(const AgentConfig& config) : config_(config) {}
    unsigned inputs_of(const char* events, size_t length, bool& overflow) const;

    const AgentConfig& config_;
    std::optional<std::string> mesh_text_;  // the MeshConfig bytes last read
    std::optional<PolicyDirLoader> policy_loader_;
    UniqueFd inotify_;
    struct Watch {
        std::filesystem::path dir;  // weakly canonical
        unsigned inputs = 0;        // the inputs in that directory
    };
    std::map<int, Watch> watches_;               // by inotify watch descriptor
    std::set<std::filesystem::path> own_files_;  // weakly canonical
};

}  // namespace egressd
