// Row 7 in the pure core: identities, workloads, policy rules in the image,
// the reference decision over them, and slot diffs of policy entries.
#include <netinet/in.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <set>

#include "core/decision.h"
#include "core/identity.h"
#include "core/image.h"
#include "core/map_codec.h"
#include "core/policy_rule_cache.h"
#include "core/workloads.h"

using namespace egressd;

namespace {

Cidr cidr(const char* text) { return Cidr::parse(text).value(); }
IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }

EgressPolicy policy(std::string ns, std::string name, std::vector<PolicySource> sources, std::vector<PolicyPort> ports,
                    std::vector<Cidr> ips = {}, std::vector<std::string> hosts = {}) {
    EgressPolicy p;
    p.api_version = "policy.flomesh.io/v1alpha1";
    p.namespace_ = std::move(ns);
    p.name = std::move(name);
    p.sources = std::move(sources);
    p.ports = std::move(ports);
    p.ip_addresses = std::move(ips);
    p.hosts = std::move(hosts);
    return p;
}

const PolicyPort kHttp{80, "http", IPPROTO_TCP};
const PolicyPort kDns{53, "udp", IPPROTO_UDP};

MeshConfig egress_off() {
    MeshConfig m;
    m.enable_egress = false;
    m.enable_egress_policy = true;
    return m;
}

}  // namespace

TEST_CASE("identity names parse as NAMESPACE/SERVICEACCOUNT") {
    CHECK(IdentityName::parse("curl/curl").value() == IdentityName{"curl", "curl"});
    for (const char* bad : {"curl", "/curl", "curl/", "a/b/c", ""}) {
        CAPTURE(bad);
        auto parsed = IdentityName::parse(bad);
        REQUIRE_FALSE(parsed.ok());
        CHECK(parsed.error().message.find("NAMESPACE/SERVICEACCOUNT") != std::string::npos);
    }
}

TEST_CASE("identity numbers are stable, never 0, and not reused after being forgotten") {
    IdentityRegistry registry;
    const uint32_t a = registry.number_for({"ns", "a"});
    const uint32_t b = registry.number_for({"ns", "b"});
    CHECK(a != 0);
    CHECK(b != a);
    CHECK(registry.number_for({"ns", "a"}) == a);
    registry.retain({b});
    CHECK_FALSE(registry.find({"ns", "a"}).has_value());
    CHECK(registry.number_for({"ns", "a"}) > b);  // a fresh number

    // Adopting what the kernel holds continues after its highest number.
    IdentityRegistry adopted({{7, {"ns", "x"}}, {3, {"ns", "y"}}});
    CHECK(adopted.find({"ns", "x"}) == 7u);
    CHECK(adopted.number_for({"ns", "new"}) == 8u);

    // Numbers that kept state still names (a learned DNS answer) are not handed out again.
    IdentityRegistry reserved({{3, {"ns", "y"}}});
    reserved.reserve_through(12);
    reserved.reserve_through(5);  // never lowers it
    CHECK(reserved.number_for({"ns", "new"}) == 13u);
    reserved.reserve_through(UINT32_MAX);  // no wrap to 0
    CHECK(reserved.number_for({"ns", "newer"}) == 14u);
}

TEST_CASE("the workloads file: parsing, errors, rendering round trip") {
    const std::string text =
        "workloads:\n"
        "  - cgroup: curl/curl\n    namespace: curl\n    serviceAccount: curl\n"
        "  - cgroup: ./web//\n    namespace: web\n    serviceAccount: client\n";
    auto parsed = parse_workloads(text, "w.yaml");
    REQUIRE(parsed.ok());
    REQUIRE(parsed->size() == 2);
    CHECK((*parsed)[1].cgroup == "web");
    CHECK((*parsed)[1].identity == IdentityName{"web", "client"});
    auto again = parse_workloads(render_workloads(*parsed), "w.yaml");
    REQUIRE(again.ok());
    CHECK(*again == *parsed);
    CHECK(parse_workloads("", "w.yaml").value().empty());
    CHECK(parse_workloads(render_workloads({}), "w.yaml").value().empty());

    const struct {
        const char* text;
        const char* message;
    } bad[] = {
        {"workloads:\n  - cgroup: ../escape\n    namespace: a\n    serviceAccount: b\n",
         "w.yaml:2:13: workloads[0].cgroup: \"../escape\" must be a path below the enforced cgroup"},
        {"workloads:\n  - cgroup: /abs\n    namespace: a\n    serviceAccount: b\n", "must be a path below"},
        {"workloads:\n  - cgroup: x\n    namespace: a\n", "workloads[0].serviceAccount"},
        {"workloads:\n  - cgroup: x\n    namespace: a\n    serviceAccount: b\n"
         "  - cgroup: x/\n    namespace: c\n    serviceAccount: d\n",
         "cgroup x is listed twice"},
        {"workloads:\n  - cgroup: x\n    namespace: a\n    serviceAccount: b\n    extra: 1\n", "extra: unknown key"},
    };
    for (const auto& c : bad) {
        CAPTURE(c.text);
        auto result = parse_workloads(c.text, "w.yaml");
        REQUIRE_FALSE(result.ok());
        CHECK(result.error().message.find(c.message) != std::string::npos);
    }
}

TEST_CASE("policies become one entry per source, port and destination") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    const PolicyList policies = {
        policy("curl", "by-address", {{"curl", "curl"}, {"curl", "other"}}, {kHttp, kDns},
               {cidr("203.0.113.0/24"), cidr("2001:db8::/32")}),
        policy("curl", "by-host", {{"curl", "curl"}}, {kHttp}, {}, {"api.test", "unresolved.test"}),
        policy("curl", "anywhere", {{"web", "client"}}, {kHttp}),
    };
    const std::map<std::string, std::vector<IpAddress>> hosts = {{"api.test", {ip("198.19.0.1"), ip("2001:db8:1::1")}}};
    auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, &hosts, &ids, &numbers, 2});
    REQUIRE(image.ok());
    CHECK(image->cgroup_level == 2);
    CHECK(image->policies.size() == 3);
    const uint32_t by_host = numbers.find({"curl", "by-host"}).value();
    CHECK(image->policies.at(by_host) == PolicyRef{"curl", "by-host"});
    // 2 sources x 2 ports x 2 CIDRs + 1 x 1 x 2 host addresses + 1 x 1 x any.
    CHECK(image->policy_rules.size() == 8 + 2 + 1);
    const uint32_t curl = ids.find({"curl", "curl"}).value();
    const uint32_t web = ids.find({"web", "client"}).value();
    CHECK(std::is_sorted(image->policy_rules.begin(), image->policy_rules.end()));
    const auto any = std::find_if(image->policy_rules.begin(), image->policy_rules.end(),
                                  [&](const PolicyRule& r) { return r.identity == web; });
    REQUIRE(any != image->policy_rules.end());
    CHECK(any->cidr.prefix == 0);
    CHECK(any->policy == numbers.find({"curl", "anywhere"}).value());
    const size_t curl_host_rules =
        std::count_if(image->policy_rules.begin(), image->policy_rules.end(),
                      [&](const PolicyRule& r) { return r.identity == curl && r.policy == by_host; });
    CHECK(curl_host_rules == 2);
}

TEST_CASE("a host policy with no addresses yet allows nothing, not everything") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    const PolicyList policies = {policy("curl", "by-host", {{"curl", "curl"}}, {kHttp}, {}, {"x.test"})};
    auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    REQUIRE(image.ok());
    CHECK(image->policy_rules.empty());
    const Decision d =
        decide(&*image, Query{ip("203.0.113.1"), 80, IPPROTO_TCP, 0, ids.find({"curl", "curl"}).value()});
    CHECK(d.reason == EGRESSD_REASON_DENY);
}

TEST_CASE("the same entry from two policies names the first policy") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    const PolicyList policies = {
        policy("a", "first", {{"ns", "sa"}}, {kHttp}, {cidr("203.0.113.0/24")}),
        policy("b", "second", {{"ns", "sa"}}, {kHttp}, {cidr("203.0.113.0/24"), cidr("203.0.113.128/25")}),
    };
    auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    REQUIRE(image.ok());
    CHECK(image->policy_rules.size() == 2);
    const uint32_t id = ids.find({"ns", "sa"}).value();
    const uint32_t first = numbers.find({"a", "first"}).value(), second = numbers.find({"b", "second"}).value();
    // Longest prefix wins: .200 is in the /25 of "second"; .1 only in the /24 both name, kept for "first".
    CHECK(decide(&*image, Query{ip("203.0.113.200"), 80, IPPROTO_TCP, 0, id}).rule == second);
    CHECK(decide(&*image, Query{ip("203.0.113.1"), 80, IPPROTO_TCP, 0, id}).rule == first);

    // Numbers stay with the names: the first in (namespace, name) order still
    // wins the shared entry when it was numbered after the other.
    PolicyRegistry late;
    late.number_for({"b", "second"});
    auto again = build_image(agent, egress_off(), 2, PolicyInputs{&policies, nullptr, &ids, &late, 0});
    REQUIRE(again.ok());
    CHECK(decide(&*again, Query{ip("203.0.113.1"), 80, IPPROTO_TCP, 0, id}).rule == late.find({"a", "first"}).value());
    CHECK(late.find({"a", "first"}).value() > late.find({"b", "second"}).value());
}

TEST_CASE("row 7 in the reference decision: identity, protocol, port, destination and the flags") {
    AgentConfig agent;
    agent.mesh_cidrs = {cidr("198.18.0.0/16")};
    IdentityRegistry ids;
    PolicyRegistry numbers;
    const PolicyList policies = {
        policy("curl", "web", {{"curl", "curl"}}, {kHttp}, {cidr("203.0.113.10/32")})};
    auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    REQUIRE(image.ok());
    const uint32_t curl = ids.find({"curl", "curl"}).value();
    const uint32_t stranger = curl + 100;
    const struct {
        const char* what;
        Query query;
        egressd_reason reason;
    } cases[] = {
        {"listed identity, port, protocol", {ip("203.0.113.10"), 80, IPPROTO_TCP, 0, curl}, EGRESSD_REASON_POLICY},
        {"v4-mapped destination", {ip("::ffff:203.0.113.10"), 80, IPPROTO_TCP, 0, curl}, EGRESSD_REASON_POLICY},
        {"other port", {ip("203.0.113.10"), 81, IPPROTO_TCP, 0, curl}, EGRESSD_REASON_DENY},
        {"other protocol", {ip("203.0.113.10"), 80, IPPROTO_UDP, 0, curl}, EGRESSD_REASON_DENY},
        {"other destination", {ip("203.0.113.11"), 80, IPPROTO_TCP, 0, curl}, EGRESSD_REASON_DENY},
        {"other identity", {ip("203.0.113.10"), 80, IPPROTO_TCP, 0, stranger}, EGRESSD_REASON_DENY},
        {"unknown identity", {ip("203.0.113.10"), 80, IPPROTO_TCP, 0, 0}, EGRESSD_REASON_DENY},
        {"mesh before policy", {ip("198.18.0.1"), 80, IPPROTO_TCP, 0, curl}, EGRESSD_REASON_MESH},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        CHECK(decide(&*image, c.query).reason == c.reason);
    }

    // enableEgressPolicy false (FSM semantics): row 7 is off; OSM semantics: on.
    MeshConfig no_flag = egress_off();
    no_flag.enable_egress_policy = false;
    const Query allowed{ip("203.0.113.10"), 80, IPPROTO_TCP, 0, curl};
    auto fsm = build_image(agent, no_flag, 2, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    CHECK(decide(&*fsm, allowed).reason == EGRESSD_REASON_DENY);
    agent.egress_policy_semantics = PolicySemantics::osm;
    auto osm = build_image(agent, no_flag, 3, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    CHECK(decide(&*osm, allowed).reason == EGRESSD_REASON_POLICY);
    // enableEgress true: passthrough decides first.
    MeshConfig on = egress_off();
    on.enable_egress = true;
    auto passthrough = build_image(agent, on, 4, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    CHECK(decide(&*passthrough, allowed).reason == EGRESSD_REASON_PASSTHROUGH);
}

TEST_CASE("policy rules and names round-trip through the kernel encoding") {
    const PolicyRule rule{42, IPPROTO_UDP, 5353, cidr("2001:db8:1::/48"), 7};
    const egressd_policy_rule_key key = encode_policy_rule_key(1, rule);
    CHECK(key.prefix == 48);
    CHECK(key.slot == 1);
    CHECK(decode_policy_rule(key, encode_policy_value(rule)).value() == rule);
    egressd_policy_rule_key torn = key;
    torn.prefix = 129;
    CHECK_FALSE(decode_policy_rule(torn, encode_policy_value(rule)).ok());
    torn = key;
    torn.prefix = 16;  // 2001:db8:1:: has bits past /16 set
    CHECK_FALSE(decode_policy_rule(torn, encode_policy_value(rule)).ok());

    const PolicyRef ref{"namespace", std::string(253, 'n')};
    CHECK(decode_policy_name(encode_policy_name(ref)) == ref);
    const IdentityName name{"ns", "sa"};
    CHECK(decode_identity_name(encode_identity_name(name)) == name);
}

TEST_CASE("the prefix lengths an identity's rules use, longest first; flagged only when there are prefixes") {
    for (const char* address : {"203.0.113.7/32", "2001:db8::7/128"}) {
        CAPTURE(address);
        const PolicyRule host{42, IPPROTO_TCP, 443, cidr(address), 7};
        CHECK(is_host_rule(host));
        CHECK(decode_policy_rule(encode_policy_rule_key(1, host), encode_policy_value(host)).value() == host);
        CHECK_FALSE(encode_policy_lengths(std::vector{host}).has_value());
    }
    CHECK_FALSE(is_host_rule(PolicyRule{42, IPPROTO_TCP, 443, cidr("203.0.113.0/31"), 7}));
    CHECK_FALSE(is_host_rule(PolicyRule{42, IPPROTO_TCP, 443, Cidr{}, 7}));  // ::/0, any destination
    const std::vector<PolicyRule> mixed = {
        {42, IPPROTO_TCP, 443, cidr("203.0.113.7/32"), 7},  {42, IPPROTO_TCP, 443, cidr("10.0.0.0/8"), 7},
        {42, IPPROTO_UDP, 53, cidr("10.1.0.0/16"), 8},      {42, IPPROTO_UDP, 53, cidr("192.168.0.0/16"), 8},
        {42, IPPROTO_TCP, 80, Cidr{}, 9},                   {42, IPPROTO_TCP, 81, cidr("2001:db8::/127"), 9}};
    const auto lengths = encode_policy_lengths(mixed);
    REQUIRE(lengths.has_value());
    // v4-mapped: /8 is 104, /16 is 112; ::/0 is 0.
    CHECK(std::vector<int>(lengths->lengths, lengths->lengths + lengths->count) == std::vector<int>{127, 112, 104, 0});

    AgentConfig agent;
    IdentityRegistry identities;
    PolicyRegistry numbers;
    auto has_prefixes = [&](PolicyList policies) {
        std::map<std::string, std::vector<IpAddress>> hosts{{"api.example.com", {ip("198.18.0.9")}}};
        auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, &hosts, &identities, &numbers});
        REQUIRE(image.ok());
        return (image->flags & EGRESSD_CFG_POLICY_PREFIXES) != 0;
    };
    const PolicySource web{"shop", "web"};
    CHECK_FALSE(has_prefixes({policy("shop", "a", {web}, {kHttp}, {cidr("203.0.113.7/32")}, {"api.example.com"})}));
    CHECK(has_prefixes({policy("shop", "a", {web}, {kHttp}, {cidr("203.0.113.0/24")})}));
    CHECK(has_prefixes({policy("shop", "any", {web}, {kHttp})}));  // ::/0
    CHECK_FALSE(has_prefixes({}));
}

TEST_CASE("policy entries and names diff between slots") {
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    PolicyList before = {policy("a", "p", {{"ns", "sa"}}, {kHttp}, {cidr("203.0.113.0/24")}),
                                        policy("a", "q", {{"ns", "sa"}}, {kDns}, {cidr("198.19.0.0/16")})};
    PolicyList after = {policy("a", "p", {{"ns", "sa"}}, {kHttp}, {cidr("203.0.113.0/25")})};
    auto from = build_image(agent, egress_off(), 1, PolicyInputs{&before, nullptr, &ids, &numbers, 0});
    auto to = build_image(agent, egress_off(), 2, PolicyInputs{&after, nullptr, &ids, &numbers, 0});
    const ImageDiff diff = diff_images(*from, *to);
    CHECK(diff.policy_deletes.size() == 2);
    CHECK(diff.policy_upserts.size() == 1);
    CHECK(diff.policy_name_deletes == std::vector<uint32_t>{numbers.find({"a", "q"}).value()});
    CHECK(diff.policy_name_upserts.empty());  // "p" keeps its number and name
    CHECK(diff_images(*to, *to).empty());

    // Names: gone before, between and after the kept ones; new and renamed.
    MapImage names_from, names_to;
    names_from.policies = {{1, {"a", "one"}}, {2, {"a", "two"}}, {4, {"a", "four"}}, {6, {"a", "six"}}};
    names_to.policies = {{2, {"a", "two"}}, {3, {"a", "three"}}, {4, {"b", "four"}}, {5, {"a", "five"}}};
    const ImageDiff names = diff_images(names_from, names_to);
    CHECK(names.policy_name_deletes == std::vector<uint32_t>{1, 6});
    CHECK(names.policy_name_upserts == std::vector<uint32_t>{3, 4, 5});
}

TEST_CASE("a policy set that does not fit is refused whole, naming the map and the numbers") {
    AgentConfig agent;
    agent.capacities.policy_rules = 3;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    const PolicyList policies = {
        policy("a", "p", {{"ns", "sa"}, {"ns", "sb"}}, {kHttp, kDns}, {cidr("203.0.113.0/24")})};
    auto image = build_image(agent, egress_off(), 1, PolicyInputs{&policies, nullptr, &ids, &numbers, 0});
    REQUIRE_FALSE(image.ok());
    CHECK(image.error().message ==
          "policy_rules_v1 needs 4 entries per generation, capacity is 3 (capacities.policyRules)");
}

// The agent builds with a PolicyRuleCache; every other build (egressctl,
// tests) goes without. Over random sequences of changes, with the agent's
// retention of numbers between builds, the two must give the same image.
TEST_CASE("a build with the policy rule cache equals a build without it, change after change") {
    const uint64_t seed = std::random_device{}();
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };

    const std::vector<Cidr> cidrs{cidr("203.0.113.0/24"), cidr("203.0.113.7/32"),  cidr("198.18.0.0/15"),
                                  cidr("2001:db8::/32"),  cidr("2001:db8::5/128"), cidr("198.18.1.1/32")};
    const std::vector<std::string> host_names{"a.example", "b.example", "c.example"};
    const std::vector<IpAddress> addresses{ip("203.0.113.7"), ip("203.0.113.8"), ip("2001:db8::5"), ip("198.18.1.1")};
    auto random_policy = [&](const std::string& name) {
        std::vector<PolicySource> sources;
        for (size_t n = 1 + pick(3); n > 0; --n)
            sources.push_back(PolicySource{"ns" + std::to_string(pick(3)), "sa" + std::to_string(pick(5))});
        std::vector<PolicyPort> ports{pick(2) ? kHttp : kDns};
        if (pick(3) == 0) ports.push_back(PolicyPort{443, "https", IPPROTO_TCP});
        std::vector<Cidr> ips;
        std::vector<std::string> hosts;
        for (size_t n = pick(3); n > 0; --n) ips.push_back(cidrs[pick(cidrs.size())]);
        if (pick(2)) hosts.push_back(host_names[pick(host_names.size())]);
        return policy("shop", name, std::move(sources), std::move(ports), std::move(ips), std::move(hosts));
    };

    AgentConfig agent;
    agent.capacities.policy_rules = 100000;
    std::map<std::string, EgressPolicy> by_name;  // sorted by name: PolicySet order within one namespace
    std::map<std::string, std::vector<IpAddress>> resolved;
    IdentityRegistry identities;
    PolicyRegistry policy_numbers;
    PolicyRuleCache cache;
    for (int step = 0; step < 300; ++step) {
        CAPTURE(step);
        switch (pick(4)) {
            case 0:
            case 1: {  // add or replace
                const std::string name = "p" + std::to_string(pick(12));
                by_name.insert_or_assign(name, random_policy(name));
                break;
            }
            case 2:
                if (!by_name.empty()) by_name.erase(std::next(by_name.begin(), pick(by_name.size())));
                break;
            case 3: {  // a host's answer changes
                auto& answer = resolved[host_names[pick(host_names.size())]];
                answer.clear();
                for (size_t n = pick(3); n > 0; --n) answer.push_back(addresses[pick(addresses.size())]);
                break;
            }
        }
        PolicyList policies;
        for (const auto& [name, p] : by_name) policies.push_back(p);

        PolicyInputs cached{&policies, &resolved, &identities, &policy_numbers, 0, &cache};
        auto with_cache = build_image(agent, egress_off(), 1, cached);
        REQUIRE(with_cache.ok());
        PolicyInputs plain{&policies, &resolved, &identities, &policy_numbers, 0};
        auto without = build_image(agent, egress_off(), 1, plain);
        REQUIRE(without.ok());
        CHECK(with_cache->policy_rules == without->policy_rules);
        CHECK(with_cache->policies == without->policies);
        CHECK(cache.rules() >= with_cache->policy_rules.size());

        // What the agent does after publishing: forget unused numbers.
        std::set<uint32_t> used_identities, used_policies;
        for (const auto& rule : with_cache->policy_rules) used_identities.insert(rule.identity);
        for (const auto& [number, ref] : with_cache->policies) used_policies.insert(number);
        identities.retain(used_identities);
        policy_numbers.retain(used_policies);
    }
}
