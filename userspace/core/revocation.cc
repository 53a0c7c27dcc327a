#include "core/revocation.h"

#include "core/policy_rules.h"

#include <netinet/in.h>

#include <algorithm>
#include <set>
#include <utility>

namespace egressd {

namespace {

// Every element of `before` is in `after`, compared by `key`, in any order
// (a slot read back from the kernel comes in map order).
template <typename T, typename Key>
bool kept_all(const std::vector<T>& before, const std::vector<T>& after, Key key) {
    if (before.empty()) return true;
    std::vector<decltype(key(before.front()))> a, b;
    for (const T& x : before) a.push_back(key(x));
    for (const T& x : after) b.push_back(key(x));
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    return std::includes(b.begin(), b.end(), a.begin(), a.end());
}

// Policy rules: the same storage keeps all; otherwise they are sorted (built
// images and slots read back are) and compared by their map keys' words.
// A change's rules differ in a stretch of the middle: the equal head and
// tail cost one comparison per rule, the rest a look by key.
bool kept_all(const SharedVector<PolicyRule>& before, const SharedVector<PolicyRule>& after) {
    if (before.shares_with(after)) return true;
    auto [from, to] = std::mismatch(before.begin(), before.end(), after.begin(), after.end(), same_policy_rule);
    auto from_end = before.end(), to_end = after.end();
    for (; from_end != from && to_end != to && same_policy_rule(*(from_end - 1), *(to_end - 1)); --from_end, --to_end) {
    }
    return std::includes(to, to_end, from, from_end,
                         [](const PolicyRule& a, const PolicyRule& b) { return policy_key_order(a, b) < 0; });
}

bool withdrawn(uint32_t before, uint32_t after, uint32_t flag) { return (before & flag) && !(after & flag); }

}  // namespace

std::optional<uint32_t> derived_identity(uint64_t cgroup, const CgroupAncestry& ancestry,
                                         const std::map<uint64_t, uint32_t>& workloads, uint32_t enforced_level) {
    if (!ancestry.parent.count(cgroup)) return std::nullopt;
    if (auto own = workloads.find(cgroup); own != workloads.end()) return own->second;
    for (auto at = ancestry.parent.find(cgroup); at != ancestry.parent.end() && at->second != 0;
         at = ancestry.parent.find(at->second)) {
        const uint32_t level = ancestry.level.at(at->second);
        if (level <= enforced_level) break;
        if (level > enforced_level + EGRESSD_MAX_WORKLOAD_DEPTH) continue;
        if (auto registered = workloads.find(at->second); registered != workloads.end()) return registered->second;
    }
    return 0u;
}

std::vector<Revocation> sockets_to_revoke(const std::vector<OpenSocket>& sockets, const RevocationContext& context) {
    std::vector<Revocation> out;
    if (context.image && context.image->mode == EGRESSD_MODE_AUDIT) return out;
    std::set<std::pair<uint8_t, uint16_t>> listening;
    for (const OpenSocket& s : sockets)
        if (s.listening) listening.insert({s.proto, s.local_port});
    for (const OpenSocket& s : sockets) {
        if (s.listening || listening.count({s.proto, s.local_port})) continue;
        const std::optional<uint32_t> identity = context.identity_of(s.cgroup_id);
        if (!identity) continue;  // not an enforced workload's
        Query query{s.peer, s.port, decision_proto(s.proto), s.uid, *identity};
        Decision decision = decide(context.image, query);
        if (decision.verdict != EGRESSD_VERDICT_ALLOW && *identity != 0 && context.learned_host) {
            query.learned_host = context.learned_host(*identity, s.peer);
            if (query.learned_host) decision = decide(context.image, query);
        }
        if (decision.verdict != EGRESSD_VERDICT_ALLOW) out.push_back({s, *identity, decision});
    }
    return out;
}

bool may_tighten(const MapImage& before, const MapImage& after) {
    if (!(before.flags & EGRESSD_CFG_VALID)) return true;  // nothing was decided yet: all is new
    if (before.mode == EGRESSD_MODE_AUDIT && after.mode != EGRESSD_MODE_AUDIT) return true;
    if (withdrawn(before.flags, after.flags, EGRESSD_CFG_ENABLE_EGRESS) ||
        withdrawn(before.flags, after.flags, EGRESSD_CFG_RAW_SOCKETS))
        return true;
    // Policies that stop applying tighten, unless passthrough takes their place.
    if (withdrawn(before.flags, after.flags, EGRESSD_CFG_POLICY_ACTIVE) && !(after.flags & EGRESSD_CFG_ENABLE_EGRESS))
        return true;
    if ((before.flags & EGRESSD_CFG_SIDECAR_UID) &&
        (withdrawn(before.flags, after.flags, EGRESSD_CFG_SIDECAR_UID) || before.sidecar_uid != after.sidecar_uid))
        return true;
    auto cidr_key = [](const CidrRule& r) { return std::make_pair(r.table, r.cidr); };
    std::vector<CidrRule> before_allowing, after_allowing, before_included, after_included;
    for (const CidrRule& r : before.cidrs) (r.table == EGRESSD_TABLE_INCLUDE ? before_included : before_allowing).push_back(r);
    for (const CidrRule& r : after.cidrs) (r.table == EGRESSD_TABLE_INCLUDE ? after_included : after_allowing).push_back(r);
    if (!kept_all(before_allowing, after_allowing, cidr_key)) return true;
    // Any change of the inclusion list moves destinations into or out of row 4.
    if ((before.flags ^ after.flags) & EGRESSD_CFG_HAS_INCLUSION) return true;
    if (!kept_all(before_included, after_included, cidr_key) || !kept_all(after_included, before_included, cidr_key))
        return true;
    if (!kept_all(before.ports, after.ports, [](const PortRule& r) { return std::make_pair(r.table, r.port); }))
        return true;
    return !kept_all(before.policy_rules, after.policy_rules);
}

}  // namespace egressd
