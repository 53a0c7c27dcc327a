#include "k8s/pod_cgroup.h"

#include <fmt/format.h>

#include <algorithm>
#include <system_error>

namespace egressd::k8s {
namespace fs = std::filesystem;

namespace {

// The candidates of detect_pods_root(), in order: the systemd driver is the kubeadm default since v1.22.
struct RootCandidate {
    const char* path;
    bool systemd;
};
constexpr RootCandidate kRootCandidates[] = {
    {"kubepods.slice", true},
    {"kubepods", false},
    {"kubelet.slice/kubelet-kubepods.slice", true},
    {"kubelet/kubepods", false},
};

constexpr QosClass kQosParents[] = {QosClass::burstable, QosClass::besteffort};

// No symlinks exist in cgroupfs; not following them keeps a lookup inside the tree it was given.
bool is_dir(const fs::path& path) {
    std::error_code ec;
    return fs::is_directory(fs::symlink_status(path, ec));
}

std::vector<std::string> child_dirs(const fs::path& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code type_ec;
        if (it->is_directory(type_ec) && !it->is_symlink(type_ec)) names.push_back(it->path().filename().string());
    }
    return names;
}

std::string systemd_uid(std::string_view uid) {
    std::string escaped(uid);
    std::replace(escaped.begin(), escaped.end(), '-', '_');
    return escaped;
}

// systemd names repeat every ancestor: the pods root "kubelet-kubepods.slice" gives "kubelet-kubepods-burstable.slice".
std::string slice_prefix(const PodsRoot& root) {
    std::string name = fs::path(root.path).filename().string();
    if (name.ends_with(".slice")) name.resize(name.size() - 6);
    return name;
}

std::string qos_dir_name(const PodsRoot& root, QosClass qos) {
    if (!root.systemd) return std::string(qos_class_name(qos));
    return fmt::format("{}-{}.slice", slice_prefix(root), qos_class_name(qos));
}

// The directory holding pods of a QoS class, relative to the mount.
std::string qos_parent(const PodsRoot& root, QosClass qos) {
    if (qos == QosClass::guaranteed) return root.path;
    return root.path + "/" + qos_dir_name(root, qos);
}

std::string pod_dir_name(const PodsRoot& root, QosClass qos, std::string_view uid) {
    if (!root.systemd) return fmt::format("pod{}", uid);
    std::string name = slice_prefix(root);
    if (qos != QosClass::guaranteed) name += fmt::format("-{}", qos_class_name(qos));
    return fmt::format("{}-pod{}.slice", name, systemd_uid(uid));
}

// Whether a directory name is the pod's: "pod<uid>" or "...-pod<uid>" with an optional ".slice", the UID spelled with
// '-' or '_'. The separator before "pod" keeps "xpod<uid>" out.
bool names_pod(std::string_view name, std::string_view uid) {
    if (name.ends_with(".slice")) name.remove_suffix(6);
    for (const std::string& spelling : {std::string(uid), systemd_uid(uid)}) {
        const std::string token = "pod" + spelling;
        if (name == token) return true;
        if (name.size() > token.size() && name.ends_with(token) && name[name.size() - token.size() - 1] == '-')
            return true;
    }
    return false;
}

bool has_qos_dir(const fs::path& mount, const PodsRoot& root) {
    for (const std::string& dir : qos_parent_dirs(root))
        if (is_dir(mount / dir)) return true;
    return false;
}

Result<PodsRoot> override_root(const fs::path& mount, const std::string& override_path) {
    // Relative to the mount whether or not it starts with '/'.
    fs::path rel = fs::path(override_path).relative_path().lexically_normal();
    if (!rel.empty() && !rel.has_filename()) rel = rel.parent_path();  // a trailing '/'
    if (rel.empty() || rel == "." || *rel.begin() == "..")
        return make_error(
            fmt::format("cgroup \"{}\": not a directory below the cgroup2 mount {}", override_path, mount.string()));
    if (!is_dir(mount / rel))
        return make_error(fmt::format("cgroup \"{}\": {} is not a directory", override_path, (mount / rel).string()));
    const std::string path = rel.generic_string();
    return PodsRoot{path, path.ends_with(".slice")};
}

std::optional<std::string> scan_for_pod(const fs::path& mount, const PodsRoot& root, std::string_view uid) {
    std::vector<std::string> parents{root.path};
    for (const std::string& dir : qos_parent_dirs(root)) parents.push_back(dir);
    for (const std::string& parent : parents)
        for (const std::string& name : child_dirs(mount / parent))
            if (names_pod(name, uid)) return parent + "/" + name;
    return std::nullopt;
}

bool is_hex(std::string_view text) {
    return std::all_of(text.begin(), text.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool is_alnum(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

bool is_alnum(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char c) { return is_alnum(c); });
}

}  // namespace

Result<QosClass> parse_qos_class(std::string_view text) {
    if (text == "Guaranteed") return QosClass::guaranteed;
    if (text == "Burstable") return QosClass::burstable;
    if (text == "BestEffort") return QosClass::besteffort;
    return make_error(fmt::format("unknown QoS class \"{}\" (expected Guaranteed, Burstable or BestEffort)", text));
}

std::string_view qos_class_name(QosClass qos) {
    switch (qos) {
        case QosClass::guaranteed: return "guaranteed";
        case QosClass::burstable: return "burstable";
        case QosClass::besteffort: return "besteffort";
    }
    return "besteffort";
}

bool valid_pod_uid(std::string_view uid) {
    if (uid.empty() || uid.size() > 128) return false;
    return std::all_of(uid.begin(), uid.end(), [](char c) { return is_alnum(c) || c == '-' || c == '_'; });
}

Result<PodsRoot> detect_pods_root(const fs::path& cgroup_mount, const std::string& override_path) {
    if (!is_dir(cgroup_mount))
        return make_error(fmt::format("cgroup2 mount {} is not a directory", cgroup_mount.string()));
    if (!override_path.empty()) return override_root(cgroup_mount, override_path);

    std::optional<PodsRoot> existing;
    std::string tried;
    for (const RootCandidate& candidate : kRootCandidates) {
        const PodsRoot root{candidate.path, candidate.systemd};
        tried += (tried.empty() ? "" : ", ") + root.path;
        if (!is_dir(cgroup_mount / root.path)) continue;
        if (has_qos_dir(cgroup_mount, root)) return root;
        if (!existing) existing = root;
    }
    if (existing) return *existing;
    return make_error(
        fmt::format("no pods cgroup of the kubelet below {} (tried {}); set `cgroup` to the kubelet's "
                    "pods cgroup",
                    cgroup_mount.string(), tried));
}

std::vector<std::string> qos_parent_dirs(const PodsRoot& root) {
    std::vector<std::string> dirs;
    for (QosClass qos : kQosParents) dirs.push_back(qos_parent(root, qos));
    return dirs;
}

std::string pod_cgroup_path(const PodsRoot& root, const PodCgroupQuery& pod) {
    if (!valid_pod_uid(pod.uid)) return "";
    return qos_parent(root, pod.qos) + "/" + pod_dir_name(root, pod.qos, pod.uid);
}

std::optional<std::string> find_pod_cgroup(const fs::path& cgroup_mount, const PodsRoot& root,
                                           const PodCgroupQuery& pod) {
    if (!valid_pod_uid(pod.uid)) return std::nullopt;
    const std::string expected = pod_cgroup_path(root, pod);
    if (is_dir(cgroup_mount / expected)) return expected;
    return scan_for_pod(cgroup_mount, root, pod.uid);
}

std::optional<std::string> container_id_of(std::string_view name) {
    constexpr std::string_view kScopePrefixes[] = {"cri-containerd-", "crio-", "docker-"};
    if (name.starts_with("crio-conmon-")) return std::nullopt;  // CRI-O's monitor, not a container
    const bool scope = name.ends_with(".scope");
    if (scope) name.remove_suffix(6);
    for (std::string_view prefix : kScopePrefixes) {
        if (!name.starts_with(prefix)) continue;
        // cgroupfs has no .scope and only CRI-O prefixes its directories.
        if (!scope && prefix != "crio-") return std::nullopt;
        name.remove_prefix(prefix.size());
        if (name.empty() || !is_alnum(name)) return std::nullopt;
        return std::string(name);
    }
    // A bare cgroupfs container directory: the 64-hex ID.
    if (!scope && name.size() == 64 && is_hex(name)) return std::string(name);
    return std::nullopt;
}

std::vector<std::string> container_cgroups(const fs::path& pod_dir) {
    std::vector<std::string> names;
    for (std::string& name : child_dirs(pod_dir))
        if (container_id_of(name)) names.push_back(std::move(name));
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace egressd::k8s
