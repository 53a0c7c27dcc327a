// egressctl flows: the open egress TCP connections the kernel tracks, with
// who opened them, where to, why they were allowed, their age and bytes. The
// bytes are read from the sockets themselves, now (socket iterators in each
// enforced network namespace): nothing in the kernel counts them while they
// flow.
#include <time.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "cli/common.h"
#include "core/decision.h"
#include "kernel/cgroup.h"
#include "kernel/mounts.h"
#include "kernel/revoker.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

// The counters of the enforced processes' TCP sockets, by cookie; nullopt
// (with why on stderr) when they cannot be read here.
std::optional<std::map<uint64_t, SocketBytes>> read_live_bytes(const AgentConfig& config) {
    auto fail = [](const std::string& why) -> std::optional<std::map<uint64_t, SocketBytes>> {
        std::cerr << "egressctl: bytes not shown: " << why << "\n";
        return std::nullopt;
    };
    auto mount = find_cgroup2_mount();
    if (!mount) return fail(mount.error().describe());
    auto path = resolve_cgroup_path(config.cgroup, *mount);
    if (!path) return fail(path.error().describe());
    auto cgroup = open_existing_cgroup(*path);
    if (!cgroup) return fail(cgroup.error().describe());
    auto iterators = Revoker::load();
    if (!iterators) return fail(iterators.error().describe());
    Revoker::OpenBytes open = (*iterators)->open_bytes({*cgroup}, *mount);
    for (const std::string& problem : open.problems) std::cerr << "egressctl: " << problem << "\n";
    return std::move(open.by_cookie);
}

// One JSON object per flow, as `flows --json` prints them.
Result<json> read_flows(const AgentConfig& config) {
    const auto maps = open_pinned_maps(config);
    if (!maps) return maps.error();
    const auto flows = maps->read_flows();
    if (!flows) return flows.error();
    const auto names = maps->read_identity_names();
    if (!names) return names.error();
    const auto control = maps->read_control();
    if (!control) return control.error();
    const auto policies = maps->read_policy_names(control->active_slot & 1);
    if (!policies) return policies.error();
    const uint64_t now_ns = boot_time_ns();
    const auto live = flows->empty() ? std::map<uint64_t, SocketBytes>{} : read_live_bytes(config);

    json out = json::array();
    for (const auto& [cookie, f] : *flows) {
        IpAddress dst;
        std::copy(std::begin(f.addr), std::end(f.addr), dst.bytes.begin());
        const auto reason = reason_from(f.reason);
        json identity = nullptr, policy = nullptr, sent = nullptr, received = nullptr;
        if (live) {
            // Not listed: closed or reset since the map was read.
            const auto it = live->find(cookie);
            if (it == live->end()) continue;
            sent = it->second.sent;
            received = it->second.received;
        }
        if (auto it = names->find(f.identity); f.identity && it != names->end()) identity = it->second.str();
        if (reason == EGRESSD_REASON_POLICY && policies->contains(f.rule)) policy = policies->at(f.rule).str();
        out.push_back({{"cookie", cookie},
                       {"identity", identity},
                       {"cgroupId", f.cgroup_id},
                       {"destination", dst.str()},
                       {"port", f.port},
                       {"reason", std::string(reason_name(reason))},
                       {"policy", policy},
                       {"ageSeconds", now_ns > f.started_ns ? static_cast<double>(now_ns - f.started_ns) / 1e9 : 0.0},
                       {"bytesSent", sent},
                       {"bytesReceived", received}});
    }
    return out;
}

void print_flows(const json& flows) {
    std::cout << fmt::format("{:<22} {:<40} {:<14} {:>9} {:>12} {:>12}\n", "IDENTITY", "DESTINATION", "REASON", "AGE",
                             "SENT", "RECEIVED");
    for (const auto& f : flows) {
        const std::string who = workload_name(f["identity"], f["cgroupId"].get<uint64_t>());
        const std::string dst = address_for_port(f["destination"].get<std::string>());
        const std::string why =
            f["policy"].is_null() ? f["reason"].get<std::string>() : "policy " + f["policy"].get<std::string>();
        auto bytes = [](const json& n) { return n.is_null() ? std::string("-") : std::to_string(n.get<uint64_t>()); };
        std::cout << fmt::format("{:<22} {:<40} {:<14} {:>8.1f}s {:>12} {:>12}\n", who,
                                 dst + ":" + std::to_string(f["port"].get<int>()), why, f["ageSeconds"].get<double>(),
                                 bytes(f["bytesSent"]), bytes(f["bytesReceived"]));
    }
    std::cout << fmt::format("{} open egress connections\n", flows.size());
}

Exit flows_command(const AgentConfig& config, bool as_json) {
    const auto flows = read_flows(config);
    if (!flows) return flows.error();
    if (as_json)
        print_json(*flows);
    else
        print_flows(*flows);
    return 0;
}

}  // namespace

Command add_flows_command(CLI::App& app) {
    auto as_json = std::make_shared<bool>(false);
    auto* sub = app.add_subcommand("flows", "open egress TCP connections: identity, destination, age, bytes");
    sub->add_flag("--json", *as_json, "machine-readable output");
    return {sub, true, [as_json](const AgentConfig& config) { return flows_command(config, *as_json); }};
}

}  // namespace egressd::cli
