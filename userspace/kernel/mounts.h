// Where cgroup2 and bpffs are mounted, read from /proc/mounts (never assumed:
// a hybrid host has cgroup2 at /sys/fs/cgroup/unified, a Kubernetes node at
// /sys/fs/cgroup).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/result.h"

namespace egressd {

struct MountEntry {
    std::string source;
    std::filesystem::path target;
    std::string fstype;
};

Result<std::vector<MountEntry>> read_mounts(const std::filesystem::path& file = "/proc/mounts");

// The first cgroup2 mount.
Result<std::filesystem::path> find_cgroup2_mount();

// Makes sure `pin_dir` lies on a bpf filesystem and exists. When the
// filesystem holding it is not bpffs and pin_dir is below /sys/fs/bpf, mounts
// bpffs at /sys/fs/bpf (as systemd or a DaemonSet's init would).
Status ensure_bpffs_dir(const std::filesystem::path& pin_dir);

}  // namespace egressd
