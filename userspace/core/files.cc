#include "core/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>

#include <fmt/format.h>

#include "common/fd.h"

namespace egressd {
namespace fs = std::filesystem;

Result<std::string> read_file(const fs::path& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return system_error(fmt::format("reading {}", path.string()));
    std::string text;
    std::array<char, 65536> buffer;
    for (;;) {
        const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return system_error(fmt::format("reading {}", path.string()));
        if (n == 0) break;
        text.append(buffer.data(), static_cast<size_t>(n));
    }
    return text;
}

Status write_file_atomically(const fs::path& path, const std::string& content, Durability durability) {
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
    if ((durability == Durability::survives_crash && ::fsync(fd.get()) != 0) || ::close(fd.release()) != 0) {
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

}  // namespace egressd
