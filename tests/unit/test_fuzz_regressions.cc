// Inputs scripts/fuzz found that crashed or hung a parser (tests/fuzz/README.md):
// each stays here, and in its target's seed corpus, so that it never comes back.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "test_support.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/meshconfig.h"
#include "core/workloads.h"
#include "core/yaml_edit.h"

using namespace egressd;

// yaml-cpp 0.7's LoadAll, the YAML parser before LibYAML, added empty
// documents for ever on a token that starts no node (a "," at the top level).
TEST_CASE("fuzz regression: a stray \",\" fails every YAML parser instead of hanging it") {
    const std::vector<std::string> texts = {
        ",",
        ", a",
        "workloads:\n  , x\n",
        // meshconfig: a block mapping whose last line starts with ",".
        "apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nspec:\n  traffic:\n  , enableEgress: false\n",
    };
    for (const std::string& text : texts) {
        CAPTURE(text);
        const auto mesh = parse_meshconfig(text, "mesh.yaml");
        REQUIRE_FALSE(mesh.ok());
        CHECK(mesh.error().message.starts_with("mesh.yaml:"));
        CHECK_FALSE(parse_workloads(text, "w.yaml").ok());
        CHECK_FALSE(parse_agent_config(text, "/etc/egressd/egressd.yaml").ok());
        CHECK_FALSE(set_enable_egress(text, true, "mesh.yaml").ok());
        const PolicySet policies = parse_policy_documents(text, "p.yaml");
        CHECK(policies.policies.empty());
        CHECK(policies.errors.size() == 1);
    }
    const auto at_comma = parse_meshconfig("# the MeshConfig\n,\n", "mesh.yaml");
    REQUIRE_FALSE(at_comma.ok());
    CHECK(at_comma.error().message == "mesh.yaml:2:1: did not find expected node content");
    // Documents that do follow one another still read.
    CHECK(parse_policy_documents("---\n---\nkind: Other\napiVersion: v1\n...\n---\n", "p.yaml").errors.empty());
}

// egressctl run --as rewrites the file with render_workloads: a name with a
// quote made a file that no longer parsed, so egressd refused it.
TEST_CASE("fuzz regression: rendered workloads read back whatever bytes their names hold") {
    const std::vector<Workload> workloads = {
        {"a/[b/c", {"\xc2\xae\"ns\"", "sa-1"}, {}, 0},
        {"back\\slash", {"tab\there", "new\nline"}, {}, 0},
        {"del\x7f/x", {"caf\xc3\xa9", "'single'"}, {}, 0},
    };
    const std::string text = render_workloads(workloads);
    const auto again = parse_workloads(text, "w.yaml");
    REQUIRE_MESSAGE(again.ok(), egressd::test::why(again) << "\n" << text);
    CHECK(*again == workloads);
    // YAML is Unicode text: a name that is not UTF-8 is refused where it comes in.
    const auto not_utf8 = IdentityName::parse("\xae/sa-1");
    REQUIRE_FALSE(not_utf8.ok());
    CHECK(not_utf8.error().message.find("is not UTF-8 text") != std::string::npos);
}

// yaml-cpp read UTF-16 too, with marks in the text it converted to UTF-8
// (LibYAML's count its characters): egressctl egress enable took them for
// offsets in the file and ended on an uncaught std::out_of_range.
TEST_CASE("fuzz regression: set_enable_egress refuses UTF-16 and UTF-32 text") {
    const std::string utf8 = "spec:\n  traffic:\n    other: 1\n";
    std::string utf16le = "\xFF\xFE";
    for (const char c : utf8) utf16le += {c, '\0'};
    std::string utf16be_no_bom;
    for (const char c : utf8) utf16be_no_bom += {'\0', c};
    for (const std::string& text : {utf16le, utf16be_no_bom, std::string("\x00\x00\xFE\xFF", 4) + utf8}) {
        const auto edit = set_enable_egress(text, true, "mesh.yaml");
        REQUIRE_FALSE(edit.ok());
        CHECK(edit.error().message.starts_with("mesh.yaml:1:1: not UTF-8 text"));
    }
    // UTF-8, with or without its byte order mark, is still edited.
    CHECK(set_enable_egress(utf8, true, "mesh.yaml").ok());
    CHECK(set_enable_egress("\xEF\xBB\xBF" + utf8, true, "mesh.yaml").ok());
}
