// Kubernetes mode: where a pod's cgroup v2 directory is on the host.
//
// The kubelet names pod cgroups after the pod UID and the QoS class, below a
// "pods root" that depends on its cgroup driver and --cgroup-root
// (docs: /work/shared/docs/kubernetes.md section 2; kubelet
// pkg/kubelet/cm/cgroup_manager_linux.go, pod_container_manager_linux.go):
//
//   cgroupfs  kubepods/pod<uid>                    Guaranteed (no QoS level)
//             kubepods/burstable/pod<uid>           Burstable
//             kubepods/besteffort/pod<uid>          BestEffort
//   systemd   kubepods.slice/kubepods-pod<uid_>.slice
//             kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
//             kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice
//
// <uid_> is the UID with '-' replaced by '_' (systemd uses '-' for nesting).
// With a cgroup root (kind: /kubelet) the root's name joins every systemd
// name: kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/
// kubelet-kubepods-burstable-pod<uid_>.slice, or kubelet/kubepods/... with cgroupfs.
//
// Paths returned here are relative to the host's cgroup2 mount (no leading
// '/'), so the caller can join them to the mount it sees (hostPath) and also
// show them as the host would. Nothing here creates or changes a cgroup.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace egressd::k8s {

enum class QosClass { guaranteed, burstable, besteffort };

// From pod.status.qosClass ("Guaranteed", "Burstable", "BestEffort"); anything else is an error.
Result<QosClass> parse_qos_class(std::string_view text);
// The lower-case name the kubelet uses in cgroup names: "guaranteed", "burstable", "besteffort".
std::string_view qos_class_name(QosClass qos);

struct PodCgroupQuery {
    // metadata.uid of the pod. For a static pod the kubelet names the cgroup after the pod's config hash, not after
    // the mirror pod's metadata.uid: pass the mirror pod's annotation "kubernetes.io/config.mirror" (the hash) here.
    std::string uid;
    // From status.qosClass. It can be missing early in a pod's life: find_pod_cgroup() then still finds the
    // directory under another QoS level.
    QosClass qos = QosClass::besteffort;
};

// Where the kubelet puts pod cgroups on this host.
struct PodsRoot {
    std::string path;      // relative to the cgroup2 mount, no leading or trailing '/', e.g. "kubepods.slice"
    bool systemd = false;  // systemd driver naming (".slice", "-" nesting, "_" in the UID)
};

// Whether `uid` can be part of a cgroup name: non-empty, at most 128 characters of [A-Za-z0-9_-]. Pod UIDs (UUIDs)
// and static pod config hashes (hex) are; anything else would let a name escape its directory.
bool valid_pod_uid(std::string_view uid);

// Detects the pods root below `cgroup_mount` (the host's cgroup2 mount as the agent sees it). Tried in order:
// kubepods.slice, kubepods, kubelet.slice/kubelet-kubepods.slice (kind, systemd), kubelet/kubepods (kind,
// cgroupfs); a candidate that has a QoS directory (burstable/besteffort) wins over one that merely exists, so a
// stale empty directory of a former driver does not hide the live one.
// `override_path` (the agent setting `cgroup`) wins when not empty: with or without a leading '/', relative to the
// mount; it must be an existing directory below the mount, and names ending in ".slice" mean the systemd driver.
// The error lists what was tried.
Result<PodsRoot> detect_pods_root(const std::filesystem::path& cgroup_mount, const std::string& override_path = "");

// The QoS parent directories (burstable, besteffort), relative to the mount. Guaranteed pods sit in root.path itself.
std::vector<std::string> qos_parent_dirs(const PodsRoot& root);

// The directory the kubelet uses for the pod, relative to the mount; "" when !valid_pod_uid(pod.uid).
std::string pod_cgroup_path(const PodsRoot& root, const PodCgroupQuery& pod);

// The pod's directory relative to the mount, if it exists: first pod_cgroup_path(); then a scan of the pods root
// and its QoS directories for a directory named after the UID in either spelling ('-' or '_'), as the QoS class in
// the query can be missing or stale and runtimes' naming varies (e.g. "kubepods-besteffort-pod<uid_>.slice" in a
// nested kubelet-kubepods-besteffort.slice). nullopt when not there (yet) or the UID is invalid.
std::optional<std::string> find_pod_cgroup(const std::filesystem::path& cgroup_mount, const PodsRoot& root,
                                           const PodCgroupQuery& pod);

// The container cgroups inside a pod directory (absolute or not), sorted: containerd "cri-containerd-<id>.scope",
// CRI-O "crio-<id>.scope" (not its "crio-conmon-<id>.scope"), Docker/cri-dockerd "docker-<id>.scope"; with
// cgroupfs "<64 hex id>" or "crio-<id>". The pause (sandbox) container is among them. For status and diagnostics
// only: the agent attaches at the pod level. Empty when the directory cannot be read.
std::vector<std::string> container_cgroups(const std::filesystem::path& pod_dir);

// The container ID in a container cgroup's name (one of the forms above); nullopt for other names.
std::optional<std::string> container_id_of(std::string_view cgroup_name);

}  // namespace egressd::k8s
