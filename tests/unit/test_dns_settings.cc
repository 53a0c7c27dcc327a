// The settings of learning from DNS answers: dnsServer (one or a list),
// dnsLearning, capacities.dnsLearned, and which resolvers are trusted.
#include <doctest/doctest.h>

#include <string>

#include "core/agent_config.h"
#include "core/resolvers.h"
#include "test_support.h"

using namespace egressd;

namespace {

Result<AgentConfig> settings(std::string_view more) {
    return parse_agent_config("cgroup: egressd/demo\nmeshConfig: /etc/fsm/meshconfig.yaml\n" + std::string(more),
                              "/etc/egressd/egressd.yaml");
}

std::vector<std::string> texts(const std::vector<IpAddress>& addresses) {
    std::vector<std::string> out;
    for (const auto& a : addresses) out.push_back(a.str());
    return out;
}

}  // namespace

TEST_CASE("dns settings: dnsServer is one resolver or a list; dnsLearning has defaults and limits") {
    auto defaults = settings("");
    REQUIRE(defaults.ok());
    CHECK(defaults->dns_servers.empty());
    CHECK(defaults->dns_learning == DnsLearning{5, 3600, 256});
    CHECK(defaults->capacities.dns_learned == EGRESSD_DEFAULT_DNS_LEARNED_CAPACITY);

    auto one = settings("dnsServer: 10.96.0.10\n");
    REQUIRE(one.ok());
    CHECK(one->dns_servers == std::vector<std::string>{"10.96.0.10:53"});
    auto list = settings("dnsServer: [10.96.0.10, '[fd00::a]:5353']\ndnsLearning: {minTTL: 0, maxTTL: 60, "
                         "perIdentity: 1024}\ncapacities: {dnsLearned: 4096}\n");
    REQUIRE_MESSAGE(list.ok(), egressd::test::why(list));
    CHECK(list->dns_servers == std::vector<std::string>{"10.96.0.10:53", "[fd00::a]:5353"});
    CHECK(list->dns_learning == DnsLearning{0, 60, 1024});
    CHECK(list->capacities.dns_learned == 4096);

    const std::pair<const char*, const char*> bad[] = {
        {"dnsServer: []\n", "dnsServer: expected a resolver ADDRESS[:PORT] or a list of them"},
        {"dnsServer: [10.96.0.10, dns.local]\n", "dnsServer[1]: \"dns.local\""},
        {"dnsLearning: {perIdentity: 100}\n", "dnsLearning.perIdentity: 100 is not a power of 2"},
        {"dnsLearning: {minTTL: 600, maxTTL: 60}\n", "dnsLearning: minTTL 600 is above maxTTL 60"},
        {"dnsLearning: {minTtl: 1}\n", "dnsLearning.minTtl: unknown key"},
    };
    for (const auto& [text, why] : bad) {
        CAPTURE(text);
        auto parsed = settings(text);
        REQUIRE_FALSE(parsed.ok());
        CHECK_MESSAGE(parsed.error().message.find(why) != std::string::npos, parsed.error().message);
    }
}

TEST_CASE("dns settings: the trusted resolvers are dnsServer's, else resolv.conf's nameservers") {
    const char* resolv_conf =
        "# generated\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n"
        "nameserver not-an-address\noptions ndots:5\nnameserver 10.96.0.10\n";
    CHECK(texts(trusted_resolvers({}, resolv_conf)) == std::vector<std::string>{"10.96.0.10", "fe80::1"});
    CHECK(texts(trusted_resolvers({"169.254.20.10:53", "[fd00::a]:5353"}, resolv_conf)) ==
          std::vector<std::string>{"169.254.20.10", "fd00::a"});
    CHECK(trusted_resolvers({}, "").empty());
}
