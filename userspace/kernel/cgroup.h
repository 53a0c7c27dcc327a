// The cgroup v2 egressd enforces on.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "core/revocation.h"

namespace egressd {

struct CgroupTarget {
    std::filesystem::path path;  // absolute, under the cgroup2 mount
    uint64_t id = 0;             // what bpf_get_current_cgroup_id() reports (the directory's inode)
};

// Resolves the configured cgroup against the cgroup2 mount. A relative path is
// taken under the mount; an absolute one must lie under it. The cgroup root is
// refused: a deny there would cut every connection of the machine.
Result<std::filesystem::path> resolve_cgroup_path(const std::string& configured,
                                                  const std::filesystem::path& cgroup2_mount);

// resolve_cgroup_path against the mount found in /proc/mounts.
Result<std::filesystem::path> resolve_cgroup_path(const std::string& configured);

// The level of a cgroup below the cgroup2 mount (the mount itself is 0), as
// bpf_get_current_ancestor_cgroup_id() counts.
uint32_t cgroup_level(const std::filesystem::path& cgroup, const std::filesystem::path& mount);

// Creates the cgroup (and missing parents) if needed.
Result<CgroupTarget> ensure_cgroup(const std::filesystem::path& path);
Result<CgroupTarget> open_existing_cgroup(const std::filesystem::path& path);

Result<UniqueFd> open_cgroup_dir(const std::filesystem::path& path);

// The cgroups at and below the enforced ones (`roots`), and one member
// process per network namespace found in them. Cgroups and processes that
// come and go during the walk are skipped.
struct EnforcedTree {
    CgroupAncestry ancestry;
    std::vector<std::filesystem::path> namespaces;  // /proc/PID/ns/net, one per namespace
};
EnforcedTree walk_enforced(const std::vector<CgroupTarget>& roots, const std::filesystem::path& mount);

// Moves the calling process into the cgroup.
Status join_cgroup(const std::filesystem::path& path);

}  // namespace egressd
