// Kubernetes mode: waking the agent when pod cgroups appear or go, without polling.
//
// inotify watches the pods root and its QoS directories (burstable, besteffort) for directories created, moved in,
// removed or moved out: a pod cgroup is one of those, made with mkdir(2) by the kubelet or systemd. A QoS directory
// created late gets its watch when its creation is drained; the pods root, if it goes away, is replaced by a watch on
// its nearest existing ancestor until it comes back. Nothing is ever written below the mount.
//
// Use: add fd() to the epoll loop; when readable, call drain(); when that returns true, re-run find_pod_cgroup()
// for the pods still waiting and check the ones found for deletion. Watches are added before drain() returns, so a
// pod made inside a new QoS directory is either seen by that scan or reported by a later event.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "k8s/pod_cgroup.h"

namespace egressd::k8s {

class CgroupWaiter {
public:
    // Fails when inotify is not available or the pods root cannot be watched.
    static Result<std::unique_ptr<CgroupWaiter>> create(std::filesystem::path cgroup_mount, PodsRoot root);

    // Readable (non-blocking, close-on-exec) when something changed below the pods root.
    int fd() const { return fd_.get(); }

    // Reads all pending events. True when a directory was created or removed below the watched ones, when the queue
    // overflowed (events were lost), or when a watched directory itself went away.
    bool drain();

    // What the events drained since the last call said, so that a caller with many pods looks again only at the
    // pods concerned: the names of the directories made or removed directly below the pods root and the QoS
    // directories, or `everything` when events were lost or a watched directory itself changed.
    struct Changes {
        bool everything = false;
        std::vector<std::string> names;
    };
    Changes take_changes();

    // The watched directories relative to the mount, sorted (for status and tests).
    std::vector<std::string> watched() const;
    // How often the kernel's event queue overflowed (events lost, a full re-scan needed); for metrics and tests.
    uint64_t overflows() const { return overflows_; }

private:
    CgroupWaiter(std::filesystem::path cgroup_mount, PodsRoot root, UniqueFd fd);

    Status add_watch(const std::string& rel);
    // (Re)adds the watches of the pods root and its QoS directories, or of the root's nearest existing ancestor.
    Status rewatch();
    // Whether a new directory `rel` is one we watch (a QoS dir) or lies on the way to the pods root.
    bool wants_watch(const std::string& rel) const;
    // One event; `resync` is set when the watches must be rebuilt.
    bool handle_event(int wd, uint32_t mask, std::string_view name, bool& resync);
    bool handle_watch_event(int wd, uint32_t mask, std::string_view name, bool& resync);

    std::filesystem::path mount_;
    PodsRoot root_;
    UniqueFd fd_;
    std::map<int, std::string> watches_;  // watch descriptor -> directory relative to the mount ("" is the mount)
    uint64_t overflows_ = 0;
    Changes changes_;
};

}  // namespace egressd::k8s
