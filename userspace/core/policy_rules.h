// One Egress policy's rules and their order: shared by build_image and the
// policy rule cache, which must produce exactly the same rules.
#pragma once

#include <compare>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/image.h"

namespace egressd {

// (identity, proto, port), then the address as two big-endian words (whose
// integer order is the bytes' lexicographic order), then the prefix length.
struct PolicyKeyWords {
    uint64_t head, high, low;
    uint8_t prefix;
    explicit PolicyKeyWords(const PolicyRule& rule)
        : head(uint64_t(rule.identity) << 24 | uint64_t(rule.proto) << 16 | rule.port),
          high(be64(rule.cidr.addr.bytes.data())),
          low(be64(rule.cidr.addr.bytes.data() + 8)),
          prefix(rule.cidr.prefix) {}
    static uint64_t be64(const uint8_t* bytes) {
        uint64_t word;
        std::memcpy(&word, bytes, sizeof word);
        return __builtin_bswap64(word);
    }
    auto operator<=>(const PolicyKeyWords&) const = default;
};

// The order of two rules' map keys (identity, proto, port, address, prefix).
inline std::strong_ordering policy_key_order(const PolicyRule& a, const PolicyRule& b) {
    return PolicyKeyWords(a) <=> PolicyKeyWords(b);
}

// a == b without a call to memcmp per address, as the defaulted comparison
// makes: a change's diff compares 100k of them.
inline bool same_policy_rule(const PolicyRule& a, const PolicyRule& b) {
    return a.identity == b.identity && a.proto == b.proto && a.port == b.port && a.policy == b.policy &&
           a.cidr.prefix == b.cidr.prefix && PolicyKeyWords::be64(a.cidr.addr.bytes.data()) ==
                                                 PolicyKeyWords::be64(b.cidr.addr.bytes.data()) &&
           PolicyKeyWords::be64(a.cidr.addr.bytes.data() + 8) == PolicyKeyWords::be64(b.cidr.addr.bytes.data() + 8);
}

// The current addresses of each of the policy's hosts (empty when unknown).
std::vector<std::vector<IpAddress>> host_addresses_of(const EgressPolicy& policy, const PolicyInputs& in);

// The numbers of the policy's host names (hosts, then wildcard_hosts), from
// in.host_numbers; empty without one.
std::vector<uint32_t> host_numbers_of(const EgressPolicy& policy, const PolicyInputs& in);

// Appends one policy's rules, marked with `mark` (its position or its number):
// its destinations are its ipAddresses, its hosts' current addresses, and the
// address 100::N of each numbered host name.
void append_rules(std::vector<PolicyRule>& rules, const EgressPolicy& policy,
                  const std::vector<std::vector<IpAddress>>& host_addresses,
                  const std::vector<uint32_t>& host_numbers, IdentityRegistry& identities, uint32_t mark);

}  // namespace egressd
