// egressctl hosts: the addresses the kernel learned from the DNS answers the
// workloads received, per identity and policy host name, with the time each
// has left. Read from the pinned maps; the host names from the agent's status
// file (the kernel keeps only their numbers).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "agent/agent_state.h"
#include "cli/common.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

Result<json> read_learned(const AgentConfig& config, const std::string& only_identity) {
    const auto maps = open_pinned_maps(config);
    if (!maps) return maps.error();
    const auto entries = maps->dns_learned.read_all();
    if (!entries) return entries.error();
    const auto identities = maps->read_identity_names();
    if (!identities) return identities.error();
    const auto names = dns_host_names(config);
    const uint64_t now_ns = boot_time_ns();
    json out = json::array();
    for (const auto& [key, entry] : *entries) {
        const auto identity = identities->find(key.identity);
        const std::string who = identity == identities->end() ? fmt::format("#{}", key.identity) : identity->second.str();
        if (!only_identity.empty() && who != only_identity) continue;
        IpAddress address;
        std::copy(std::begin(entry.addr), std::end(entry.addr), address.bytes.begin());
        const auto name = names.find(entry.host);
        const double left = entry.expires_ns > now_ns ? double(entry.expires_ns - now_ns) / 1e9 : 0.0;
        out.push_back({{"identity", who},
                       {"host", name == names.end() ? json(nullptr) : json(name->second)},
                       {"hostNumber", entry.host},
                       {"address", address.str()},
                       {"expiresInSeconds", left},
                       {"expired", left == 0.0},
                       {"learnedSecondsAgo", now_ns > entry.learned_ns ? double(now_ns - entry.learned_ns) / 1e9 : 0.0}});
    }
    std::sort(out.begin(), out.end(), [](const json& a, const json& b) {
        return std::tie(a["identity"], a["hostNumber"], a["address"]) < std::tie(b["identity"], b["hostNumber"], b["address"]);
    });
    return out;
}

void print_learned(const json& learned) {
    std::cout << fmt::format("{:<28} {:<32} {:<40} {:>11} {:>11}\n", "IDENTITY", "HOST", "ADDRESS", "EXPIRES IN",
                             "LEARNED");
    size_t live = 0;
    for (const auto& e : learned) {
        const std::string host = e["host"].is_null() ? fmt::format("#{}", e["hostNumber"].get<uint32_t>())
                                                     : e["host"].get<std::string>();
        const std::string expires =
            e["expired"].get<bool>() ? "expired" : fmt::format("{:.0f}s", e["expiresInSeconds"].get<double>());
        if (!e["expired"].get<bool>()) ++live;
        std::cout << fmt::format("{:<28} {:<32} {:<40} {:>11} {:>10.0f}s\n", e["identity"].get<std::string>(), host,
                                 e["address"].get<std::string>(), expires, e["learnedSecondsAgo"].get<double>());
    }
    std::cout << fmt::format("{} addresses learned from DNS answers, {} live\n", learned.size(), live);
}

}  // namespace

Command add_hosts_command(CLI::App& app) {
    auto as_json = std::make_shared<bool>(false);
    auto identity = std::make_shared<std::string>();
    auto* sub = app.add_subcommand("hosts", "addresses learned from the DNS answers of the workloads, with their TTL");
    sub->add_flag("--json", *as_json, "machine-readable output");
    sub->add_option("--identity", *identity, "only this identity's (NAMESPACE/SERVICEACCOUNT)");
    return {sub, true, [as_json, identity](const AgentConfig& config) -> Exit {
                const auto learned = read_learned(config, *identity);
                if (!learned) return learned.error();
                if (*as_json)
                    print_json(*learned);
                else
                    print_learned(*learned);
                return 0;
            }};
}

}  // namespace egressd::cli
