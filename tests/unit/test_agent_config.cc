#include <doctest/doctest.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "test_support.h"
#include "core/agent_config.h"
#include "core/meshconfig.h"
#include "egressd_abi.h"

using namespace egressd;
namespace fs = std::filesystem;

namespace {

const fs::path kAgentFixtures = fs::path(EGRESSD_FIXTURES) / "agent";

// The two required keys, on lines 1 and 2; a case's own lines follow.
std::string with_required(std::string_view more_lines) {
    return "cgroup: kubepods.slice\n"
           "meshConfig: /etc/fsm/meshconfig.yaml\n" +
           std::string(more_lines);
}

}  // namespace

TEST_CASE("agent settings with every key set") {
    auto config = load_agent_config(kAgentFixtures / "egressd.yaml");
    REQUIRE_MESSAGE(config.ok(), egressd::test::why(config));
    CHECK(config->source_file == kAgentFixtures / "egressd.yaml");
    CHECK(config->cgroup == "kubepods.slice/kubepods-burstable.slice");
    CHECK(config->bpffs == "/sys/fs/bpf/egressd-test");
    CHECK(config->mesh_config == kAgentFixtures / "mesh/meshconfig.yaml");
    REQUIRE(config->mesh_cidrs.size() == 3);
    CHECK(config->mesh_cidrs[0].str() == "10.244.0.0/16");
    CHECK(config->mesh_cidrs[1].str() == "10.96.0.0/12");
    CHECK(config->mesh_cidrs[2].str() == "fd00:10:244::/56");
    CHECK(config->sidecar_uid == 1337u);
    CHECK(config->run_dir == kAgentFixtures / "run");
    CHECK(config->egress_policy_semantics == PolicySemantics::osm);
    CHECK(config->capacities == Capacities{4096, 256});
}

TEST_CASE("agent settings with only the required keys take the defaults") {
    auto config = load_agent_config(kAgentFixtures / "minimal.yaml");
    REQUIRE_MESSAGE(config.ok(), egressd::test::why(config));
    const AgentConfig defaults;
    CHECK(config->cgroup == "/sys/fs/cgroup/kubepods.slice");
    CHECK(config->mesh_config == "/etc/fsm/meshconfig.yaml");  // absolute: kept
    CHECK(config->bpffs == EGRESSD_PIN_DIR_DEFAULT);           // the agent default agrees with the ABI
    CHECK(config->mesh_cidrs.empty());
    CHECK(config->sidecar_uid == 1500u);
    CHECK(config->run_dir == defaults.run_dir);
    CHECK(config->egress_policy_semantics == PolicySemantics::fsm);
    CHECK(config->capacities == Capacities{EGRESSD_DEFAULT_CIDR_CAPACITY, EGRESSD_DEFAULT_PORT_CAPACITY});
}

TEST_CASE("sidecarUID: null turns row 2 off; meshConfig resolves against the file's directory") {
    auto config = load_agent_config(kAgentFixtures / "no-sidecar.yaml");
    REQUIRE_MESSAGE(config.ok(), egressd::test::why(config));
    CHECK_FALSE(config->sidecar_uid.has_value());
    CHECK(config->cgroup == "system.slice/batch.service");
    CHECK(config->mesh_config == kAgentFixtures / "../meshconfig/fsm-v1alpha1-minimal.yaml");
    auto mesh = load_meshconfig(config->mesh_config);
    CHECK_MESSAGE(mesh.ok(), egressd::test::why(mesh));
}

TEST_CASE("a relative settings path resolves against the working directory") {
    auto config = parse_agent_config(with_required("runDir: state\nsidecarUID: 0\n"), "conf/egressd.yaml");
    REQUIRE_MESSAGE(config.ok(), egressd::test::why(config));
    CHECK(config->source_file == fs::current_path() / "conf/egressd.yaml");
    CHECK(config->run_dir == fs::current_path() / "conf/state");
    CHECK(config->sidecar_uid == 0u);
}

TEST_CASE("the largest accepted values") {
    auto config = parse_agent_config(
        with_required("sidecarUID: 4294967294\ncapacities:\n  cidrs: 1000000\n  ports: 65536\n"), "/etc/egressd.yaml");
    REQUIRE_MESSAGE(config.ok(), egressd::test::why(config));
    CHECK(config->sidecar_uid == 4294967294u);
    CHECK(config->capacities == Capacities{1000000, 65536});
}

TEST_CASE("bad agent settings: file, line, column, key path and reason") {
    struct Case {
        const char* name;
        std::string yaml;
        std::string message;  // after "egressd.yaml:"
    };
    const Case cases[] = {
        {"empty file", "", "1:1: empty document"},
        {"top level is a list", "- cgroup: x\n", "1:1: expected a mapping at the top level, got a list"},
        {"a typo in a key", with_required("sidecarUid: 1500\n"),
         "3:1: sidecarUid: unknown key; expected one of cgroup, cgroupMount, bpffs, meshConfig, meshCIDRs, "
         "sidecarUID, runDir, egressPolicySemantics, policyDir, workloads, dnsServer, dnsLearning, mode, rawSockets, "
         "revokeOnTighten, flows, events, httpAddress, capacities, kubernetes"},
        {"rawSockets neither deny nor allow", with_required("rawSockets: audit\n"),
         "3:13: rawSockets: expected deny or allow, got \"audit\""},
        {"flows neither on nor off", with_required("flows: false\n"), "3:8: flows: expected on or off, got \"false\""},
        {"a typo under capacities", with_required("capacities:\n  cidr: 10\n"),
         "4:3: capacities.cidr: unknown key; expected one of cidrs, ports, policyRules, policies, identities, "
         "workloads, dnsLearned"},
        {"capacities a scalar", with_required("capacities: 10\n"), "3:13: capacities: expected a mapping, got \"10\""},
        {"a key twice", with_required("cgroup: other.slice\n"), "3:1: cgroup: duplicate key (first at line 1)"},
        // cgroup
        {"no cgroup", "meshConfig: /etc/fsm/meshconfig.yaml\n", "1:1: cgroup: required field is missing"},
        {"empty cgroup", "cgroup: \"\"\nmeshConfig: /m.yaml\n", "1:9: cgroup: must not be empty"},
        {"null cgroup", "cgroup:\nmeshConfig: /m.yaml\n", "1:1: cgroup: expected a string, got null"},
        {"the cgroup root", "cgroup: /\nmeshConfig: /m.yaml\n",
         "1:9: cgroup: \"/\" is the cgroup root; name the cgroup to enforce on"},
        {"the cgroup root, dressed up", "cgroup: /./\nmeshConfig: /m.yaml\n",
         "1:9: cgroup: \"/./\" is the cgroup root; name the cgroup to enforce on"},
        {"the relative cgroup root", "cgroup: kubepods/..\nmeshConfig: /m.yaml\n",
         "1:9: cgroup: \"kubepods/..\" is the cgroup root; name the cgroup to enforce on"},
        // paths
        {"no meshConfig", "cgroup: kubepods.slice\n", "1:1: meshConfig: required field is missing"},
        {"empty meshConfig", "cgroup: kubepods.slice\nmeshConfig: ''\n", "2:13: meshConfig: must not be empty"},
        {"relative bpffs", with_required("bpffs: egressd\n"),
         "3:8: bpffs: must be an absolute path on the bpf filesystem"},
        {"empty runDir", with_required("runDir: \"\"\n"), "3:9: runDir: must not be empty"},
        // meshCIDRs
        {"bad mesh CIDR", with_required("meshCIDRs:\n  - 10.0.0.0/8\n  - 10.0.0.0/40\n"),
         "5:5: meshCIDRs[1]: \"10.0.0.0/40\" is not a valid CIDR: prefix length 40 exceeds 32 for IPv4"},
        {"meshCIDRs a string", with_required("meshCIDRs: 10.0.0.0/8\n"),
         "3:12: meshCIDRs: expected a list, got \"10.0.0.0/8\""},
        // sidecarUID
        {"negative uid", with_required("sidecarUID: -1\n"), "3:13: sidecarUID: -1 is out of range 0-4294967294"},
        {"the invalid uid", with_required("sidecarUID: 4294967295\n"),
         "3:13: sidecarUID: 4294967295 is out of range 0-4294967294"},
        {"quoted uid", with_required("sidecarUID: \"1500\"\n"),
         "3:13: sidecarUID: expected an integer, got the string \"1500\""},
        {"a user name", with_required("sidecarUID: envoy\n"), "3:13: sidecarUID: expected an integer, got \"envoy\""},
        // egressPolicySemantics
        {"unknown semantics", with_required("egressPolicySemantics: istio\n"),
         "3:24: egressPolicySemantics: expected fsm or osm, got \"istio\""},
        {"semantics in capitals", with_required("egressPolicySemantics: FSM\n"),
         "3:24: egressPolicySemantics: expected fsm or osm, got \"FSM\""},
        // capacities
        {"zero cidrs", with_required("capacities:\n  cidrs: 0\n"),
         "4:10: capacities.cidrs: 0 is out of range 1-1000000"},
        {"too many cidrs", with_required("capacities:\n  cidrs: 1000001\n"),
         "4:10: capacities.cidrs: 1000001 is out of range 1-1000000"},
        {"too many ports", with_required("capacities:\n  ports: 65537\n"),
         "4:10: capacities.ports: 65537 is out of range 1-65536"},
        {"fractional ports", with_required("capacities:\n  ports: 1.5\n"),
         "4:10: capacities.ports: expected an integer, got \"1.5\""},
    };
    for (const Case& c : cases) {
        CAPTURE(c.name);
        auto config = parse_agent_config(c.yaml, "egressd.yaml");
        REQUIRE_FALSE(config.ok());
        CHECK(config.error().message == "egressd.yaml:" + c.message);
    }
}

TEST_CASE("load_agent_config: a missing file") {
    const fs::path file = kAgentFixtures / "absent.yaml";
    auto config = load_agent_config(file);
    REQUIRE_FALSE(config.ok());
    CHECK(config.error().errnum == ENOENT);
    CHECK(config.error().describe() == "reading " + file.string() + ": No such file or directory");
}

TEST_CASE("Kubernetes mode: the mesh's defaults, and every key") {
    auto defaults = parse_agent_config("kubernetes:\n  mesh: fsm\n", "/etc/egressd/egressd.yaml");
    REQUIRE_MESSAGE(defaults.ok(), egressd::test::why(defaults));
    REQUIRE(defaults->kubernetes.has_value());
    CHECK(defaults->cgroup.empty());  // detected
    CHECK(defaults->cgroup_mount.empty());
    CHECK(defaults->mesh_config.empty());
    CHECK(defaults->kubernetes->kubeconfig.empty());  // in-cluster
    CHECK(defaults->kubernetes->node_name.empty());   // $NODE_NAME
    CHECK(defaults->kubernetes->mesh_name == "fsm");
    CHECK(defaults->kubernetes->mesh_config_namespace == "fsm-system");
    CHECK(defaults->kubernetes->mesh_config_name == "fsm-mesh-config");
    CHECK(defaults->egress_policy_semantics == PolicySemantics::fsm);

    auto osm = parse_agent_config("kubernetes: {mesh: osm}\n", "/etc/egressd/egressd.yaml");
    REQUIRE_MESSAGE(osm.ok(), egressd::test::why(osm));
    CHECK(osm->kubernetes->mesh_name == "osm");
    CHECK(osm->kubernetes->mesh_config_namespace == "osm-system");
    CHECK(osm->kubernetes->mesh_config_name == "osm-mesh-config");
    CHECK(osm->egress_policy_semantics == PolicySemantics::osm);
    CHECK(mesh_conventions(Mesh::osm).egress_group == "policy.openservicemesh.io");
    CHECK(mesh_conventions(Mesh::fsm).proxy_uuid_label == "fsm-proxy-uuid");

    auto all = parse_agent_config("cgroup: kubepods.slice\n"
                                  "cgroupMount: /host/sys/fs/cgroup\n"
                                  "egressPolicySemantics: fsm\n"
                                  "kubernetes:\n"
                                  "  kubeconfig: kube/config\n"
                                  "  nodeName: node-1\n"
                                  "  mesh: osm\n"
                                  "  meshName: blue\n"
                                  "  meshConfigRef: {namespace: mesh, name: blue-config}\n",
                                  "/etc/egressd/egressd.yaml");
    REQUIRE_MESSAGE(all.ok(), egressd::test::why(all));
    CHECK(all->cgroup == "kubepods.slice");
    CHECK(all->cgroup_mount == "/host/sys/fs/cgroup");
    CHECK(all->kubernetes->kubeconfig == "/etc/egressd/kube/config");
    CHECK(all->kubernetes->node_name == "node-1");
    CHECK(all->kubernetes->mesh == Mesh::osm);
    CHECK(all->kubernetes->mesh_name == "blue");
    CHECK(all->kubernetes->mesh_config_namespace == "mesh");
    CHECK(all->kubernetes->mesh_config_name == "blue-config");
    CHECK(all->egress_policy_semantics == PolicySemantics::fsm);  // given: it wins over the mesh's
}

TEST_CASE("Kubernetes mode: the files' keys are refused, with the reason") {
    const std::pair<std::string, std::string> cases[] = {
        {"meshConfig: /m.yaml\nkubernetes: {mesh: fsm}\n",
         "egressd.yaml:1:13: meshConfig: not with kubernetes: the API server is the source of the MeshConfig, the "
         "policies and the workloads"},
        {"kubernetes: {mesh: fsm}\npolicyDir: policies\n", "egressd.yaml:2:12: policyDir: not with kubernetes"},
        {"kubernetes: {mesh: fsm}\nworkloads: w.yaml\n", "egressd.yaml:2:12: workloads: not with kubernetes"},
        {"kubernetes: {mesh: istio}\n", "egressd.yaml:1:20: kubernetes.mesh: expected fsm or osm, got \"istio\""},
        {"kubernetes: {}\n", "kubernetes.mesh: required field is missing"},
        {"kubernetes: {mesh: fsm, node: x}\n", "kubernetes.node: unknown key"},
        {"kubernetes: {mesh: fsm, meshConfigRef: {ns: x}}\n", "kubernetes.meshConfigRef.ns: unknown key"},
        {"kubernetes: {mesh: fsm}\ncgroupMount: sys/fs/cgroup\n",
         "cgroupMount: must be an absolute path (the host's cgroup2 mount)"},
        {"kubernetes: {mesh: fsm}\ncgroup: /\n", "cgroup: \"/\" is the cgroup root"},
    };
    for (const auto& [yaml, message] : cases) {
        CAPTURE(yaml);
        auto config = parse_agent_config(yaml, "egressd.yaml");
        REQUIRE_FALSE(config.ok());
        CHECK_MESSAGE(config.error().message.find(message) != std::string::npos, config.error().message);
    }
}

TEST_CASE("rawSockets is deny and revokeOnTighten true unless set") {
    const auto defaults = parse_agent_config(with_required(""), "egressd.yaml");
    REQUIRE(defaults);
    CHECK_FALSE(defaults->allow_raw_sockets);
    CHECK(defaults->revoke_on_tighten);
    const auto set = parse_agent_config(with_required("rawSockets: allow\nrevokeOnTighten: false\n"), "egressd.yaml");
    REQUIRE(set);
    CHECK(set->allow_raw_sockets);
    CHECK_FALSE(set->revoke_on_tighten);
}

TEST_CASE("flows is on unless set off") {
    const auto defaults = parse_agent_config(with_required(""), "egressd.yaml");
    REQUIRE(defaults);
    CHECK(defaults->track_flows);
    const auto off = parse_agent_config(with_required("flows: off\n"), "egressd.yaml");
    REQUIRE(off);
    CHECK_FALSE(off->track_flows);
    const auto on = parse_agent_config(with_required("flows: on\n"), "egressd.yaml");
    REQUIRE(on);
    CHECK(on->track_flows);
}
