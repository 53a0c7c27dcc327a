// Agent liveness (one agent per pin directory) and the status file the agent
// publishes for egressctl: the contract between the two binaries.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/fd.h"
#include "common/result.h"

namespace egressd {

// One agent per pin directory: the agent holds an exclusive flock on the pin
// directory itself (the shared resource) for as long as it runs.
class AgentLock {
public:
    static Result<AgentLock> acquire(const std::filesystem::path& pin_dir);

private:
    UniqueFd fd_;
};

// True while an agent holds the pin directory's lock.
bool agent_running(const std::filesystem::path& pin_dir);

// <run_dir>/status.json, written atomically (write aside, rename).
std::filesystem::path status_file_path(const std::filesystem::path& run_dir);
Status write_status_file(const std::filesystem::path& run_dir, const std::string& status_json);
Result<nlohmann::json> read_status_file(const std::filesystem::path& run_dir);

}  // namespace egressd
