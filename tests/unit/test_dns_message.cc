// Host names as policies write them, and the hashes the packet program
// compares (maps/egressd_abi.h, "DNS answers seen by the workloads"). The
// parser itself is checked against the kernel's in tests/kernel/test_dns_parser.cc.
#include <doctest/doctest.h>

#include <cstring>
#include <set>

#include "core/dns_message.h"
#include "test_support.h"

using namespace egressd;

TEST_CASE("dns: suffix hashes are FNV-1a over the labels from the right, case folded") {
    // By hand: the seed, then "com" as its length byte and its bytes.
    uint64_t com = EGRESSD_DNS_HASH_SEED;
    for (uint8_t b : {uint8_t(3), uint8_t('c'), uint8_t('o'), uint8_t('m')}) com = (com ^ b) * EGRESSD_DNS_HASH_PRIME;
    const std::vector<uint64_t> www = dns::suffix_hashes({"www", "Example", "COM"});
    REQUIRE(www.size() == 3);
    CHECK(www[0] == com);
    CHECK(www == dns::suffix_hashes({"WWW", "example", "com"}));
    CHECK(www[1] == dns::name_hash({"example", "com"}));
    CHECK(www[2] == dns::name_hash({"www", "example", "com"}));
    CHECK(dns::name_hash({}) == EGRESSD_DNS_HASH_SEED);
    // Label boundaries count: "ab.c" is not "a.bc".
    CHECK(dns::name_hash({"ab", "c"}) != dns::name_hash({"a", "bc"}));
}

TEST_CASE("dns: policy host names, exact and wildcard; bad ones named") {
    auto exact = dns::parse_host_name("api.Example.com.");
    REQUIRE_MESSAGE(exact.ok(), egressd::test::why(exact));
    CHECK_FALSE(exact->wildcard);
    CHECK(exact->labels == std::vector<std::string>{"api", "Example", "com"});
    auto wild = dns::parse_host_name("*.example.com");
    REQUIRE(wild.ok());
    CHECK(wild->wildcard);
    CHECK(wild->labels == std::vector<std::string>{"example", "com"});

    const std::pair<const char*, const char*> bad[] = {
        {"", "an empty host name"},
        {"a..b", "an empty label"},
        {"*.", "'*' is only allowed"},
        {"*..com", "an empty label"},
        {"a.*.b", "'*' is only allowed as the whole first label"},
        {"*x.example.com", "'*' is only allowed"},
        {"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", "more than 16 labels"},
    };
    for (const auto& [text, why] : bad) {
        CAPTURE(text);
        auto parsed = dns::parse_host_name(text);
        REQUIRE_FALSE(parsed.ok());
        CHECK_MESSAGE(parsed.error().message.find(why) != std::string::npos, parsed.error().message);
    }
    CHECK_FALSE(dns::parse_host_name(std::string(64, 'a') + ".com").ok());
    CHECK_FALSE(dns::parse_host_name(std::string(254, 'a')).ok());
}

TEST_CASE("dns: learned addresses spread over an identity's sets") {
    // 1,000 consecutive IPv4 addresses (as a CDN pool hands them out) and
    // 1,000 IPv6 ones, over 512 sets: a weak hash put them in 2 sets.
    for (const bool v6 : {false, true}) {
        CAPTURE(v6);
        std::set<uint32_t> sets;
        for (uint32_t i = 0; i < 1000; ++i) {
            uint8_t bytes[16] = {};
            if (v6) {
                bytes[0] = 0x20, bytes[1] = 0x01, bytes[2] = 0x0d, bytes[3] = 0xb8;
                bytes[14] = uint8_t(i >> 8), bytes[15] = uint8_t(i);
            } else {
                bytes[10] = 0xff, bytes[11] = 0xff, bytes[12] = 203, bytes[13] = uint8_t(i >> 8);
                bytes[14] = uint8_t(i), bytes[15] = 7;
            }
            uint32_t words[4];
            std::memcpy(words, bytes, sizeof words);
            sets.insert(egressd_dns_set_of(words, 512));
        }
        CHECK(sets.size() > 400);  // a random spread fills about 440 of 512
    }
}
