// Addresses, CIDRs and ports in egressd's one address space: 16 bytes, IPv4
// held as the IPv4-mapped IPv6 address ::ffff:a.b.c.d (maps/egressd_abi.h).
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace egressd {

struct IpAddress {
    std::array<uint8_t, 16> bytes{};  // network byte order

    static IpAddress from_v4(uint32_t host_order);
    static IpAddress from_v6(const std::array<uint8_t, 16>& network_order);
    // Accepts dotted IPv4 and any IPv6 text form (inet_pton rules).
    static Result<IpAddress> parse(std::string_view text);

    bool is_v4() const;       // ::ffff:a.b.c.d
    uint32_t v4() const;      // host order; only when is_v4()
    std::string str() const;  // "10.1.2.3" for IPv4-mapped, RFC 5952 IPv6 otherwise

    auto operator<=>(const IpAddress&) const = default;
};

struct Cidr {
    IpAddress addr;      // host bits cleared
    uint8_t prefix = 0;  // in the 128-bit space: an IPv4 /n is 96+n

    // "10.0.0.0/8", "2001:db8::/32", or a bare address (a single host, /32 or
    // /128). Host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8), as Go's
    // net.ParseCIDR does for FSM. The error message says what is wrong
    // ("octet 300 out of range", "prefix length 33 exceeds 32 for IPv4").
    static Result<Cidr> parse(std::string_view text);

    bool is_v4() const { return addr.is_v4() && prefix >= 96; }
    uint8_t family_prefix() const { return is_v4() ? prefix - 96 : prefix; }
    bool contains(const IpAddress& a) const;
    IpAddress mask() const;  // the prefix's bits set, the others clear
    std::string str() const;  // "10.0.0.0/8" for IPv4, "2001:db8::/32" for IPv6

    auto operator<=>(const Cidr&) const = default;
};

// Ports 1..65535; the message names the bad value ("port 0 is out of range 1-65535").
Result<uint16_t> validate_port(long long value);

}  // namespace egressd
