// The egressd maps, typed, and what the agent and egressctl read from and
// write to them. EGRESSD_MAP_TABLE is the one list of maps in C++: the
// MapSet members, opening the pins, the loader's descriptors and clean-up
// all come from it. Names and types come from maps/egressd_abi.h.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "core/identity.h"
#include "core/image.h"
#include "egressd_abi.h"
#include "kernel/bpf_map.h"

namespace egressd {

// X(member, pinned name macro, key type, value type, carry). The ring buffer
// has no key or value; its member is a plain descriptor (see MapSet::events).
// `carry` says how a pinned map passes to a newly loaded build (MapCarry).
#define EGRESSD_MAP_TABLE(X)                                                                                          \
    X(control, EGRESSD_MAP_CONTROL, uint32_t, egressd_control, generation)                                            \
    X(config, EGRESSD_MAP_CONFIG, uint32_t, egressd_config, generation)                                               \
    X(cidrs, EGRESSD_MAP_CIDRS, egressd_cidr_key, egressd_cidr_value, generation)                                     \
    X(ports, EGRESSD_MAP_PORTS, egressd_port_key, egressd_port_value, generation)                                     \
    X(counters, EGRESSD_MAP_COUNTERS, uint32_t, egressd_counter, own)                                                 \
    X(workload_identities, EGRESSD_MAP_WORKLOAD_IDENTITIES, egressd_identity_key, egressd_identity_value, generation) \
    X(identity_names, EGRESSD_MAP_IDENTITY_NAMES, uint32_t, egressd_identity_name, generation)                        \
    X(policy_rules, EGRESSD_MAP_POLICY_RULES, egressd_policy_rule_key, egressd_policy_value, generation)              \
    X(policy_lengths, EGRESSD_MAP_POLICY_LENGTHS, egressd_policy_lengths_key, egressd_policy_lengths, generation)     \
    X(policy_names, EGRESSD_MAP_POLICY_NAMES, egressd_policy_name_key, egressd_policy_name, generation)               \
    X(event_limits, EGRESSD_MAP_EVENT_LIMITS, uint64_t, egressd_event_bucket, numbered)                               \
    X(event_stats, EGRESSD_MAP_EVENT_STATS, uint32_t, uint64_t, own)                                                  \
    X(flows, EGRESSD_MAP_FLOWS, uint64_t, egressd_flow, numbered)                                                     \
    X(rule_traffic, EGRESSD_MAP_RULE_TRAFFIC, egressd_traffic_key, egressd_traffic, numbered)                         \
    X(identity_traffic, EGRESSD_MAP_ID_TRAFFIC, uint32_t, egressd_traffic, numbered)                                  \
    X(dns_scratch, EGRESSD_MAP_DNS_SCRATCH, uint32_t, egressd_dns_scratch, own)                                       \
    X(dns_settings, EGRESSD_MAP_DNS_SETTINGS, uint32_t, egressd_dns_settings, own)                                    \
    X(dns_servers, EGRESSD_MAP_DNS_SERVERS, egressd_dns_server_key, uint32_t, own)                                    \
    X(dns_queries, EGRESSD_MAP_DNS_QUERIES, egressd_dns_query_key, egressd_dns_query, numbered)                       \
    X(dns_hosts, EGRESSD_MAP_DNS_HOSTS, egressd_dns_host_key, egressd_dns_host, generation)                           \
    X(dns_learned, EGRESSD_MAP_DNS_LEARNED, egressd_dns_learned_key, egressd_dns_learned, numbered)                   \
    X(dns_stats, EGRESSD_MAP_DNS_STATS, uint32_t, uint64_t, own)

// Every map's pinned name, the ring buffer's included.
inline constexpr auto kMapNames = std::to_array<const char*>({
#define EGRESSD_MAP_NAME(member, name, key, value, carry) EGRESSD_STRINGIFY(name),
    EGRESSD_MAP_TABLE(EGRESSD_MAP_NAME)
#undef EGRESSD_MAP_NAME
        EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS),
});
// How a pinned map of the same definition passes to a newly loaded build
// (Datapath::load), so that a change to some maps' layout keeps the rest:
enum class MapCarry {
    // The generations in force and the numbers they give identities, policies
    // and host names: all of these maps or none, for a program must never read
    // one generation across maps of two sets.
    generation,
    // State written with those numbers (learned DNS answers, queries awaiting
    // an answer, flows, traffic totals, rate limits per identity, the events
    // not read yet): kept only along with the generation maps.
    numbered,
    // Meaningful alone (counters, settings rewritten at every start).
    own,
};

// How `name` (a pinned name of kMapNames) is carried. The ring buffer's
// events name identities and policies by number. A name of no map of this
// build goes with the generation: what is not known is never kept alone.
constexpr MapCarry map_carry(std::string_view name) {
#define EGRESSD_MAP_CARRY(member, name_macro, key, value, carry) \
    if (name == EGRESSD_STRINGIFY(name_macro)) return MapCarry::carry;
    EGRESSD_MAP_TABLE(EGRESSD_MAP_CARRY)
#undef EGRESSD_MAP_CARRY
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS)) return MapCarry::numbered;
    return MapCarry::generation;
}

// Numbered maps whose numbers reach a verdict: a learned answer allows its
// address under its host's rule, for its identity. When one is not kept, the
// numbers the pinned one holds must be known, or the generation maps are not
// kept either (Datapath::load).
constexpr bool numbers_decide(std::string_view name) {
    return name == EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED) || name == EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_QUERIES);
}

// Maps earlier versions pinned and this one no longer has: unpinned once the
// new set is pinned, and by --cleanup.
inline constexpr auto kRetiredMapNames =
    std::to_array<const char*>({"flow_marks_v1", "flows_v1", "rule_traffic_v1", "id_traffic_v1", "dns_scratch_v1"});

struct Traffic {
    uint64_t connections = 0, bytes_sent = 0, bytes_received = 0;
    bool operator==(const Traffic&) const = default;
};

// The highest identity, policy and host numbers that numbered maps
// (MapCarry::numbered) hold, expired entries included; 0: none. The event
// ring is not read: an event not read yet may be named anew.
struct NumbersInUse {
    uint32_t identity = 0, policy = 0, host = 0;
    void note_identity(uint32_t n) { identity = std::max(identity, n); }
    void note_policy(uint32_t reason, uint32_t n) {  // a rule number is a policy's only on row 7
        if (reason == EGRESSD_REASON_POLICY) policy = std::max(policy, n);
    }
    void note_host(uint32_t n) { host = std::max(host, n); }
    void add(const NumbersInUse& other) {
        note_identity(other.identity);
        note_policy(EGRESSD_REASON_POLICY, other.policy);
        note_host(other.host);
    }
    bool operator==(const NumbersInUse&) const = default;
};

// Open, typed descriptors of the egressd maps, from a loaded object or from
// the pins. Reads and writes whole slots (maps/egressd_abi.h).
class MapSet {
public:
    // Opens the pinned maps of `pin_dir`; fails naming the first one missing
    // or whose key or value size differs from the ABI header.
    static Result<MapSet> open_pinned(const std::filesystem::path& pin_dir, bool read_only);
    // Takes the descriptor of each map from `fd_of(name)`, a Result<UniqueFd>.
    template <typename FdOf>
    static Result<MapSet> adopt(FdOf fd_of);

    Result<egressd_control> read_control() const;
    // One slot's configuration: generation, flags, sidecar UID and mode (the
    // other image fields stay empty). A narrow read for who needs one flag.
    Result<MapImage> read_config(uint32_t slot) const;
    // Config, CIDRs, ports, policy entries and names of one slot. The
    // image's flags say whether the slot holds a valid generation.
    Result<MapImage> read_slot(uint32_t slot) const;
    // The policy names of one slot, by number.
    Result<std::map<uint32_t, PolicyRef>> read_policy_names(uint32_t slot) const;
    // Decisions per counter index (reason * EGRESSD_HOOK_MAX + hook), summed over CPUs.
    Result<std::vector<uint64_t>> read_counters() const;
    // Events sent, suppressed by the rate limit and lost to a full ring
    // (enum egressd_event_stat), summed over CPUs.
    Result<std::array<uint64_t, EGRESSD_STAT_MAX>> read_event_stats() const;
    Result<std::array<uint64_t, EGRESSD_DNS_STAT_MAX>> read_dns_stats() const;

    // Open egress TCP connections (socket cookie -> flow), and what closed
    // ones carried per (reason, rule) and per identity, summed over CPUs.
    // Established connections only (see flows_v2 in the ABI).
    Result<std::vector<std::pair<uint64_t, egressd_flow>>> read_flows() const;
    Result<std::map<std::pair<uint32_t, uint32_t>, Traffic>> read_rule_traffic() const;
    Result<std::map<uint32_t, Traffic>> read_identity_traffic() const;
    // What the numbered maps hold numbers of: learned DNS answers, queries
    // awaiting an answer, flows, rate limits and traffic totals.
    Result<NumbersInUse> read_numbers_in_use() const;
    // The same for one pinned map this build did not keep (another capacity),
    // by its name; an error for a map it cannot read.
    static Status add_numbers_of_pinned(const std::string& name, UniqueFd fd, NumbersInUse& in_use);

    // Not per generation: registered workload cgroups and identity names.
    Result<std::map<uint64_t, uint32_t>> read_workload_identities() const;
    Result<std::map<uint32_t, IdentityName>> read_identity_names() const;
    Status write_workload_identities(const std::map<uint64_t, uint32_t>& from,
                                     const std::map<uint64_t, uint32_t>& to) const;
    Status write_identity_names(const std::map<uint32_t, IdentityName>& from,
                                const std::map<uint32_t, IdentityName>& to) const;

    // Turns slot `slot`, holding `from`, into `to`. Only for the inactive slot.
    Status write_slot(uint32_t slot, const MapImage& from, const MapImage& to) const {
        return write_diff(slot, diff_images(from, to), to);
    }
    // Writes a diff computed before (diff_images(what the slot holds, to)).
    Status write_diff(uint32_t slot, const ImageDiff& diff, const MapImage& to) const;
    // dns_settings_v1 and the trusted resolvers (dns_servers_v1), made exactly `servers`.
    Status write_dns_learning(const egressd_dns_settings& settings,
                              const std::set<std::array<uint8_t, 16>>& servers) const;
    Status set_active_slot(uint32_t slot) const;

#define EGRESSD_MAP_MEMBER(member, name, key, value, carry) BpfMap<key, value> member;
    EGRESSD_MAP_TABLE(EGRESSD_MAP_MEMBER)
#undef EGRESSD_MAP_MEMBER
    UniqueFd events;  // the ring buffer of decision events (EventReader reads it)
};

template <typename FdOf>
Result<MapSet> MapSet::adopt(FdOf fd_of) {
    MapSet set;
#define EGRESSD_MAP_ADOPT(member, name, key, value, carry)                             \
    {                                                                                  \
        auto fd = fd_of(EGRESSD_STRINGIFY(name));                                      \
        if (!fd) return fd.error();                                                    \
        auto map = BpfMap<key, value>::adopt(std::move(*fd), EGRESSD_STRINGIFY(name)); \
        if (!map) return map.error();                                                  \
        set.member = std::move(*map);                                                  \
    }
    EGRESSD_MAP_TABLE(EGRESSD_MAP_ADOPT)
#undef EGRESSD_MAP_ADOPT
    auto events = fd_of(EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS));
    if (!events) return events.error();
    set.events = std::move(*events);
    return set;
}

}  // namespace egressd
