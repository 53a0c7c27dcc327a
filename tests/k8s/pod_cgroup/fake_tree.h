// A fake cgroup2 mount for the pod cgroup tests: plain directories in a fresh temporary directory, removed when the
// test ends (also when a check fails and throws). Never a real cgroup.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "k8s/pod_cgroup.h"

namespace egressd::test {

class FakeCgroupTree {
public:
    // In the temporary directory ($TMPDIR), or in `base` (e.g. a tmpfs for tests that make many directories).
    explicit FakeCgroupTree(const std::filesystem::path& base = std::filesystem::temp_directory_path()) {
        std::string pattern = (base / "egressd-podcg-XXXXXX").string();
        REQUIRE_MESSAGE(::mkdtemp(pattern.data()) != nullptr, "mkdtemp ", pattern);
        mount_ = pattern;
        // However TMPDIR is set, the tests never write to the cgroup filesystem.
        REQUIRE(mount_.string().rfind("/sys", 0) != 0);
    }
    ~FakeCgroupTree() {
        std::error_code ec;
        std::filesystem::remove_all(mount_, ec);
    }
    FakeCgroupTree(const FakeCgroupTree&) = delete;
    FakeCgroupTree& operator=(const FakeCgroupTree&) = delete;

    const std::filesystem::path& mount() const { return mount_; }

    // Makes `rel` and its parents, each with a cgroup.procs file as in a real cgroup (lookups must skip files).
    void mkdirs(const std::string& rel) const {
        std::filesystem::path dir = mount_;
        for (const auto& part : std::filesystem::path(rel)) {
            dir /= part;
            if (std::filesystem::is_directory(dir)) continue;
            std::filesystem::create_directory(dir);
            std::ofstream(dir / "cgroup.procs").flush();
        }
    }
    void remove(const std::string& rel) const { std::filesystem::remove_all(mount_ / rel); }
    void touch(const std::string& rel) const { std::ofstream(mount_ / rel).flush(); }

private:
    std::filesystem::path mount_;
};

// A pods root with both QoS directories, as the kubelet makes them when it starts.
inline void make_qos_dirs(const FakeCgroupTree& tree, const k8s::PodsRoot& root) {
    for (const std::string& dir : k8s::qos_parent_dirs(root)) tree.mkdirs(dir);
}

}  // namespace egressd::test
