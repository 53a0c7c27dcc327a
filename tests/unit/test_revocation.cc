#include <doctest/doctest.h>

#include <netinet/in.h>

#include <algorithm>
#include <random>
#include <set>

#include "core/revocation.h"
#include "test_support.h"

using namespace egressd;
using egressd::test::cidrs;

namespace {

MapImage revocation_image(const AgentConfig& agent, const MeshConfig& mesh) {
    auto image = build_image(agent, mesh, 1);
    REQUIRE_MESSAGE(image.ok(), egressd::test::why(image));
    return *image;
}

IpAddress address(const char* text) { return IpAddress::parse(text).value(); }

OpenSocket tcp_to(uint64_t cookie, const char* peer, uint16_t port, uint64_t cgroup = 100, uint32_t uid = 0) {
    OpenSocket s;
    s.cookie = cookie;
    s.cgroup_id = cgroup;
    s.peer = address(peer);
    s.port = port;
    s.local_port = uint16_t(40000 + cookie);
    s.proto = IPPROTO_TCP;
    s.uid = uid;
    return s;
}

std::vector<uint64_t> cookies_of(const std::vector<Revocation>& revoked) {
    std::vector<uint64_t> out;
    for (const Revocation& r : revoked) out.push_back(r.socket.cookie);
    return out;
}

}  // namespace

TEST_CASE("may_tighten on policy rules: any key withdrawn, wherever the change is") {
    const uint64_t seed = std::random_device{}();
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&rng](uint32_t n) { return uint32_t(rng() % n); };
    auto random_rule = [&] {
        IpAddress a = IpAddress::parse("198.18.0.0").value();
        a.bytes[15] = uint8_t(pick(8));
        return PolicyRule{1 + pick(6), pick(2) ? uint8_t(IPPROTO_TCP) : uint8_t(IPPROTO_UDP), uint16_t(80 + pick(2)),
                          Cidr{a, 128}, 1 + pick(3)};
    };
    auto sorted_unique = [](std::vector<PolicyRule> rules) {
        auto key = [](const PolicyRule& r) { return std::tie(r.identity, r.proto, r.port, r.cidr); };
        std::sort(rules.begin(), rules.end(), [&](const auto& x, const auto& y) { return key(x) < key(y); });
        rules.erase(std::unique(rules.begin(), rules.end(), [&](const auto& x, const auto& y) { return key(x) == key(y); }),
                    rules.end());
        return rules;
    };
    for (int round = 0; round < 2000; ++round) {
        CAPTURE(round);
        std::vector<PolicyRule> before_rules;
        for (uint32_t n = pick(60); n > 0; --n) before_rules.push_back(random_rule());
        before_rules = sorted_unique(before_rules);
        // A change somewhere: rules added, removed or given to another policy.
        std::vector<PolicyRule> after_rules = before_rules;
        for (uint32_t n = 1 + pick(3); n > 0; --n) {
            const uint32_t what = pick(3);
            if (what == 0 || after_rules.empty()) {
                after_rules.push_back(random_rule());
            } else {
                const size_t at = pick(uint32_t(after_rules.size()));
                if (what == 1)
                    after_rules.erase(after_rules.begin() + long(at));
                else
                    after_rules[at].policy = 1 + pick(3);
            }
        }
        after_rules = sorted_unique(after_rules);
        std::set<std::tuple<uint32_t, uint8_t, uint16_t, Cidr>> after_keys;
        for (const PolicyRule& r : after_rules) after_keys.insert({r.identity, r.proto, r.port, r.cidr});
        const bool withdrawn = std::ranges::any_of(before_rules, [&](const PolicyRule& r) {
            return !after_keys.contains({r.identity, r.proto, r.port, r.cidr});
        });
        MapImage before, after;
        before.flags = after.flags = EGRESSD_CFG_VALID | EGRESSD_CFG_POLICY_ACTIVE;
        before.policy_rules = before_rules;
        after.policy_rules = after_rules;
        CHECK(may_tighten(before, after) == withdrawn);
    }
}

TEST_CASE("may_tighten: withdrawing what allows tightens; adding does not") {
    AgentConfig agent;
    agent.mesh_cidrs = cidrs({"10.0.0.0/8"});
    MeshConfig open;
    open.enable_egress = true;
    open.outbound_ip_range_exclusion = cidrs({"192.0.2.0/24"});
    open.outbound_port_exclusion = {8443};
    const MapImage base = revocation_image(agent, open);

    MeshConfig closed = open;
    closed.enable_egress = false;
    CHECK(may_tighten(base, revocation_image(agent, closed)));
    CHECK_FALSE(may_tighten(revocation_image(agent, closed), base));

    MeshConfig fewer_exclusions = open;
    fewer_exclusions.outbound_ip_range_exclusion.clear();
    CHECK(may_tighten(base, revocation_image(agent, fewer_exclusions)));
    MeshConfig more_exclusions = open;
    more_exclusions.outbound_ip_range_exclusion.push_back(Cidr::parse("198.51.100.0/24").value());
    CHECK_FALSE(may_tighten(base, revocation_image(agent, more_exclusions)));

    MeshConfig no_ports = open;
    no_ports.outbound_port_exclusion.clear();
    CHECK(may_tighten(base, revocation_image(agent, no_ports)));

    MeshConfig included = open;
    included.outbound_ip_range_inclusion = cidrs({"203.0.113.0/24"});
    CHECK(may_tighten(base, revocation_image(agent, included)));
    CHECK(may_tighten(revocation_image(agent, included), base));

    AgentConfig no_mesh = agent;
    no_mesh.mesh_cidrs.clear();
    CHECK(may_tighten(base, revocation_image(no_mesh, open)));
    AgentConfig no_sidecar = agent;
    no_sidecar.sidecar_uid.reset();
    CHECK(may_tighten(base, revocation_image(no_sidecar, open)));
    AgentConfig audit = agent;
    audit.audit = true;
    CHECK(may_tighten(revocation_image(audit, closed), revocation_image(agent, closed)));
    CHECK_FALSE(may_tighten(base, base));

    // enableEgressPolicy going off with egress off withdraws the policies;
    // passthrough replacing them does not.
    MeshConfig no_policies = closed;
    no_policies.enable_egress_policy = false;
    CHECK(may_tighten(revocation_image(agent, closed), revocation_image(agent, no_policies)));
    CHECK_FALSE(may_tighten(revocation_image(agent, closed), base));
}

TEST_CASE("sockets_to_revoke: what the image denies, never loopback, mesh, sidecar, accepted or unenforced") {
    AgentConfig agent;
    agent.mesh_cidrs = cidrs({"10.0.0.0/8"});
    const MapImage image = revocation_image(agent, MeshConfig{});  // enableEgress false
    RevocationContext context;
    context.image = &image;
    context.identity_of = [](uint64_t cgroup) -> std::optional<uint32_t> {
        if (cgroup == 100) return 0u;
        return std::nullopt;
    };
    OpenSocket listener = tcp_to(9, "::", 0);
    listener.listening = true;
    listener.local_port = 8080;
    OpenSocket accepted = tcp_to(10, "203.0.113.50", 51000);
    accepted.local_port = 8080;
    OpenSocket udp = tcp_to(7, "203.0.113.53", 53);
    udp.proto = IPPROTO_UDP;
    const std::vector<OpenSocket> sockets = {
        tcp_to(1, "203.0.113.10", 443),  // denied now
        tcp_to(2, "127.0.0.1", 80),      // row 1
        tcp_to(3, "10.1.2.3", 80),       // row 5
        tcp_to(4, "203.0.113.10", 443, 100, 1500),  // row 2: the sidecar's
        tcp_to(5, "203.0.113.10", 443, 200),        // another cgroup: not enforced
        listener,
        accepted,
        udp,  // denied now
    };
    const auto revoked = sockets_to_revoke(sockets, context);
    CHECK(cookies_of(revoked) == std::vector<uint64_t>{1, 7});
    CHECK(revoked[0].decision.reason == EGRESSD_REASON_DENY);

    AgentConfig audit = agent;
    audit.audit = true;
    const MapImage audited = revocation_image(audit, MeshConfig{});
    context.image = &audited;
    CHECK(sockets_to_revoke(sockets, context).empty());
}

TEST_CASE("sockets_to_revoke: an address learned from DNS stays allowed after it expires") {
    // A policy host's rules live at its address 100::N; the learned entry
    // names host N for the identity, expired or not.
    AgentConfig agent;
    MeshConfig mesh;
    mesh.enable_egress_policy = true;
    MapImage image = revocation_image(agent, mesh);
    image.flags |= EGRESSD_CFG_DNS_HOSTS;
    image.policy_rules.push_back(PolicyRule{7, IPPROTO_TCP, 443, Cidr{dns_host_address(3), 128}, 1});
    RevocationContext context;
    context.image = &image;
    context.identity_of = [](uint64_t) -> std::optional<uint32_t> { return 7u; };
    context.learned_host = [](uint32_t identity, const IpAddress& peer) -> uint32_t {
        return identity == 7 && peer == IpAddress::parse("203.0.113.7").value() ? 3 : 0;
    };
    const std::vector<OpenSocket> sockets = {tcp_to(1, "203.0.113.7", 443), tcp_to(2, "203.0.113.8", 443)};
    CHECK(cookies_of(sockets_to_revoke(sockets, context)) == std::vector<uint64_t>{2});
}

TEST_CASE("derived_identity follows the kernel: own registration, else the nearest registered ancestor in range") {
    CgroupAncestry tree;
    // enforced root 1 (level 3) > pod 2 > container 3 > deep chain 4..13
    tree.parent = {{1, 0}, {2, 1}, {3, 2}};
    tree.level = {{1, 3}, {2, 4}, {3, 5}};
    uint64_t parent = 3;
    for (uint64_t id = 4; id <= 13; ++id) {
        tree.parent[id] = parent;
        tree.level[id] = tree.level[parent] + 1;
        parent = id;
    }
    const std::map<uint64_t, uint32_t> workloads = {{2, 42}, {5, 43}};
    CHECK(derived_identity(2, tree, workloads, 3) == 42u);
    CHECK(derived_identity(3, tree, workloads, 3) == 42u);
    CHECK(derived_identity(6, tree, workloads, 3) == 43u);
    CHECK(derived_identity(1, tree, workloads, 3) == 0u);
    CHECK_FALSE(derived_identity(99, tree, workloads, 3).has_value());
    // Level 12 and deeper: ancestors above level 11 (3 + 8) are out of range,
    // and 5 (level 7) is the nearest registered one within it.
    CHECK(derived_identity(13, tree, workloads, 3) == 43u);
    const std::map<uint64_t, uint32_t> only_pod = {{2, 42}};
    CHECK(derived_identity(13, tree, only_pod, 3) == 42u);  // pod at level 4: in range
}
