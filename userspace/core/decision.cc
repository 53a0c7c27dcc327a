#include "core/decision.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <tuple>

namespace egressd {

namespace {

// Row 1: 127.0.0.0/8, ::1, and the unspecified addresses (a connect() to
// 0.0.0.0 or :: reaches this host).
bool is_local(const IpAddress& address) {
    if (address.is_v4()) return address.v4() >> 24 == 127 || address.v4() == 0;
    static constexpr IpAddress kUnspecified{};
    static constexpr IpAddress kLoopback{{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}};
    return address == kUnspecified || address == kLoopback;
}

Decision verdict(egressd_verdict verdict, egressd_reason reason, uint32_t rule = 0) {
    return Decision{verdict, reason, rule};
}

}  // namespace

const CidrRule* lookup_cidr(const MapImage& image, uint8_t table, const IpAddress& addr) {
    const CidrRule* longest = nullptr;
    for (const CidrRule& rule : image.cidrs) {
        if (rule.table != table || !rule.cidr.contains(addr)) continue;
        if (!longest || rule.cidr.prefix > longest->cidr.prefix) longest = &rule;
    }
    return longest;
}

const PolicyRule* lookup_policy(const MapImage& image, uint32_t identity, uint8_t proto, uint16_t port,
                                const IpAddress& addr) {
    // Rules are sorted by (identity, proto, port, cidr): only that key's range can match.
    const auto key = std::tie(identity, proto, port);
    auto first =
        std::lower_bound(image.policy_rules.begin(), image.policy_rules.end(), key,
                         [](const PolicyRule& r, const auto& k) { return std::tie(r.identity, r.proto, r.port) < k; });
    const PolicyRule* longest = nullptr;
    for (auto it = first; it != image.policy_rules.end() && std::tie(it->identity, it->proto, it->port) == key; ++it) {
        if (!it->cidr.contains(addr)) continue;
        if (!longest || it->cidr.prefix > longest->cidr.prefix) longest = &*it;
    }
    return longest;
}

// Rows 1-8 of docs/decision.md in the order of egressd_decide() in
// bpf/decision.bpf.h, first match wins.
Decision decide(const MapImage* image, const Query& query) {
    const bool valid = image && (image->flags & EGRESSD_CFG_VALID);
    if (!query.raw_packet && is_local(query.dst)) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_LOCAL);
    if (!valid) return verdict(EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG);
    if (query.raw_packet) {
        if (!(image->flags & EGRESSD_CFG_RAW_SOCKETS)) return verdict(EGRESSD_VERDICT_DENY, EGRESSD_REASON_RAW_SOCKET);
        if (is_local(query.dst)) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_LOCAL);
    }

    if ((image->flags & EGRESSD_CFG_SIDECAR_UID) && query.uid == image->sidecar_uid)
        return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_SIDECAR_UID);

    // Tables the slot says are empty are not looked at, as in the kernel.
    const CidrRule* excluded = (image->flags & EGRESSD_CFG_HAS_EXCLUDED_CIDRS)
                                   ? lookup_cidr(*image, EGRESSD_TABLE_EXCLUDE, query.dst)
                                   : nullptr;
    if (excluded) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_CIDR, excluded->rule);
    if (image->flags & EGRESSD_CFG_HAS_EXCLUDED_PORTS) {
        auto port = std::find_if(image->ports.begin(), image->ports.end(), [&](const PortRule& rule) {
            return rule.table == EGRESSD_PORTS_EXCLUDE && rule.port == query.port;
        });
        if (port != image->ports.end())
            return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_PORT, port->rule);
    }

    if ((image->flags & EGRESSD_CFG_HAS_INCLUSION) && !lookup_cidr(*image, EGRESSD_TABLE_INCLUDE, query.dst))
        return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_NOT_INCLUDED);

    const CidrRule* mesh =
        (image->flags & EGRESSD_CFG_HAS_MESH_CIDRS) ? lookup_cidr(*image, EGRESSD_TABLE_MESH, query.dst) : nullptr;
    if (mesh) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_MESH, mesh->rule);

    if (image->flags & EGRESSD_CFG_ENABLE_EGRESS) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_PASSTHROUGH);

    if ((image->flags & EGRESSD_CFG_POLICY_ACTIVE) && query.identity != 0) {
        if (const PolicyRule* rule = lookup_policy(*image, query.identity, query.proto, query.port, query.dst))
            return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_POLICY, rule->policy);
        // Learned from an answer: what the policies grant the host, at its address 100::N.
        if (query.learned_host != 0 && (image->flags & EGRESSD_CFG_DNS_HOSTS)) {
            if (const PolicyRule* rule = lookup_policy(*image, query.identity, query.proto, query.port,
                                                       dns_host_address(query.learned_host))) {
                Decision learned = verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_POLICY, rule->policy);
                learned.learned = true;
                return learned;
            }
        }
    }
    return verdict(EGRESSD_VERDICT_DENY, EGRESSD_REASON_DENY);
}

uint8_t decision_proto(int protocol) {
    if (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6) return EGRESSD_PROTO_ICMP;
    if (protocol == IPPROTO_MPTCP) return IPPROTO_TCP;
    return static_cast<uint8_t>(protocol);
}

// As egressd_decide_socket() in bpf/decision.bpf.h.
Decision decide_socket(const MapImage* image, int type, int protocol) {
    const bool decided_later =
        (type == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP)) ||
        (type == SOCK_DGRAM &&
         (protocol == 0 || protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6)) ||
        type == SOCK_RAW;
    if (decided_later) return verdict(EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_NONE);
    if (!image || !(image->flags & EGRESSD_CFG_VALID)) return verdict(EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG);
    return verdict(EGRESSD_VERDICT_DENY, EGRESSD_REASON_PROTOCOL);
}

egressd_reason reason_from(uint32_t value) {
    return value < EGRESSD_REASON_MAX ? static_cast<egressd_reason>(value) : EGRESSD_REASON_MAX;
}

egressd_hook hook_from(uint32_t value) {
    return value < EGRESSD_HOOK_MAX ? static_cast<egressd_hook>(value) : EGRESSD_HOOK_MAX;
}

std::string_view reason_name(egressd_reason reason) {
    switch (reason) {
        case EGRESSD_REASON_NONE: return "none";
        case EGRESSD_REASON_LOCAL: return "local";
        case EGRESSD_REASON_SIDECAR_UID: return "sidecar-uid";
        case EGRESSD_REASON_EXCLUDED_CIDR: return "excluded-cidr";
        case EGRESSD_REASON_EXCLUDED_PORT: return "excluded-port";
        case EGRESSD_REASON_NOT_INCLUDED: return "not-included";
        case EGRESSD_REASON_MESH: return "mesh";
        case EGRESSD_REASON_PASSTHROUGH: return "passthrough";
        case EGRESSD_REASON_POLICY: return "policy";
        case EGRESSD_REASON_DENY: return "deny";
        case EGRESSD_REASON_NO_CONFIG: return "no-config";
        case EGRESSD_REASON_RAW_SOCKET: return "raw-socket";
        case EGRESSD_REASON_PROTOCOL: return "protocol";
        case EGRESSD_REASON_MAX: break;
    }
    return "unknown";  // a value read from a map, out of the enum's range
}

int reason_row(egressd_reason reason) {
    switch (reason) {
        case EGRESSD_REASON_LOCAL: return 1;
        case EGRESSD_REASON_SIDECAR_UID: return 2;
        case EGRESSD_REASON_EXCLUDED_CIDR:
        case EGRESSD_REASON_EXCLUDED_PORT: return 3;
        case EGRESSD_REASON_NOT_INCLUDED: return 4;
        case EGRESSD_REASON_MESH: return 5;
        case EGRESSD_REASON_PASSTHROUGH: return 6;
        case EGRESSD_REASON_POLICY: return 7;
        case EGRESSD_REASON_DENY: return 8;
        default: return 0;  // row 0 (raw-socket, protocol), none, no-config
    }
}

std::string_view hook_name(egressd_hook hook) {
    switch (hook) {
        case EGRESSD_HOOK_CONNECT4: return "connect4";
        case EGRESSD_HOOK_CONNECT6: return "connect6";
        case EGRESSD_HOOK_SENDMSG4: return "sendmsg4";
        case EGRESSD_HOOK_SENDMSG6: return "sendmsg6";
        case EGRESSD_HOOK_SOCK_CREATE: return "sock_create";
        case EGRESSD_HOOK_PACKET: return "packet";
        case EGRESSD_HOOK_MAX: break;
    }
    return "unknown";
}

}  // namespace egressd
