#include "core/image.h"

#include "core/dns_hosts.h"
#include "core/policy_rule_cache.h"
#include "core/policy_rules.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <iterator>
#include <set>
#include <tuple>

#include <fmt/format.h>

namespace egressd {

namespace {

constexpr std::string_view kCidrsMap = EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS);
constexpr std::string_view kPortsMap = EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS);
constexpr std::string_view kPoliciesMap = EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES);
constexpr std::string_view kPolicyNamesMap = EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES);
constexpr std::string_view kDnsHostsMap = EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_HOSTS);

// The identity of an entry in its map; the rule index is its value.
auto map_key(const CidrRule& rule) { return std::tie(rule.table, rule.cidr); }
auto map_key(const PortRule& rule) { return std::tie(rule.table, rule.port); }
uint32_t map_value(const CidrRule& rule) { return rule.rule; }
uint32_t map_value(const PortRule& rule) { return rule.rule; }
uint32_t map_value(const PolicyRule& rule) { return rule.policy; }
auto map_key(const DnsHostRule& rule) { return std::tie(rule.identity, rule.host); }
uint32_t map_value(const DnsHostRule& rule) { return rule.number; }

// The order of `a < b`, fast for policy rules: 100k of them are sorted on
// every change, and the defaulted comparison calls memcmp for each address.
template <typename Rule>
bool rule_less(const Rule& a, const Rule& b) {
    return a < b;
}
template <typename Rule>
bool key_less(const Rule& a, const Rule& b) {
    return map_key(a) < map_key(b);
}

template <>
bool key_less(const PolicyRule& a, const PolicyRule& b) {
    return policy_key_order(a, b) < 0;
}
template <>
bool rule_less(const PolicyRule& a, const PolicyRule& b) {
    const auto order = policy_key_order(a, b);
    return order != 0 ? order < 0 : a.policy < b.policy;
}

// a == b; for policy rules without a call to memcmp per address, as the
// defaulted comparison makes: a change's diff compares 100k of them.
template <typename Rule>
bool same_rule(const Rule& a, const Rule& b) {
    return a == b;
}
template <>
bool same_rule(const PolicyRule& a, const PolicyRule& b) {
    return same_policy_rule(a, b);
}

// Sorted by key, one entry per key: the first occurrence in its list (the
// lowest rule index) wins, as the header promises.
template <typename Rule>
void sort_unique(std::vector<Rule>& rules) {
    // (key, rule): the first occurrence leads its key
    std::sort(rules.begin(), rules.end(), [](const Rule& a, const Rule& b) { return rule_less(a, b); });
    auto same_key = [](const Rule& a, const Rule& b) { return !key_less(a, b) && !key_less(b, a); };
    rules.erase(std::unique(rules.begin(), rules.end(), same_key), rules.end());
}

void add_cidrs(std::vector<CidrRule>& rules, uint8_t table, const std::vector<Cidr>& list) {
    for (uint32_t i = 0; i < list.size(); ++i) rules.push_back(CidrRule{table, list[i], i});
}

uint32_t config_flags(const AgentConfig& agent, const MeshConfig& mesh) {
    uint32_t flags = EGRESSD_CFG_VALID;
    if (mesh.enable_egress) flags |= EGRESSD_CFG_ENABLE_EGRESS;
    if (mesh.enable_egress_policy) flags |= EGRESSD_CFG_EGRESS_POLICY;
    // FSM gates Egress policies on the feature flag; OSM applies them whenever egress is off.
    const bool policy_active = agent.egress_policy_semantics == PolicySemantics::fsm
                                   ? !mesh.enable_egress && mesh.enable_egress_policy
                                   : !mesh.enable_egress;
    if (policy_active) flags |= EGRESSD_CFG_POLICY_ACTIVE;
    if (!mesh.outbound_ip_range_inclusion.empty()) flags |= EGRESSD_CFG_HAS_INCLUSION;
    if (agent.sidecar_uid) flags |= EGRESSD_CFG_SIDECAR_UID;
    if (agent.report_policy_allows) flags |= EGRESSD_CFG_EVENTS_POLICY;
    if (agent.report_passthrough) flags |= EGRESSD_CFG_EVENTS_PASSTHROUGH;
    if (agent.allow_raw_sockets) flags |= EGRESSD_CFG_RAW_SOCKETS;
    return flags;
}

Status check_capacity(std::string_view map, size_t needed, uint32_t capacity, std::string_view setting) {
    if (needed <= capacity) return {};
    return make_error(
        fmt::format("{} needs {} entries per generation, capacity is {} ({})", map, needed, capacity, setting));
}

// Deletes what `from` has and `to` lacks; upserts what `to` adds or changes.
// A slot read back from the kernel comes in map order: unsorted input is
// sorted in a copy; images built here are sorted already and are not copied.
template <typename Rule>
void diff_rules(const std::vector<Rule>& from_in, const std::vector<Rule>& to_in, std::vector<Rule>& deletes,
                std::vector<Rule>& upserts) {
    if (from_in == to_in) return;  // a MeshConfig toggle leaves 100k policy entries as they are
    auto less = [](const Rule& a, const Rule& b) { return rule_less(a, b); };
    std::vector<Rule> from_sorted, to_sorted;
    auto sorted = [&](const std::vector<Rule>& rules, std::vector<Rule>& copy) -> const std::vector<Rule>& {
        // Policy rules are sorted wherever an image is made (build_image,
        // MapSet::read_slot): 100k of them are not checked on every change.
        if constexpr (std::is_same_v<Rule, PolicyRule>) {
            assert(std::is_sorted(rules.begin(), rules.end(), less));
            return rules;
        }
        if (std::is_sorted(rules.begin(), rules.end(), less)) return rules;
        copy = rules;
        std::sort(copy.begin(), copy.end(), less);
        return copy;
    };
    const std::vector<Rule>& from = sorted(from_in, from_sorted);
    const std::vector<Rule>& to = sorted(to_in, to_sorted);
    auto old_rule = from.begin();
    for (auto next = to.begin(); next != to.end(); ++next) {
        // Runs of equal rules (all but a change's few) cost one comparison each.
        if (old_rule != from.end() && same_rule(*old_rule, *next)) {
            ++old_rule;
            continue;
        }
        const Rule& rule = *next;
        for (; old_rule != from.end() && key_less(*old_rule, rule); ++old_rule) deletes.push_back(*old_rule);
        if (old_rule != from.end() && !key_less(rule, *old_rule)) {
            if (map_value(*old_rule) != map_value(rule)) upserts.push_back(rule);
            ++old_rule;
        } else {
            upserts.push_back(rule);
        }
    }
    deletes.insert(deletes.end(), old_rule, from.end());
}

// Rules shared by both images (a MeshConfig change) are equal without a look.
template <typename Rule>
void diff_rules(const SharedVector<Rule>& from, const SharedVector<Rule>& to, std::vector<Rule>& deletes,
                std::vector<Rule>& upserts) {
    if (from.shares_with(to)) return;
    diff_rules(from.vector(), to.vector(), deletes, upserts);
}

// "<name> +a -b": what `after` adds and `before` loses, as sets (order and
// duplicates change no decision); "" when nothing does.
template <typename T, typename Format>
std::string list_change(std::string_view name, const std::vector<T>& before, const std::vector<T>& after,
                        Format format) {
    const std::set<T> before_set(before.begin(), before.end());
    const std::set<T> after_set(after.begin(), after.end());
    std::string change;
    for (const T& value : after_set)
        if (!before_set.contains(value)) change += " +" + format(value);
    for (const T& value : before_set)
        if (!after_set.contains(value)) change += " -" + format(value);
    return change.empty() ? change : std::string(name) + change;
}

void add_policy_rules(MapImage& image, const PolicyInputs& in) {
    if (!in.policies) return;
    if (in.cache) return in.cache->build(image, in);
    // Rules carry the policy's position first, so that sorting keeps the first
    // policy in (namespace, name) order on a shared key; then its number.
    std::vector<uint32_t> numbers;
    std::vector<PolicyRule> rules;
    for (uint32_t index = 0; index < in.policies->size(); ++index) {
        const EgressPolicy& policy = (*in.policies)[index];
        const PolicyRef ref{policy.namespace_, policy.name};
        numbers.push_back(in.policy_numbers->number_for(ref));
        image.policies[numbers.back()] = ref;
        append_rules(rules, policy, host_addresses_of(policy, in), host_numbers_of(policy, in), *in.identities,
                     index);
    }
    // One entry per key; sorting by (key, position) puts the first policy first.
    sort_unique(rules);
    for (PolicyRule& rule : rules) rule.policy = numbers[rule.policy];
    image.policy_rules = std::move(rules);
}

}  // namespace

Result<MapImage> build_image(const AgentConfig& agent, const MeshConfig& mesh, uint64_t generation,
                             const PolicyInputs& policy) {
    MapImage image;
    image.generation = generation;
    image.flags = config_flags(agent, mesh);
    image.sidecar_uid = agent.sidecar_uid.value_or(0);
    image.cgroup_level = policy.cgroup_level;
    image.mode = agent.audit ? EGRESSD_MODE_AUDIT : EGRESSD_MODE_ENFORCE;

    add_cidrs(image.cidrs, EGRESSD_TABLE_EXCLUDE, mesh.outbound_ip_range_exclusion);
    add_cidrs(image.cidrs, EGRESSD_TABLE_INCLUDE, mesh.outbound_ip_range_inclusion);
    add_cidrs(image.cidrs, EGRESSD_TABLE_MESH, agent.mesh_cidrs);
    sort_unique(image.cidrs);
    for (uint32_t i = 0; i < mesh.outbound_port_exclusion.size(); ++i)
        image.ports.push_back(PortRule{EGRESSD_PORTS_EXCLUDE, mesh.outbound_port_exclusion[i], i});
    sort_unique(image.ports);

    const Status cidrs_fit = check_capacity(kCidrsMap, image.cidrs.size(), agent.capacities.cidrs, "capacities.cidrs");
    if (!cidrs_fit) return cidrs_fit.error();
    const Status ports_fit = check_capacity(kPortsMap, image.ports.size(), agent.capacities.ports, "capacities.ports");
    if (!ports_fit) return ports_fit.error();
    // Rows 3a, 3b and 5 look only where there is something to find.
    auto has_cidrs = [&](uint8_t table) {
        return std::ranges::any_of(image.cidrs, [table](const CidrRule& rule) { return rule.table == table; });
    };
    if (has_cidrs(EGRESSD_TABLE_EXCLUDE)) image.flags |= EGRESSD_CFG_HAS_EXCLUDED_CIDRS;
    if (has_cidrs(EGRESSD_TABLE_MESH)) image.flags |= EGRESSD_CFG_HAS_MESH_CIDRS;
    if (std::ranges::any_of(image.ports, [](const PortRule& rule) { return rule.table == EGRESSD_PORTS_EXCLUDE; }))
        image.flags |= EGRESSD_CFG_HAS_EXCLUDED_PORTS;
    add_policy_rules(image, policy);
    add_dns_hosts(image, policy);
    // The rules host names add are single addresses: what the cache knows of
    // its rules holds for the image's (a toggle makes no pass over 100k).
    const bool prefixes =
        policy.cache && policy.policies
            ? policy.cache->rules_have_prefixes()
            : std::ranges::any_of(image.policy_rules, [](const PolicyRule& rule) { return !is_host_rule(rule); });
    if (prefixes) image.flags |= EGRESSD_CFG_POLICY_PREFIXES;
    // Without policy host names nothing is learned: row 7 need not look.
    if (!image.dns_hosts.empty()) image.flags |= EGRESSD_CFG_DNS_HOSTS;
    const Status rules_fit = check_capacity(kPoliciesMap, image.policy_rules.size(), agent.capacities.policy_rules,
                                            "capacities.policyRules");
    if (!rules_fit) return rules_fit.error();
    const Status names_fit =
        check_capacity(kPolicyNamesMap, image.policies.size(), agent.capacities.policies, "capacities.policies");
    if (!names_fit) return names_fit.error();
    const Status hosts_fit = check_capacity(kDnsHostsMap, image.dns_hosts.size(), agent.capacities.policy_rules,
                                            "capacities.policyRules");
    if (!hosts_fit) return hosts_fit.error();
    return image;
}

void diff_policy_rules(const std::vector<PolicyRule>& from, const std::vector<PolicyRule>& to,
                       std::vector<PolicyRule>& deletes, std::vector<PolicyRule>& upserts) {
    diff_rules(from, to, deletes, upserts);
}

ImageDiff diff_images(const MapImage& from, const MapImage& to, const RulesDelta* delta) {
    ImageDiff diff;
    diff_rules(from.cidrs, to.cidrs, diff.cidr_deletes, diff.cidr_upserts);
    diff_rules(from.ports, to.ports, diff.port_deletes, diff.port_upserts);
    if (delta && delta->from.shares_with(from.policy_rules) && delta->to.shares_with(to.policy_rules)) {
        diff.policy_deletes = delta->deletes;
        diff.policy_upserts = delta->upserts;
    } else {
        diff_rules(from.policy_rules, to.policy_rules, diff.policy_deletes, diff.policy_upserts);
    }
    diff_rules(from.dns_hosts, to.dns_hosts, diff.dns_host_deletes, diff.dns_host_upserts);
    // Both sorted by number: one walk, not a look-up per policy.
    auto old = from.policies.begin();
    for (const auto& [number, ref] : to.policies) {
        for (; old != from.policies.end() && old->first < number; ++old) diff.policy_name_deletes.push_back(old->first);
        const bool named = old != from.policies.end() && old->first == number;
        if (!named || old->second != ref) diff.policy_name_upserts.push_back(number);
        if (named) ++old;
    }
    for (; old != from.policies.end(); ++old) diff.policy_name_deletes.push_back(old->first);
    return diff;
}

std::string describe_changes(const MeshConfig& before, const MeshConfig& after) {
    std::vector<std::string> changes;
    auto flag_change = [&](std::string_view name, bool was, bool is) {
        if (was != is) changes.push_back(fmt::format("{} {} -> {}", name, was, is));
    };
    auto add = [&](std::string change) {
        if (!change.empty()) changes.push_back(std::move(change));
    };
    auto cidr_text = [](const Cidr& cidr) { return cidr.str(); };
    auto port_text = [](uint16_t port) { return std::to_string(port); };

    flag_change("enableEgress", before.enable_egress, after.enable_egress);
    flag_change("enableEgressPolicy", before.enable_egress_policy, after.enable_egress_policy);
    add(list_change("outboundIPRangeExclusionList", before.outbound_ip_range_exclusion,
                    after.outbound_ip_range_exclusion, cidr_text));
    add(list_change("outboundIPRangeInclusionList", before.outbound_ip_range_inclusion,
                    after.outbound_ip_range_inclusion, cidr_text));
    add(list_change("outboundPortExclusionList", before.outbound_port_exclusion, after.outbound_port_exclusion,
                    port_text));
    if (changes.empty()) return "no effective change";
    return fmt::format("{}", fmt::join(changes, "; "));
}

}  // namespace egressd
