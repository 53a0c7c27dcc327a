#include "kernel/pins.h"

#include <bpf/bpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "kernel/map_set.h"

namespace egressd {
namespace fs = std::filesystem;

namespace {

std::string prog_name_of(uint32_t prog_id) {
    UniqueFd fd(bpf_prog_get_fd_by_id(prog_id));
    if (!fd.valid()) return "";
    bpf_prog_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) return "";
    return info.name;
}

void describe_link(int fd, LinkInfo& link) {
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return;
    link.link_id = info.id;
    link.prog_id = info.prog_id;
    if (info.type == BPF_LINK_TYPE_CGROUP) {
        link.cgroup_id = info.cgroup.cgroup_id;
        link.attach_type = info.cgroup.attach_type;
    }
    link.prog_name = prog_name_of(info.prog_id);
}

}  // namespace

fs::path links_dir(const fs::path& pin_dir) { return pin_dir / EGRESSD_PIN_LINKS_SUBDIR; }

Result<UniqueFd> open_pinned_object(const fs::path& path, bool read_only) {
    LIBBPF_OPTS(bpf_obj_get_opts, opts, .file_flags = static_cast<__u32>(read_only ? BPF_F_RDONLY : 0));
    UniqueFd fd(bpf_obj_get_opts(path.c_str(), &opts));
    if (!fd.valid()) return system_error("opening pinned " + path.string());
    return fd;
}

bool path_present(const fs::path& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::vector<LinkInfo> read_pinned_links(const fs::path& pin_dir, bool track_flows) {
    return read_pinned_links_in(links_dir(pin_dir), track_flows);
}

std::vector<LinkInfo> read_pinned_links_in(const fs::path& dir, bool track_flows) {
    std::vector<LinkInfo> links;
    for (size_t index = 0; index < kLinkNames.size(); ++index) {
        if (!link_in_use(index, track_flows)) continue;
        const char* hook = kLinkNames[index];
        LinkInfo link;
        link.hook = hook;
        // Links cannot be opened read-only (the kernel refuses BPF_F_RDONLY for them).
        if (auto fd = open_pinned_object(dir / hook, false)) {
            link.pinned = true;
            describe_link(fd->get(), link);
        }
        links.push_back(std::move(link));
    }
    return links;
}

fs::path workload_links_dir(const fs::path& pin_dir) { return links_dir(pin_dir) / "workloads"; }
fs::path workload_links_dir(const fs::path& pin_dir, const std::string& key) {
    return workload_links_dir(pin_dir) / key;
}

std::vector<std::string> pinned_workload_keys(const fs::path& pin_dir) {
    std::vector<std::string> keys;
    std::error_code ec;
    for (fs::directory_iterator it(workload_links_dir(pin_dir), ec), end; !ec && it != end; it.increment(ec)) {
        if (it->is_directory(ec)) keys.push_back(it->path().filename().string());
    }
    std::sort(keys.begin(), keys.end());
    return keys;
}

Status remove_pinned_link(const fs::path& path, std::vector<std::string>& removed) {
    if (auto fd = open_pinned_object(path, false)) {
        // EINVAL: already detached, e.g. its cgroup was removed with the pod.
        if (bpf_link_detach(fd->get()) != 0 && errno != EINVAL) return system_error("detaching link " + path.string());
    }
    if (::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
    removed.push_back(path.string());
    return {};
}

namespace {

bool is_current_link_name(const std::string& name) {
    return std::find(kLinkNames.begin(), kLinkNames.end(), name) != kLinkNames.end();
}

}  // namespace

Status remove_retired_links(const fs::path& dir, std::vector<std::string>& removed) {
    std::error_code ec;
    std::vector<fs::path> retired;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!it->is_directory(ec) && !is_current_link_name(it->path().filename().string()))
            retired.push_back(it->path());
    }
    for (const fs::path& path : retired) {
        if (auto status = remove_pinned_link(path, removed); !status) return status;
    }
    return {};
}

Status remove_pinned_links(const fs::path& dir, std::vector<std::string>& removed) {
    for (const char* hook : kLinkNames) {
        const fs::path path = dir / hook;
        if (!path_present(path)) continue;
        if (auto status = remove_pinned_link(path, removed); !status) return status;
    }
    if (auto status = remove_retired_links(dir, removed); !status) return status;
    // Something else left inside is reported when the pin directory cannot go.
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT && errno != ENOTEMPTY)
        return system_error("removing " + dir.string());
    return {};
}

Status cleanup_pins(const fs::path& pin_dir, std::vector<std::string>& removed) {
    std::error_code ec;
    if (!fs::exists(pin_dir, ec)) return {};
    // Links first: detaching them ends enforcement before the maps go.
    for (const auto& key : pinned_workload_keys(pin_dir)) {
        if (auto status = remove_pinned_links(workload_links_dir(pin_dir, key), removed); !status) return status;
    }
    ::rmdir(workload_links_dir(pin_dir).c_str());
    if (auto status = remove_pinned_links(links_dir(pin_dir), removed); !status) return status;
    std::vector<const char*> names(kMapNames.begin(), kMapNames.end());
    names.insert(names.end(), kRetiredMapNames.begin(), kRetiredMapNames.end());
    for (const char* name : names) {
        const fs::path path = pin_dir / name;
        if (!path_present(path)) continue;
        if (::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
        removed.push_back(path.string());
    }
    if (::rmdir(pin_dir.c_str()) != 0 && errno != ENOENT) {
        if (errno == ENOTEMPTY)
            return make_error("left " + pin_dir.string() + " in place: it holds objects egressd did not pin");
        return system_error("removing " + pin_dir.string());
    }
    return {};
}

}  // namespace egressd
