// The policies' host names for learning from DNS answers (core/dns_hosts):
// numbered, one dns_hosts entry per (identity, host name), the policy's
// ports under the host's address 100::N, and covering wildcards filling in
// for the more specific names they cover.
#include <netinet/in.h>

#include <doctest/doctest.h>

#include <algorithm>

#include "core/dns_hosts.h"
#include "core/dns_message.h"
#include "core/image.h"
#include "core/policy_rule_cache.h"

using namespace egressd;

namespace {

EgressPolicy host_policy(std::string name, std::vector<PolicySource> sources, std::vector<PolicyPort> ports,
                         std::vector<std::string> hosts, std::vector<std::string> wildcards = {}) {
    EgressPolicy p;
    p.api_version = "policy.flomesh.io/v1alpha1";
    p.namespace_ = "curl";
    p.name = std::move(name);
    p.sources = std::move(sources);
    p.ports = std::move(ports);
    p.hosts = std::move(hosts);
    p.wildcard_hosts = std::move(wildcards);
    return p;
}

MeshConfig policies_in_force() {
    MeshConfig m;
    m.enable_egress = false;
    m.enable_egress_policy = true;
    return m;
}

const PolicyPort kTlsPort{443, "https", IPPROTO_TCP};
const PolicyPort kPlainPort{80, "http", IPPROTO_TCP};

// The policy numbers of the rules for (identity, proto, port) at the host's address.
std::vector<uint32_t> rules_at(const MapImage& image, uint32_t identity, uint16_t port, uint32_t host) {
    std::vector<uint32_t> out;
    const Cidr at{dns_host_address(host), 128};
    for (const PolicyRule& r : image.policy_rules)
        if (r.identity == identity && r.port == port && r.cidr == at) out.push_back(r.policy);
    return out;
}

}  // namespace

TEST_CASE("dns hosts: the host address is 100::N, the name the kernel's hash") {
    CHECK(dns_host_address(0x01020304).str() == "100::102:304");
    const DnsHostName exact = dns_host_name("api.example.com");
    CHECK_FALSE(exact.wildcard);
    CHECK(exact.name == dns::name_hash({"api", "example", "com"}));
    const DnsHostName wild = dns_host_name("*.example.com");
    CHECK(wild.wildcard);
    CHECK(wild.name == dns::name_hash({"example", "com"}));
}

TEST_CASE("dns hosts: each host name of a policy gets a number, an entry per source and its ports at 100::N") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    HostRegistry hosts;
    const PolicyList policies = {
        host_policy("api", {{"curl", "curl"}, {"curl", "batch"}}, {kTlsPort}, {"api.example.com"}),
        host_policy("any-example", {{"curl", "curl"}}, {kPlainPort}, {}, {"*.example.com"}),
    };
    PolicyInputs in{&policies, nullptr, &ids, &numbers};
    in.host_numbers = &hosts;
    auto image = build_image(agent, policies_in_force(), 1, in);
    REQUIRE(image.ok());
    const uint32_t curl = ids.find({"curl", "curl"}).value(), batch = ids.find({"curl", "batch"}).value();
    const uint32_t api = hosts.find(dns_host_name("api.example.com")).value();
    const uint32_t wild = hosts.find(dns_host_name("*.example.com")).value();
    CHECK(api != 0);
    CHECK(wild != api);
    CHECK((image->flags & EGRESSD_CFG_DNS_HOSTS) != 0);  // row 7 reads learned addresses
    IdentityRegistry other_ids;
    PolicyRegistry other_numbers;
    auto without_learning = build_image(agent, policies_in_force(), 1,
                                        PolicyInputs{&policies, nullptr, &other_ids, &other_numbers});
    REQUIRE(without_learning.ok());
    CHECK((without_learning->flags & EGRESSD_CFG_DNS_HOSTS) == 0);  // nothing to learn: row 7 does not look
    CHECK(without_learning->dns_hosts.empty());
    std::vector<DnsHostRule> expected = {{curl, dns_host_name("api.example.com"), api},
                                         {curl, dns_host_name("*.example.com"), wild},
                                         {batch, dns_host_name("api.example.com"), api}};
    std::sort(expected.begin(), expected.end());
    CHECK(image->dns_hosts == expected);
    const uint32_t api_policy = numbers.find({"curl", "api"}).value();
    const uint32_t wild_policy = numbers.find({"curl", "any-example"}).value();
    // The exact name: its own policy's 443, and port 80 from the wildcard that covers it (curl only).
    CHECK(rules_at(*image, curl, 443, api) == std::vector<uint32_t>{api_policy});
    CHECK(rules_at(*image, curl, 80, api) == std::vector<uint32_t>{wild_policy});
    CHECK(rules_at(*image, batch, 443, api) == std::vector<uint32_t>{api_policy});
    CHECK(rules_at(*image, batch, 80, api).empty());  // the wildcard's policy is not batch's
    // The wildcard itself: only its own port.
    CHECK(rules_at(*image, curl, 80, wild) == std::vector<uint32_t>{wild_policy});
    CHECK(rules_at(*image, curl, 443, wild).empty());
    CHECK(std::is_sorted(image->policy_rules.begin(), image->policy_rules.end()));
}

TEST_CASE("dns hosts: a wildcard covers longer wildcards and names below it, never its own domain") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    HostRegistry hosts;
    const PolicyList policies = {
        host_policy("a", {{"curl", "curl"}}, {kPlainPort}, {"example.com", "deep.eu.example.com"}, {"*.eu.example.com"}),
        host_policy("b", {{"curl", "curl"}}, {kTlsPort}, {}, {"*.example.com"}),
    };
    PolicyInputs in{&policies, nullptr, &ids, &numbers};
    in.host_numbers = &hosts;
    auto image = build_image(agent, policies_in_force(), 1, in);
    REQUIRE(image.ok());
    const uint32_t curl = ids.find({"curl", "curl"}).value();
    const auto number = [&](const char* host) { return hosts.find(dns_host_name(host)).value(); };
    CHECK(rules_at(*image, curl, 443, number("deep.eu.example.com")).size() == 1);  // below *.example.com
    CHECK(rules_at(*image, curl, 443, number("*.eu.example.com")).size() == 1);     // a longer wildcard
    CHECK(rules_at(*image, curl, 443, number("example.com")).empty());              // the domain itself
}

TEST_CASE("dns hosts: the rule cache gives the same image, and numbers stay while used") {
    AgentConfig agent;
    IdentityRegistry ids, cached_ids;
    PolicyRegistry numbers, cached_numbers;
    HostRegistry hosts, cached_hosts;
    PolicyRuleCache cache;
    PolicyList policies = {
        host_policy("api", {{"curl", "curl"}}, {kTlsPort}, {"api.example.com"}, {"*.cdn.example"}),
        host_policy("web", {{"curl", "web"}}, {kPlainPort, kTlsPort}, {"www.example.com"}),
    };
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        PolicyInputs plain{&policies, nullptr, &ids, &numbers};
        plain.host_numbers = &hosts;
        PolicyInputs cached{&policies, nullptr, &cached_ids, &cached_numbers, 0, &cache};
        cached.host_numbers = &cached_hosts;
        auto a = build_image(agent, policies_in_force(), 1, plain);
        auto b = build_image(agent, policies_in_force(), 1, cached);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        CHECK(a->policy_rules == b->policy_rules);
        CHECK(a->dns_hosts == b->dns_hosts);
        if (round == 0) {  // a new object for the changed policy, as a load makes
            EgressPolicy web = policies[1];
            web.hosts.push_back("static.example.com");
            policies = {policies[0], web};
        }
        if (round == 1) policies = {policies[1]};
    }
    CHECK(hosts.find(dns_host_name("www.example.com")).has_value());
}
