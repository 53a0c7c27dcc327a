#include "kernel/map_set.h"

#include <bpf/bpf.h>

#include <algorithm>
#include <set>

#include "core/map_codec.h"
#include "kernel/abi_check.h"
#include "kernel/pins.h"

namespace egressd {

namespace {

// Sums each key's per-CPU traffic.
template <typename Key, typename Out, typename MakeKey>
Status sum_traffic(const BpfMap<Key, egressd_traffic>& map, Out& out, MakeKey make_key) {
    auto entries = map.read_all_per_cpu();
    if (!entries) return entries.error();
    for (const auto& [key, per_cpu] : *entries) {
        Traffic& t = out[make_key(key)];
        for (const auto& c : per_cpu) {
            t.connections += c.connections;
            t.bytes_sent += c.bytes_sent;
            t.bytes_received += c.bytes_received;
        }
    }
    return {};
}

// Decodes the entries of one slot of `map` into `out`; `decode` returns a Result.
template <typename Key, typename Value, typename Decode, typename Out>
Status append_slot(const BpfMap<Key, Value>& map, uint32_t slot, Decode decode, std::vector<Out>& out) {
    auto entries = map.read_all();
    if (!entries) return entries.error();
    for (const auto& [key, value] : *entries) {
        if (key.slot != slot) continue;
        Result<Out> decoded = decode(key, value);
        if (!decoded) return decoded.error().with_context("decoding " + map.name());
        out.push_back(std::move(*decoded));
    }
    return {};
}

// The changes that turn the entries `from` into `to`: the unslotted maps
// change entry by entry.
template <typename K, typename V, typename Key, typename Value, typename EncodeKey, typename EncodeValue>
Status sync_entries(const BpfMap<Key, Value>& map, const std::map<K, V>& from, const std::map<K, V>& to,
                    EncodeKey encode_key, EncodeValue encode_value) {
    std::vector<Key> deletes;
    std::vector<std::pair<Key, Value>> upserts;
    for (const auto& [k, v] : to) {
        auto old = from.find(k);
        if (old == from.end() || !(old->second == v)) upserts.emplace_back(encode_key(k), encode_value(v));
    }
    for (const auto& [k, v] : from)
        if (!to.contains(k)) deletes.push_back(encode_key(k));
    return map.apply(deletes, upserts);
}

// Orders policy rules by identity alone, against an identity.
struct IdentityOrder {
    bool operator()(const PolicyRule& rule, uint32_t identity) const { return rule.identity < identity; }
    bool operator()(uint32_t identity, const PolicyRule& rule) const { return identity < rule.identity; }
};

// Keys and entries of one map's part of a diff.
template <typename Key, typename Value>
struct MapChanges {
    std::vector<Key> deletes;
    std::vector<std::pair<Key, Value>> upserts;
    Status apply_to(const BpfMap<Key, Value>& map) const { return map.apply(deletes, upserts); }
};

}  // namespace

Result<MapSet> MapSet::open_pinned(const std::filesystem::path& pin_dir, bool read_only) {
    return adopt([&](const char* name) { return open_pinned_object(pin_dir / name, read_only); });
}

Result<egressd_control> MapSet::read_control() const {
    auto control_value = control.lookup(0);
    if (!control_value) return control_value.error();
    if (!*control_value) return make_error("reading " + control.name() + ": no entry 0");
    return **control_value;
}

Result<MapImage> MapSet::read_config(uint32_t slot) const {
    auto value = config.lookup(slot);
    if (!value) return value.error();
    if (!*value) return make_error("reading " + config.name() + ": no slot " + std::to_string(slot));
    MapImage image;
    decode_config(**value, image);
    return image;
}

Result<std::map<uint32_t, PolicyRef>> MapSet::read_policy_names(uint32_t slot) const {
    auto entries = policy_names.read_all();
    if (!entries) return entries.error();
    std::map<uint32_t, PolicyRef> names;
    for (const auto& [key, value] : *entries)
        if (key.slot == slot) names[key.policy] = decode_policy_name(value);
    return names;
}

Result<MapImage> MapSet::read_slot(uint32_t slot) const {
    auto image = read_config(slot);
    if (!image) return image;
    const auto always = [](auto decoded) { return Result<decltype(decoded)>(std::move(decoded)); };
    if (auto read = append_slot(cidrs, slot, decode_cidr, image->cidrs); !read) return read.error();
    if (auto read = append_slot(
            ports, slot, [&](const auto& k, const auto& v) { return always(decode_port(k, v)); }, image->ports);
        !read)
        return read.error();
    // policy_lengths_v1 follows from the rules: nothing to read there.
    if (auto read = append_slot(policy_rules, slot, decode_policy_rule, image->policy_rules.edit()); !read) return read.error();
    if (auto read = append_slot(
            dns_hosts, slot, [&](const auto& k, const auto& v) { return always(decode_dns_host(k, v)); },
            image->dns_hosts);
        !read)
        return read.error();
    auto names = read_policy_names(slot);
    if (!names) return names.error();
    image->policies = std::move(*names);
    std::sort(image->dns_hosts.begin(), image->dns_hosts.end());
    std::sort(image->cidrs.begin(), image->cidrs.end());
    std::sort(image->ports.begin(), image->ports.end());
    std::sort(image->policy_rules.edit().begin(), image->policy_rules.edit().end());
    return image;
}

Result<std::vector<uint64_t>> MapSet::read_counters() const {
    std::vector<uint64_t> totals(EGRESSD_COUNTER_SLOTS, 0);
    for (uint32_t i = 0; i < EGRESSD_COUNTER_SLOTS; ++i) {
        auto per_cpu = counters.lookup_per_cpu(i);
        if (!per_cpu) return per_cpu.error();
        for (const auto& c : *per_cpu) totals[i] += c.decisions;
    }
    return totals;
}

Result<std::array<uint64_t, EGRESSD_STAT_MAX>> MapSet::read_event_stats() const {
    std::array<uint64_t, EGRESSD_STAT_MAX> totals{};
    for (uint32_t i = 0; i < EGRESSD_STAT_MAX; ++i) {
        auto per_cpu = event_stats.lookup_per_cpu(i);
        if (!per_cpu) return per_cpu.error();
        for (uint64_t v : *per_cpu) totals[i] += v;
    }
    return totals;
}

Result<std::array<uint64_t, EGRESSD_DNS_STAT_MAX>> MapSet::read_dns_stats() const {
    std::array<uint64_t, EGRESSD_DNS_STAT_MAX> totals{};
    for (uint32_t i = 0; i < EGRESSD_DNS_STAT_MAX; ++i) {
        auto per_cpu = dns_stats.lookup_per_cpu(i);
        if (!per_cpu) return per_cpu.error();
        for (uint64_t v : *per_cpu) totals[i] += v;
    }
    return totals;
}

Result<std::vector<std::pair<uint64_t, egressd_flow>>> MapSet::read_flows() const {
    auto entries = flows.read_all();
    if (!entries) return entries.error();
    // Connecting sockets (no SYN-ACK yet) are not connections yet.
    std::erase_if(*entries, [](const auto& entry) { return entry.second.started_ns == 0; });
    return std::move(*entries);
}

Result<std::map<std::pair<uint32_t, uint32_t>, Traffic>> MapSet::read_rule_traffic() const {
    std::map<std::pair<uint32_t, uint32_t>, Traffic> out;
    auto read = sum_traffic(rule_traffic, out, [](const egressd_traffic_key& k) {
        return std::pair{k.reason, k.rule};
    });
    if (!read) return read.error();
    return out;
}

Result<std::map<uint32_t, Traffic>> MapSet::read_identity_traffic() const {
    std::map<uint32_t, Traffic> out;
    auto read = sum_traffic(identity_traffic, out, [](uint32_t k) { return k; });
    if (!read) return read.error();
    return out;
}

namespace {

Status add_numbers(const BpfMap<egressd_dns_learned_key, egressd_dns_learned>& map, NumbersInUse& in_use) {
    auto entries = map.read_all();
    if (!entries) return entries.error();
    for (const auto& [key, entry] : *entries) {
        in_use.note_identity(key.identity);
        in_use.note_host(entry.host);
    }
    return {};
}

Status add_numbers(const BpfMap<egressd_dns_query_key, egressd_dns_query>& map, NumbersInUse& in_use) {
    auto entries = map.read_all();
    if (!entries) return entries.error();
    for (const auto& [key, query] : *entries) in_use.note_identity(query.identity);
    return {};
}

Status add_numbers(const BpfMap<uint64_t, egressd_flow>& map, NumbersInUse& in_use) {
    auto entries = map.read_all();
    if (!entries) return entries.error();
    for (const auto& [cookie, flow] : *entries) {
        in_use.note_identity(flow.identity);
        in_use.note_policy(flow.reason, flow.rule);
    }
    return {};
}

Status add_numbers(const BpfMap<uint64_t, egressd_event_bucket>& map, NumbersInUse& in_use) {
    auto entries = map.read_all();
    if (!entries) return entries.error();
    for (const auto& [source, bucket] : *entries) {
        if (!(source >> 63)) in_use.note_identity(static_cast<uint32_t>(source));  // else a cgroup id
    }
    return {};
}

Status add_numbers(const BpfMap<egressd_traffic_key, egressd_traffic>& map, NumbersInUse& in_use) {
    auto entries = map.read_all_per_cpu();
    if (!entries) return entries.error();
    for (const auto& [key, values] : *entries) in_use.note_policy(key.reason, key.rule);
    return {};
}

Status add_numbers(const BpfMap<uint32_t, egressd_traffic>& map, NumbersInUse& in_use) {
    auto entries = map.read_all_per_cpu();
    if (!entries) return entries.error();
    for (const auto& [identity, values] : *entries) in_use.note_identity(identity);
    return {};
}

}  // namespace

Result<NumbersInUse> MapSet::read_numbers_in_use() const {
    NumbersInUse in_use;
    for (const Status& read : {add_numbers(dns_learned, in_use), add_numbers(dns_queries, in_use),
                               add_numbers(flows, in_use), add_numbers(event_limits, in_use),
                               add_numbers(rule_traffic, in_use), add_numbers(identity_traffic, in_use)}) {
        if (!read) return read.error();
    }
    return in_use;
}

namespace {

template <typename Key, typename Value>
Status add_pinned_numbers(const std::string& name, UniqueFd fd, NumbersInUse& in_use) {
    auto map = BpfMap<Key, Value>::adopt(std::move(fd), name);  // key and value sizes checked
    if (!map) return map.error();
    return add_numbers(*map, in_use);
}

}  // namespace

Status MapSet::add_numbers_of_pinned(const std::string& name, UniqueFd fd, NumbersInUse& in_use) {
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED))
        return add_pinned_numbers<egressd_dns_learned_key, egressd_dns_learned>(name, std::move(fd), in_use);
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_QUERIES))
        return add_pinned_numbers<egressd_dns_query_key, egressd_dns_query>(name, std::move(fd), in_use);
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_FLOWS))
        return add_pinned_numbers<uint64_t, egressd_flow>(name, std::move(fd), in_use);
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_EVENT_LIMITS))
        return add_pinned_numbers<uint64_t, egressd_event_bucket>(name, std::move(fd), in_use);
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_RULE_TRAFFIC))
        return add_pinned_numbers<egressd_traffic_key, egressd_traffic>(name, std::move(fd), in_use);
    if (name == EGRESSD_STRINGIFY(EGRESSD_MAP_ID_TRAFFIC))
        return add_pinned_numbers<uint32_t, egressd_traffic>(name, std::move(fd), in_use);
    return make_error(name + " holds no numbers this build can read");
}

Result<std::map<uint64_t, uint32_t>> MapSet::read_workload_identities() const {
    auto entries = workload_identities.read_all();
    if (!entries) return entries.error();
    std::map<uint64_t, uint32_t> out;
    for (const auto& [key, value] : *entries) out[key.cgroup_id] = value.identity;
    return out;
}

Result<std::map<uint32_t, IdentityName>> MapSet::read_identity_names() const {
    auto entries = identity_names.read_all();
    if (!entries) return entries.error();
    std::map<uint32_t, IdentityName> out;
    for (const auto& [key, value] : *entries) out[key] = decode_identity_name(value);
    return out;
}

Status MapSet::write_workload_identities(const std::map<uint64_t, uint32_t>& from,
                                         const std::map<uint64_t, uint32_t>& to) const {
    return sync_entries(
        workload_identities, from, to, [](uint64_t id) { return egressd_identity_key{id}; },
        [](uint32_t identity) {
            return egressd_identity_value{identity, 0};
        });
}

Status MapSet::write_identity_names(const std::map<uint32_t, IdentityName>& from,
                                    const std::map<uint32_t, IdentityName>& to) const {
    return sync_entries(
        identity_names, from, to, [](uint32_t id) { return id; }, encode_identity_name);
}

Status MapSet::write_diff(uint32_t slot, const ImageDiff& diff, const MapImage& to) const {
    const auto s = static_cast<uint8_t>(slot);
    MapChanges<egressd_cidr_key, egressd_cidr_value> cidr_changes;
    for (const auto& rule : diff.cidr_deletes)
        cidr_changes.deletes.push_back(encode_cidr_key(s, rule.table, rule.cidr));
    for (const auto& rule : diff.cidr_upserts)
        cidr_changes.upserts.emplace_back(encode_cidr_key(s, rule.table, rule.cidr), encode_cidr_value(rule));
    MapChanges<egressd_port_key, egressd_port_value> port_changes;
    for (const auto& rule : diff.port_deletes) port_changes.deletes.push_back(encode_port_key(s, rule));
    for (const auto& rule : diff.port_upserts)
        port_changes.upserts.emplace_back(encode_port_key(s, rule), encode_port_value(rule));
    MapChanges<egressd_policy_rule_key, egressd_policy_value> policy_changes;
    // Only rules of other prefixes than single addresses are in an
    // identity's lengths: single addresses coming and going change none, and
    // an identity that never had other prefixes has no entry to delete (at
    // 100k single addresses over 10k identities, 10k deletes that each
    // stopped a batch).
    std::set<uint32_t> lengths_changed;
    for (const auto& rule : diff.policy_deletes) {
        policy_changes.deletes.push_back(encode_policy_rule_key(s, rule));
        if (!is_host_rule(rule)) lengths_changed.insert(rule.identity);
    }
    for (const auto& rule : diff.policy_upserts) {
        policy_changes.upserts.emplace_back(encode_policy_rule_key(s, rule), encode_policy_value(rule));
        if (!is_host_rule(rule)) lengths_changed.insert(rule.identity);
    }
    // The prefix lengths of each identity whose prefixes may have changed,
    // from what the slot will hold (`to`'s rules are sorted by identity first).
    MapChanges<egressd_policy_lengths_key, egressd_policy_lengths> length_changes;
    for (uint32_t identity : lengths_changed) {
        const auto range = std::equal_range(to.policy_rules.begin(), to.policy_rules.end(), identity, IdentityOrder{});
        const egressd_policy_lengths_key key{s, {}, identity};
        if (auto lengths = encode_policy_lengths({range.first, range.second}))
            length_changes.upserts.emplace_back(key, *lengths);
        else
            length_changes.deletes.push_back(key);
    }
    MapChanges<egressd_dns_host_key, egressd_dns_host> dns_host_changes;
    for (const auto& rule : diff.dns_host_deletes) dns_host_changes.deletes.push_back(encode_dns_host_key(s, rule));
    for (const auto& rule : diff.dns_host_upserts)
        dns_host_changes.upserts.emplace_back(encode_dns_host_key(s, rule), encode_dns_host(rule));
    MapChanges<egressd_policy_name_key, egressd_policy_name> name_changes;
    for (uint32_t index : diff.policy_name_deletes) name_changes.deletes.push_back({s, {}, index});
    for (uint32_t index : diff.policy_name_upserts)
        name_changes.upserts.emplace_back(egressd_policy_name_key{s, {}, index},
                                          encode_policy_name(to.policies.at(index)));

    // Deletes before writes in each map, so that a full map makes room first.
    if (auto applied = cidr_changes.apply_to(cidrs); !applied) return applied;
    if (auto applied = port_changes.apply_to(ports); !applied) return applied;
    // Lengths after the rules: a probe for a new length finds its entries.
    if (auto applied = policy_changes.apply_to(policy_rules); !applied) return applied;
    if (auto applied = length_changes.apply_to(policy_lengths); !applied) return applied;
    if (auto applied = name_changes.apply_to(policy_names); !applied) return applied;
    if (auto applied = dns_host_changes.apply_to(dns_hosts); !applied) return applied;
    return config.update(slot, encode_config(to));
}

Status MapSet::write_dns_learning(const egressd_dns_settings& settings,
                                  const std::set<std::array<uint8_t, 16>>& servers) const {
    if (auto written = dns_settings.update(0, settings); !written) return written;
    auto present = dns_servers.read_all();
    if (!present) return present.error();
    MapChanges<egressd_dns_server_key, uint32_t> changes;
    for (const auto& [key, value] : *present) {
        std::array<uint8_t, 16> bytes;
        std::copy(std::begin(key.addr), std::end(key.addr), bytes.begin());
        if (!servers.contains(bytes)) changes.deletes.push_back(key);
    }
    for (const auto& bytes : servers) {
        egressd_dns_server_key key{};
        std::copy(bytes.begin(), bytes.end(), key.addr);
        changes.upserts.emplace_back(key, 1u);
    }
    return changes.apply_to(dns_servers);
}

Status MapSet::set_active_slot(uint32_t slot) const {
    if (auto set = control.update(0, egressd_control{slot, EGRESSD_ABI_VERSION}); !set)
        return set.error().with_context("switching to slot " + std::to_string(slot));
    return {};
}

}  // namespace egressd
