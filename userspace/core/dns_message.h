// DNS responses as the packet program reads them (bpf/dns.bpf.h), written
// again in plain C++: the reference the kernel tests compare it with, packet
// by packet, and the hashing of policy host names that the agent writes for
// the program to compare with (maps/egressd_abi.h, "DNS answers seen by the
// workloads"). Pure: no I/O.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "egressd_abi.h"

namespace egressd::dns {

// The hashes of a name's suffixes, from the rightmost label: [0] is the
// top-level domain's, back() the whole name's. Labels as they are, compared
// without regard to ASCII case.
std::vector<uint64_t> suffix_hashes(const std::vector<std::string>& labels);
// The whole name's hash; the root's (no label) is the seed.
uint64_t name_hash(const std::vector<std::string>& labels);

// A host name as written in a policy ("www.example.com", "*.example.com",
// a trailing dot allowed) into its labels; a wildcard's "*" is left out and
// reported. Errors name what is wrong: an empty label, a label over 63
// bytes, a name over 253 characters, a "*" other than the whole first label.
struct HostName {
    std::vector<std::string> labels;  // without the "*"
    bool wildcard = false;            // "*.example.com": names below example.com, not example.com itself
};
Result<HostName> parse_host_name(std::string_view text);

struct LearnedAddress {
    std::array<uint8_t, 16> address{};  // IPv4 as ::ffff:a.b.c.d
    uint32_t ttl = 0;                   // the least TTL from the question to this record
    uint16_t question = 0;
    bool operator==(const LearnedAddress&) const = default;
};

struct Response {
    egressd_dns_status status = EGRESSD_DNS_MALFORMED;
    uint16_t id = 0;
    uint16_t flags = 0;
    std::vector<std::vector<uint64_t>> questions;  // each question's suffix hashes (when status is OK)
    std::vector<LearnedAddress> addresses;         // empty unless status is OK
};

// A UDP payload from port 53, with the limits and the rules of
// maps/egressd_abi.h and bpf/dns.bpf.h (statuses included).
Response parse_response(std::span<const uint8_t> payload);

}  // namespace egressd::dns
