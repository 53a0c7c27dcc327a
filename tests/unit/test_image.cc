#include <doctest/doctest.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "test_support.h"
#include "core/image.h"
#include "core/map_codec.h"

using namespace egressd;
using egressd::test::cidrs;

namespace {

// Readable rows, so a failing comparison shows what differs.
std::vector<std::string> rows(const std::vector<CidrRule>& rules) {
    std::vector<std::string> texts;
    for (const CidrRule& r : rules) texts.push_back(fmt::format("table {} {} rule {}", r.table, r.cidr.str(), r.rule));
    return texts;
}
std::vector<std::string> rows(const std::vector<PortRule>& rules) {
    std::vector<std::string> texts;
    for (const PortRule& r : rules) texts.push_back(fmt::format("table {} port {} rule {}", r.table, r.port, r.rule));
    return texts;
}

MeshConfig mesh_with_lists() {
    MeshConfig mesh;
    mesh.enable_egress = false;
    mesh.outbound_ip_range_exclusion = cidrs({"192.168.0.0/16", "10.0.0.0/8", "10.1.2.3/8", "::ffff:192.168.0.0/112"});
    mesh.outbound_ip_range_inclusion = cidrs({"10.0.0.0/8"});
    mesh.outbound_port_exclusion = {443, 22, 443};
    return mesh;
}

AgentConfig agent_with_mesh_cidrs() {
    AgentConfig agent;
    agent.mesh_cidrs = cidrs({"2001:db8::/32", "10.244.0.0/16"});
    return agent;
}

template <typename Rule, typename Key>
void apply(std::vector<Rule>& rules, const std::vector<Rule>& deletes, const std::vector<Rule>& upserts, Key key) {
    for (const Rule& gone : deletes) std::erase_if(rules, [&](const Rule& r) { return key(r) == key(gone); });
    for (const Rule& upsert : upserts) {
        std::erase_if(rules, [&](const Rule& r) { return key(r) == key(upsert); });
        rules.push_back(upsert);
    }
    std::sort(rules.begin(), rules.end());
}

// What a kernel slot holding `from` holds after the diff is written.
MapImage applied(MapImage from, const ImageDiff& diff) {
    apply(from.cidrs, diff.cidr_deletes, diff.cidr_upserts,
          [](const CidrRule& r) { return std::tie(r.table, r.cidr); });
    apply(from.ports, diff.port_deletes, diff.port_upserts,
          [](const PortRule& r) { return std::tie(r.table, r.port); });
    return from;
}

}  // namespace

TEST_CASE("build_image: configuration flags") {
    struct Case {
        PolicySemantics semantics;
        bool enable_egress;
        bool enable_egress_policy;
        bool policy_active;
    };
    const Case cases[] = {
        {PolicySemantics::fsm, false, true, true}, {PolicySemantics::fsm, false, false, false},
        {PolicySemantics::fsm, true, true, false}, {PolicySemantics::fsm, true, false, false},
        {PolicySemantics::osm, false, true, true}, {PolicySemantics::osm, false, false, true},
        {PolicySemantics::osm, true, true, false}, {PolicySemantics::osm, true, false, false},
    };
    for (const Case& c : cases) {
        CAPTURE(int(c.semantics));
        CAPTURE(c.enable_egress);
        CAPTURE(c.enable_egress_policy);
        AgentConfig agent;
        agent.egress_policy_semantics = c.semantics;
        MeshConfig mesh;
        mesh.enable_egress = c.enable_egress;
        mesh.enable_egress_policy = c.enable_egress_policy;
        auto image = build_image(agent, mesh, 7);
        REQUIRE(image.ok());
        uint32_t expected = EGRESSD_CFG_VALID | EGRESSD_CFG_SIDECAR_UID;
        if (c.enable_egress) expected |= EGRESSD_CFG_ENABLE_EGRESS;
        if (c.enable_egress_policy) expected |= EGRESSD_CFG_EGRESS_POLICY;
        if (c.policy_active) expected |= EGRESSD_CFG_POLICY_ACTIVE;
        CHECK(image->flags == expected);
        CHECK(image->generation == 7);
        CHECK(image->mode == EGRESSD_MODE_ENFORCE);
    }
}

TEST_CASE("build_image: inclusion and sidecar flags") {
    AgentConfig agent;
    MeshConfig mesh;
    SUBCASE("the default sidecar uid") {
        auto image = build_image(agent, mesh, 1);
        REQUIRE(image.ok());
        CHECK((image->flags & EGRESSD_CFG_SIDECAR_UID) != 0);
        CHECK(image->sidecar_uid == 1500);
        CHECK((image->flags & EGRESSD_CFG_HAS_INCLUSION) == 0);
    }
    SUBCASE("no sidecar uid") {
        agent.sidecar_uid.reset();
        auto image = build_image(agent, mesh, 1);
        REQUIRE(image.ok());
        CHECK((image->flags & EGRESSD_CFG_SIDECAR_UID) == 0);
        CHECK(image->sidecar_uid == 0);
    }
    SUBCASE("an inclusion list") {
        mesh.outbound_ip_range_inclusion = cidrs({"10.0.0.0/8"});
        auto image = build_image(agent, mesh, 1);
        REQUIRE(image.ok());
        CHECK((image->flags & EGRESSD_CFG_HAS_INCLUSION) != 0);
    }
}

TEST_CASE("build_image: the flags of the tables the kernel may skip say whether they have entries") {
    AgentConfig agent;
    MeshConfig mesh;
    constexpr uint32_t kTables =
        EGRESSD_CFG_HAS_EXCLUDED_CIDRS | EGRESSD_CFG_HAS_EXCLUDED_PORTS | EGRESSD_CFG_HAS_MESH_CIDRS;
    auto empty = build_image(agent, mesh, 1);
    REQUIRE(empty.ok());
    CHECK((empty->flags & kTables) == 0);
    agent.mesh_cidrs = cidrs({"10.244.0.0/16"});
    auto with_mesh = build_image(agent, mesh, 1);
    REQUIRE(with_mesh.ok());
    CHECK((with_mesh->flags & kTables) == EGRESSD_CFG_HAS_MESH_CIDRS);
    mesh.outbound_ip_range_exclusion = cidrs({"192.0.2.0/24"});
    mesh.outbound_port_exclusion = {5432};
    auto all = build_image(agent, mesh, 1);
    REQUIRE(all.ok());
    CHECK((all->flags & kTables) == kTables);
}

TEST_CASE("build_image: one table per list, sorted, the first of duplicates kept") {
    auto image = build_image(agent_with_mesh_cidrs(), mesh_with_lists(), 3);
    REQUIRE(image.ok());
    // 10.1.2.3/8 is 10.0.0.0/8 again, ::ffff:192.168.0.0/112 is 192.168.0.0/16.
    CHECK(rows(image->cidrs) == std::vector<std::string>{
                                    "table 1 10.0.0.0/8 rule 1",
                                    "table 1 192.168.0.0/16 rule 0",
                                    "table 2 10.0.0.0/8 rule 0",
                                    "table 3 10.244.0.0/16 rule 1",
                                    "table 3 2001:db8::/32 rule 0",
                                });
    CHECK(rows(image->ports) == std::vector<std::string>{"table 1 port 22 rule 1", "table 1 port 443 rule 0"});
    CHECK(std::is_sorted(image->cidrs.begin(), image->cidrs.end()));
}

TEST_CASE("build_image refuses, whole, an image over capacity") {
    AgentConfig agent = agent_with_mesh_cidrs();
    const MeshConfig mesh = mesh_with_lists();  // 5 CIDR entries, 2 port entries after dedupe
    SUBCASE("exactly at capacity fits") {
        agent.capacities = Capacities{5, 2};
        CHECK(build_image(agent, mesh, 1).ok());
    }
    SUBCASE("cidrs") {
        agent.capacities.cidrs = 4;
        auto image = build_image(agent, mesh, 1);
        REQUIRE_FALSE(image.ok());
        CHECK(image.error().message == "cidrs_v1 needs 5 entries per generation, capacity is 4 (capacities.cidrs)");
    }
    SUBCASE("ports") {
        agent.capacities.ports = 1;
        auto image = build_image(agent, mesh, 1);
        REQUIRE_FALSE(image.ok());
        CHECK(image.error().message == "ports_v1 needs 2 entries per generation, capacity is 1 (capacities.ports)");
    }
}

TEST_CASE("CIDR keys: fixed bits, slot, table, zero padding, 16-byte address") {
    const Cidr v4 = cidrs({"10.0.0.0/8"})[0];
    const egressd_cidr_key key = encode_cidr_key(1, EGRESSD_TABLE_EXCLUDE, v4);
    CHECK(key.prefixlen == EGRESSD_CIDR_KEY_FIXED_BITS + 104);
    CHECK(key.slot == 1);
    CHECK(key.table == EGRESSD_TABLE_EXCLUDE);
    CHECK(key._pad[0] == 0);
    CHECK(key._pad[1] == 0);
    const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0};
    CHECK(std::equal(std::begin(key.addr), std::end(key.addr), std::begin(mapped)));

    const egressd_cidr_key v6_key = encode_cidr_key(0, EGRESSD_TABLE_MESH, cidrs({"2001:db8::/32"})[0]);
    CHECK(v6_key.prefixlen == EGRESSD_CIDR_KEY_FIXED_BITS + 32);
    CHECK(v6_key.addr[0] == 0x20);
    CHECK(v6_key.addr[3] == 0xb8);

    const egressd_cidr_value value = encode_cidr_value(CidrRule{EGRESSD_TABLE_EXCLUDE, v4, 12});
    CHECK(value.rule == 12);
    CHECK(value._pad == 0);
}

TEST_CASE("encode and decode round trips") {
    auto image = build_image(agent_with_mesh_cidrs(), mesh_with_lists(), 9);
    REQUIRE(image.ok());
    for (uint8_t slot : {0, 1}) {
        CAPTURE(int(slot));
        for (const CidrRule& rule : image->cidrs) {
            CAPTURE(rule.cidr.str());
            auto decoded = decode_cidr(encode_cidr_key(slot, rule.table, rule.cidr), encode_cidr_value(rule));
            REQUIRE_MESSAGE(decoded.ok(), egressd::test::why(decoded));
            CHECK(*decoded == rule);
        }
        for (const PortRule& rule : image->ports) {
            CAPTURE(rule.port);
            const egressd_port_key key = encode_port_key(slot, rule);
            CHECK(key.slot == slot);
            CHECK(decode_port(key, encode_port_value(rule)) == rule);
        }
    }

    image->mode = EGRESSD_MODE_AUDIT;
    image->sidecar_uid = 1337;
    image->cgroup_level = 3;
    const egressd_config config = encode_config(*image);
    CHECK(config.cgroup_level == 3);
    MapImage decoded;
    decode_config(config, decoded);
    CHECK(decoded.generation == 9);
    CHECK(decoded.flags == image->flags);
    CHECK(decoded.sidecar_uid == 1337);
    CHECK(decoded.mode == EGRESSD_MODE_AUDIT);
    CHECK(decoded.cgroup_level == 3);
}

TEST_CASE("encode_config carries tables of up to EGRESSD_CONFIG_CIDRS entries, longest prefix first") {
    MeshConfig mesh;
    mesh.enable_egress = false;
    // Written shortest first: the config must list the longest first, so that
    // the first match is the longest, as in the trie. Rule = index as written.
    mesh.outbound_ip_range_exclusion = cidrs({"10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "10.1.2.3/32"});
    AgentConfig agent;
    for (size_t i = 0; i <= EGRESSD_CONFIG_CIDRS; ++i)  // one too many for the config
        agent.mesh_cidrs.push_back(Cidr::parse(fmt::format("192.0.2.{}/32", i)).value());
    auto image = build_image(agent, mesh, 1);
    REQUIRE_MESSAGE(image.ok(), egressd::test::why(image));
    const egressd_config config = encode_config(*image);

    const egressd_config_table& excluded = config.tables[EGRESSD_TABLE_EXCLUDE - 1];
    REQUIRE(excluded.count == 4);
    const std::vector<std::pair<std::string, uint32_t>> want = {
        {"10.1.2.3/32", 3}, {"10.1.0.0/16", 1}, {"10.0.0.0/8", 0}, {"2001:db8::/32", 2}};  // IPv4 /n is 96+n
    for (size_t i = 0; i < want.size(); ++i) {
        CAPTURE(i);
        const Cidr c = Cidr::parse(want[i].first).value();
        CHECK(std::equal(std::begin(excluded.cidrs[i].addr), std::end(excluded.cidrs[i].addr),
                         reinterpret_cast<const uint32_t*>(c.addr.bytes.data())));
        CHECK(excluded.cidrs[i].rule == want[i].second);
        // The mask has exactly the prefix's bits, in address byte order.
        const auto* mask = reinterpret_cast<const uint8_t*>(excluded.cidrs[i].mask);
        int bits = 0;
        for (int b = 0; b < 16; ++b) bits += __builtin_popcount(mask[b]);
        CHECK(bits == c.prefix);
        CHECK(mask[0] == (c.prefix >= 8 ? 0xff : 0));
    }
    CHECK(config.tables[EGRESSD_TABLE_INCLUDE - 1].count == 0);
    CHECK(config.tables[EGRESSD_TABLE_MESH - 1].count == EGRESSD_CONFIG_TABLE_IN_TRIE);
    // The trie holds every entry either way.
    CHECK(std::count_if(image->cidrs.begin(), image->cidrs.end(),
                        [](const CidrRule& r) { return r.table == EGRESSD_TABLE_MESH; }) == EGRESSD_CONFIG_CIDRS + 1);
}

TEST_CASE("decode_cidr refuses keys egressd does not write") {
    const Cidr ten = cidrs({"10.0.0.0/8"})[0];
    const egressd_cidr_value value{};
    auto refused = [&](egressd_cidr_key key) {
        auto rule = decode_cidr(key, value);
        REQUIRE_FALSE(rule.ok());
        return rule.error().message;
    };
    egressd_cidr_key key = encode_cidr_key(0, EGRESSD_TABLE_EXCLUDE, ten);
    SUBCASE("prefix length below the fixed bits") {
        key.prefixlen = 31;
        CHECK(refused(key) == "cidrs_v1 key has prefix length 31, expected 32-160");
    }
    SUBCASE("prefix length beyond 128 address bits") {
        key.prefixlen = 161;
        CHECK(refused(key) == "cidrs_v1 key has prefix length 161, expected 32-160");
    }
    SUBCASE("table none") {
        key.table = EGRESSD_TABLE_NONE;
        CHECK(refused(key) == "cidrs_v1 key has unknown table 0");
    }
    SUBCASE("an unknown table") {
        key.table = 4;
        CHECK(refused(key) == "cidrs_v1 key has unknown table 4");
    }
    SUBCASE("padding") {
        key._pad[1] = 1;
        CHECK(refused(key) == "cidrs_v1 key has non-zero padding");
    }
    SUBCASE("host bits") {
        key.addr[13] = 1;
        CHECK(refused(key) == "cidrs_v1 key 10.1.0.0/8 has host bits set");
    }
}

TEST_CASE("diff_images: applying the diff to `from` yields `to`") {
    AgentConfig agent = agent_with_mesh_cidrs();
    MeshConfig mesh = mesh_with_lists();
    const MapImage base = *build_image(agent, mesh, 1);

    // Reordered (rule indexes change), one CIDR and one port gone, one of each added.
    mesh.outbound_ip_range_exclusion = cidrs({"10.0.0.0/8", "172.16.0.0/12"});
    mesh.outbound_port_exclusion = {22, 8080};
    const MapImage changed = *build_image(agent, mesh, 2);

    const MapImage empty;
    for (auto [from, to] : {std::pair{&base, &changed}, std::pair{&changed, &base}, std::pair{&empty, &base},
                            std::pair{&base, &empty}, std::pair{&base, &base}}) {
        const ImageDiff diff = diff_images(*from, *to);
        const MapImage result = applied(*from, diff);
        CHECK(rows(result.cidrs) == rows(to->cidrs));
        CHECK(rows(result.ports) == rows(to->ports));
    }

    // Only what changed: unchanged entries are neither deleted nor rewritten.
    const ImageDiff diff = diff_images(base, changed);
    CHECK(rows(diff.cidr_deletes) == std::vector<std::string>{"table 1 192.168.0.0/16 rule 0"});
    CHECK(rows(diff.cidr_upserts) ==
          std::vector<std::string>{"table 1 10.0.0.0/8 rule 0", "table 1 172.16.0.0/12 rule 1"});
    CHECK(rows(diff.port_deletes) == std::vector<std::string>{"table 1 port 443 rule 0"});
    CHECK(rows(diff.port_upserts) == std::vector<std::string>{"table 1 port 22 rule 0", "table 1 port 8080 rule 1"});
    CHECK_FALSE(diff.empty());
    CHECK(diff_images(base, base).empty());

    // A slot read back from the kernel comes in the maps' iteration order, not sorted.
    MapImage read_back = base;
    std::reverse(read_back.cidrs.begin(), read_back.cidrs.end());
    std::reverse(read_back.ports.begin(), read_back.ports.end());
    MapImage wanted = changed;
    std::reverse(wanted.cidrs.begin(), wanted.cidrs.end());
    const ImageDiff unsorted_diff = diff_images(read_back, wanted);
    CHECK(rows(unsorted_diff.cidr_deletes) == rows(diff.cidr_deletes));
    CHECK(rows(unsorted_diff.cidr_upserts) == rows(diff.cidr_upserts));
    CHECK(rows(unsorted_diff.port_deletes) == rows(diff.port_deletes));
    CHECK(rows(unsorted_diff.port_upserts) == rows(diff.port_upserts));
}

TEST_CASE("describe_changes") {
    MeshConfig before;
    before.enable_egress = true;
    before.outbound_ip_range_exclusion = cidrs({"192.168.0.0/16", "10.96.0.1"});
    before.outbound_port_exclusion = {443, 22};

    SUBCASE("nothing enforced changed") {
        MeshConfig after = before;
        after.name = "renamed";
        after.api_version = "config.flomesh.io/v1alpha2";
        after.outbound_ip_range_exclusion = cidrs({"10.96.0.1/32", "192.168.0.0/16", "192.168.0.0/16"});
        after.outbound_port_exclusion = {22, 443};
        CHECK(describe_changes(before, after) == "no effective change");
    }
    SUBCASE("egress switched off, one range swapped") {
        MeshConfig after = before;
        after.enable_egress = false;
        after.outbound_ip_range_exclusion = cidrs({"10.96.0.1", "10.0.0.0/8"});
        CHECK(describe_changes(before, after) ==
              "enableEgress true -> false; outboundIPRangeExclusionList +10.0.0.0/8 -192.168.0.0/16");
    }
    SUBCASE("every field") {
        MeshConfig after = before;
        after.enable_egress = false;
        after.enable_egress_policy = false;
        after.outbound_ip_range_exclusion.clear();
        after.outbound_ip_range_inclusion = cidrs({"2001:db8::/32"});
        after.outbound_port_exclusion = {22, 80};
        CHECK(describe_changes(before, after) ==
              "enableEgress true -> false; enableEgressPolicy true -> false; outboundIPRangeExclusionList "
              "-10.96.0.1/32 -192.168.0.0/16; outboundIPRangeInclusionList +2001:db8::/32; outboundPortExclusionList "
              "+80 -443");
    }
}
