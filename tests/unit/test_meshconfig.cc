#include <doctest/doctest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "test_support.h"
#include "core/meshconfig.h"

using namespace egressd;
using egressd::test::cidr_texts;

namespace {

const std::string kMeshFixtures = std::string(EGRESSD_FIXTURES) + "/meshconfig/";

// A MeshConfig whose traffic mapping's lines start at line 7.
std::string with_traffic(std::string_view traffic_lines) {
    return "apiVersion: config.flomesh.io/v1alpha3\n"  // 1
           "kind: MeshConfig\n"                        // 2
           "metadata:\n"                               // 3
           "  name: fsm-mesh-config\n"                 // 4
           "spec:\n"                                   // 5
           "  traffic:\n"                              // 6
           + std::string(traffic_lines);
}

}  // namespace

TEST_CASE("a production FSM v1alpha3 MeshConfig: the enforced fields, every other field ignored") {
    auto mesh = load_meshconfig(kMeshFixtures + "fsm-v1alpha3-full.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->api_version == "config.flomesh.io/v1alpha3");
    CHECK(mesh->name == "fsm-mesh-config");
    CHECK(mesh->namespace_ == "flomesh");
    CHECK(mesh->enable_egress == false);
    CHECK(mesh->enable_egress_policy == true);
    CHECK(cidr_texts(mesh->outbound_ip_range_exclusion) ==
          std::vector<std::string>{"10.96.0.1/32", "169.254.169.254/32", "192.168.0.0/16", "2001:db8:100::/48"});
    CHECK(mesh->outbound_ip_range_inclusion.empty());
    CHECK(mesh->outbound_port_exclusion == std::vector<uint16_t>{22, 5432, 6379});
}

TEST_CASE("a minimal FSM v1alpha1 MeshConfig: enableEgressPolicy defaults to true, lists to empty") {
    auto mesh = load_meshconfig(kMeshFixtures + "fsm-v1alpha1-minimal.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->api_version == "config.flomesh.io/v1alpha1");
    CHECK(mesh->namespace_ == "");
    CHECK(mesh->enable_egress == true);
    CHECK(mesh->enable_egress_policy == true);
    CHECK(mesh->outbound_ip_range_exclusion.empty());
    CHECK(mesh->outbound_ip_range_inclusion.empty());
    CHECK(mesh->outbound_port_exclusion.empty());
}

TEST_CASE("FSM v1alpha2 with an inclusion list, the policy flag off, and null lists") {
    auto mesh = load_meshconfig(kMeshFixtures + "fsm-v1alpha2-inclusion.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->enable_egress == false);
    CHECK(mesh->enable_egress_policy == false);
    CHECK(cidr_texts(mesh->outbound_ip_range_inclusion) == std::vector<std::string>{"10.0.0.0/8", "172.16.0.0/12"});
    CHECK(mesh->outbound_ip_range_exclusion.empty());
    CHECK(mesh->outbound_port_exclusion.empty());
}

TEST_CASE("OSM v1alpha2 with flow-style lists") {
    auto mesh = load_meshconfig(kMeshFixtures + "osm-v1alpha2.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->api_version == "config.openservicemesh.io/v1alpha2");
    CHECK(mesh->name == "osm-mesh-config");
    CHECK(mesh->namespace_ == "osm-system");
    CHECK(mesh->enable_egress == true);
    CHECK(cidr_texts(mesh->outbound_ip_range_exclusion) == std::vector<std::string>{"fd00:10::/64", "10.0.0.0/8"});
    CHECK(mesh->outbound_port_exclusion == std::vector<uint16_t>{8125});
}

TEST_CASE("OSM v1alpha1 docs shape: lists nested under observability are unknown fields") {
    auto mesh = load_meshconfig(kMeshFixtures + "osm-v1alpha1-docs.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->api_version == "config.openservicemesh.io/v1alpha1");
    CHECK(mesh->enable_egress == false);
    CHECK(mesh->outbound_ip_range_exclusion.empty());
    CHECK(mesh->outbound_port_exclusion.empty());
}

TEST_CASE("every accepted apiVersion, and a flow-style spec") {
    for (const char* api_version :
         {"config.flomesh.io/v1alpha1", "config.flomesh.io/v1alpha2", "config.flomesh.io/v1alpha3",
          "config.openservicemesh.io/v1alpha1", "config.openservicemesh.io/v1alpha2"}) {
        CAPTURE(api_version);
        const std::string text = std::string("apiVersion: ") + api_version +
                                 "\nkind: MeshConfig\nspec: {traffic: {enableEgress: TRUE, "
                                 "outboundPortExclusionList: [443], outboundIPRangeExclusionList: [\"10.0.0.0/8\"]}}\n";
        auto mesh = parse_meshconfig(text, "mesh.yaml");
        REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
        CHECK(mesh->api_version == api_version);
        CHECK(mesh->enable_egress == true);
        CHECK(mesh->outbound_port_exclusion == std::vector<uint16_t>{443});
        CHECK(cidr_texts(mesh->outbound_ip_range_exclusion) == std::vector<std::string>{"10.0.0.0/8"});
    }
}

TEST_CASE("bad MeshConfigs: file, line, column, field path and reason") {
    struct Case {
        const char* name;
        std::string yaml;
        std::string message;  // after "mesh.yaml:"
    };
    const Case cases[] = {
        // The document as a whole.
        {"empty file", "", "1:1: empty document"},
        {"comments only", "# nothing yet\n", "1:1: empty document"},
        {"a lone document marker", "---\n", "1:1: empty document"},
        {"top level is a list", "- kind: MeshConfig\n", "1:1: expected a mapping at the top level, got a list"},
        {"top level is a scalar", "MeshConfig\n", "1:1: expected a mapping at the top level, got \"MeshConfig\""},
        {"two documents", "kind: MeshConfig\n---\nkind: MeshConfig\n",
         "3:1: expected one YAML document, found a second one"},
        {"unclosed flow sequence", with_traffic("    enableEgress: [true\n"), "8:1: did not find expected ',' or ']' (while parsing a flow sequence at line 7)"},
        {"tab indentation", "spec:\n\ttraffic: 1\n", "2:1: found character that cannot start any token (a tab: YAML indents with spaces)"},
        {"bad indentation", with_traffic("    enableEgress: true\n   interceptionMode: PodLevel\n"),
         "8:4: did not find expected key (while parsing a block mapping at line 6)"},
        // kind, apiVersion, metadata.
        {"an Egress policy", "apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\n",
         "2:7: kind: expected MeshConfig, got Egress"},
        {"no kind", "apiVersion: config.flomesh.io/v1alpha3\nmetadata:\n  name: m\n",
         "1:1: kind: required field is missing"},
        {"unsupported apiVersion", "kind: MeshConfig\napiVersion: config.flomesh.io/v1\n",
         "2:13: apiVersion: \"config.flomesh.io/v1\" is not supported; expected one of config.flomesh.io/v1alpha1, "
         "config.flomesh.io/v1alpha2, config.flomesh.io/v1alpha3, config.openservicemesh.io/v1alpha1, "
         "config.openservicemesh.io/v1alpha2"},
        {"no apiVersion", "kind: MeshConfig\nspec: {}\n", "1:1: apiVersion: required field is missing"},
        {"metadata.name not a string",
         "kind: MeshConfig\napiVersion: config.flomesh.io/v1alpha3\nmetadata:\n  name: [a]\n",
         "4:9: metadata.name: expected a string, got a list"},
        // spec and spec.traffic.
        {"no spec", "kind: MeshConfig\napiVersion: config.flomesh.io/v1alpha3\n",
         "1:1: spec: required field is missing"},
        {"no traffic",
         "kind: MeshConfig\napiVersion: config.flomesh.io/v1alpha3\nspec:\n  sidecar:\n    logLevel: error\n",
         "4:3: spec.traffic: required field is missing"},
        {"null spec", "kind: MeshConfig\napiVersion: config.flomesh.io/v1alpha3\nspec:\n",
         "3:1: spec.traffic: required field is missing"},
        {"traffic is a list", with_traffic("  - enableEgress: true\n"),
         "7:3: spec.traffic: expected a mapping, got a list"},
        // spec.traffic.enableEgress.
        {"no enableEgress", with_traffic("    interceptionMode: PodLevel\n"),
         "7:5: spec.traffic.enableEgress: required field is missing"},
        {"enableEgress yes", with_traffic("    enableEgress: yes\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got \"yes\""},
        {"enableEgress maybe", with_traffic("    enableEgress: maybe\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got \"maybe\""},
        {"enableEgress 1", with_traffic("    enableEgress: 1\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got \"1\""},
        {"enableEgress quoted", with_traffic("    enableEgress: \"true\"\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got the string \"true\""},
        {"enableEgress tagged string", with_traffic("    enableEgress: !!str true\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got \"true\" tagged "
         "tag:yaml.org,2002:str"},
        {"enableEgress null", with_traffic("    enableEgress:\n    interceptionMode: PodLevel\n"),
         "7:5: spec.traffic.enableEgress: expected a boolean (true or false), got null"},
        {"enableEgress a list", with_traffic("    enableEgress: [true]\n"),
         "7:19: spec.traffic.enableEgress: expected a boolean (true or false), got a list"},
        {"enableEgress twice", with_traffic("    enableEgress: true\n    enableEgress: false\n"),
         "8:5: spec.traffic.enableEgress: duplicate key (first at line 7)"},
        {"enableEgressPolicy on", with_traffic("    enableEgress: true\n  featureFlags:\n    enableEgressPolicy: on\n"),
         "9:25: spec.featureFlags.enableEgressPolicy: expected a boolean (true or false), got \"on\""},
        {"featureFlags a scalar", with_traffic("    enableEgress: true\n  featureFlags: all\n"),
         "8:17: spec.featureFlags: expected a mapping, got \"all\""},
        // CIDR lists.
        {"octet out of range",
         with_traffic(
             "    enableEgress: false\n    outboundIPRangeExclusionList:\n    - 10.0.0.0/8\n    - 10.0.0.300/8\n"),
         "10:7: spec.traffic.outboundIPRangeExclusionList[1]: \"10.0.0.300/8\" is not a valid CIDR: octet 300 out of "
         "range"},
        {"IPv4 prefix too long",
         with_traffic("    enableEgress: false\n    outboundIPRangeExclusionList: [10.0.0.0/33]\n"),
         "8:36: spec.traffic.outboundIPRangeExclusionList[0]: \"10.0.0.0/33\" is not a valid CIDR: prefix length 33 "
         "exceeds 32 for IPv4"},
        {"IPv6 prefix too long",
         with_traffic("    enableEgress: false\n    outboundIPRangeInclusionList:\n    - 2001:db8::/129\n"),
         "9:7: spec.traffic.outboundIPRangeInclusionList[0]: \"2001:db8::/129\" is not a valid CIDR: prefix length 129 "
         "exceeds 128 for IPv6"},
        {"empty CIDR", with_traffic("    enableEgress: false\n    outboundIPRangeExclusionList:\n    - \"\"\n"),
         "9:7: spec.traffic.outboundIPRangeExclusionList[0]: \"\" is not a valid CIDR: empty string"},
        {"garbage CIDR", with_traffic("    enableEgress: false\n    outboundIPRangeExclusionList:\n    - localhost\n"),
         "9:7: spec.traffic.outboundIPRangeExclusionList[0]: \"localhost\" is not a valid CIDR: not an IPv4 or IPv6 "
         "address"},
        {"null CIDR item",
         with_traffic("    enableEgress: false\n    outboundIPRangeExclusionList:\n    - 10.0.0.0/8\n    -\n"),
         "9:5: spec.traffic.outboundIPRangeExclusionList[1]: expected a string, got null"},
        {"CIDR list is a string",
         with_traffic("    enableEgress: false\n    outboundIPRangeExclusionList: 10.0.0.0/8\n"),
         "8:35: spec.traffic.outboundIPRangeExclusionList: expected a list, got \"10.0.0.0/8\""},
        // Port list.
        {"port 0", with_traffic("    enableEgress: false\n    outboundPortExclusionList: [80, 0]\n"),
         "8:37: spec.traffic.outboundPortExclusionList[1]: port 0 is out of range 1-65535"},
        {"port 70000", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - 70000\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: port 70000 is out of range 1-65535"},
        {"port -1", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - -1\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: port -1 is out of range 1-65535"},
        {"quoted port", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - \"80\"\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: expected an integer, got the string \"80\""},
        {"fractional port", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - 80.5\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: expected an integer, got \"80.5\""},
        {"named port", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - http\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: expected an integer, got \"http\""},
        {"octal-looking port", with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - 0443\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: integer 0443 has a leading zero (octal or decimal?)"},
        {"huge port",
         with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n    - 99999999999999999999\n"),
         "9:7: spec.traffic.outboundPortExclusionList[0]: integer 99999999999999999999 is too large"},
        {"port list is a mapping",
         with_traffic("    enableEgress: false\n    outboundPortExclusionList:\n      http: 80\n"),
         "9:7: spec.traffic.outboundPortExclusionList: expected a list, got a mapping"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.name);
        auto mesh = parse_meshconfig(c.yaml, "mesh.yaml");
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().message == "mesh.yaml:" + c.message);
        CHECK(mesh.error().errnum == 0);
    }
}

TEST_CASE("YAML that is not UTF-8 text, nests too deep or aliases an unknown anchor: refused with its position") {
    const std::string head = "apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nspec:\n  traffic:\n";
    struct Case {
        const char* name;
        std::string yaml;
        std::string message;
    };
    const std::vector<Case> cases = {
        // 0xF7 starts a 4-byte sequence; the next byte, "s", does not continue it.
        {"a byte that is not UTF-8", head + "    enableEgress: fal\xf7se\n",
         "5:23: not UTF-8 text: invalid trailing UTF-8 octet (byte 0x73)"},
        // YAML forbids most control characters, UTF-8 or not.
        {"a control character", head + "    enableEgress: fal\x01se\n",
         "5:22: control characters are not allowed (byte 0x01)"},
        {"an alias inside its own anchored list", head + "    outboundPortExclusionList: &a [80, *a]\n",
         "5:40: unknown anchor \"a\""},
        {"nesting 300 levels deep", head + "    x: " + std::string(300, '[') + std::string(300, ']') + "\n",
         "5:261: nested deeper than 256 levels"},  // the three mappings around count
    };
    for (const Case& c : cases) {
        CAPTURE(c.name);
        auto mesh = parse_meshconfig(c.yaml, "mesh.yaml");
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().message == "mesh.yaml:" + c.message);
    }
    // An alias of a complete node reads as the node.
    auto aliased = parse_meshconfig(head + "    enableEgress: &off false\n    x: *off\n", "mesh.yaml");
    REQUIRE_MESSAGE(aliased.ok(), egressd::test::why(aliased));
    CHECK_FALSE(aliased->enable_egress);
}

TEST_CASE("load_meshconfig names the file in every error") {
    SUBCASE("a bad entry in a file") {
        const std::string file = kMeshFixtures + "bad/bad-exclusion-cidr.yaml";
        auto mesh = load_meshconfig(file);
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().message == file +
                                          ":11:7: spec.traffic.outboundIPRangeExclusionList[1]: \"10.0.0.300/8\" is "
                                          "not a valid CIDR: octet 300 out of range");
    }
    SUBCASE("another resource") {
        const std::string file = kMeshFixtures + "bad/egress-policy.yaml";
        auto mesh = load_meshconfig(file);
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().message == file + ":1:7: kind: expected MeshConfig, got Egress");
    }
    SUBCASE("a missing file") {
        const std::string file = kMeshFixtures + "no-such-file.yaml";
        auto mesh = load_meshconfig(file);
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().errnum == ENOENT);
        CHECK(mesh.error().describe() == "reading " + file + ": No such file or directory");
    }
    SUBCASE("a directory") {
        auto mesh = load_meshconfig(kMeshFixtures);
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().errnum == EISDIR);
        CHECK(mesh.error().describe() == "reading " + kMeshFixtures + ": Is a directory");
    }
}
