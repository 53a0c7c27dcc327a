#include <doctest/doctest.h>

#include <string>

#include "test_support.h"
#include "core/files.h"
#include "core/meshconfig.h"
#include "core/yaml_edit.h"
#include "core/yaml_input.h"

using namespace egressd;

namespace {

std::string fixture(const std::string& name) {
    auto text = read_file(std::string(EGRESSD_FIXTURES) + "/meshconfig/" + name);
    REQUIRE_MESSAGE(text.ok(), egressd::test::why(text));
    return *text;
}

size_t occurrences(std::string_view text, std::string_view part) {
    size_t count = 0;
    for (size_t at = text.find(part); at != std::string_view::npos; at = text.find(part, at + 1)) ++count;
    return count;
}

// `text` with its one line `old_line` (a whole line, not the first) replaced: what
// a one-token edit must produce, byte for byte.
std::string with_line_replaced(std::string text, const std::string& old_line, const std::string& new_line) {
    const std::string whole_line = "\n" + old_line + "\n";
    REQUIRE(occurrences(text, whole_line) == 1);
    text.replace(text.find(whole_line) + 1, old_line.size(), new_line);
    return text;
}

// `text` with `lines` inserted after its one line `anchor_line`.
std::string with_lines_inserted(std::string text, const std::string& anchor_line, const std::string& lines) {
    REQUIRE(occurrences(text, anchor_line + "\n") == 1);
    text.insert(text.find(anchor_line + "\n") + anchor_line.size() + 1, lines);
    return text;
}

std::string crlf(std::string_view text) {
    std::string converted;
    for (char c : text) converted += c == '\n' ? std::string("\r\n") : std::string(1, c);
    return converted;
}

bool reads_back_as(const std::string& text, bool value) {
    auto mesh = parse_meshconfig(text, "edited.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    return mesh->enable_egress == value;
}

// A MeshConfig whose traffic mapping's lines start at line 5.
std::string unnamed_mesh_config_with(std::string_view traffic_lines) {
    return "apiVersion: config.flomesh.io/v1alpha3\n"  // 1
           "kind: MeshConfig\n"                        // 2
           "spec:\n"                                   // 3
           "  traffic:\n"                              // 4
           + std::string(traffic_lines);
}

}  // namespace

TEST_CASE("set_enable_egress changes one token of a real MeshConfig, keeping its comment") {
    const std::string before = fixture("fsm-v1alpha3-full.yaml");
    auto edit = set_enable_egress(before, true, "mesh.yaml");
    REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
    CHECK(edit->had_value);
    CHECK(edit->old_value == false);
    CHECK(edit->changed);
    CHECK(edit->text == with_line_replaced(before,
                                           "    enableEgress: false   # egress goes through Egress policies only",
                                           "    enableEgress: true   # egress goes through Egress policies only"));

    auto original = parse_meshconfig(before, "mesh.yaml");
    auto edited = parse_meshconfig(edit->text, "mesh.yaml");
    REQUIRE(original.ok());
    REQUIRE(edited.ok());
    CHECK(edited->enable_egress == true);
    original->enable_egress = true;
    CHECK(*edited == *original);  // nothing else read differently
}

TEST_CASE("set_enable_egress to the value already written leaves the text alone") {
    const std::string before = fixture("fsm-v1alpha3-full.yaml");
    auto edit = set_enable_egress(before, false, "mesh.yaml");
    REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
    CHECK(edit->had_value);
    CHECK(edit->old_value == false);
    CHECK_FALSE(edit->changed);
    CHECK(edit->text == before);
}

TEST_CASE("set_enable_egress replaces quoted, tagged and capitalised scalars") {
    struct Case {
        const char* written;
        bool value;
        const char* expected;  // the line after the edit
        bool old_value;
        bool changed;
    };
    const Case cases[] = {
        // A quoted boolean is a string to the parser: it is rewritten plain, even to the same value.
        {"\"true\"", false, "false", true, true},
        {"'false'", true, "true", false, true},
        {"\"\\x74rue\"", false, "false", true, true},
        {"\"true\"", true, "true", true, true},
        {"True", false, "false", true, true},
        {"FALSE", true, "true", false, true},
        {"True", true, "True", true, false},
        {"!!bool false", true, "!!bool true", false, true},
        {"&switch false", true, "&switch true", false, true},
    };
    for (const Case& c : cases) {
        CAPTURE(c.written);
        CAPTURE(c.value);
        const std::string old_line = std::string("    enableEgress: ") + c.written + "  # switch";
        const std::string before = unnamed_mesh_config_with(old_line + "\n    interceptionMode: PodLevel\n");
        auto edit = set_enable_egress(before, c.value, "mesh.yaml");
        REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
        CHECK(edit->text ==
              with_line_replaced(before, old_line, std::string("    enableEgress: ") + c.expected + "  # switch"));
        CHECK(edit->had_value);
        CHECK(edit->old_value == c.old_value);
        CHECK(edit->changed == c.changed);
        CHECK(reads_back_as(edit->text, c.value));
    }
}

TEST_CASE("set_enable_egress keeps CRLF line endings") {
    const std::string before = crlf(fixture("fsm-v1alpha3-full.yaml"));
    auto edit = set_enable_egress(before, true, "mesh.yaml");
    REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
    CHECK(edit->text == with_line_replaced(before,
                                           "    enableEgress: false   # egress goes through Egress policies only\r",
                                           "    enableEgress: true   # egress goes through Egress policies only\r"));
    CHECK(reads_back_as(edit->text, true));
}

TEST_CASE("set_enable_egress counts bytes correctly past a byte order mark and multi-byte characters") {
    const std::string before = "\xEF\xBB\xBF# Réglages égress — ça marche\n" +
                               unnamed_mesh_config_with("    enableEgress: true # sortie\n    interceptionMode: PodLevel\n");
    auto edit = set_enable_egress(before, false, "mesh.yaml");
    REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
    CHECK(edit->text ==
          with_line_replaced(before, "    enableEgress: true # sortie", "    enableEgress: false # sortie"));
}

TEST_CASE("set_enable_egress inserts a missing key, indented like its siblings") {
    const std::string before =
        "apiVersion: config.flomesh.io/v1alpha3\n"
        "kind: MeshConfig\n"
        "spec:\n"
        "  traffic:   # traffic settings\n"
        "     # three-space children\n"
        "     interceptionMode: PodLevel\n"
        "     outboundPortExclusionList: [22]\n"
        "  sidecar:\n"
        "    logLevel: error\n";
    SUBCASE("LF") {
        auto edit = set_enable_egress(before, false, "mesh.yaml");
        REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
        CHECK_FALSE(edit->had_value);
        CHECK(edit->changed);
        CHECK(edit->text ==
              with_lines_inserted(before, "  traffic:   # traffic settings", "     enableEgress: false\n"));
        auto mesh = parse_meshconfig(edit->text, "mesh.yaml");
        REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
        CHECK(mesh->enable_egress == false);
        CHECK(mesh->outbound_port_exclusion == std::vector<uint16_t>{22});
    }
    SUBCASE("CRLF") {
        auto edit = set_enable_egress(crlf(before), true, "mesh.yaml");
        REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
        CHECK(edit->text ==
              with_lines_inserted(crlf(before), "  traffic:   # traffic settings\r", "     enableEgress: true\r\n"));
        CHECK(reads_back_as(edit->text, true));
    }
}

TEST_CASE("set_enable_egress inserts traffic under spec, one indentation step deeper for its key") {
    const std::string before =
        "apiVersion: config.flomesh.io/v1alpha3\n"
        "kind: MeshConfig\n"
        "metadata:\n"
        "    name: fsm-mesh-config\n"
        "spec:   # the spec\n"
        "    sidecar:\n"
        "        logLevel: error\n"
        "    featureFlags:\n"
        "        enableEgressPolicy: false\n";
    auto edit = set_enable_egress(before, true, "mesh.yaml");
    REQUIRE_MESSAGE(edit.ok(), egressd::test::why(edit));
    CHECK_FALSE(edit->had_value);
    CHECK(edit->changed);
    CHECK(edit->text ==
          with_lines_inserted(before, "spec:   # the spec", "    traffic:\n        enableEgress: true\n"));
    auto mesh = parse_meshconfig(edit->text, "mesh.yaml");
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->enable_egress == true);
    CHECK(mesh->enable_egress_policy == false);
}

TEST_CASE("set_enable_egress refuses what it cannot edit in place") {
    struct Case {
        const char* name;
        std::string yaml;
        std::string message;
    };
    const Case cases[] = {
        {"flow-style traffic", "kind: MeshConfig\nspec:\n  traffic: {enableEgress: true}\n",
         "mesh.yaml:3:12: spec.traffic: is a flow-style mapping ({...}), which cannot be edited in place; write it in "
         "block style"},
        {"flow-style spec", "kind: MeshConfig\nspec: {traffic: {enableEgress: true}}\n",
         "mesh.yaml:2:7: spec: is a flow-style mapping ({...}), which cannot be edited in place; write it in block "
         "style"},
        {"an explicit key", "kind: MeshConfig\nspec:\n  ? sidecar\n  : {logLevel: error}\n",
         "mesh.yaml:3:3: spec: cannot find the indentation of its keys (spaces only)"},
        {"a syntax error", unnamed_mesh_config_with("    enableEgress: [true\n"), "mesh.yaml:6:1: did not find expected ',' or ']' (while parsing a flow sequence at line 5)"},
        {"two documents", unnamed_mesh_config_with("    enableEgress: true\n---\nkind: MeshConfig\n"),
         "mesh.yaml:7:1: expected one YAML document, found a second one"},
        {"no spec", "kind: MeshConfig\n", "mesh.yaml:1:1: spec: required field is missing"},
        {"null traffic", unnamed_mesh_config_with("  sidecar: {}\n"), "mesh.yaml:4:3: spec.traffic: expected a mapping, got null"},
        {"not a boolean", unnamed_mesh_config_with("    enableEgress: maybe\n"),
         "mesh.yaml:5:19: spec.traffic.enableEgress: expected a boolean (true or false), got \"maybe\""},
        {"null value", unnamed_mesh_config_with("    enableEgress:\n    interceptionMode: PodLevel\n"),
         "mesh.yaml:5:5: spec.traffic.enableEgress: expected a boolean (true or false), got null"},
        {"an alias", "default: &off false\n" + unnamed_mesh_config_with("    enableEgress: *off\n"),
         "mesh.yaml:1:10: spec.traffic.enableEgress: is an alias; edit the anchored value instead"},
        {"a block scalar", unnamed_mesh_config_with("    enableEgress: |-\n      true\n"),
         "mesh.yaml:5:19: spec.traffic.enableEgress: cannot locate its value in the text; write it as a plain true or "
         "false"},
        {"a string tag", unnamed_mesh_config_with("    enableEgress: !!str \"true\"\n"),
         "refusing the edit, its result does not read back: mesh.yaml:5:19: spec.traffic.enableEgress: expected a "
         "boolean (true or false), got \"false\" tagged tag:yaml.org,2002:str"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.name);
        auto edit = set_enable_egress(c.yaml, false, "mesh.yaml");
        REQUIRE_FALSE(edit.ok());
        CHECK(edit.error().message == c.message);
    }
}
