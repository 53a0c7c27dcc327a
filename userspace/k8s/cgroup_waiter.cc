#include "k8s/cgroup_waiter.h"

#include <utility>

#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "common/log.h"

namespace egressd::k8s {
namespace fs = std::filesystem;

namespace {

// Directories only (pod cgroups are made with mkdir(2)); no IN_MODIFY, so cgroup.events changes stay quiet.
constexpr uint32_t kWatchMask =
    IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW;

// Not following symlinks, as in pod_cgroup.cc (a unity build joins both files: the names differ).
bool is_plain_dir(const fs::path& path) {
    std::error_code ec;
    return fs::is_directory(fs::symlink_status(path, ec));
}

std::string join(const std::string& dir, std::string_view name) {
    return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
}

// "" (the mount) and "kubelet.slice" are strict ancestors of "kubelet.slice/kubelet-kubepods.slice".
bool is_strict_ancestor(const std::string& dir, const std::string& of) {
    return dir.empty() ? !of.empty() : of.size() > dir.size() && of.starts_with(dir) && of[dir.size()] == '/';
}

// The deepest existing directory on the way from the mount to `rel` ("" when only the mount exists).
std::string nearest_existing_ancestor(const fs::path& mount, const std::string& rel) {
    std::string found;
    std::string walk;
    for (const fs::path& part : fs::path(rel)) {
        walk = join(walk, part.string());
        if (!is_plain_dir(mount / walk)) break;
        found = walk;
    }
    return found;
}

}  // namespace

CgroupWaiter::CgroupWaiter(fs::path cgroup_mount, PodsRoot root, UniqueFd fd)
    : mount_(std::move(cgroup_mount)), root_(std::move(root)), fd_(std::move(fd)) {}

Result<std::unique_ptr<CgroupWaiter>> CgroupWaiter::create(fs::path cgroup_mount, PodsRoot root) {
    if (root.path.empty() || root.path.front() == '/' || root.path.back() == '/')
        return make_error("pods root \"" + root.path + "\" must be relative to the cgroup2 mount");
    UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!fd.valid()) return system_error("inotify_init1");
    std::unique_ptr<CgroupWaiter> waiter(new CgroupWaiter(std::move(cgroup_mount), std::move(root), std::move(fd)));
    if (Status st = waiter->rewatch(); !st) return st.error().with_context("watching pod cgroups");
    return waiter;
}

Status CgroupWaiter::add_watch(const std::string& rel) {
    const fs::path path = mount_ / rel;
    const int wd = ::inotify_add_watch(fd_.get(), path.c_str(), kWatchMask);
    if (wd < 0) return system_error("inotify_add_watch " + path.string());
    watches_[wd] = rel;  // the same directory twice gives the same descriptor
    return {};
}

Status CgroupWaiter::rewatch() {
    if (!is_plain_dir(mount_ / root_.path)) {
        // Wait for the pods root to come (back) by watching the nearest directory that exists.
        return add_watch(nearest_existing_ancestor(mount_, root_.path));
    }
    if (Status st = add_watch(root_.path); !st) return st;
    for (const std::string& qos_dir : qos_parent_dirs(root_)) {
        // A QoS directory removed meanwhile is fine: its creation will be reported.
        if (is_plain_dir(mount_ / qos_dir)) (void)add_watch(qos_dir);
    }
    // The root is back: the ancestor watches have done their job.
    for (auto it = watches_.begin(); it != watches_.end();) {
        if (is_strict_ancestor(it->second, root_.path)) {
            ::inotify_rm_watch(fd_.get(), it->first);
            it = watches_.erase(it);
        } else {
            ++it;
        }
    }
    return {};
}

bool CgroupWaiter::wants_watch(const std::string& rel) const {
    if (rel == root_.path || is_strict_ancestor(rel, root_.path)) return true;
    const std::vector<std::string> qos_dirs = qos_parent_dirs(root_);
    return std::find(qos_dirs.begin(), qos_dirs.end(), rel) != qos_dirs.end();
}

bool CgroupWaiter::handle_event(int wd, uint32_t mask, std::string_view name, bool& resync) {
    // Each true answer but a pod directory's own says: look at every pod again.
    const bool changed = handle_watch_event(wd, mask, name, resync);
    if (changed && !(mask & IN_Q_OVERFLOW) && (mask & IN_ISDIR) && !name.empty() && !resync &&
        (mask & (IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM)))
        changes_.names.emplace_back(name);
    else if (changed)
        changes_.everything = true;
    return changed;
}

bool CgroupWaiter::handle_watch_event(int wd, uint32_t mask, std::string_view name, bool& resync) {
    if (mask & IN_Q_OVERFLOW) {
        ++overflows_;
        resync = true;  // events were lost: a watch may be missing too
        return true;
    }
    const auto it = watches_.find(wd);
    if (it == watches_.end()) return false;  // a watch removed earlier
    const std::string dir = it->second;
    const bool ancestor = is_strict_ancestor(dir, root_.path);
    if (mask & IN_IGNORED) {  // the directory is gone (or we removed the watch, then it is not in the map)
        watches_.erase(it);
        if (dir == root_.path || ancestor) resync = true;
        return !ancestor;
    }
    if (mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (mask & IN_MOVE_SELF) {  // the watch would follow the directory elsewhere
            ::inotify_rm_watch(fd_.get(), wd);
            watches_.erase(it);
        }
        resync = true;
        return !ancestor;
    }
    if (!(mask & IN_ISDIR)) return false;
    const std::string rel = join(dir, name);
    if ((mask & (IN_CREATE | IN_MOVED_TO)) && wants_watch(rel)) {
        resync = true;
        return true;
    }
    // Below an ancestor only the way to the pods root matters.
    return !ancestor && (mask & (IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM));
}

CgroupWaiter::Changes CgroupWaiter::take_changes() { return std::exchange(changes_, Changes{}); }

bool CgroupWaiter::drain() {
    bool changed = false;
    bool resync = false;
    alignas(struct inotify_event) char buffer[16 * 1024];
    for (;;) {
        const ssize_t n = ::read(fd_.get(), buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) {
            log::error("reading pod cgroup events: {}", std::strerror(errno));
            changed = true;  // let the caller look for itself
            changes_.everything = true;
        }
        if (n <= 0) break;
        for (ssize_t offset = 0; offset < n;) {
            const auto* event = reinterpret_cast<const struct inotify_event*>(buffer + offset);
            const std::string_view name = event->len > 0 ? std::string_view(event->name) : std::string_view();
            changed |= handle_event(event->wd, event->mask, name, resync);
            offset += static_cast<ssize_t>(sizeof(struct inotify_event) + event->len);
        }
    }
    if (resync) {
        if (Status st = rewatch(); !st) log::error("watching pod cgroups: {}", st.error().describe());
    }
    return changed;
}

std::vector<std::string> CgroupWaiter::watched() const {
    std::vector<std::string> dirs;
    for (const auto& [wd, rel] : watches_) dirs.push_back(rel);
    std::sort(dirs.begin(), dirs.end());
    return dirs;
}

}  // namespace egressd::k8s
