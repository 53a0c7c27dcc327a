// Kernel integration: the real programs attached to a private cgroup, real
// sockets from processes inside it, in a private network namespace whose only
// routes lead to a sink namespace. Every scenario checks three things agree:
// the expected row (written here), the C++ reference model (core/decision),
// and the kernel (the verdict the socket call saw, and which row it counted).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

#include "core/decision.h"
#include "core/image.h"
#include "enforcer.h"
#include "kernel/datapath.h"
#include "kernel/event_reader.h"
#include "kernel/pins.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::testenv;
using namespace egressd::ktest;

namespace {

using Net = TestNetwork;

}  // namespace

TEST_CASE("kernel: enableEgress false denies external traffic, allows mesh, loopback and the sidecar") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
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
    EnforcedEnv env;
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
    EnforcedEnv env;
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
    EnforcedEnv env;
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

// Rows 3a, 4 and 5 match a small table in the slot's config and a big one in
// the trie (egressd_config_table): both must decide alike. The padding
// pushes every table past the config's capacity.
TEST_CASE("kernel: CIDR tables decide alike carried in the config and looked up in the trie") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    for (const size_t padding : {size_t{0}, size_t{EGRESSD_CONFIG_CIDRS}}) {
        CAPTURE(padding);
        EnforcedEnv env;
        Enforcer enforcer(env.cg);
        AgentConfig agent = test_agent(env.cg);
        agent.mesh_cidrs = padded(agent.mesh_cidrs, padding);
        MeshConfig mesh = mesh_with_egress(false);
        mesh.outbound_ip_range_exclusion = padded({cidr("203.0.113.11/32"), cidr("2001:db8:1::11/128")}, padding);
        mesh.outbound_ip_range_inclusion =
            padded({cidr("203.0.113.0/25"), cidr("198.18.0.0/16"), cidr("2001:db8:1::/48")}, padding);
        const MapImage image = enforcer.publish(agent, mesh);
        enforcer.attach();

        std::vector<Case> cases;
        add(cases, every_way(Net::kExternal4b, 80, 53), EGRESSD_REASON_EXCLUDED_CIDR);
        add(cases, every_way(Net::kExternal6b, 80, 53), EGRESSD_REASON_EXCLUDED_CIDR);
        add(cases, every_way(Net::kOther4, 80, 53), EGRESSD_REASON_NOT_INCLUDED);
        add(cases, every_way(Net::kExternal6, 80, 53), EGRESSD_REASON_DENY);  // included, not mesh
        add(cases, every_way(Net::kMesh4, 80, 53), EGRESSD_REASON_MESH);
        add(cases, every_way(Net::kExternal4, 80, 53), EGRESSD_REASON_DENY);
        check_cases(enforcer, &image, env.cg, env.net, cases);
    }
}

TEST_CASE("kernel: processes in nested cgroups are enforced; other cgroups are not touched") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
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
    EnforcedEnv env;
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
    EnforcedEnv env;
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
    EnforcedEnv env;
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

// What a build with a new layout of one map finds: that pin holds a map of
// another definition. The rest is kept by groups (MapCarry, map_set.h).
TEST_CASE("kernel: a map of another layout is made fresh with its group, and the rest is kept") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer first(env.cg);
    const AgentConfig agent = test_agent(env.cg);
    const MapImage image = first.publish(agent, mesh_with_egress(false));
    first.attach();
    const MapSet& maps = first.datapath().maps();
    const egressd_dns_learned_key learned_key{7, 3};
    egressd_dns_learned learned{};
    learned.addr[15] = 10;
    learned.expires_ns = 123456789;
    learned.host = 2;
    REQUIRE(maps.dns_learned.update(learned_key, learned).ok());
    // Numbers the kept state names: an identity (a query awaiting its answer) and a policy (a flow).
    REQUIRE(maps.dns_queries.update(egressd_dns_query_key{99, 1, {}}, egressd_dns_query{5, 6, 11, 0}).ok());
    egressd_flow flow{};
    flow.identity = 9;
    flow.rule = 5;
    flow.reason = EGRESSD_REASON_POLICY;
    REQUIRE(maps.flows.update(77, flow).ok());
    const uint32_t zero = 0;
    REQUIRE(maps.dns_settings.update(zero, egressd_dns_settings{1, 2, 3, 0}).ok());

    auto pin_other_shape = [&](const char* name) {
        const std::filesystem::path path = first.pin_dir() / name;
        REQUIRE(::unlink(path.c_str()) == 0);
        UniqueFd other(bpf_map_create(BPF_MAP_TYPE_HASH, name, 4, 4, 8, nullptr));
        REQUIRE(other.valid());
        REQUIRE(bpf_obj_pin(other.get(), path.c_str()) == 0);
    };
    auto pinned_map_id = [&](const char* name) -> uint32_t {
        auto fd = open_pinned_object(first.pin_dir() / name, true);
        bpf_map_info info{};
        uint32_t length = sizeof(info);
        return fd && bpf_obj_get_info_by_fd(fd->get(), &info, &length) == 0 ? info.id : 0;
    };
    const uint32_t learned_id = pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED));
    const uint32_t settings_id = pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_SETTINGS));

    SUBCASE("numbered maps: the generation and the learned DNS answers are kept") {
        const char* changed = EGRESSD_STRINGIFY(EGRESSD_MAP_ID_TRAFFIC);
        const char* missing = EGRESSD_STRINGIFY(EGRESSD_MAP_RULE_TRAFFIC);  // as under a name this build renamed
        pin_other_shape(changed);
        REQUIRE(::unlink((first.pin_dir() / missing).c_str()) == 0);
        auto second = Datapath::load({first.pin_dir(), Capacities{}});
        REQUIRE(second.ok());
        CHECK((*second)->adopted_maps());
        CHECK((*second)->not_adopted_why().find(changed) != std::string::npos);
        CHECK((*second)->not_adopted_why().find(missing) == std::string::npos);  // not a fault: a new map
        std::vector<std::string> fresh = (*second)->fresh_maps();
        std::sort(fresh.begin(), fresh.end());
        CHECK(fresh == std::vector<std::string>{changed, missing});
        REQUIRE((*second)->active_image().has_value());
        CHECK((*second)->active_image()->generation == image.generation);
        const auto kept = (*second)->maps().dns_learned.lookup(learned_key);
        REQUIRE(kept.ok());
        REQUIRE(kept->has_value());
        CHECK((*kept)->host == learned.host);
        CHECK((*kept)->expires_ns == learned.expires_ns);
        // What the agent keeps from handing out again (a learned answer names host 2).
        const auto in_use = (*second)->maps().read_numbers_in_use();
        REQUIRE(in_use.ok());
        CHECK(*in_use == NumbersInUse{11, 5, 2});

        // The fresh map replaces the other one's pin once the links use it; the rest stays as it was.
        REQUIRE((*second)->attach(CgroupTarget{env.cg.path(), env.cg.id()}).ok());
        auto fd = open_pinned_object(first.pin_dir() / changed, true);
        REQUIRE(fd.ok());
        bpf_map_info info{};
        uint32_t length = sizeof(info);
        REQUIRE(bpf_obj_get_info_by_fd(fd->get(), &info, &length) == 0);
        CHECK(info.value_size == sizeof(egressd_traffic));
        CHECK(info.btf_id != 0);
        CHECK(pinned_map_id(missing) != 0);
        CHECK(pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED)) == learned_id);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kMesh4, .port = 80}).error == 0);
    }
    SUBCASE("learned answers of another capacity: the numbers they hold are still known") {
        Capacities other;
        other.dns_learned = 2 * Capacities{}.dns_learned;
        auto second = Datapath::load({first.pin_dir(), other});
        REQUIRE(second.ok());
        CHECK((*second)->adopted_maps());
        const std::vector<std::string> fresh = (*second)->fresh_maps();
        CHECK(fresh == std::vector<std::string>{EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED)});
        // The fresh map is empty; the old programs still read the old one, which names host 2.
        const auto in_use = (*second)->numbers_in_use();
        REQUIRE(in_use.ok());
        CHECK(in_use->host == 2);
        CHECK(in_use->identity == 11);
    }
    SUBCASE("learned answers that cannot be read: the generation maps are not kept either") {
        pin_other_shape(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED));
        auto second = Datapath::load({first.pin_dir(), Capacities{}});
        REQUIRE(second.ok());
        CHECK_FALSE((*second)->adopted_maps());
        CHECK((*second)->not_adopted_why().find("cannot be read") != std::string::npos);
    }
    SUBCASE("a generation map: the generation and numbered maps are all made fresh, the others kept") {
        const char* changed = EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS);
        pin_other_shape(changed);
        auto second = Datapath::load({first.pin_dir(), Capacities{}});
        REQUIRE(second.ok());
        CHECK_FALSE((*second)->adopted_maps());
        CHECK_FALSE((*second)->active_image().has_value());
        CHECK((*second)->not_adopted_why().find(changed) != std::string::npos);
        std::vector<std::string> expected_fresh;
        for (const char* name : kMapNames)
            if (map_carry(name) != MapCarry::own) expected_fresh.emplace_back(name);
        std::vector<std::string> fresh = (*second)->fresh_maps();
        std::sort(fresh.begin(), fresh.end());
        std::sort(expected_fresh.begin(), expected_fresh.end());
        CHECK(fresh == expected_fresh);
        // Learned answers carry the old set's numbers: not kept. The DNS settings are.
        const auto learned_now = (*second)->maps().dns_learned.lookup(learned_key);
        REQUIRE(learned_now.ok());
        CHECK_FALSE(learned_now->has_value());
        const auto in_use = (*second)->maps().read_numbers_in_use();
        REQUIRE(in_use.ok());
        CHECK(*in_use == NumbersInUse{});
        const auto settings = (*second)->maps().dns_settings.lookup(zero);
        REQUIRE(settings.ok());
        REQUIRE(settings->has_value());
        CHECK((*settings)->max_ttl == 2);
        // Nothing is replaced before the links use the new set.
        CHECK(pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED)) == learned_id);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
        // Then the fresh ones replace their pins, and the kept ones stay.
        REQUIRE((*second)->publish(image).ok());
        REQUIRE((*second)->attach(CgroupTarget{env.cg.path(), env.cg.id()}).ok());
        CHECK(pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED)) != learned_id);
        CHECK(pinned_map_id(EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_SETTINGS)) == settings_id);
        auto ports = open_pinned_object(first.pin_dir() / changed, true);
        REQUIRE(ports.ok());
        bpf_map_info info{};
        uint32_t length = sizeof(info);
        REQUIRE(bpf_obj_get_info_by_fd(ports->get(), &info, &length) == 0);
        CHECK(info.btf_id != 0);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
        CHECK(run_probe(env.cg, env.net, {.address = Net::kMesh4, .port = 80}).error == 0);
    }
}

TEST_CASE("kernel: bpftool prints the pinned maps with field names (BTF)") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
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
    const std::string config = dump("config_v2");
    CHECK(config.find("\"generation\"") != std::string::npos);
    CHECK(config.find("\"sidecar_uid\": 1500") != std::string::npos);
    const std::string cidrs = dump("cidrs_v1");
    CHECK(cidrs.find("\"prefixlen\"") != std::string::npos);
    CHECK(cidrs.find("\"table\"") != std::string::npos);
    const std::string ports = dump("ports_v1");
    CHECK(ports.find("\"port\": 8443") != std::string::npos);
}
