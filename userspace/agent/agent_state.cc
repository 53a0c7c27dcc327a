#include "agent/agent_state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "core/files.h"

namespace egressd {
namespace fs = std::filesystem;

Result<AgentLock> AgentLock::acquire(const fs::path& pin_dir) {
    AgentLock lock;
    lock.fd_.reset(::open(pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!lock.fd_.valid()) return system_error("opening " + pin_dir.string());
    if (::flock(lock.fd_.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return make_error("another egressd is running on " + pin_dir.string() + " (it holds the directory's lock)");
        return system_error("locking " + pin_dir.string());
    }
    return lock;
}

bool agent_running(const fs::path& pin_dir) {
    UniqueFd fd(::open(pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return false;
    return ::flock(fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

fs::path status_file_path(const fs::path& run_dir) { return run_dir / "status.json"; }

Status write_status_file(const fs::path& run_dir, const std::string& status_json) {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    if (ec) return Error{ec.value(), "creating " + run_dir.string()};
    // Rewritten at every apply and at every start: a crash loses nothing.
    return write_file_atomically(status_file_path(run_dir), status_json, Durability::replace_only);
}

Result<nlohmann::json> read_status_file(const fs::path& run_dir) {
    const fs::path file = status_file_path(run_dir);
    auto text = read_file(file);
    if (!text) return text.error();
    try {
        return nlohmann::json::parse(*text);
    } catch (const nlohmann::json::exception& e) {
        return make_error(file.string() + ": " + e.what());
    }
}

}  // namespace egressd
