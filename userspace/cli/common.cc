#include "cli/common.h"

#include <time.h>

#include <fmt/format.h>

#include <charconv>
#include <iostream>

#include "agent/agent_state.h"
#include "common/json_text.h"
#include "core/decision.h"

namespace egressd::cli {

using nlohmann::json;

Result<MapSet> open_pinned_maps(const AgentConfig& config) {
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return maps.error().with_context("nothing pinned (is egressd running?)");
    return maps;
}

namespace {

// The active slot, read by `read` (the whole slot, or its configuration only).
Result<ActiveImage> read_active(const MapSet& maps, Result<MapImage> (MapSet::*read)(uint32_t) const) {
    ActiveImage active;
    auto control = maps.read_control();
    if (!control) return control.error();
    active.control = *control;
    auto image = (maps.*read)(active.control.active_slot & 1);
    if (!image) return image.error();
    active.image = std::move(image).value();
    return active;
}

}  // namespace

Result<ActiveImage> read_active_image(const MapSet& maps) { return read_active(maps, &MapSet::read_slot); }

Result<ActiveImage> read_active_config(const MapSet& maps) { return read_active(maps, &MapSet::read_config); }

void print_json(const json& value) { std::cout << json_text(value, 2) << "\n"; }

std::string address_for_port(std::string address) {
    if (address.find(':') != std::string::npos) return "[" + address + "]";
    return address;
}

std::string workload_name(const json& identity, uint64_t cgroup_id) {
    return identity.is_null() ? fmt::format("cgroup {}", cgroup_id) : identity.get<std::string>();
}

namespace {

uint64_t counter(const std::vector<uint64_t>& counters, int reason, int hook) {
    return counters.empty() ? 0 : counters[reason * EGRESSD_HOOK_MAX + hook];
}

}  // namespace

json counters_json(const std::vector<uint64_t>& counters) {
    json out = json::object();
    for (int reason = 1; reason < EGRESSD_REASON_MAX; ++reason) {
        json by_hook = json::object();
        uint64_t total = 0;
        for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook) {
            const uint64_t n = counter(counters, reason, hook);
            by_hook[std::string(hook_name(static_cast<egressd_hook>(hook)))] = n;
            total += n;
        }
        by_hook["total"] = total;
        out[std::string(reason_name(static_cast<egressd_reason>(reason)))] = by_hook;
    }
    return out;
}

void print_counters(const std::vector<uint64_t>& counters) {
    std::cout << fmt::format("  {:<15}", "decisions");
    for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook)
        std::cout << fmt::format("{:>10}", hook_name(static_cast<egressd_hook>(hook)));
    std::cout << "\n";
    for (int reason = 1; reason < EGRESSD_REASON_MAX; ++reason) {
        std::cout << fmt::format("  {:<15}", reason_name(static_cast<egressd_reason>(reason)));
        for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook)
            std::cout << fmt::format("{:>10}", counter(counters, reason, hook));
        std::cout << "\n";
    }
}

uint64_t boot_time_ns() {
    timespec boot{};
    clock_gettime(CLOCK_BOOTTIME, &boot);
    return static_cast<uint64_t>(boot.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(boot.tv_nsec);
}

std::map<uint32_t, std::string> dns_host_names(const AgentConfig& config) {
    std::map<uint32_t, std::string> out;
    auto status = read_status_file(config.run_dir);
    if (!status || !status->contains("dnsHostNames") || !(*status)["dnsHostNames"].is_object()) return out;
    for (const auto& [number, name] : (*status)["dnsHostNames"].items()) {
        // The agent writes decimal numbers; another key names no host (and std::stoul would throw).
        uint32_t host = 0;
        const char* end = number.data() + number.size();
        if (const auto parsed = std::from_chars(number.data(), end, host); parsed.ec != std::errc() || parsed.ptr != end)
            continue;
        if (name.is_string()) out[host] = name.get<std::string>();
    }
    return out;
}

}  // namespace egressd::cli
