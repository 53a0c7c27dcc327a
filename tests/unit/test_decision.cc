#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <initializer_list>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "test_support.h"
#include "core/decision.h"

using namespace egressd;
using egressd::test::cidrs;

namespace {

MapImage image_of(const AgentConfig& agent, const MeshConfig& mesh) {
    auto image = build_image(agent, mesh, 1);
    REQUIRE_MESSAGE(image.ok(), egressd::test::why(image));
    return *image;
}

std::string text(const Decision& d) {
    return fmt::format("{} {} {}", d.verdict == EGRESSD_VERDICT_ALLOW ? "allow" : "deny", reason_name(d.reason),
                       d.rule);
}

struct Case {
    const MapImage* image;
    std::string dst;
    uint16_t port;
    uint32_t uid;
    std::string expected;  // "<verdict> <reason> <rule>"
};

void check_cases(std::initializer_list<Case> cases) {
    for (const Case& c : cases) {
        CAPTURE(c.dst);
        CAPTURE(c.port);
        CAPTURE(c.uid);
        auto dst = IpAddress::parse(c.dst);
        REQUIRE(dst.ok());
        CHECK(text(decide(c.image, Query{*dst, c.port, 6, c.uid})) == c.expected);
    }
}

// Egress off, the default sidecar uid 1500, nested exclusions and mesh CIDRs.
struct Images {
    AgentConfig agent;
    MeshConfig mesh;
    Images() {
        mesh.outbound_ip_range_exclusion = cidrs({"10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "10.1.2.0/24"});
        mesh.outbound_port_exclusion = {22, 5432};
        agent.mesh_cidrs =
            cidrs({"172.20.0.0/16", "10.1.5.0/24", "fd00:10:244::/56", "100.64.0.0/10", "100.64.1.0/24"});
    }
};

}  // namespace

TEST_CASE("decide: rows 1-8 in order, egress disabled") {
    const Images setup;
    const MapImage image = image_of(setup.agent, setup.mesh);
    const MapImage* i = &image;
    check_cases({
        // Row 1: loopback and unspecified, in both families.
        {i, "127.0.0.1", 80, 0, "allow local 0"},
        {i, "127.255.255.254", 80, 0, "allow local 0"},
        {i, "0.0.0.0", 80, 0, "allow local 0"},
        {i, "::1", 80, 0, "allow local 0"},
        {i, "::", 80, 0, "allow local 0"},
        {i, "::ffff:127.0.0.1", 80, 0, "allow local 0"},
        {i, "128.0.0.1", 80, 0, "deny deny 0"},
        {i, "::2", 80, 0, "deny deny 0"},
        // Row 2 comes before the exclusions.
        {i, "8.8.8.8", 443, 1500, "allow sidecar-uid 0"},
        {i, "10.1.2.3", 443, 1500, "allow sidecar-uid 0"},
        // Row 3, CIDRs: the longest prefix decides which rule explains it.
        {i, "10.9.9.9", 443, 0, "allow excluded-cidr 0"},
        {i, "10.1.9.9", 443, 0, "allow excluded-cidr 1"},
        {i, "10.1.2.3", 443, 0, "allow excluded-cidr 3"},
        {i, "::ffff:10.1.2.3", 443, 0, "allow excluded-cidr 3"},
        {i, "2001:db8::1", 443, 0, "allow excluded-cidr 2"},
        // An excluded CIDR beats a mesh CIDR, and is looked up before the port.
        {i, "10.1.5.5", 443, 0, "allow excluded-cidr 1"},
        {i, "10.9.9.9", 22, 0, "allow excluded-cidr 0"},
        // Row 3, ports; a port exclusion beats a mesh CIDR.
        {i, "8.8.8.8", 22, 0, "allow excluded-port 0"},
        {i, "8.8.8.8", 5432, 0, "allow excluded-port 1"},
        {i, "172.20.3.4", 22, 0, "allow excluded-port 0"},
        // Row 5: mesh CIDRs, the most specific rule.
        {i, "172.20.3.4", 80, 0, "allow mesh 0"},
        {i, "100.64.1.7", 80, 0, "allow mesh 4"},
        {i, "100.64.2.7", 80, 0, "allow mesh 3"},
        {i, "fd00:10:244::5", 80, 0, "allow mesh 2"},
        // Row 8.
        {i, "8.8.8.8", 443, 0, "deny deny 0"},
        {i, "2606:4700::1111", 443, 0, "deny deny 0"},
    });
}

TEST_CASE("decide: enableEgress passes through what rows 1-5 leave") {
    Images setup;
    setup.mesh.enable_egress = true;
    const MapImage image = image_of(setup.agent, setup.mesh);
    const MapImage* i = &image;
    check_cases({
        {i, "8.8.8.8", 443, 0, "allow passthrough 0"},
        {i, "2606:4700::1111", 443, 0, "allow passthrough 0"},
        {i, "172.20.3.4", 80, 0, "allow mesh 0"},
        {i, "10.9.9.9", 443, 0, "allow excluded-cidr 0"},
        {i, "8.8.8.8", 22, 0, "allow excluded-port 0"},
    });
}

TEST_CASE("decide: an inclusion list lets everything outside it go") {
    AgentConfig agent;
    agent.mesh_cidrs = cidrs({"10.244.0.0/16"});
    MeshConfig mesh;
    mesh.outbound_ip_range_inclusion = cidrs({"10.0.0.0/8", "2001:db8::/32"});
    mesh.outbound_ip_range_exclusion = cidrs({"10.96.0.0/12"});
    mesh.outbound_port_exclusion = {53};
    const MapImage image = image_of(agent, mesh);
    const MapImage* i = &image;
    check_cases({
        {i, "8.8.8.8", 443, 0, "allow not-included 0"},
        {i, "::ffff:8.8.8.8", 443, 0, "allow not-included 0"},
        {i, "2001:db9::5", 443, 0, "allow not-included 0"},
        {i, "8.8.8.8", 53, 0, "allow excluded-port 0"},
        {i, "10.96.0.1", 443, 0, "allow excluded-cidr 0"},
        {i, "10.244.1.1", 443, 0, "allow mesh 0"},
        {i, "10.5.5.5", 443, 0, "deny deny 0"},
        {i, "2001:db8::5", 443, 0, "deny deny 0"},
        {i, "127.0.0.1", 443, 0, "allow local 0"},
    });
}

TEST_CASE("decide: without a sidecar uid, no uid is exempt, not even 0") {
    AgentConfig agent;
    agent.sidecar_uid.reset();
    const MapImage image = image_of(agent, MeshConfig{});
    check_cases({
        {&image, "8.8.8.8", 443, 0, "deny deny 0"},
        {&image, "8.8.8.8", 443, 1500, "deny deny 0"},
    });
}

TEST_CASE("decide: ::/0 excludes IPv4 destinations too, as the kernel's one address space does") {
    MeshConfig mesh;
    mesh.outbound_ip_range_exclusion = cidrs({"::/0"});
    const MapImage image = image_of(AgentConfig{}, mesh);
    check_cases({
        {&image, "8.8.8.8", 443, 0, "allow excluded-cidr 0"},
        {&image, "2606:4700::1111", 443, 0, "allow excluded-cidr 0"},
    });
}

TEST_CASE("decide fails closed without a valid generation, except row 1") {
    const Images setup;
    MapImage invalid = image_of(setup.agent, setup.mesh);
    invalid.flags &= ~uint32_t(EGRESSD_CFG_VALID);
    check_cases({
        {nullptr, "8.8.8.8", 443, 0, "deny no-config 0"},
        {nullptr, "10.9.9.9", 443, 1500, "deny no-config 0"},
        {nullptr, "127.0.0.1", 443, 0, "allow local 0"},
        {nullptr, "::1", 443, 0, "allow local 0"},
        {&invalid, "10.9.9.9", 443, 1500, "deny no-config 0"},
        {&invalid, "127.0.0.1", 443, 0, "allow local 0"},
    });
}

TEST_CASE("lookup_cidr: longest prefix within one table") {
    const Images setup;
    const MapImage image = image_of(setup.agent, setup.mesh);
    const CidrRule* rule = lookup_cidr(image, EGRESSD_TABLE_EXCLUDE, *IpAddress::parse("10.1.2.200"));
    REQUIRE(rule != nullptr);
    CHECK(rule->cidr.str() == "10.1.2.0/24");
    CHECK(rule->rule == 3);
    CHECK(lookup_cidr(image, EGRESSD_TABLE_EXCLUDE, *IpAddress::parse("11.0.0.1")) == nullptr);
    CHECK(lookup_cidr(image, EGRESSD_TABLE_INCLUDE, *IpAddress::parse("10.1.2.200")) == nullptr);
    rule = lookup_cidr(image, EGRESSD_TABLE_MESH, *IpAddress::parse("10.1.5.1"));
    REQUIRE(rule != nullptr);
    CHECK(rule->rule == 1);
}

TEST_CASE("reason names and rows, hook names") {
    struct Reason {
        egressd_reason reason;
        const char* name;
        int row;
    };
    const Reason reasons[] = {
        {EGRESSD_REASON_NONE, "none", 0},
        {EGRESSD_REASON_LOCAL, "local", 1},
        {EGRESSD_REASON_SIDECAR_UID, "sidecar-uid", 2},
        {EGRESSD_REASON_EXCLUDED_CIDR, "excluded-cidr", 3},
        {EGRESSD_REASON_EXCLUDED_PORT, "excluded-port", 3},
        {EGRESSD_REASON_NOT_INCLUDED, "not-included", 4},
        {EGRESSD_REASON_MESH, "mesh", 5},
        {EGRESSD_REASON_PASSTHROUGH, "passthrough", 6},
        {EGRESSD_REASON_POLICY, "policy", 7},
        {EGRESSD_REASON_DENY, "deny", 8},
        {EGRESSD_REASON_NO_CONFIG, "no-config", 0},
        {EGRESSD_REASON_RAW_SOCKET, "raw-socket", 0},
        {EGRESSD_REASON_PROTOCOL, "protocol", 0},
        {EGRESSD_REASON_MAX, "unknown", 0},
        {reason_from(42), "unknown", 0},
    };
    for (const Reason& r : reasons) {
        CAPTURE(int(r.reason));
        CHECK(reason_name(r.reason) == r.name);
        CHECK(reason_row(r.reason) == r.row);
    }
    CHECK(hook_name(EGRESSD_HOOK_CONNECT4) == "connect4");
    CHECK(hook_name(EGRESSD_HOOK_CONNECT6) == "connect6");
    CHECK(hook_name(EGRESSD_HOOK_SENDMSG4) == "sendmsg4");
    CHECK(hook_name(EGRESSD_HOOK_SENDMSG6) == "sendmsg6");
    CHECK(hook_name(EGRESSD_HOOK_SOCK_CREATE) == "sock_create");
    CHECK(hook_name(EGRESSD_HOOK_PACKET) == "packet");
    CHECK(hook_name(EGRESSD_HOOK_MAX) == "unknown");
    CHECK(hook_from(EGRESSD_HOOK_PACKET) == EGRESSD_HOOK_PACKET);
    CHECK(hook_from(99) == EGRESSD_HOOK_MAX);
    CHECK(reason_from(EGRESSD_REASON_PROTOCOL) == EGRESSD_REASON_PROTOCOL);
}

TEST_CASE("row 0: socket kinds no later hook decides are refused at creation") {
    const MeshConfig mesh;
    const MapImage image = image_of(AgentConfig{}, mesh);
    struct Kind {
        int type, protocol;
        const char* expected;
    };
    const Kind kinds[] = {
        {SOCK_STREAM, 0, "allow none 0"},           {SOCK_STREAM, IPPROTO_TCP, "allow none 0"},
        {SOCK_STREAM, IPPROTO_MPTCP, "allow none 0"}, {SOCK_DGRAM, 0, "allow none 0"},
        {SOCK_DGRAM, IPPROTO_UDP, "allow none 0"},  {SOCK_DGRAM, IPPROTO_ICMP, "allow none 0"},
        {SOCK_DGRAM, IPPROTO_ICMPV6, "allow none 0"}, {SOCK_RAW, IPPROTO_RAW, "allow none 0"},
        {SOCK_DGRAM, IPPROTO_UDPLITE, "deny protocol 0"}, {SOCK_STREAM, IPPROTO_SCTP, "deny protocol 0"},
        {SOCK_SEQPACKET, IPPROTO_SCTP, "deny protocol 0"}, {6 /* SOCK_DCCP */, IPPROTO_DCCP, "deny protocol 0"},
    };
    for (const Kind& k : kinds) {
        CAPTURE(k.type);
        CAPTURE(k.protocol);
        CHECK(text(decide_socket(&image, k.type, k.protocol)) == k.expected);
    }
    CHECK(text(decide_socket(nullptr, SOCK_DGRAM, IPPROTO_UDPLITE)) == "deny no-config 0");
    CHECK(text(decide_socket(nullptr, SOCK_STREAM, IPPROTO_TCP)) == "allow none 0");
}

TEST_CASE("row 0: a raw socket's packets are dropped, loopback too, unless rawSockets is allow") {
    MeshConfig mesh;
    mesh.enable_egress = true;
    AgentConfig agent;
    const MapImage denying = image_of(agent, mesh);
    agent.allow_raw_sockets = true;
    const MapImage allowing = image_of(agent, mesh);
    for (const char* dst : {"127.0.0.1", "203.0.113.10", "2001:db8::1"}) {
        CAPTURE(dst);
        Query raw{*IpAddress::parse(dst), 0, EGRESSD_PROTO_ICMP, 0, 0};
        raw.raw_packet = true;
        CHECK(text(decide(&denying, raw)) == "deny raw-socket 0");
        CHECK(text(decide(nullptr, raw)) == "deny no-config 0");
        CHECK(decide(&allowing, raw).verdict == EGRESSD_VERDICT_ALLOW);
    }
    CHECK(decision_proto(IPPROTO_ICMPV6) == EGRESSD_PROTO_ICMP);
    CHECK(decision_proto(IPPROTO_MPTCP) == IPPROTO_TCP);
    CHECK(decision_proto(IPPROTO_UDP) == IPPROTO_UDP);
}
