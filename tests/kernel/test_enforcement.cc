// Kernel integration: the real programs attached to a private cgroup, real
// sockets from processes inside it, in a private network namespace whose only
// routes lead to a sink namespace. Every scenario checks three things agree:
// the expected row (written here), the C++ reference model (core/decision),
// and the kernel (the verdict the socket call saw, and which row it counted).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <cstdio>
#include <map>
#include <memory>

#include "core/decision.h"
#include "core/image.h"
#include "kernel/bpf_adapter.h"
#include "kernel/mounts.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::testenv;

namespace {

using Net = TestNetwork;

Cidr cidr(const char* text) { return Cidr::parse(text).value(); }

// The datapath on a private pin directory and the test's cgroup. Removes
// every link and pin it made, also when a test fails.
class Enforcer {
public:
    explicit Enforcer(const TestCgroup& cgroup) : pin_dir_(fmt::format("/sys/fs/bpf/egressd-test-{}", ::getpid())) {
        std::vector<std::string> ignored;
        (void)cleanup_pins(pin_dir_, ignored);
        REQUIRE_MESSAGE(ensure_bpffs_dir(pin_dir_).ok(), "bpffs unavailable for " << pin_dir_);
        auto dp = Datapath::load({pin_dir_, Capacities{}});
        REQUIRE_MESSAGE(dp.ok(), (dp.ok() ? "" : dp.error().describe()));
        datapath_ = std::move(*dp);
        target_ = CgroupTarget{cgroup.path(), cgroup.id()};
    }
    ~Enforcer() {
        datapath_.reset();
        std::vector<std::string> removed;
        (void)cleanup_pins(pin_dir_, removed);
    }

    MapImage publish(const AgentConfig& agent, const MeshConfig& mesh) {
        auto image = build_image(agent, mesh, ++generation_);
        REQUIRE_MESSAGE(image.ok(), (image.ok() ? "" : image.error().describe()));
        auto published = datapath_->publish(*image);
        REQUIRE_MESSAGE(published.ok(), (published.ok() ? "" : published.error().describe()));
        return *image;
    }
    void attach() {
        auto attached = datapath_->attach(target_);
        REQUIRE_MESSAGE(attached.ok(), (attached.ok() ? "" : attached.error().describe()));
    }
    std::vector<uint64_t> counters() const {
        auto c = datapath_->maps().read_counters();
        REQUIRE(c.ok());
        return *c;
    }
    const std::filesystem::path& pin_dir() const { return pin_dir_; }
    Datapath& datapath() { return *datapath_; }

private:
    std::filesystem::path pin_dir_;
    std::unique_ptr<Datapath> datapath_;
    CgroupTarget target_;
    uint64_t generation_ = 0;
};

struct Case {
    Probe probe;
    egressd_reason reason;  // the row we expect to decide it
};

bool is_v6_socket(const Probe& p) {
    if (p.v4_mapped) return true;
    if (p.family != 0) return p.family == AF_INET6;
    return p.address.find(':') != std::string::npos;
}

// The hooks the kernel runs for a probe. udpv6_sendmsg() hands a datagram to
// a v4-mapped destination to udp_sendmsg() with an explicit IPv4 address, so
// sendmsg4 decides it, and does so again for every datagram of an AF_INET6
// UDP socket connected to a v4-mapped address.
std::vector<egressd_hook> hooks_of(const Probe& p, bool allowed) {
    const bool v6 = is_v6_socket(p);
    if (p.op == Op::sendmsg) return {v6 && !p.v4_mapped ? EGRESSD_HOOK_SENDMSG6 : EGRESSD_HOOK_SENDMSG4};
    std::vector<egressd_hook> hooks{v6 ? EGRESSD_HOOK_CONNECT6 : EGRESSD_HOOK_CONNECT4};
    if (p.proto == Proto::udp && p.v4_mapped && allowed && p.expect_reply) hooks.push_back(EGRESSD_HOOK_SENDMSG4);
    return hooks;
}

bool allows(egressd_reason reason) { return reason != EGRESSD_REASON_DENY && reason != EGRESSD_REASON_NO_CONFIG; }

Query query_of(const Probe& p) {
    Query q;
    q.dst = IpAddress::parse(p.address).value();
    q.port = p.port;
    q.proto = p.proto == Proto::tcp ? IPPROTO_TCP : IPPROTO_UDP;
    q.uid = p.uid.value_or(0);
    return q;
}

// Runs the cases and checks verdicts, the model and the kernel's counters.
void check_cases(Enforcer& enforcer, const MapImage* image, const TestCgroup& cg, const Net& net,
                 const std::vector<Case>& cases) {
    std::vector<Probe> probes;
    std::map<uint32_t, uint64_t> expected_counts;
    for (const auto& c : cases) {
        probes.push_back(c.probe);
        for (egressd_hook hook : hooks_of(c.probe, allows(c.reason)))
            expected_counts[static_cast<uint32_t>(c.reason) * EGRESSD_HOOK_MAX + static_cast<uint32_t>(hook)]++;
        // The reference model must name the same row.
        const Decision model = decide(image, query_of(c.probe));
        CHECK_MESSAGE(model.reason == c.reason, describe(c.probe) << ": model says " << reason_name(model.reason)
                                                                  << ", expected " << reason_name(c.reason));
    }
    const auto before = enforcer.counters();
    const auto results = run_probes(cg, net, probes);
    const auto after = enforcer.counters();
    REQUIRE(results.size() == cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
        const int expected = allows(cases[i].reason) ? 0 : EPERM;
        CHECK_MESSAGE(results[i].error == expected,
                      describe(cases[i].probe) << ": got " << (results[i].error ? strerror(results[i].error) : "allowed")
                                               << " (" << results[i].detail << "), expected "
                                               << (expected ? "EPERM" : "allowed") << " by "
                                               << reason_name(cases[i].reason));
    }
    // Each row × hook the kernel counted is exactly what we expected.
    for (uint32_t i = 0; i < EGRESSD_COUNTER_SLOTS; ++i) {
        const uint64_t delta = after[i] - before[i];
        const uint64_t want = expected_counts.count(i) ? expected_counts[i] : 0;
        CHECK_MESSAGE(delta == want, "kernel counted " << delta << " decisions for "
                                                       << reason_name(static_cast<egressd_reason>(i / EGRESSD_HOOK_MAX))
                                                       << "/" << hook_name(static_cast<egressd_hook>(i % EGRESSD_HOOK_MAX))
                                                       << ", expected " << want);
    }
}

AgentConfig test_agent(const TestCgroup& cg) {
    AgentConfig a;
    a.cgroup = cg.path();
    a.mesh_cidrs = {cidr("198.18.0.0/16"), cidr("2001:db8:2::/48")};
    a.sidecar_uid = 1500;
    return a;
}

MeshConfig mesh_with_egress(bool enable) {
    MeshConfig m;
    m.api_version = "config.flomesh.io/v1alpha3";
    m.name = "test";
    m.enable_egress = enable;
    return m;
}

// Every way a process reaches an address: TCP connect, UDP connect, UDP
// sendmsg; over the natural family, and for IPv4 also over an AF_INET6
// socket with the IPv4-mapped address.
std::vector<Probe> every_way(const std::string& address, uint16_t tcp_port, uint16_t udp_port) {
    std::vector<Probe> out;
    const bool v4 = address.find(':') == std::string::npos;
    for (bool mapped : {false, true}) {
        if (mapped && !v4) continue;
        out.push_back({.address = address, .port = tcp_port, .proto = Proto::tcp, .op = Op::connect, .v4_mapped = mapped});
        out.push_back({.address = address, .port = udp_port, .proto = Proto::udp, .op = Op::connect, .v4_mapped = mapped});
        out.push_back({.address = address, .port = udp_port, .proto = Proto::udp, .op = Op::sendmsg, .v4_mapped = mapped});
    }
    return out;
}

void add(std::vector<Case>& cases, const std::vector<Probe>& probes, egressd_reason reason) {
    for (const auto& p : probes) cases.push_back({p, reason});
}

struct Env {
    Net net;
    TestCgroup cg{"enforced"};
};

}  // namespace

TEST_CASE("kernel: enableEgress false denies external traffic, allows mesh, loopback and the sidecar") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh_with_egress(false));
    enforcer.attach();

    std::vector<Case> cases;
    add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_DENY);
    add(cases, every_way(Net::kExternal6, 80, 53), EGRESSD_REASON_DENY);
    add(cases, every_way(Net::kOther4, 443, 5353), EGRESSD_REASON_DENY);
    add(cases, every_way(Net::kMesh4, 80, 53), EGRESSD_REASON_MESH);
    add(cases, every_way(Net::kMesh6, 80, 53), EGRESSD_REASON_MESH);
    add(cases, every_way("127.0.0.1", 80, 53), EGRESSD_REASON_LOCAL);
    add(cases, every_way("::1", 80, 53), EGRESSD_REASON_LOCAL);
    check_cases(enforcer, &image, env.cg, env.net, cases);

    SUBCASE("the sidecar UID is exempt, another UID is not") {
        std::vector<Case> uid_cases;
        for (auto p : every_way(Net::kExternal4, 80, 53)) {
            p.uid = 1500;
            uid_cases.push_back({p, EGRESSD_REASON_SIDECAR_UID});
        }
        for (auto p : every_way(Net::kExternal6, 443, 5353)) {
            p.uid = 1500;
            uid_cases.push_back({p, EGRESSD_REASON_SIDECAR_UID});
        }
        for (auto p : every_way(Net::kExternal4, 80, 53)) {
            p.uid = 1501;
            uid_cases.push_back({p, EGRESSD_REASON_DENY});
        }
        check_cases(enforcer, &image, env.cg, env.net, uid_cases);
    }
}

TEST_CASE("kernel: enableEgress true passes external traffic through") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh_with_egress(true));
    enforcer.attach();

    std::vector<Case> cases;
    add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_PASSTHROUGH);
    add(cases, every_way(Net::kExternal6, 443, 5353), EGRESSD_REASON_PASSTHROUGH);
    add(cases, every_way(Net::kMesh4, 80, 53), EGRESSD_REASON_MESH);
    add(cases, every_way("127.0.0.1", 8080, 8080), EGRESSD_REASON_LOCAL);
    check_cases(enforcer, &image, env.cg, env.net, cases);
}

TEST_CASE("kernel: exclusion CIDRs and ports bypass the deny; exclusion beats mesh") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    MeshConfig mesh = mesh_with_egress(false);
    mesh.outbound_ip_range_exclusion = {cidr("203.0.113.11/32"), cidr("2001:db8:1::11/128"), cidr("198.18.0.0/24")};
    mesh.outbound_port_exclusion = {8080};
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh);
    enforcer.attach();

    std::vector<Case> cases;
    add(cases, every_way(Net::kExternal4b, 80, 53), EGRESSD_REASON_EXCLUDED_CIDR);
    add(cases, every_way(Net::kExternal6b, 80, 53), EGRESSD_REASON_EXCLUDED_CIDR);
    add(cases, every_way(Net::kMesh4, 80, 53), EGRESSD_REASON_EXCLUDED_CIDR);  // row 3 before row 5
    add(cases, every_way(Net::kExternal4, 8080, 8080), EGRESSD_REASON_EXCLUDED_PORT);
    add(cases, every_way(Net::kExternal6, 8080, 8080), EGRESSD_REASON_EXCLUDED_PORT);
    add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_DENY);
    add(cases, every_way(Net::kExternal4c, 443, 5353), EGRESSD_REASON_DENY);
    check_cases(enforcer, &image, env.cg, env.net, cases);
}

TEST_CASE("kernel: a non-empty inclusion list leaves other destinations unintercepted") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    MeshConfig mesh = mesh_with_egress(false);
    mesh.outbound_ip_range_inclusion = {cidr("203.0.113.0/25")};
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh);
    enforcer.attach();

    std::vector<Case> cases;
    add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_DENY);  // included, egress off
    add(cases, every_way(Net::kOther4, 80, 53), EGRESSD_REASON_NOT_INCLUDED);
    add(cases, every_way(Net::kExternal6, 80, 53), EGRESSD_REASON_NOT_INCLUDED);
    add(cases, every_way(Net::kMesh4, 80, 53), EGRESSD_REASON_NOT_INCLUDED);  // row 4 before row 5
    check_cases(enforcer, &image, env.cg, env.net, cases);
}

TEST_CASE("kernel: processes in nested cgroups are enforced; other cgroups are not touched") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    TestCgroup nested = env.cg.child("nested");
    TestCgroup outside("outside");  // a sibling: not under the enforced cgroup
    Enforcer enforcer(env.cg);
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh_with_egress(false));
    enforcer.attach();

    const Probe tcp{.address = Net::kExternal4, .port = 80};
    CHECK(run_probe(nested, env.net, tcp).error == EPERM);
    CHECK(run_probe(outside, env.net, tcp).error == 0);
    (void)image;
}

TEST_CASE("kernel: a new generation takes effect at once, and sockets never see a half-written one") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    const AgentConfig agent = test_agent(env.cg);
    enforcer.publish(agent, mesh_with_egress(false));
    enforcer.attach();
    const Probe tcp{.address = Net::kExternal4, .port = 80};
    const Probe udp{.address = Net::kExternal6, .port = 53, .proto = Proto::udp, .op = Op::sendmsg};

    for (int round = 0; round < 5; ++round) {
        enforcer.publish(agent, mesh_with_egress(true));
        CHECK(run_probe(env.cg, env.net, tcp).error == 0);
        CHECK(run_probe(env.cg, env.net, udp).error == 0);
        enforcer.publish(agent, mesh_with_egress(false));
        CHECK(run_probe(env.cg, env.net, tcp).error == EPERM);
        CHECK(run_probe(env.cg, env.net, udp).error == EPERM);
    }

    // Exclusions change with the generation as a whole: a generation that
    // excludes one host and one that excludes another never mix.
    MeshConfig a = mesh_with_egress(false), b = mesh_with_egress(false);
    a.outbound_ip_range_exclusion = {cidr("203.0.113.10/32")};
    b.outbound_ip_range_exclusion = {cidr("203.0.113.11/32")};
    for (int round = 0; round < 3; ++round) {
        enforcer.publish(agent, a);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == 0);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4b, .port = 80}).error == EPERM);
        enforcer.publish(agent, b);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4b, .port = 80}).error == 0);
    }
}

TEST_CASE("kernel: programs attached before any generation fail closed") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    enforcer.attach();  // no publish: no valid slot

    std::vector<Case> cases;
    add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_NO_CONFIG);
    add(cases, every_way(Net::kMesh6, 80, 53), EGRESSD_REASON_NO_CONFIG);
    add(cases, every_way("127.0.0.1", 80, 53), EGRESSD_REASON_LOCAL);
    check_cases(enforcer, nullptr, env.cg, env.net, cases);
}

TEST_CASE("kernel: a second datapath adopts the pinned maps and links without a gap") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer first(env.cg);
    const AgentConfig agent = test_agent(env.cg);
    const MapImage image = first.publish(agent, mesh_with_egress(false));
    first.attach();
    const auto links_before = read_pinned_links(first.pin_dir());

    // Another load of the same object on the same pins, as a restarted agent does.
    auto second = Datapath::load({first.pin_dir(), Capacities{}});
    REQUIRE(second.ok());
    CHECK((*second)->adopted_maps());
    REQUIRE((*second)->active_image().has_value());
    CHECK((*second)->active_image()->generation == image.generation);
    CHECK((*second)->active_image()->cidrs == image.cidrs);
    // Still enforced while the second datapath has not attached.
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);

    auto reports = (*second)->attach(CgroupTarget{env.cg.path(), env.cg.id()});
    REQUIRE(reports.ok());
    for (const auto& r : *reports) CHECK(r.action == "adopted");
    const auto links_after = read_pinned_links(first.pin_dir());
    for (size_t i = 0; i < links_after.size(); ++i) {
        CHECK(links_after[i].link_id == links_before[i].link_id);  // the same live link
        CHECK(links_after[i].prog_id != links_before[i].prog_id);  // with the new program in it
    }
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
    CHECK(run_probe(env.cg, env.net, {.address = Net::kMesh4, .port = 80}).error == 0);
}

TEST_CASE("kernel: bpftool prints the pinned maps with field names (BTF)") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    Env env;
    Enforcer enforcer(env.cg);
    MeshConfig mesh = mesh_with_egress(false);
    mesh.outbound_port_exclusion = {8443};
    enforcer.publish(test_agent(env.cg), mesh);
    enforcer.attach();

    const auto dump = [&](const char* map) {
        const std::string cmd = fmt::format("bpftool map dump pinned {}/{} 2>&1", enforcer.pin_dir().string(), map);
        std::string out;
        FILE* p = ::popen(cmd.c_str(), "r");
        REQUIRE(p != nullptr);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
        CHECK(::pclose(p) == 0);
        return out;
    };
    const std::string config = dump("config_v1");
    CHECK(config.find("\"generation\"") != std::string::npos);
    CHECK(config.find("\"sidecar_uid\": 1500") != std::string::npos);
    const std::string cidrs = dump("cidrs_v1");
    CHECK(cidrs.find("\"prefixlen\"") != std::string::npos);
    CHECK(cidrs.find("\"table\"") != std::string::npos);
    const std::string ports = dump("ports_v1");
    CHECK(ports.find("\"port\": 8443") != std::string::npos);
}
