// Pod -> cgroup v2 directory: names for both drivers, kind's nesting, detection of the pods root, lookups in fake
// trees.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "fake_tree.h"
#include "k8s/pod_cgroup.h"

namespace egressd::k8s {
namespace {

using test::FakeCgroupTree;
using test::make_qos_dirs;

constexpr const char* kUid = "9ac48755-3968-48e4-b9dc-6d4b69f3bb42";
constexpr const char* kUidSystemd = "9ac48755_3968_48e4_b9dc_6d4b69f3bb42";
// A static pod's config hash (the mirror pod's kubernetes.io/config.mirror annotation): hex, no dashes.
constexpr const char* kMirrorHash = "b1e89a2fcc688644de3eb95aee8025ce";
const std::string kId(64, 'a');
const std::string kId2 = std::string(63, '0') + "f";

const PodsRoot kSystemd{"kubepods.slice", true};
const PodsRoot kCgroupfs{"kubepods", false};
const PodsRoot kKindSystemd{"kubelet.slice/kubelet-kubepods.slice", true};
const PodsRoot kKindCgroupfs{"kubelet/kubepods", false};

struct Layout {
    PodsRoot root;
    QosClass qos;
    std::string path;  // of the pod kUid
};

// The kubelet's names, per driver and QoS class (docs/kubernetes.md 2.1, checked against real paths of kind nodes).
const std::vector<Layout> kLayouts = {
    {kSystemd, QosClass::guaranteed, std::string("kubepods.slice/kubepods-pod") + kUidSystemd + ".slice"},
    {kSystemd, QosClass::burstable,
     std::string("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod") + kUidSystemd + ".slice"},
    {kSystemd, QosClass::besteffort,
     std::string("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod") + kUidSystemd + ".slice"},
    {kCgroupfs, QosClass::guaranteed, std::string("kubepods/pod") + kUid},
    {kCgroupfs, QosClass::burstable, std::string("kubepods/burstable/pod") + kUid},
    {kCgroupfs, QosClass::besteffort, std::string("kubepods/besteffort/pod") + kUid},
    {kKindSystemd, QosClass::guaranteed,
     std::string("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod") + kUidSystemd + ".slice"},
    {kKindSystemd, QosClass::burstable,
     std::string(
         "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod") +
         kUidSystemd + ".slice"},
    {kKindSystemd, QosClass::besteffort,
     std::string(
         "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod") +
         kUidSystemd + ".slice"},
    {kKindCgroupfs, QosClass::guaranteed, std::string("kubelet/kubepods/pod") + kUid},
    {kKindCgroupfs, QosClass::burstable, std::string("kubelet/kubepods/burstable/pod") + kUid},
    {kKindCgroupfs, QosClass::besteffort, std::string("kubelet/kubepods/besteffort/pod") + kUid},
};

std::string describe(const Layout& layout) { return layout.root.path + " " + std::string(qos_class_name(layout.qos)); }

TEST_CASE("parse_qos_class takes status.qosClass exactly") {
    CHECK(*parse_qos_class("Guaranteed") == QosClass::guaranteed);
    CHECK(*parse_qos_class("Burstable") == QosClass::burstable);
    CHECK(*parse_qos_class("BestEffort") == QosClass::besteffort);
    for (const char* bad : {"", "guaranteed", "Besteffort", "Unknown", "BestEffort "}) {
        const auto qos = parse_qos_class(bad);
        REQUIRE_FALSE(qos.ok());
        CHECK(qos.error().message.find("unknown QoS class") != std::string::npos);
    }
    CHECK(qos_class_name(QosClass::guaranteed) == "guaranteed");
    CHECK(qos_class_name(QosClass::burstable) == "burstable");
    CHECK(qos_class_name(QosClass::besteffort) == "besteffort");
}

TEST_CASE("valid_pod_uid accepts UUIDs and config hashes, nothing that could leave a directory") {
    CHECK(valid_pod_uid(kUid));
    CHECK(valid_pod_uid(kUidSystemd));
    CHECK(valid_pod_uid(kMirrorHash));
    for (const char* bad : {"", "..", "a/b", "../../etc", "a b", "pod.slice", "uid\n"}) CHECK_FALSE(valid_pod_uid(bad));
    CHECK_FALSE(valid_pod_uid(std::string(129, 'a')));
}

TEST_CASE("pod_cgroup_path: both drivers, every QoS class, kind's nesting") {
    for (const Layout& layout : kLayouts) {
        CAPTURE(describe(layout));
        CHECK(pod_cgroup_path(layout.root, {kUid, layout.qos}) == layout.path);
    }
}

TEST_CASE("pod_cgroup_path: static pods by their config hash, invalid UIDs give nothing") {
    CHECK(pod_cgroup_path(kKindSystemd, {kMirrorHash, QosClass::burstable}) ==
          std::string("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                      "kubelet-kubepods-burstable-pod") +
              kMirrorHash + ".slice");
    CHECK(pod_cgroup_path(kCgroupfs, {kMirrorHash, QosClass::guaranteed}) == std::string("kubepods/pod") + kMirrorHash);
    CHECK(pod_cgroup_path(kSystemd, {"../x", QosClass::burstable}).empty());
    CHECK(pod_cgroup_path(kSystemd, {"", QosClass::burstable}).empty());
}

TEST_CASE("qos_parent_dirs follow the root's naming") {
    CHECK(qos_parent_dirs(kSystemd) == std::vector<std::string>{"kubepods.slice/kubepods-burstable.slice",
                                                                "kubepods.slice/kubepods-besteffort.slice"});
    CHECK(qos_parent_dirs(kCgroupfs) == std::vector<std::string>{"kubepods/burstable", "kubepods/besteffort"});
    CHECK(qos_parent_dirs(kKindSystemd) ==
          std::vector<std::string>{"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice",
                                   "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"});
}

TEST_CASE("find_pod_cgroup finds each layout with the right QoS class and with a wrong or missing one") {
    for (const Layout& layout : kLayouts) {
        CAPTURE(describe(layout));
        FakeCgroupTree tree;
        make_qos_dirs(tree, layout.root);
        // Another pod next to it, and its containers: neither may be taken for ours.
        tree.mkdirs(pod_cgroup_path(layout.root, {"0f5e2b4c-1111-2222-3333-444455556666", layout.qos}));
        CHECK_FALSE(find_pod_cgroup(tree.mount(), layout.root, {kUid, layout.qos}).has_value());

        tree.mkdirs(layout.path);
        tree.mkdirs(layout.path + "/" + kId);
        for (QosClass asked : {QosClass::guaranteed, QosClass::burstable, QosClass::besteffort}) {
            CAPTURE(qos_class_name(asked));
            CHECK(find_pod_cgroup(tree.mount(), layout.root, {kUid, asked}) == layout.path);
        }
    }
}

TEST_CASE("find_pod_cgroup: both UID spellings, static pods, kind's mixed leaf names") {
    FakeCgroupTree tree;
    SUBCASE("systemd name with the UID's dashes kept") {
        const std::string path =
            std::string("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod") + kUid + ".slice";
        tree.mkdirs(path);
        CHECK(find_pod_cgroup(tree.mount(), kSystemd, {kUid, QosClass::besteffort}) == path);
    }
    SUBCASE("cgroupfs name with underscores") {
        const std::string path = std::string("kubepods/besteffort/pod") + kUidSystemd;
        tree.mkdirs(path);
        CHECK(find_pod_cgroup(tree.mount(), kCgroupfs, {kUid, QosClass::besteffort}) == path);
    }
    SUBCASE("the caller passes the UID already in systemd spelling") {
        const std::string path = std::string("kubepods.slice/kubepods-pod") + kUidSystemd + ".slice";
        tree.mkdirs(path);
        CHECK(find_pod_cgroup(tree.mount(), kSystemd, {kUidSystemd, QosClass::guaranteed}) == path);
    }
    SUBCASE("static pod: the mirror pod's config hash") {
        const std::string path = std::string(
                                     "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                                     "kubelet-kubepods-burstable-pod") +
                                 kMirrorHash + ".slice";
        tree.mkdirs(path);
        CHECK(find_pod_cgroup(tree.mount(), kKindSystemd, {kMirrorHash, QosClass::burstable}) == path);
        // The mirror pod's own metadata.uid names no cgroup.
        CHECK_FALSE(find_pod_cgroup(tree.mount(), kKindSystemd, {kUid, QosClass::burstable}).has_value());
    }
    SUBCASE("nested QoS slice with a kubepods- leaf (the shape in Cilium's provider.go comment)") {
        const std::string path = std::string(
                                     "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
                                     "kubepods-besteffort-pod") +
                                 kUidSystemd + ".slice";
        tree.mkdirs(path);
        CHECK(find_pod_cgroup(tree.mount(), kKindSystemd, {kUid, QosClass::besteffort}) == path);
    }
}

TEST_CASE("find_pod_cgroup: nothing (yet), look-alikes, bad UIDs") {
    FakeCgroupTree tree;
    CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemd, {kUid, QosClass::burstable}).has_value());  // no root
    make_qos_dirs(tree, kSystemd);
    CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemd, {kUid, QosClass::burstable}).has_value());

    const std::string qos = "kubepods.slice/kubepods-burstable.slice/";
    tree.mkdirs(qos + "kubepods-burstable-xpod" + kUidSystemd + ".slice");
    tree.mkdirs(qos + "kubepods-burstable-pod" + kUidSystemd + "0.slice");
    tree.mkdirs(qos + "kubepods-burstable-pod0" + kUidSystemd + ".slice");
    tree.touch(qos + "kubepods-burstable-pod" + kUidSystemd + ".slice.lock");  // a file, not a cgroup
    // Too deep: a pod's directory is never below another pod's.
    tree.mkdirs(qos + "kubepods-burstable-pod1.slice/kubepods-burstable-pod" + kUidSystemd + ".slice");
    CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemd, {kUid, QosClass::burstable}).has_value());

    tree.mkdirs("kubepods.slice/kubepods-pod..slice");
    for (const char* bad : {"", "..", "../kubepods.slice", "a/b"})
        CHECK_FALSE(find_pod_cgroup(tree.mount(), kSystemd, {bad, QosClass::guaranteed}).has_value());
}

TEST_CASE("container_cgroups lists the runtimes' container cgroups of a pod") {
    FakeCgroupTree tree;
    SUBCASE("containerd, systemd") {
        const std::string pod = "kubepods.slice/kubepods-pod1.slice";
        tree.mkdirs(pod + "/cri-containerd-" + kId + ".scope");
        tree.mkdirs(pod + "/cri-containerd-" + kId2 + ".scope");  // the pause container
        CHECK(container_cgroups(tree.mount() / pod) ==
              std::vector<std::string>{"cri-containerd-" + kId2 + ".scope", "cri-containerd-" + kId + ".scope"});
    }
    SUBCASE("CRI-O, systemd: conmon's scope is not a container") {
        const std::string pod = "kubepods.slice/kubepods-pod1.slice";
        tree.mkdirs(pod + "/crio-" + kId + ".scope");
        tree.mkdirs(pod + "/crio-conmon-" + kId + ".scope");
        CHECK(container_cgroups(tree.mount() / pod) == std::vector<std::string>{"crio-" + kId + ".scope"});
    }
    SUBCASE("Docker / cri-dockerd, systemd") {
        const std::string pod = "kubepods.slice/kubepods-pod1.slice";
        tree.mkdirs(pod + "/docker-" + kId + ".scope");
        CHECK(container_cgroups(tree.mount() / pod) == std::vector<std::string>{"docker-" + kId + ".scope"});
    }
    SUBCASE("cgroupfs: bare IDs and CRI-O's crio-<id>") {
        const std::string pod = "kubepods/besteffort/pod1";
        tree.mkdirs(pod + "/" + kId);
        tree.mkdirs(pod + "/crio-" + kId2);
        tree.mkdirs(pod + "/crio-conmon-" + kId2);
        tree.mkdirs(pod + "/not-a-container");
        tree.mkdirs(pod + "/" + kId.substr(0, 12));  // too short for an ID
        CHECK(container_cgroups(tree.mount() / pod) == std::vector<std::string>{kId, "crio-" + kId2});
    }
    SUBCASE("no directory") { CHECK(container_cgroups(tree.mount() / "kubepods/missing").empty()); }
}

TEST_CASE("container_id_of") {
    CHECK(container_id_of("cri-containerd-" + kId + ".scope") == kId);
    CHECK(container_id_of("crio-" + kId + ".scope") == kId);
    CHECK(container_id_of("docker-" + kId + ".scope") == kId);
    CHECK(container_id_of("crio-" + kId) == kId);
    CHECK(container_id_of(kId) == kId);
    CHECK_FALSE(container_id_of("crio-conmon-" + kId + ".scope"));
    CHECK_FALSE(container_id_of("docker-" + kId));  // cgroupfs directories carry no docker- prefix
    CHECK_FALSE(container_id_of("cri-containerd-.scope"));
    CHECK_FALSE(container_id_of("init.scope"));
    CHECK_FALSE(container_id_of(kId + ".scope"));
    CHECK_FALSE(container_id_of(std::string(64, 'g')));
    CHECK_FALSE(container_id_of("cgroup.procs"));
}

TEST_CASE("detect_pods_root: each layout alone") {
    for (const PodsRoot& root : {kSystemd, kCgroupfs, kKindSystemd, kKindCgroupfs}) {
        CAPTURE(root.path);
        FakeCgroupTree tree;
        tree.mkdirs("system.slice/containerd.service");
        make_qos_dirs(tree, root);
        const auto found = detect_pods_root(tree.mount());
        REQUIRE_MESSAGE(found.ok(), found.error().describe());
        CHECK(found->path == root.path);
        CHECK(found->systemd == root.systemd);
    }
}

TEST_CASE("detect_pods_root: order, and a live root before an empty one") {
    FakeCgroupTree tree;
    SUBCASE("systemd first when both are live") {
        make_qos_dirs(tree, kCgroupfs);
        make_qos_dirs(tree, kSystemd);
        CHECK(detect_pods_root(tree.mount())->path == "kubepods.slice");
    }
    SUBCASE("an empty kubepods.slice left by a former driver loses to a live kubepods") {
        tree.mkdirs("kubepods.slice");
        make_qos_dirs(tree, kCgroupfs);
        CHECK(detect_pods_root(tree.mount())->path == "kubepods");
    }
    SUBCASE("a live kind root wins over empty top-level ones") {
        tree.mkdirs("kubepods");
        make_qos_dirs(tree, kKindCgroupfs);
        const auto found = detect_pods_root(tree.mount());
        CHECK(found->path == "kubelet/kubepods");
        CHECK_FALSE(found->systemd);
    }
    SUBCASE("only empty candidates: the first that exists") {
        tree.mkdirs("kubelet.slice/kubelet-kubepods.slice");
        tree.mkdirs("kubepods");
        CHECK(detect_pods_root(tree.mount())->path == "kubepods");
    }
}

TEST_CASE("detect_pods_root: errors say what was tried") {
    FakeCgroupTree tree;
    tree.mkdirs("system.slice");
    tree.mkdirs("kubelet.slice");  // no kubelet-kubepods.slice in it
    const auto none = detect_pods_root(tree.mount());
    REQUIRE_FALSE(none.ok());
    for (const char* tried :
         {"kubepods.slice", "kubepods,", "kubelet.slice/kubelet-kubepods.slice", "kubelet/kubepods"})
        CHECK_MESSAGE(none.error().message.find(tried) != std::string::npos, none.error().message);

    const auto no_mount = detect_pods_root(tree.mount() / "missing");
    REQUIRE_FALSE(no_mount.ok());
    CHECK(no_mount.error().message.find("is not a directory") != std::string::npos);
}

TEST_CASE("detect_pods_root: the `cgroup` override") {
    FakeCgroupTree tree;
    make_qos_dirs(tree, kSystemd);
    tree.mkdirs("custom/pods");
    tree.mkdirs("kubelet.slice/kubelet-kubepods.slice");
    tree.touch("afile");

    struct Case {
        const char* text;
        const char* path;
        bool systemd;
    };
    for (const Case& c : {Case{"custom/pods", "custom/pods", false}, Case{"/custom/pods", "custom/pods", false},
                          Case{"/custom/pods/", "custom/pods", false}, Case{"kubepods.slice", "kubepods.slice", true},
                          Case{"/kubelet.slice/kubelet-kubepods.slice/", "kubelet.slice/kubelet-kubepods.slice", true},
                          Case{"//custom/./pods", "custom/pods", false}}) {
        CAPTURE(c.text);
        const auto found = detect_pods_root(tree.mount(), c.text);
        REQUIRE_MESSAGE(found.ok(), found.error().describe());
        CHECK(found->path == c.path);
        CHECK(found->systemd == c.systemd);
    }
    for (const char* bad : {"/missing", "missing.slice", "/", ".", "..", "../etc", "custom/../../x", "afile"}) {
        CAPTURE(bad);
        const auto found = detect_pods_root(tree.mount(), bad);
        REQUIRE_FALSE(found.ok());
        CHECK(found.error().message.find(std::string("cgroup \"") + bad + "\"") != std::string::npos);
    }
}

}  // namespace
}  // namespace egressd::k8s
