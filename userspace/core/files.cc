#include "core/files.h"

#include <fcntl.h>
#include <stdio.h>
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

namespace {

// The file a link names (the link stays), or `path` itself.
Result<fs::path> write_target(const fs::path& path) {
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(path, ec))) return path;
    fs::path target = fs::canonical(path, ec);
    if (ec) return Error{ec.value(), "resolving " + path.string()};
    return target;
}

// `content` in the temporary file `tmp`, with the mode of `target` if it exists.
Status write_temporary(const fs::path& target, const fs::path& tmp, const std::string& content,
                       Durability durability) {
    mode_t mode = 0644;
    struct stat st {};
    if (::stat(target.c_str(), &st) == 0) mode = st.st_mode & 07777;
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
    return {};
}

Status rename_into_place(const fs::path& tmp, const fs::path& target) {
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return system_error("replacing " + target.string(), err);
    }
    return {};
}

}  // namespace

Status write_file_atomically(const fs::path& path, const std::string& content, Durability durability) {
    auto target = write_target(path);
    if (!target) return target.error();
    const fs::path tmp = atomic_write_temporary(*target);
    if (auto written = write_temporary(*target, tmp, content, durability); !written) return written;
    return rename_into_place(tmp, *target);
}

Result<FileState> file_state(const fs::path& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return system_error("reading " + path.string());
    auto ns = [](const timespec& t) { return int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec; };
    return FileState{FileVersion{uint64_t(st.st_dev), uint64_t(st.st_ino), int64_t(st.st_size), ns(st.st_mtim)},
                     ns(st.st_ctim)};
}

Result<FileVersion> file_version(const fs::path& path) {
    auto state = file_state(path);
    if (!state) return state.error();
    return state->version;
}

Result<bool> replace_file_if_unchanged(const fs::path& path, const std::string& content, const FileVersion& expected) {
    auto target = write_target(path);
    if (!target) return target.error();
    // A name of this writer's own: two egressctl at once must not share one.
    const fs::path tmp = target->parent_path() / fmt::format(".{}.egressctl-{}", target->filename().string(), ::getpid());
    if (auto written = write_temporary(*target, tmp, content, Durability::survives_crash); !written)
        return written.error();
    auto done = [&](Result<bool> result) {
        ::unlink(tmp.c_str());
        return result;
    };
    auto now = file_version(*target);
    if (!now) return done(now.error());
    if (!(*now == expected)) return done(false);
    auto ours = file_version(tmp);
    if (!ours) return done(ours.error());
    // Exchanging rather than renaming tells which version this replaced: a
    // writer that saved between the look above and here is put back at once.
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target->c_str(), RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS) return done(system_error("replacing " + target->string()));
        // A filesystem without exchange: a plain rename, the look above is all.
        if (auto renamed = rename_into_place(tmp, *target); !renamed) return renamed.error();
        return true;
    }
    auto replaced = file_version(tmp);
    if (replaced && *replaced == expected) return done(true);
    // Not what was read: restore it, unless a newer save already replaced ours.
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target->c_str(), RENAME_EXCHANGE) == 0) {
        auto back = file_version(tmp);
        if (back && !(*back == *ours))
            ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target->c_str(), RENAME_EXCHANGE);  // the newer one stays
    }
    return done(false);
}

fs::path atomic_write_temporary(const fs::path& path) {
    return path.parent_path() / ("." + path.filename().string() + ".egressd-tmp");
}

}  // namespace egressd
