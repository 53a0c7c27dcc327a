// The C++ reference model of the kernel decision (bpf/decision.bpf.h). It
// evaluates a MapImage exactly as the BPF programs evaluate the active slot,
// so the kernel's verdicts can be checked against it and explained.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/image.h"
#include "core/net.h"
#include "egressd_abi.h"

namespace egressd {

struct Query {
    IpAddress dst;          // IPv4 as ::ffff:a.b.c.d
    uint16_t port = 0;      // host order
    uint8_t proto = 0;      // IPPROTO_TCP / IPPROTO_UDP / EGRESSD_PROTO_ICMP (not used by rows 1-6, 8)
    uint32_t uid = 0;       // uid of the calling task
    uint32_t identity = 0;  // the caller's workload identity, 0 when unknown
    // The host number of the caller's identity's live entry for dst learned
    // from a DNS answer (dns_learned_v1), 0 when there is none.
    uint32_t learned_host = 0;
    // A raw socket's packet (the packet hook): refused before row 1 unless
    // the generation allows raw sockets.
    bool raw_packet = false;
};

struct Decision {
    egressd_verdict verdict = EGRESSD_VERDICT_DENY;
    egressd_reason reason = EGRESSD_REASON_NONE;
    uint32_t rule = 0;     // index in the list that decided (exclusion, mesh CIDR, port)
    bool learned = false;  // row 7 allowed dst as learned from a DNS answer

    bool operator==(const Decision&) const = default;
};

// `image` null means no valid generation: deny (EGRESSD_REASON_NO_CONFIG)
// except row 1.
Decision decide(const MapImage* image, const Query& query);
// Row 0, at socket creation: kinds that a later hook decides are allowed
// with reason none; any other kind is denied (`protocol`, or `no-config`).
Decision decide_socket(const MapImage* image, int type, int protocol);
// The protocol a socket's calls are decided under: ICMP and ICMPv6 echo as
// EGRESSD_PROTO_ICMP, MPTCP as TCP, others as they are.
uint8_t decision_proto(int protocol);

// Longest-prefix match within one table, as the LPM trie does; nullptr if none.
const CidrRule* lookup_cidr(const MapImage& image, uint8_t table, const IpAddress& addr);
// Longest-prefix match among the policy rules of (identity, proto, port).
const PolicyRule* lookup_policy(const MapImage& image, uint32_t identity, uint8_t proto, uint16_t port,
                                const IpAddress& addr);

// A reason or hook read from a map, as the enum: EGRESSD_REASON_MAX /
// EGRESSD_HOOK_MAX for a value out of its range (a cast would be undefined).
egressd_reason reason_from(uint32_t value);
egressd_hook hook_from(uint32_t value);
std::string_view reason_name(egressd_reason reason);  // "local", "sidecar-uid", "excluded-cidr", ...
int reason_row(egressd_reason reason);                // row of docs/decision.md, 0 for none
std::string_view hook_name(egressd_hook hook);        // "connect4", ...

}  // namespace egressd
