#include "kernel/mounts.h"

#include <sys/mount.h>

#include <fstream>
#include <sstream>

namespace egressd {
namespace fs = std::filesystem;

namespace {

// /proc/mounts escapes space, tab, newline and backslash as octal.
std::string unescape_mount_field(const std::string& field) {
    std::string out;
    for (size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            const std::string octal = field.substr(i + 1, 3);
            if (octal.find_first_not_of("01234567") == std::string::npos) {
                out += static_cast<char>(std::stoi(octal, nullptr, 8));
                i += 3;
                continue;
            }
        }
        out += field[i];
    }
    return out;
}

// The mount that holds `path`: the longest mount target that is a prefix of it.
const MountEntry* mount_holding(const std::vector<MountEntry>& mounts, const fs::path& path) {
    const MountEntry* best = nullptr;
    size_t best_len = 0;
    const std::string p = path.lexically_normal().string();
    for (const auto& m : mounts) {
        const std::string t = m.target.string();
        const bool under =
            p == t || t == "/" || (p.size() > t.size() && p.compare(0, t.size(), t) == 0 && p[t.size()] == '/');
        if (under && t.size() >= best_len) {  // later mounts over the same target win
            best = &m;
            best_len = t.size();
        }
    }
    return best;
}

}  // namespace

Result<std::vector<MountEntry>> read_mounts(const fs::path& file) {
    std::ifstream in(file);
    if (!in) return system_error("reading " + file.string());
    std::vector<MountEntry> mounts;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        MountEntry m;
        std::string target;
        if (!(fields >> m.source >> target >> m.fstype)) continue;
        m.target = unescape_mount_field(target);
        mounts.push_back(std::move(m));
    }
    return mounts;
}

Result<fs::path> find_cgroup2_mount() {
    auto mounts = read_mounts();
    if (!mounts) return mounts.error();
    for (const auto& m : *mounts)
        if (m.fstype == "cgroup2") return m.target;
    return make_error("no cgroup2 filesystem is mounted (see /proc/mounts); egressd needs cgroup v2");
}

Status ensure_bpffs_dir(const fs::path& pin_dir) {
    auto mounts = read_mounts();
    if (!mounts) return mounts.error();
    const MountEntry* holder = mount_holding(*mounts, pin_dir);
    if (!holder || holder->fstype != "bpf") {
        const fs::path bpffs_root = "/sys/fs/bpf";
        const std::string p = pin_dir.lexically_normal().string();
        if (p.rfind(bpffs_root.string() + "/", 0) != 0)
            return make_error("pin directory " + pin_dir.string() + " is not on a bpf filesystem (bpffs)");
        std::error_code ec;
        fs::create_directories(bpffs_root, ec);
        if (::mount("bpf", bpffs_root.c_str(), "bpf", 0, "mode=0700") != 0)
            return system_error("mounting bpffs at " + bpffs_root.string());
    }
    std::error_code ec;
    fs::create_directories(pin_dir, ec);
    if (ec) return Error{ec.value(), "creating pin directory " + pin_dir.string()};
    return {};
}

}  // namespace egressd
