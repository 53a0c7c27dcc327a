// egressctl dump: the pinned maps decoded (the active slot's image, the
// identities, the counters), and the bpftool commands that show them raw.
#include <netinet/in.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <memory>

#include "cli/common.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

// What dump shows, read once.
struct DumpView {
    std::string dir;  // the pin directory
    egressd_control control{};
    uint32_t slot = 0;  // the active one
    MapImage image;
    std::vector<uint64_t> counters;
    std::map<uint32_t, IdentityName> names;
    std::map<uint64_t, uint32_t> workloads;
    std::vector<std::string> bpftool;  // commands showing the same
};

std::vector<std::string> bpftool_commands(const std::string& dir) {
    return {
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONTROL),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONFIG),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_COUNTERS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_LENGTHS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES),
        "bpftool link show pinned " + dir + "/links/connect4",
        "bpftool cgroup show <cgroup path>",
    };
}

Result<DumpView> read_dump(const AgentConfig& config) {
    DumpView view;
    const auto maps = open_pinned_maps(config);
    if (!maps) return maps.error();
    auto active = read_active_image(*maps);
    if (!active) return active.error();
    view.control = active->control;
    view.slot = view.control.active_slot & 1;
    view.image = std::move(active->image);
    auto counters = maps->read_counters();
    if (!counters) return counters.error();
    view.counters = std::move(counters).value();
    auto names = maps->read_identity_names();
    if (!names) return names.error();
    view.names = std::move(names).value();
    auto workloads = maps->read_workload_identities();
    if (!workloads) return workloads.error();
    view.workloads = std::move(workloads).value();
    view.dir = config.bpffs.string();
    view.bpftool = bpftool_commands(view.dir);
    return view;
}

std::string flag_names(uint32_t flags) {
    static const std::pair<uint32_t, const char*> names[] = {
        {EGRESSD_CFG_VALID, "valid"},
        {EGRESSD_CFG_ENABLE_EGRESS, "enable-egress"},
        {EGRESSD_CFG_EGRESS_POLICY, "egress-policy"},
        {EGRESSD_CFG_POLICY_ACTIVE, "policy-active"},
        {EGRESSD_CFG_HAS_INCLUSION, "has-inclusion"},
        {EGRESSD_CFG_SIDECAR_UID, "sidecar-uid"},
        {EGRESSD_CFG_EVENTS_POLICY, "events-policy"},
        {EGRESSD_CFG_EVENTS_PASSTHROUGH, "events-passthrough"},
        {EGRESSD_CFG_POLICY_PREFIXES, "policy-prefixes"},
        {EGRESSD_CFG_DNS_HOSTS, "dns-hosts"},
        {EGRESSD_CFG_RAW_SOCKETS, "raw-sockets"},
        {EGRESSD_CFG_HAS_EXCLUDED_CIDRS, "has-excluded-cidrs"},
        {EGRESSD_CFG_HAS_EXCLUDED_PORTS, "has-excluded-ports"},
        {EGRESSD_CFG_HAS_MESH_CIDRS, "has-mesh-cidrs"},
    };
    std::string out;
    for (const auto& [bit, name] : names)
        if (flags & bit) out += (out.empty() ? "" : "|") + std::string(name);
    return out.empty() ? "none" : out;
}

const char* table_name(uint8_t table) {
    switch (table) {
        case EGRESSD_TABLE_EXCLUDE: return "exclude";
        case EGRESSD_TABLE_INCLUDE: return "include";
        case EGRESSD_TABLE_MESH: return "mesh";
        default: return "unknown";
    }
}

const char* protocol_name(uint8_t proto) { return proto == IPPROTO_TCP ? "tcp" : "udp"; }

json dump_json(const DumpView& v) {
    const MapImage& image = v.image;
    json out = {{"pinDir", v.dir},
                {"activeSlot", v.slot},
                {"abiVersion", v.control.abi_version},
                {"config",
                 {{"generation", image.generation},
                  {"flags", flag_names(image.flags)},
                  {"sidecarUID", image.sidecar_uid},
                  {"mode", image.mode}}},
                {"cidrs", json::array()},
                {"ports", json::array()},
                {"counters", counters_json(v.counters)},
                {"bpftool", v.bpftool}};
    for (const auto& r : image.cidrs)
        out["cidrs"].push_back({{"table", table_name(r.table)}, {"cidr", r.cidr.str()}, {"rule", r.rule}});
    for (const auto& p : image.ports)
        out["ports"].push_back({{"table", "exclude"}, {"port", p.port}, {"rule", p.rule}});
    out["policies"] = json::array();
    for (const auto& [n, p] : image.policies)
        out["policies"].push_back({{"number", n}, {"namespace", p.namespace_}, {"name", p.name}});
    out["policyRules"] = json::array();
    for (const auto& r : image.policy_rules)
        out["policyRules"].push_back({{"identity", r.identity},
                                      {"protocol", protocol_name(r.proto)},
                                      {"port", r.port},
                                      {"cidr", r.cidr.str()},
                                      {"policy", r.policy}});
    out["identities"] = json::object();
    for (const auto& [n, name] : v.names) out["identities"][std::to_string(n)] = name.str();
    out["workloads"] = json::object();
    for (const auto& [cg, n] : v.workloads) out["workloads"][std::to_string(cg)] = n;
    return out;
}

// The active slot's image: its configuration, CIDRs, ports, policies and rules.
void print_image(const DumpView& v) {
    const MapImage& image = v.image;
    const std::string& dir = v.dir;
    std::cout << fmt::format("{}/{}[{}]: generation {}, flags {}, sidecar uid {}, mode {}\n", dir,
                             EGRESSD_STRINGIFY(EGRESSD_MAP_CONFIG), v.slot,
                             image.generation, flag_names(image.flags), image.sidecar_uid,
                             image.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce");
    std::cout << fmt::format("{}/{} (slot {}): {} entries\n", dir, EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), v.slot,
                             image.cidrs.size());
    for (const auto& r : image.cidrs)
        std::cout << fmt::format("  {:<8} {:<45} rule {}\n", table_name(r.table), r.cidr.str(), r.rule);
    std::cout << fmt::format("{}/ports_v1 (slot {}): {} entries\n", dir, v.slot, image.ports.size());
    for (const auto& p : image.ports) std::cout << fmt::format("  exclude  port {:<5} rule {}\n", p.port, p.rule);
    std::cout << fmt::format("{}/policy_names_v1 (slot {}): {} policies\n", dir, v.slot, image.policies.size());
    for (const auto& [n, p] : image.policies) std::cout << fmt::format("  {:<5} {}\n", n, p.str());
    const size_t rules = image.policy_rules.size();
    const auto host_rules = std::ranges::count_if(image.policy_rules, is_host_rule);
    std::cout << fmt::format("{}/{} (slot {}): {} entries ({} prefixes, {} addresses)\n", dir,
                             EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), v.slot, rules, rules - host_rules, host_rules);
    constexpr size_t kShown = 50;
    for (size_t i = 0; i < rules && i < kShown; ++i) {
        const auto& r = image.policy_rules[i];
        std::cout << fmt::format("  identity {:<5} {}/{:<5} {:<45} policy {}\n", r.identity, protocol_name(r.proto),
                                 r.port, r.cidr.str(), r.policy);
    }
    if (rules > kShown) std::cout << fmt::format("  ... {} more (egressctl dump --json lists all)\n", rules - kShown);
}

void print_dump(const DumpView& v) {
    const std::string& dir = v.dir;
    std::cout << fmt::format("{}/control_v1: active slot {} (written by ABI {})\n", dir, v.slot, v.control.abi_version);
    print_image(v);
    std::cout << fmt::format("{}/id_names_v1: {} identities\n", dir, v.names.size());
    for (const auto& [n, name] : v.names) std::cout << fmt::format("  {:<5} {}\n", n, name.str());
    std::cout << fmt::format("{}/identities_v1: {} workload cgroups\n", dir, v.workloads.size());
    for (const auto& [cg, n] : v.workloads) std::cout << fmt::format("  cgroup id {:<10} identity {}\n", cg, n);
    std::cout << dir << "/counters_v2:\n";
    print_counters(v.counters);
    std::cout << "\nThe same with bpftool (field names come from the maps' BTF):\n";
    for (const auto& line : v.bpftool) std::cout << "  " << line << "\n";
}

Exit dump_command(const AgentConfig& config, bool as_json) {
    const auto view = read_dump(config);
    if (!view) return view.error();
    if (as_json)
        print_json(dump_json(*view));
    else
        print_dump(*view);
    return 0;
}

}  // namespace

Command add_dump_command(CLI::App& app) {
    auto as_json = std::make_shared<bool>(false);
    auto* sub = app.add_subcommand("dump", "the pinned maps decoded, and the bpftool commands that show them");
    sub->add_flag("--json", *as_json, "machine-readable output");
    return {sub, true, [as_json](const AgentConfig& config) { return dump_command(config, *as_json); }};
}

}  // namespace egressd::cli
