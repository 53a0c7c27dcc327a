#include "kernel/runtime.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

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

Result<std::string> read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return system_error("reading " + path.string());
    std::ostringstream content;
    content << in.rdbuf();
    if (in.bad()) return system_error("reading " + path.string());
    return content.str();
}

Status write_file_atomically(const fs::path& path, const std::string& content) {
    std::error_code ec;
    fs::path target = path;
    if (fs::is_symlink(fs::symlink_status(path, ec))) {
        target = fs::canonical(path, ec);
        if (ec) return Error{ec.value(), "resolving " + path.string()};
    }
    mode_t mode = 0644;
    struct stat st {};
    if (::stat(target.c_str(), &st) == 0) mode = st.st_mode & 07777;

    const fs::path tmp = atomic_write_temporary(target);
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd.valid()) return system_error("writing " + tmp.string());
    ::fchmod(fd.get(), mode);
    size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
        if (n < 0) {
            const int err = errno;
            ::unlink(tmp.c_str());
            return system_error("writing " + tmp.string(), err);
        }
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0 || ::close(fd.release()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return system_error("writing " + tmp.string(), err);
    }
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return system_error("replacing " + target.string(), err);
    }
    return {};
}

fs::path atomic_write_temporary(const fs::path& path) {
    return path.parent_path() / ("." + path.filename().string() + ".egressd-tmp");
}

fs::path status_file_path(const fs::path& run_dir) { return run_dir / "status.json"; }

Status write_status_file(const fs::path& run_dir, const std::string& status_json) {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    if (ec) return Error{ec.value(), "creating " + run_dir.string()};
    return write_file_atomically(status_file_path(run_dir), status_json);
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
