// The agent's update path: the policy rule cache reading one shared,
// immutable policy list across builds (a MeshConfig toggle, a host's new
// answer), policies with and without hosts side by side, and the diff's
// shortcut over equal rules. Each is checked against the plain build.
#include <netinet/in.h>

#include <doctest/doctest.h>

#include <memory>
#include <random>
#include <set>

#include "core/dns_hosts.h"
#include "core/image.h"
#include "core/policy_rule_cache.h"

using namespace egressd;

namespace rule_cache_test {

Cidr prefix(const char* text) { return Cidr::parse(text).value(); }
IpAddress address(const char* text) { return IpAddress::parse(text).value(); }

const PolicyPort kWeb{80, "http", IPPROTO_TCP};
const PolicyPort kTls{443, "https", IPPROTO_TCP};
const PolicyPort kDnsPort{53, "udp", IPPROTO_UDP};

MeshConfig mesh(bool enable_egress) {
    MeshConfig m;
    m.enable_egress = enable_egress;
    m.enable_egress_policy = true;
    return m;
}

// shop/<name>, from shop/web to port 80, with no destination yet.
EgressPolicy web_policy(const std::string& name) {
    EgressPolicy p;
    p.api_version = "policy.flomesh.io/v1alpha1";
    p.namespace_ = "shop";
    p.name = name;
    p.sources = {PolicySource{"shop", "web"}};
    p.ports = {kWeb};
    return p;
}

// What applying `diff` to `from` leaves, for the policy rules (keys are unique).
std::vector<PolicyRule> apply_rules(const std::vector<PolicyRule>& from, const ImageDiff& diff) {
    auto key = [](const PolicyRule& r) { return std::make_tuple(r.identity, r.proto, r.port, r.cidr); };
    std::map<decltype(key(from.front())), PolicyRule> by_key;
    for (const PolicyRule& r : from) by_key[key(r)] = r;
    for (const PolicyRule& r : diff.policy_deletes) by_key.erase(key(r));
    for (const PolicyRule& r : diff.policy_upserts) by_key[key(r)] = r;
    std::vector<PolicyRule> out;
    for (const auto& [k, r] : by_key) out.push_back(r);
    return out;
}

}  // namespace rule_cache_test

using namespace rule_cache_test;

TEST_CASE("the rule cache on a shared policy list equals the plain build, change after change") {
    const uint64_t seed = std::random_device{}();
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };

    // 100::1 and 100::2 are where row 7 keeps host names' rules: a policy
    // that lists them meets those keys.
    const std::vector<Cidr> prefixes{prefix("203.0.113.0/24"), prefix("203.0.113.7/32"), prefix("198.18.0.0/15"),
                                     prefix("2001:db8::/32"),  prefix("198.18.1.1/32"),  prefix("100::1/128"),
                                     prefix("100::2/128")};
    const std::vector<std::string> host_names{"a.example", "b.example", "*.example", "c.example"};
    const std::vector<IpAddress> addresses{address("203.0.113.7"), address("203.0.113.8"), address("2001:db8::5")};
    auto random_policy = [&](const std::string& name) {
        EgressPolicy p;
        p.api_version = "policy.flomesh.io/v1alpha1";
        p.namespace_ = "shop";
        p.name = name;
        for (size_t n = 1 + pick(3); n > 0; --n)
            p.sources.push_back(PolicySource{"ns" + std::to_string(pick(2)), "sa" + std::to_string(pick(4))});
        p.ports = {pick(2) ? kWeb : kDnsPort};
        if (pick(3) == 0) p.ports.push_back(kTls);
        for (size_t n = pick(3); n > 0; --n) p.ip_addresses.push_back(prefixes[pick(prefixes.size())]);
        if (pick(3) == 0) {  // a third of the policies name a host
            const std::string& host = host_names[pick(host_names.size())];
            (host.starts_with("*.") ? p.wildcard_hosts : p.hosts).push_back(host);
        }
        return p;
    };

    AgentConfig agent;
    agent.capacities.policy_rules = 100000;
    std::map<std::string, EgressPolicy> by_name;
    std::map<std::string, std::vector<IpAddress>> resolved;
    IdentityRegistry ids, cached_ids;
    PolicyRegistry numbers, cached_numbers;
    HostRegistry hosts, cached_hosts;
    PolicyRuleCache cache;
    auto list = std::make_shared<const PolicyList>();
    std::shared_ptr<const PolicyList> cache_list;  // the list the last build read
    std::optional<MapImage> previous;
    int deltas_used = 0;
    for (int step = 0; step < 300; ++step) {
        CAPTURE(step);
        bool enable_egress = false;
        const size_t change = pick(7);
        switch (change) {
            case 5:  // a rename: the same rules under another name, maybe sharing keys
                if (!by_name.empty()) {
                    auto it = std::next(by_name.begin(), pick(by_name.size()));
                    EgressPolicy renamed = it->second;
                    renamed.name = "p" + std::to_string(pick(10));
                    by_name.erase(it);
                    by_name.insert_or_assign(renamed.name, renamed);
                }
                break;
            case 6:  // several policies at once, added, replaced and removed
                for (size_t n = 2 + pick(3); n > 0; --n) {
                    const std::string name = "p" + std::to_string(pick(10));
                    if (pick(3) == 0)
                        by_name.erase(name);
                    else
                        by_name.insert_or_assign(name, random_policy(name));
                }
                break;
            case 0:
            case 1: {  // add or replace: a new list
                const std::string name = "p" + std::to_string(pick(10));
                by_name.insert_or_assign(name, random_policy(name));
                break;
            }
            case 2:
                if (!by_name.empty()) by_name.erase(std::next(by_name.begin(), pick(by_name.size())));
                break;
            case 3: {  // a host's answer changes; the same list
                auto& answer = resolved[host_names[pick(host_names.size())]];
                answer.clear();
                for (size_t n = pick(3); n > 0; --n) answer.push_back(addresses[pick(addresses.size())]);
                break;
            }
            case 4:  // a MeshConfig toggle; the same list
                enable_egress = pick(2);
                break;
        }
        PolicyList policies;
        for (const auto& [name, p] : by_name) policies.push_back(p);
        if (policies != *list) list = std::make_shared<const PolicyList>(std::move(policies));

        const auto previous_list = step > 0 ? cache_list : nullptr;
        cache_list = list;
        cache.set_policies(list);
        PolicyInputs cached{list.get(), &resolved, &cached_ids, &cached_numbers, 0, &cache, &cached_hosts};
        auto with_cache = build_image(agent, mesh(enable_egress), 1, cached);
        REQUIRE(with_cache.ok());

        // What the cache says changed, for the log: as a comparison of the two lists says.
        const PolicyRuleCache::Changes& found = cache.last_changes();
        CHECK(found.since == previous_list);
        std::vector<PolicyRef> added, changed, removed;
        std::map<PolicyRef, const EgressPolicy*> before;
        if (previous_list)
            for (const EgressPolicy& p : *previous_list) before[{p.namespace_, p.name}] = &p;
        for (const EgressPolicy& p : *list) {
            auto it = before.find({p.namespace_, p.name});
            if (it == before.end())
                added.push_back({p.namespace_, p.name});
            else if (!(*it->second == p))
                changed.push_back({p.namespace_, p.name});
            if (it != before.end()) before.erase(it);
        }
        for (const auto& [ref, p] : before) removed.push_back(ref);
        CHECK(found.added == added);
        CHECK(found.changed == changed);
        CHECK(found.removed == removed);
        PolicyInputs plain{list.get(), &resolved, &ids, &numbers, 0, nullptr, &hosts};
        auto without = build_image(agent, mesh(enable_egress), 1, plain);
        REQUIRE(without.ok());
        // Same registries' history on both sides: the very same image.
        CHECK(*with_cache == *without);

        if (previous) {
            // A toggle shares the previous image's rules: nothing to copy, compare or diff.
            if (change == 4) CHECK(with_cache->policy_rules.shares_with(previous->policy_rules));
            const ImageDiff diff = diff_images(*previous, *with_cache);
            CHECK(apply_rules(previous->policy_rules.vector(), diff) == with_cache->policy_rules.vector());
            // The cache's delta, where it stands for the comparison, gives the same diff.
            if (const std::optional<RulesDelta> delta = cache.take_delta();
                delta && delta->from.shares_with(previous->policy_rules) &&
                delta->to.shares_with(with_cache->policy_rules)) {
                ++deltas_used;
                const ImageDiff by_delta = diff_images(*previous, *with_cache, &*delta);
                CHECK(by_delta.policy_deletes == diff.policy_deletes);
                CHECK(by_delta.policy_upserts == diff.policy_upserts);
            }
        }
        previous = *with_cache;

        // What the agent does after publishing: forget unused numbers.
        for (auto* side : {&*with_cache, &*without}) {
            std::set<uint32_t> used_identities, used_policies, used_hosts;
            for (const auto& rule : side->policy_rules) used_identities.insert(rule.identity);
            for (const auto& [number, ref] : side->policies) used_policies.insert(number);
            for (const auto& rule : side->dns_hosts) used_hosts.insert(rule.number);
            const bool is_cached = side == &*with_cache;
            (is_cached ? cached_ids : ids).retain(used_identities);
            (is_cached ? cached_numbers : numbers).retain(used_policies);
            (is_cached ? cached_hosts : hosts).retain(used_hosts);
        }
    }
    MESSAGE("diffs compared with the cache's delta: ", deltas_used);
}

// Policies with keys of their own: each change's delta is known, holds only
// the change, and gives the diff a full comparison gives.
TEST_CASE("the rule cache's delta is the change alone, and the diff it gives is the full one") {
    auto policy = [](const std::string& name, std::vector<Cidr> ips) {
        EgressPolicy p = web_policy(name);
        p.ip_addresses = std::move(ips);
        return p;
    };
    AgentConfig agent;
    IdentityRegistry ids;
    PolicyRegistry numbers;
    HostRegistry hosts;
    PolicyRuleCache cache;
    std::optional<MapImage> previous;
    // Each step: the policies, then how many rules the delta upserts and deletes.
    // Many rules that stay: a delta is made for a change that is small against them.
    std::vector<Cidr> many;
    for (int i = 0; i < 40; ++i) many.push_back(prefix(("198.19.0." + std::to_string(i) + "/32").c_str()));
    const EgressPolicy base = policy("z-base", many);
    const std::vector<std::tuple<PolicyList, size_t, size_t>> steps = {
        {{policy("a", {prefix("203.0.113.1/32"), prefix("203.0.113.2/32")}), policy("b", {prefix("198.18.0.0/15")}),
          base},
         43, 0},
        {{policy("a", {prefix("203.0.113.1/32"), prefix("203.0.113.2/32")}), policy("b", {prefix("198.18.0.0/15")}),
          policy("c", {prefix("203.0.113.3/32")}), base},
         1, 0},  // c added
        {{policy("a", {prefix("203.0.113.1/32"), prefix("203.0.113.9/32")}), policy("b", {prefix("198.18.0.0/15")}),
          policy("c", {prefix("203.0.113.3/32")}), base},
         1, 1},  // a: .2 replaced by .9, .1 kept
        {{policy("a", {prefix("203.0.113.1/32"), prefix("203.0.113.9/32")}), policy("c", {prefix("203.0.113.3/32")}),
          base},
         0, 1},  // b removed
    };
    for (size_t step = 0; step < steps.size(); ++step) {
        CAPTURE(step);
        const auto& [policies, upserts, deletes] = steps[step];
        auto list = std::make_shared<const PolicyList>(policies);
        cache.set_policies(list);
        PolicyInputs in{list.get(), nullptr, &ids, &numbers, 0, &cache, &hosts};
        auto image = build_image(agent, mesh(false), step + 1, in);
        REQUIRE(image.ok());
        const std::optional<RulesDelta> delta = cache.take_delta();
        // A first build (everything new) has none: a walk diffs it as fast.
        if (step == 0) {
            CHECK_FALSE(delta.has_value());
            previous = *image;
            continue;
        }
        REQUIRE(delta.has_value());
        CHECK_FALSE(cache.take_delta().has_value());  // taken once
        CHECK(delta->to.shares_with(image->policy_rules));
        CHECK(delta->upserts.size() == upserts);
        CHECK(delta->deletes.size() == deletes);
        CHECK(delta->from.shares_with(previous->policy_rules));
        const ImageDiff full = diff_images(*previous, *image), by_delta = diff_images(*previous, *image, &*delta);
        CHECK(by_delta.policy_upserts == full.policy_upserts);
        CHECK(by_delta.policy_deletes == full.policy_deletes);
        previous = *image;
    }
}

// A change to policies without host names keeps the host names' part (the
// same covering rules), unless a policy lists a host's own address 100::N:
// its rule then meets a covering rule's key, and the part must be made again.
TEST_CASE("the host names' part is kept across other policies' changes, unless one lists 100::N") {
    auto policy = web_policy;
    EgressPolicy wildcard = policy("a-wildcard");
    wildcard.wildcard_hosts = {"*.example"};
    EgressPolicy host = policy("b-host");
    host.hosts = {"api.example"};
    host.ports = {kTls};  // the wildcard's port 80 at api.example is a covering rule
    EgressPolicy other = policy("c-other");
    other.ip_addresses = {prefix("203.0.113.7/32")};

    AgentConfig agent;
    std::map<std::string, std::vector<IpAddress>> resolved;
    IdentityRegistry ids, cached_ids;
    PolicyRegistry numbers, cached_numbers;
    HostRegistry hosts, cached_hosts;
    PolicyRuleCache cache;
    auto build_both = [&](PolicyList policies) {
        auto list = std::make_shared<const PolicyList>(std::move(policies));
        cache.set_policies(list);
        auto cached = build_image(agent, mesh(false), 1,
                                  PolicyInputs{list.get(), &resolved, &cached_ids, &cached_numbers, 0, &cache, &cached_hosts});
        auto plain =
            build_image(agent, mesh(false), 1, PolicyInputs{list.get(), &resolved, &ids, &numbers, 0, nullptr, &hosts});
        REQUIRE(cached.ok());
        REQUIRE(plain.ok());
        CHECK(*cached == *plain);
        return *cached;
    };
    const MapImage first = build_both({wildcard, host});
    // The wildcard covers api.example: one covering rule at api.example's 100::N.
    uint32_t api = 0;
    for (const auto& [number, name] : first.dns_host_names)
        if (name == "api.example") api = number;
    REQUIRE(api != 0);
    const Cidr api_address{dns_host_address(api), 128};
    auto rules_at = [&](const MapImage& image) {
        return std::count_if(image.policy_rules.begin(), image.policy_rules.end(),
                             [&](const PolicyRule& r) { return r.cidr == api_address; });
    };
    CHECK(rules_at(first) == 2);  // the host's own (443) and the wildcard's covering one (80)

    // Another policy, no host names: the cache reuses its part (build_both
    // checks the result against the plain build, which makes it anew).
    const MapImage second = build_both({wildcard, host, other});
    CHECK(second.dns_hosts == first.dns_hosts);
    // That policy now lists 100::N itself, on port 80: its rule takes the key,
    // once (covering rules only fill in).
    other.ip_addresses.push_back(api_address);
    const MapImage third = build_both({wildcard, host, other});
    CHECK(rules_at(third) == 2);
}

TEST_CASE("diff: one rule more among many equal ones is one upsert; one less is one delete") {
    std::vector<PolicyRule> rules;
    for (uint32_t identity = 1; identity <= 50; ++identity)
        for (uint16_t port : {80, 443})
            rules.push_back(PolicyRule{identity, IPPROTO_TCP, port, prefix("198.18.0.1/32"), identity});
    MapImage from, to;
    from.policy_rules = rules;
    to.policy_rules = rules;
    const PolicyRule added{25, IPPROTO_TCP, 80, prefix("198.18.0.2/32"), 99};
    to.policy_rules.edit().insert(to.policy_rules.edit().begin() + 49, added);  // after (25, tcp, 80, 198.18.0.1)
    ImageDiff diff = diff_images(from, to);
    CHECK(diff.policy_deletes.empty());
    REQUIRE(diff.policy_upserts.size() == 1);
    CHECK(diff.policy_upserts.front() == added);

    diff = diff_images(to, from);
    CHECK(diff.policy_upserts.empty());
    REQUIRE(diff.policy_deletes.size() == 1);
    CHECK(diff.policy_deletes.front() == added);

    to.policy_rules = rules;
    to.policy_rules.edit()[10].policy = 7;  // same key, another policy: an upsert of its value
    diff = diff_images(from, to);
    CHECK(diff.policy_deletes.empty());
    REQUIRE(diff.policy_upserts.size() == 1);
    CHECK(diff.policy_upserts.front() == to.policy_rules[10]);
}

// A rename drops the old name's number while the new name's rules take the
// same keys: the cache places them among rules of a policy that is gone.
TEST_CASE("the rule cache after a rename, and after a rule moved between policies, equals the plain build") {
    auto policy = [](const std::string& name, const char* ip) {
        EgressPolicy p = web_policy(name);
        p.ip_addresses = {prefix(ip)};
        return p;
    };
    const std::vector<PolicyList> lists = {
        {policy("a", "203.0.113.1/32"), policy("m", "203.0.113.5/32")},
        {policy("b", "203.0.113.1/32"), policy("m", "203.0.113.5/32")},  // a renamed b
        {policy("b", "203.0.113.5/32"), policy("m", "203.0.113.1/32")},  // the rules swap policies
        {policy("c", "203.0.113.5/32"), policy("m", "203.0.113.1/32")},  // b renamed c, keys kept
    };
    AgentConfig agent;
    IdentityRegistry ids, cached_ids;
    PolicyRegistry numbers, cached_numbers;
    HostRegistry hosts, cached_hosts;
    PolicyRuleCache cache;
    for (size_t step = 0; step < lists.size(); ++step) {
        CAPTURE(step);
        auto list = std::make_shared<const PolicyList>(lists[step]);
        cache.set_policies(list);
        PolicyInputs cached{list.get(), nullptr, &cached_ids, &cached_numbers, 0, &cache, &cached_hosts};
        PolicyInputs plain{list.get(), nullptr, &ids, &numbers, 0, nullptr, &hosts};
        auto with_cache = build_image(agent, mesh(false), step + 1, cached);
        auto without = build_image(agent, mesh(false), step + 1, plain);
        REQUIRE(with_cache.ok());
        REQUIRE(without.ok());
        CHECK(*with_cache == *without);
        for (auto* registry : {&cached_numbers, &numbers}) {  // as the agent does after publishing
            std::set<uint32_t> used;
            for (const auto& [number, ref] : with_cache->policies) used.insert(number);
            registry->retain(used);
        }
    }
}
