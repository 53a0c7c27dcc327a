#include <doctest/doctest.h>

#include <string>

#include <sys/socket.h>

#include "core/endpoint.h"
#include "core/net.h"

using namespace egressd;

TEST_CASE("IpAddress: IPv4 is held as ::ffff:a.b.c.d") {
    const IpAddress address = IpAddress::from_v4(0x0a010203);
    const std::array<uint8_t, 16> mapped{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3};
    CHECK(address.bytes == mapped);
    CHECK(address.is_v4());
    CHECK(address.v4() == 0x0a010203u);
    CHECK(address.str() == "10.1.2.3");
}

TEST_CASE("IpAddress::parse") {
    SUBCASE("dotted IPv4") {
        auto address = IpAddress::parse("192.168.1.20");
        REQUIRE(address.ok());
        CHECK(*address == IpAddress::from_v4(0xc0a80114));
    }
    SUBCASE("the IPv4-mapped form is the same IPv4 address") {
        auto address = IpAddress::parse("::ffff:1.2.3.4");
        REQUIRE(address.ok());
        CHECK(address->is_v4());
        CHECK(*address == IpAddress::from_v4(0x01020304));
        CHECK(address->str() == "1.2.3.4");
    }
    SUBCASE("IPv6 prints in RFC 5952 form") {
        auto address = IpAddress::parse("2001:0DB8:0000:0000:0000:0000:0000:0001");
        REQUIRE(address.ok());
        CHECK_FALSE(address->is_v4());
        CHECK(address->str() == "2001:db8::1");
        std::array<uint8_t, 16> bytes{0x20, 0x01, 0x0d, 0xb8};
        bytes[15] = 1;
        CHECK(*address == IpAddress::from_v6(bytes));
    }
    SUBCASE("errors name the text and the reason") {
        auto address = IpAddress::parse("1.2.3.256");
        REQUIRE_FALSE(address.ok());
        CHECK(address.error().message == "\"1.2.3.256\" is not a valid IP address: octet 256 out of range");
        CHECK(IpAddress::parse("").error().message == "\"\" is not a valid IP address: empty address");
    }
}

TEST_CASE("Cidr::parse accepts CIDRs and bare addresses, clearing host bits") {
    struct Case {
        const char* text;
        const char* str;
        int prefix;  // in the 128-bit space
        bool v4;
    };
    const Case cases[] = {
        {"10.0.0.0/8", "10.0.0.0/8", 104, true},
        {"10.1.2.3/8", "10.0.0.0/8", 104, true},
        {"192.168.7.255/23", "192.168.6.0/23", 119, true},
        {"0.0.0.0/0", "0.0.0.0/0", 96, true},
        {"169.254.169.254", "169.254.169.254/32", 128, true},
        {"10.0.0.1/32", "10.0.0.1/32", 128, true},
        {"10.0.0.0/08", "10.0.0.0/8", 104, true},
        {"2001:db8::/32", "2001:db8::/32", 32, false},
        {"2001:DB8:0:0:1::/32", "2001:db8::/32", 32, false},
        {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1/128", 128, false},
        {"fd00::1/7", "fc00::/7", 7, false},
        {"::/0", "::/0", 0, false},
        {"::1", "::1/128", 128, false},
        // An IPv6-text CIDR on ::ffff:0:0/96 names IPv4 addresses.
        {"::ffff:10.0.0.0/104", "10.0.0.0/8", 104, true},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        auto cidr = Cidr::parse(c.text);
        REQUIRE(cidr.ok());
        CHECK(cidr->str() == c.str);
        CHECK(int(cidr->prefix) == c.prefix);
        CHECK(cidr->is_v4() == c.v4);
        CHECK(int(cidr->family_prefix()) == (c.v4 ? c.prefix - 96 : c.prefix));
    }
}

TEST_CASE("Cidr::parse says precisely what is wrong") {
    struct Case {
        const char* text;
        const char* why;
    };
    const Case cases[] = {
        {"", "empty string"},
        {"10.0.0.300/8", "octet 300 out of range"},
        {"10.0.0.2550", "octet 2550 out of range"},
        {"10.0.0.0/33", "prefix length 33 exceeds 32 for IPv4"},
        {"10.0.0.0/1000", "prefix length 1000 exceeds 32 for IPv4"},
        {"2001:db8::/129", "prefix length 129 exceeds 128 for IPv6"},
        {"10.0.0.0/", "missing prefix length after '/'"},
        {"/8", "missing address before '/'"},
        {"10.0.0.0/eight", "prefix length \"eight\" is not a number"},
        {"10.0.0.0/-1", "prefix length \"-1\" is not a number"},
        {"10.0.0.0/8/9", "prefix length \"8/9\" is not a number"},
        {"10.0.0/8", "too few octets (3, expected 4)"},
        {"10.0.0.0.0/8", "too many octets (5, expected 4)"},
        {"10..0.0/8", "empty octet"},
        {"010.0.0.0/8", "octet 010 has a leading zero"},
        {"10.0.0.x/8", "invalid character 'x' in IPv4 address"},
        {" 10.0.0.0/8", "invalid character ' ' in IPv4 address"},
        {"1234", "too few octets (1, expected 4)"},
        {"hello", "not an IPv4 or IPv6 address"},
        {"2001:db8::g/32", "invalid character 'g' in IPv6 address"},
        {"2001::db8::1", "\"::\" appears more than once"},
        {"2001:db8:12345::/48", "group 12345 has more than 4 hex digits"},
        {"1:2:3:4:5:6:7:8:9", "invalid IPv6 address"},
        {"fe80::1%eth0/64", "zone index (%) not allowed"},
        {"::ffff:300.1.1.1", "invalid IPv6 address"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        auto cidr = Cidr::parse(c.text);
        REQUIRE_FALSE(cidr.ok());
        CHECK(cidr.error().message == "\"" + std::string(c.text) + "\" is not a valid CIDR: " + c.why);
        CHECK(cidr.error().errnum == 0);
    }
}

TEST_CASE("Cidr::contains compares the prefix bits only") {
    const Cidr ten = *Cidr::parse("10.0.0.0/8");
    CHECK(ten.contains(*IpAddress::parse("10.255.255.255")));
    CHECK(ten.contains(*IpAddress::parse("::ffff:10.1.2.3")));
    CHECK_FALSE(ten.contains(*IpAddress::parse("11.0.0.0")));
    CHECK_FALSE(ten.contains(*IpAddress::parse("::a00:1")));  // IPv4-compatible, not IPv4-mapped

    const Cidr odd = *Cidr::parse("192.168.6.0/23");
    CHECK(odd.contains(*IpAddress::parse("192.168.7.1")));
    CHECK_FALSE(odd.contains(*IpAddress::parse("192.168.8.1")));

    const Cidr v6 = *Cidr::parse("2001:db8::/33");
    CHECK(v6.contains(*IpAddress::parse("2001:db8:7fff::1")));
    CHECK_FALSE(v6.contains(*IpAddress::parse("2001:db8:8000::1")));

    // ::/0 holds every address, IPv4 ones included: the one address space.
    CHECK(Cidr::parse("::/0")->contains(*IpAddress::parse("8.8.8.8")));
    CHECK_FALSE(Cidr::parse("0.0.0.0/0")->contains(*IpAddress::parse("2001:db8::1")));
}

TEST_CASE("validate_port") {
    for (long long good : {1LL, 80LL, 65535LL}) {
        CAPTURE(good);
        auto port = validate_port(good);
        REQUIRE(port.ok());
        CHECK(*port == good);
    }
    for (long long bad : {0LL, -1LL, 65536LL, 70000LL}) {
        CAPTURE(bad);
        auto port = validate_port(bad);
        REQUIRE_FALSE(port.ok());
        CHECK(port.error().message == "port " + std::to_string(bad) + " is out of range 1-65535");
    }
}

TEST_CASE("parse_endpoint: addresses, brackets, ports and defaults") {
    const EndpointSyntax listening{.default_port = std::nullopt, .port_zero = true};
    const EndpointSyntax dns{.default_port = 53, .port_zero = false};
    auto ok = [](std::string_view text, const EndpointSyntax& syntax) {
        auto parsed = parse_endpoint(text, syntax);
        REQUIRE_MESSAGE(parsed.ok(), text << ": " << parsed.error().message);
        return *parsed;
    };
    CHECK(ok("127.0.0.1:9477", listening).str() == "127.0.0.1:9477");
    CHECK(ok("[::1]:0", listening).port == 0);
    CHECK(ok("[::1]:0", listening).family == AF_INET6);
    CHECK(ok("127.0.0.1", dns).str() == "127.0.0.1:53");
    CHECK(ok("[2001:db8::53]", dns).str() == "[2001:db8::53]:53");
    CHECK(ok("[2001:db8::53]:5353", dns).port == 5353);
    CHECK(ok("10.0.0.1:65535", dns).family == AF_INET);

    const std::pair<const char*, const char*> errors[] = {
        {"127.0.0.1", "expected HOST:PORT"},
        {"localhost:53", "\"localhost\" is not an IP address"},
        {"::1:53", "an IPv6 address must be in brackets, as in [::1]:9477"},
        {"[::1", "missing \"]\""},
        {"[::1]53", "expected \":PORT\" after \"]\""},
        {"[1.2.3.4]:53", "\"1.2.3.4\" is not an IPv6 address"},
        {":53", "missing host (for a listening address, 0.0.0.0 or [::] means every address)"},
        {"1.2.3.4:0", "port \"0\" is not a number from 1 to 65535"},
        {"1.2.3.4:", "port \"\" is not a number from 1 to 65535"},
        {"1.2.3.4:dns", "port \"dns\" is not a number from 1 to 65535"},
    };
    for (const auto& [text, message] : errors) {
        CAPTURE(text);
        auto parsed = parse_endpoint(text, {.default_port = std::nullopt, .port_zero = false});
        REQUIRE_FALSE(parsed.ok());
        CHECK(parsed.error().message == message);
    }
}
