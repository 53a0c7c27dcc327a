// CgroupWaiter on fake trees: pod directories appearing and going wake the fd; nothing else does.
#include <doctest/doctest.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "fake_tree.h"
#include "k8s/cgroup_waiter.h"
#include "k8s/pod_cgroup.h"

namespace egressd::k8s {
namespace {

using test::FakeCgroupTree;
using test::make_qos_dirs;

constexpr const char* kPodUid = "0f5e2b4c-7d1a-4c55-9a0e-3b2f1c6d8e90";
const PodsRoot kSystemdRoot{"kubepods.slice", true};
const PodsRoot kCgroupfsRoot{"kubepods", false};

// Events are queued by the time mkdir(2) returns, so a short wait suffices; it only bounds a failing test.
constexpr int kEventWaitMs = 2000;

bool readable(int fd, int timeout_ms) {
    pollfd pfd{fd, POLLIN, 0};
    const int n = ::poll(&pfd, 1, timeout_ms);
    REQUIRE(n >= 0);
    return n == 1 && (pfd.revents & POLLIN);
}

std::unique_ptr<CgroupWaiter> make_waiter(const FakeCgroupTree& tree, const PodsRoot& root) {
    auto waiter = CgroupWaiter::create(tree.mount(), root);
    REQUIRE_MESSAGE(waiter.ok(), waiter.error().describe());
    return std::move(*waiter);
}

TEST_CASE("CgroupWaiter: a pod directory made after the waiter wakes it, then find_pod_cgroup finds it") {
    for (QosClass qos : {QosClass::guaranteed, QosClass::burstable, QosClass::besteffort}) {
        for (const PodsRoot& root : {kSystemdRoot, kCgroupfsRoot}) {
            CAPTURE(root.path);
            CAPTURE(qos_class_name(qos));
            FakeCgroupTree tree;
            make_qos_dirs(tree, root);
            auto waiter = make_waiter(tree, root);
            std::vector<std::string> expected_watches{root.path};
            for (const std::string& dir : qos_parent_dirs(root)) expected_watches.push_back(dir);
            std::sort(expected_watches.begin(), expected_watches.end());
            CHECK(waiter->watched() == expected_watches);

            const PodCgroupQuery pod{kPodUid, qos};
            CHECK_FALSE(readable(waiter->fd(), 0));
            CHECK_FALSE(find_pod_cgroup(tree.mount(), root, pod));

            tree.mkdirs(pod_cgroup_path(root, pod));
            REQUIRE(readable(waiter->fd(), kEventWaitMs));
            CHECK(waiter->drain());
            CHECK(find_pod_cgroup(tree.mount(), root, pod) == pod_cgroup_path(root, pod));
            CHECK_FALSE(readable(waiter->fd(), 0));
            CHECK_FALSE(waiter->drain());  // nothing pending
        }
    }
}

TEST_CASE("CgroupWaiter: no event, no wake-up: poll times out") {
    FakeCgroupTree tree;
    make_qos_dirs(tree, kSystemdRoot);
    auto waiter = make_waiter(tree, kSystemdRoot);
    // Changes outside the watched directories, and inside a pod's directory, are not reported.
    tree.mkdirs("system.slice/containerd.service");
    tree.mkdirs("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    tree.mkdirs("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-1.scope");

    const auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(readable(waiter->fd(), 300));
    // The poll blocked: the fd is not readable with nothing to say (no busy loop for the agent).
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(250));
}

TEST_CASE("CgroupWaiter: files made in a watched directory are not a change") {
    FakeCgroupTree tree;
    make_qos_dirs(tree, kCgroupfsRoot);
    auto waiter = make_waiter(tree, kCgroupfsRoot);
    tree.touch("kubepods/burstable/some-file");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK_FALSE(waiter->drain());
    CHECK_FALSE(readable(waiter->fd(), 0));
}

TEST_CASE("CgroupWaiter: a QoS directory made late is watched, then a pod inside it is seen") {
    FakeCgroupTree tree;
    tree.mkdirs("kubepods.slice");
    auto waiter = make_waiter(tree, kSystemdRoot);
    CHECK(waiter->watched() == std::vector<std::string>{"kubepods.slice"});
    const PodCgroupQuery pod{kPodUid, QosClass::burstable};

    tree.mkdirs("kubepods.slice/kubepods-burstable.slice");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(waiter->watched() == std::vector<std::string>{"kubepods.slice", "kubepods.slice/kubepods-burstable.slice"});
    CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemdRoot, pod));
    CHECK(waiter->take_changes().everything);  // a new QoS directory: every pod may be in it

    tree.mkdirs(pod_cgroup_path(kSystemdRoot, pod));
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(find_pod_cgroup(tree.mount(), kSystemdRoot, pod) == pod_cgroup_path(kSystemdRoot, pod));
    // A pod's own directory: named, so that only that pod is looked at again.
    const CgroupWaiter::Changes changes = waiter->take_changes();
    CHECK_FALSE(changes.everything);
    CHECK(changes.names ==
          std::vector<std::string>{std::filesystem::path(pod_cgroup_path(kSystemdRoot, pod)).filename().string()});
    CHECK(waiter->take_changes().names.empty());  // taken once
}

TEST_CASE("CgroupWaiter: a QoS directory and a pod in it made before the drain: the re-scan finds the pod") {
    FakeCgroupTree tree;
    tree.mkdirs("kubepods");
    auto waiter = make_waiter(tree, kCgroupfsRoot);
    const PodCgroupQuery pod{kPodUid, QosClass::besteffort};
    tree.mkdirs(pod_cgroup_path(kCgroupfsRoot, pod));  // besteffort and the pod before the watch on besteffort
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(find_pod_cgroup(tree.mount(), kCgroupfsRoot, pod) == pod_cgroup_path(kCgroupfsRoot, pod));
    // Later pods there are reported.
    tree.mkdirs("kubepods/besteffort/pod1");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
}

TEST_CASE("CgroupWaiter: removals are detected") {
    FakeCgroupTree tree;
    make_qos_dirs(tree, kSystemdRoot);
    const PodCgroupQuery pod{kPodUid, QosClass::besteffort};
    const std::string path = pod_cgroup_path(kSystemdRoot, pod);
    tree.mkdirs(path);
    auto waiter = make_waiter(tree, kSystemdRoot);

    SUBCASE("a pod directory") {
        tree.remove(path);
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemdRoot, pod));
    }
    SUBCASE("a guaranteed pod directly below the root") {
        const PodCgroupQuery guaranteed{kPodUid, QosClass::guaranteed};
        tree.mkdirs(pod_cgroup_path(kSystemdRoot, guaranteed));
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        tree.remove(pod_cgroup_path(kSystemdRoot, guaranteed));
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
    }
    SUBCASE("a QoS directory: its watch goes, and comes back with it") {
        tree.remove("kubepods.slice/kubepods-besteffort.slice");
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        CHECK(waiter->watched() ==
              std::vector<std::string>{"kubepods.slice", "kubepods.slice/kubepods-burstable.slice"});
        tree.mkdirs(path);
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        CHECK(waiter->watched().size() == 3);
        CHECK(find_pod_cgroup(tree.mount(), kSystemdRoot, pod) == path);
    }
    SUBCASE("the pods root: wait on the mount until it is back") {
        tree.remove("kubepods.slice");
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        CHECK(waiter->watched() == std::vector<std::string>{""});
        // Unrelated cgroups at the top are not a change for the pods.
        tree.mkdirs("system.slice");
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK_FALSE(waiter->drain());

        tree.mkdirs(path);
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        // The root and the QoS directory that came back with it; the mount's watch is gone.
        CHECK(waiter->watched() ==
              std::vector<std::string>{"kubepods.slice", "kubepods.slice/kubepods-besteffort.slice"});
        CHECK(find_pod_cgroup(tree.mount(), kSystemdRoot, pod) == path);
        tree.mkdirs("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice");
        REQUIRE(readable(waiter->fd(), kEventWaitMs));
        CHECK(waiter->drain());
        CHECK(waiter->watched().size() == 3);
    }
}

TEST_CASE("CgroupWaiter: kind's nested root made step by step") {
    FakeCgroupTree tree;
    const PodsRoot root{"kubelet.slice/kubelet-kubepods.slice", true};
    auto waiter = make_waiter(tree, root);
    CHECK(waiter->watched() == std::vector<std::string>{""});
    tree.mkdirs("kubelet.slice");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(waiter->watched() == std::vector<std::string>{"", "kubelet.slice"});
    tree.mkdirs("kubelet.slice/kubelet-kubepods.slice");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(waiter->watched() == std::vector<std::string>{"kubelet.slice/kubelet-kubepods.slice"});
}

TEST_CASE("CgroupWaiter: a queue overflow reports a change and keeps the watches") {
    int max_queued = 0;
    std::ifstream("/proc/sys/fs/inotify/max_queued_events") >> max_queued;
    // Overflowing the queue takes max_queued_events + 1 directories: quick on tmpfs, a minute on a slow disk.
    const std::filesystem::path shm = "/dev/shm";
    if (max_queued <= 0 || max_queued > 65536 || !std::filesystem::is_directory(shm) ||
        ::access("/dev/shm", W_OK) != 0) {
        MESSAGE("skipped: max_queued_events is " << max_queued << ", or no writable /dev/shm");
        return;
    }
    FakeCgroupTree tree(shm);
    make_qos_dirs(tree, kCgroupfsRoot);
    auto waiter = make_waiter(tree, kCgroupfsRoot);
    for (int i = 0; i <= max_queued; ++i)
        std::filesystem::create_directory(tree.mount() / "kubepods/burstable" / ("pod" + std::to_string(i)));
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    CHECK(waiter->overflows() == 1);
    CHECK(waiter->watched().size() == 3);
    CHECK(waiter->take_changes().everything);  // events were lost: look at every pod
    tree.mkdirs("kubepods/besteffort/pod-after");
    REQUIRE(readable(waiter->fd(), kEventWaitMs));
    CHECK(waiter->drain());
    const CgroupWaiter::Changes changes = waiter->take_changes();
    CHECK_FALSE(changes.everything);
    CHECK(changes.names == std::vector<std::string>{"pod-after"});
}

TEST_CASE("CgroupWaiter::create rejects a bad root") {
    FakeCgroupTree tree;
    CHECK_FALSE(CgroupWaiter::create(tree.mount(), PodsRoot{"", false}).ok());
    CHECK_FALSE(CgroupWaiter::create(tree.mount(), PodsRoot{"/kubepods", false}).ok());
    const auto missing_mount = CgroupWaiter::create(tree.mount() / "missing", kCgroupfsRoot);
    CHECK_FALSE(missing_mount.ok());
}

}  // namespace
}  // namespace egressd::k8s
