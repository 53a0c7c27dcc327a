// The pin directory: opening pinned objects, the pinned links (what egressctl
// status shows), and removing everything egressd pinned (--cleanup).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "egressd_abi.h"

namespace egressd {

// The programs egressd attaches to the cgroup, as named by their pinned links:
// the decision hooks (in egressd_hook order: the four sock_addr hooks, socket
// creation, the packets going out), then flow accounting, then the DNS
// answers coming in.
inline constexpr std::array<const char*, EGRESSD_HOOK_MAX + 2> kLinkNames = {
    "connect4", "connect6", "sendmsg4", "sendmsg6", "sock_create", "packet_out", "sockops", "dns_in"};
inline constexpr size_t kSockopsLink = 6;
static_assert(std::string_view(kLinkNames[kSockopsLink]) == "sockops");

// Whether an agent attaches kLinkNames[hook]: with `flows: off` the sockops
// program has nothing to do, and not attaching it saves the kernel its five
// callbacks per TCP connection.
constexpr bool link_in_use(size_t hook, bool track_flows) { return track_flows || hook != kSockopsLink; }

std::filesystem::path links_dir(const std::filesystem::path& pin_dir);
// Kubernetes mode: one directory of links per enforced pod, named by its key
// (the pod's UID), under links/workloads/.
std::filesystem::path workload_links_dir(const std::filesystem::path& pin_dir);
std::filesystem::path workload_links_dir(const std::filesystem::path& pin_dir, const std::string& key);
// The keys that have a directory of pinned links.
std::vector<std::string> pinned_workload_keys(const std::filesystem::path& pin_dir);
// Detaches and unpins one pinned link.
Status remove_pinned_link(const std::filesystem::path& path, std::vector<std::string>& removed);
// Detaches and unpins the links in `dir` (one per hook) and removes it.
Status remove_pinned_links(const std::filesystem::path& dir, std::vector<std::string>& removed);
// Detaches and unpins the links in `dir` that no hook of this build is named
// after: an older build's, once this build's links are in place.
Status remove_retired_links(const std::filesystem::path& dir, std::vector<std::string>& removed);
// A pinned map, link or program; read-only where the kernel allows it (maps).
Result<UniqueFd> open_pinned_object(const std::filesystem::path& path, bool read_only);
bool path_present(const std::filesystem::path& path);  // without following a symlink

struct LinkInfo {
    std::string hook;
    bool pinned = false;
    uint32_t link_id = 0;
    uint32_t prog_id = 0;
    uint64_t cgroup_id = 0;
    uint32_t attach_type = 0;
    std::string prog_name;
};

// What is pinned under pin_dir/links (or a workload's links directory, see
// read_pinned_links_in) of the links an agent with `track_flows` attaches,
// for status.
std::vector<LinkInfo> read_pinned_links(const std::filesystem::path& pin_dir, bool track_flows = true);
std::vector<LinkInfo> read_pinned_links_in(const std::filesystem::path& dir, bool track_flows = true);

// Detaches every link and removes every pin under pin_dir (and the directory).
// Reports each removed object in `removed`.
Status cleanup_pins(const std::filesystem::path& pin_dir, std::vector<std::string>& removed);

}  // namespace egressd
