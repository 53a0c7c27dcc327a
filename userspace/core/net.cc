#include "core/net.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace egressd {

namespace {

constexpr size_t kV4MappedOffset = 12;  // ::ffff:a.b.c.d keeps a.b.c.d in bytes 12..15

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex_digit(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

std::vector<std::string_view> split(std::string_view text, char separator) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (size_t end; (end = text.find(separator, start)) != std::string_view::npos; start = end + 1)
        parts.push_back(text.substr(start, end - start));
    parts.push_back(text.substr(start));
    return parts;
}

// The reason `text` is not a dotted IPv4 address, or the address. inet_pton
// has the last word, but only says yes or no, so the common mistakes are
// named first.
Result<IpAddress> parse_v4(std::string_view text) {
    auto bad_char = std::find_if(text.begin(), text.end(), [](char c) { return !is_digit(c) && c != '.'; });
    if (bad_char != text.end()) {
        if (text.find('.') == std::string_view::npos) return make_error("not an IPv4 or IPv6 address");
        return make_error(fmt::format("invalid character '{}' in IPv4 address", *bad_char));
    }
    auto octets = split(text, '.');
    if (octets.size() > 4) return make_error(fmt::format("too many octets ({}, expected 4)", octets.size()));
    if (octets.size() < 4) return make_error(fmt::format("too few octets ({}, expected 4)", octets.size()));
    for (auto octet : octets) {
        if (octet.empty()) return make_error("empty octet");
        // Leading zeros read as octal in some parsers (inet_aton): refuse the ambiguity.
        if (octet.size() > 1 && octet[0] == '0') return make_error(fmt::format("octet {} has a leading zero", octet));
        if (octet.size() > 3 || std::stoi(std::string(octet)) > 255)
            return make_error(fmt::format("octet {} out of range", octet));
    }
    in_addr v4{};
    if (inet_pton(AF_INET, std::string(text).c_str(), &v4) != 1) return make_error("invalid IPv4 address");
    return IpAddress::from_v4(ntohl(v4.s_addr));
}

Result<IpAddress> parse_v6(std::string_view text) {
    if (text.find('%') != std::string_view::npos) return make_error("zone index (%) not allowed");
    auto bad_char =
        std::find_if(text.begin(), text.end(), [](char c) { return !is_hex_digit(c) && c != ':' && c != '.'; });
    if (bad_char != text.end()) return make_error(fmt::format("invalid character '{}' in IPv6 address", *bad_char));
    auto first_gap = text.find("::");
    if (first_gap != std::string_view::npos && text.find("::", first_gap + 1) != std::string_view::npos)
        return make_error("\"::\" appears more than once");
    for (auto group : split(text, ':')) {
        if (group.size() > 4 && group.find('.') == std::string_view::npos)
            return make_error(fmt::format("group {} has more than 4 hex digits", group));
    }
    std::array<uint8_t, 16> bytes{};
    if (inet_pton(AF_INET6, std::string(text).c_str(), bytes.data()) != 1) return make_error("invalid IPv6 address");
    return IpAddress::from_v6(bytes);
}

bool is_v6_text(std::string_view text) { return text.find(':') != std::string_view::npos; }

// The reason alone; the public parsers say what the text was meant to be.
Result<IpAddress> parse_address(std::string_view text) {
    if (text.empty()) return make_error("empty address");
    return is_v6_text(text) ? parse_v6(text) : parse_v4(text);
}

std::string v6_str(const IpAddress& address) {
    char buffer[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, address.bytes.data(), buffer, sizeof buffer);
    return buffer;
}

// Keeps the first `prefix` bits of the 128-bit address.
IpAddress masked(IpAddress address, unsigned prefix) {
    for (unsigned i = 0; i < address.bytes.size(); ++i) {
        unsigned kept_bits = prefix > i * 8 ? std::min(prefix - i * 8, 8u) : 0u;
        address.bytes[i] &= static_cast<uint8_t>(0xff00u >> kept_bits);
    }
    return address;
}

}  // namespace

IpAddress IpAddress::from_v4(uint32_t host_order) {
    IpAddress address;
    address.bytes[10] = 0xff;
    address.bytes[11] = 0xff;
    for (int i = 0; i < 4; ++i) address.bytes[kV4MappedOffset + i] = static_cast<uint8_t>(host_order >> (24 - 8 * i));
    return address;
}

IpAddress IpAddress::from_v6(const std::array<uint8_t, 16>& network_order) { return IpAddress{network_order}; }

Result<IpAddress> IpAddress::parse(std::string_view text) {
    auto address = parse_address(text);
    if (!address) return make_error(fmt::format("\"{}\" is not a valid IP address: {}", text, address.error().message));
    return address;
}

bool IpAddress::is_v4() const {
    static constexpr uint8_t kPrefix[kV4MappedOffset] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(bytes.data(), kPrefix, sizeof kPrefix) == 0;
}

uint32_t IpAddress::v4() const {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) value = value << 8 | bytes[kV4MappedOffset + i];
    return value;
}

std::string IpAddress::str() const {
    if (!is_v4()) return v6_str(*this);
    const uint8_t* v4 = &bytes[kV4MappedOffset];
    return fmt::format("{}.{}.{}.{}", v4[0], v4[1], v4[2], v4[3]);
}

Result<Cidr> Cidr::parse(std::string_view text) {
    auto invalid = [text](std::string_view why) {
        return make_error(fmt::format("\"{}\" is not a valid CIDR: {}", text, why));
    };
    if (text.empty()) return invalid("empty string");

    auto slash = text.find('/');
    auto address_text = text.substr(0, slash);
    if (address_text.empty()) return invalid("missing address before '/'");
    auto address = parse_address(address_text);
    if (!address) return invalid(address.error().message);

    const bool v6 = is_v6_text(address_text);
    const unsigned family_bits = v6 ? 128 : 32;
    unsigned family_prefix = family_bits;
    if (slash != std::string_view::npos) {
        auto prefix_text = text.substr(slash + 1);
        auto exceeds = [&] {
            return invalid(
                fmt::format("prefix length {} exceeds {} for {}", prefix_text, family_bits, v6 ? "IPv6" : "IPv4"));
        };
        if (prefix_text.empty()) return invalid("missing prefix length after '/'");
        if (!std::all_of(prefix_text.begin(), prefix_text.end(), is_digit))
            return invalid(fmt::format("prefix length \"{}\" is not a number", prefix_text));
        // More than 3 digits exceeds any family, and keeps from_chars in range.
        if (prefix_text.size() > 3) return exceeds();
        std::from_chars(prefix_text.data(), prefix_text.data() + prefix_text.size(), family_prefix);
        if (family_prefix > family_bits) return exceeds();
    }
    const unsigned prefix = v6 ? family_prefix : 96 + family_prefix;
    return Cidr{masked(*address, prefix), static_cast<uint8_t>(prefix)};
}

bool Cidr::contains(const IpAddress& a) const { return masked(a, prefix) == addr; }

IpAddress Cidr::mask() const {
    IpAddress ones;
    ones.bytes.fill(0xff);
    return masked(ones, prefix);
}

std::string Cidr::str() const {
    if (is_v4()) return fmt::format("{}/{}", addr.str(), family_prefix());
    return fmt::format("{}/{}", v6_str(addr), prefix);
}

Result<uint16_t> validate_port(long long value) {
    if (value < 1 || value > 65535) return make_error(fmt::format("port {} is out of range 1-65535", value));
    return static_cast<uint16_t>(value);
}

}  // namespace egressd
