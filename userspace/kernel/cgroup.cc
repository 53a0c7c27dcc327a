#include "kernel/cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>

#include "kernel/mounts.h"

namespace egressd {
namespace fs = std::filesystem;

Result<fs::path> resolve_cgroup_path(const std::string& configured, const fs::path& mount) {
    const fs::path root = mount.lexically_normal();
    fs::path path = fs::path(configured).is_absolute() ? fs::path(configured) : root / configured;
    path = path.lexically_normal();
    if (path.has_filename() == false) path = path.parent_path();  // drop a trailing '/'
    const fs::path rel = path.lexically_relative(root);
    if (rel.empty() || *rel.begin() == "..")
        return make_error("cgroup " + configured + " is not under the cgroup2 mount " + root.string());
    if (rel == ".")
        return make_error("cgroup " + configured +
                          " is the cgroup v2 root; egressd never enforces there (it would cut every connection of the "
                          "machine): name a dedicated cgroup");
    return path;
}

Result<fs::path> resolve_cgroup_path(const std::string& configured) {
    auto mount = find_cgroup2_mount();
    if (!mount) return mount.error();
    return resolve_cgroup_path(configured, *mount);
}

Result<CgroupTarget> open_existing_cgroup(const fs::path& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return system_error("cgroup " + path.string());
    if (!S_ISDIR(st.st_mode)) return make_error("cgroup " + path.string() + " is not a directory");
    return CgroupTarget{path, static_cast<uint64_t>(st.st_ino)};
}

Result<CgroupTarget> ensure_cgroup(const fs::path& path) {
    std::error_code ec;
    fs::create_directories(path, ec);
    if (ec) return Error{ec.value(), "creating cgroup " + path.string()};
    return open_existing_cgroup(path);
}

Result<UniqueFd> open_cgroup_dir(const fs::path& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return system_error("opening cgroup " + path.string());
    return fd;
}

Status join_cgroup(const fs::path& path) {
    const fs::path procs = path / "cgroup.procs";
    UniqueFd fd(::open(procs.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) return system_error("opening " + procs.string());
    if (::write(fd.get(), "0", 1) != 1) return system_error("joining cgroup " + path.string());
    return {};
}

uint32_t cgroup_level(const std::filesystem::path& cgroup, const std::filesystem::path& mount) {
    uint32_t level = 0;
    for (const auto& part : cgroup.lexically_relative(mount))
        if (!part.empty() && part != ".") ++level;
    return level;
}

EnforcedTree walk_enforced(const std::vector<CgroupTarget>& roots, const fs::path& mount) {
    EnforcedTree tree;
    std::set<ino_t> namespaces;
    auto visit = [&](const fs::path& dir, uint64_t id, uint64_t parent) {
        tree.ancestry.parent[id] = parent;
        tree.ancestry.level[id] = cgroup_level(dir, mount);
        std::ifstream procs(dir / "cgroup.procs");
        for (pid_t pid; procs >> pid;) {
            const fs::path ns = fs::path("/proc") / std::to_string(pid) / "ns" / "net";
            struct stat st {};
            if (::stat(ns.c_str(), &st) == 0 && namespaces.insert(st.st_ino).second) tree.namespaces.push_back(ns);
        }
    };
    for (const CgroupTarget& root : roots) {
        visit(root.path, root.id, 0);
        std::error_code ec;
        for (fs::recursive_directory_iterator it(root.path, ec), end; !ec && it != end; it.increment(ec)) {
            if (!it->is_directory(ec)) continue;
            struct stat st {}, parent {};
            if (::stat(it->path().c_str(), &st) != 0 || ::stat(it->path().parent_path().c_str(), &parent) != 0)
                continue;
            visit(it->path(), st.st_ino, parent.st_ino);
        }
    }
    return tree;
}

}  // namespace egressd
