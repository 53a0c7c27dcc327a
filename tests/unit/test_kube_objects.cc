// Kubernetes objects as the API server sends them (status, managedFields and
// all) into the MeshConfig, the policies and the meshed pods.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "core/kube_objects.h"
#include "test_support.h"

#include <algorithm>

using namespace egressd;
using namespace egressd::kube;
using nlohmann::json;

namespace {

json fsm_mesh_config(json traffic) {
    return json{{"apiVersion", "config.flomesh.io/v1alpha3"},
                {"kind", "MeshConfig"},
                {"metadata",
                 {{"name", "fsm-mesh-config"},
                  {"namespace", "fsm-system"},
                  {"resourceVersion", "812"},
                  {"uid", "c5a3"},
                  {"managedFields", json::array({{{"manager", "kubectl-patch"}, {"operation", "Update"}}})}}},
                {"spec", {{"traffic", traffic}, {"featureFlags", {{"enableEgressPolicy", true}}}}},
                {"status", {{"whatever", 1}}}};
}

json egress(const std::string& ns, const std::string& name, json spec) {
    return json{{"apiVersion", "policy.flomesh.io/v1alpha1"},
                {"kind", "Egress"},
                {"metadata", {{"name", name}, {"namespace", ns}, {"resourceVersion", "9"}, {"generation", 2}}},
                {"spec", spec}};
}

json pod(const std::string& ns, const std::string& name, const std::string& uid, json labels,
         json spec = json::object(), json status = {{"phase", "Running"}, {"qosClass", "Burstable"}}) {
    if (!spec.contains("serviceAccountName")) spec["serviceAccountName"] = name + "-sa";
    spec["nodeName"] = "node-1";
    return json{{"metadata", {{"name", name}, {"namespace", ns}, {"uid", uid}, {"labels", labels}}},
                {"spec", spec},
                {"status", status}};
}

json namespace_object(const std::string& name, json labels) {
    return json{{"metadata", {{"name", name}, {"labels", labels}}}};
}

}  // namespace

TEST_CASE("kube: a MeshConfig object is read like the file, status and managedFields ignored") {
    auto mesh = mesh_config_from_object(
        fsm_mesh_config({{"enableEgress", true}, {"outboundIPRangeExclusionList", {"10.0.0.0/8"}}}));
    REQUIRE_MESSAGE(mesh.ok(), egressd::test::why(mesh));
    CHECK(mesh->enable_egress);
    CHECK(mesh->enable_egress_policy);
    CHECK(mesh->name == "fsm-mesh-config");
    CHECK(mesh->namespace_ == "fsm-system");
    REQUIRE(mesh->outbound_ip_range_exclusion.size() == 1);
    CHECK(mesh->outbound_ip_range_exclusion[0].str() == "10.0.0.0/8");

    auto bad = mesh_config_from_object(fsm_mesh_config({{"enableEgress", "yes please"}}));
    REQUIRE_FALSE(bad.ok());
    CHECK_MESSAGE(bad.error().message.rfind("MeshConfig fsm-system/fsm-mesh-config:", 0) == 0, bad.error().message);
    CHECK_MESSAGE(bad.error().message.find("spec.traffic.enableEgress") != std::string::npos, bad.error().message);
}

TEST_CASE("kube: Egress objects become the policy set; a bad one is named and the others apply") {
    const json ports = json::array({{{"number", 443}, {"protocol", "https"}}});
    const json sources = json::array({{{"kind", "ServiceAccount"}, {"name", "curl"}, {"namespace", "curl"}}});
    Objects egresses{
        {"curl/b", egress("curl", "b", {{"sources", sources}, {"ports", ports}, {"ipAddresses", {"203.0.113.0/24"}}})},
        {"curl/a", egress("curl", "a", {{"sources", sources}, {"ports", ports}, {"hosts", {"example.com"}}})},
        {"curl/bad", egress("curl", "bad", {{"sources", sources}, {"ports", {{{"number", 70000}}}}})},
    };
    PolicySet set = policies_from_objects(egresses);
    REQUIRE(set.policies.size() == 2);
    CHECK(set.policies[0].name == "a");
    CHECK(set.policies[1].name == "b");
    CHECK(set.policies[1].ip_addresses[0].str() == "203.0.113.0/24");
    REQUIRE(set.errors.size() == 1);
    CHECK_MESSAGE(set.errors[0].find("Egress curl/bad") != std::string::npos, set.errors[0]);
    CHECK_MESSAGE(set.errors[0].find("spec.ports[0]") != std::string::npos, set.errors[0]);
}

TEST_CASE("kube: EgressReader parses only the objects that changed, and gives what a full read gives") {
    const json ports = json::array({{{"number", 443}, {"protocol", "https"}}});
    const json sources = json::array({{{"kind", "ServiceAccount"}, {"name", "curl"}, {"namespace", "curl"}}});
    auto spec = [&](const char* range) { return json{{"sources", sources}, {"ports", ports}, {"ipAddresses", {range}}}; };
    Objects egresses{
        {"curl/a", egress("curl", "a", spec("203.0.113.0/24"))},
        {"curl/b", egress("curl", "b", spec("198.18.0.0/15"))},
        {"curl/bad", egress("curl", "bad", {{"sources", sources}, {"ports", {{{"number", 70000}}}}})},
    };
    EgressReader reader;
    const PolicySet first = reader.read(egresses);
    CHECK(reader.parsed_last_read() == 3);
    CHECK(first == policies_from_objects(egresses));

    egresses["curl/b"] = egress("curl", "b", spec("198.18.0.0/16"));  // changed
    egresses["curl/c"] = egress("curl", "c", spec("203.0.113.7"));    // added
    egresses.erase("curl/bad");                                        // removed
    const PolicySet second = reader.read(egresses);
    CHECK(reader.parsed_last_read() == 2);
    CHECK(second == policies_from_objects(egresses));
    REQUIRE(second.policies.size() == 3);
    CHECK(second.errors.empty());
    CHECK(second.policies[1].ip_addresses[0].str() == "198.18.0.0/16");
    // The unchanged object's policy is the object read the first time.
    CHECK(second.policies.shared(0) == first.policies.shared(0));
    CHECK(second.policies.shared(1) != first.policies.shared(1));

    CHECK(reader.read(egresses) == second);
    CHECK(reader.parsed_last_read() == 0);
}

TEST_CASE("kube: meshed pods are the injected pods of monitored namespaces, never hostNetwork") {
    const MeshConventions& fsm = mesh_conventions(Mesh::fsm);
    const json injected = {{"fsm-proxy-uuid", "2c0d"}, {"app", "curl"}};
    Objects namespaces{
        {"curl", namespace_object("curl", {{"flomesh.io/monitored-by", "fsm"}})},
        {"other-mesh", namespace_object("other-mesh", {{"flomesh.io/monitored-by", "blue"}})},
        {"plain", namespace_object("plain", json::object())},
    };
    json static_pod = pod("curl", "static-web", "mirror-uid", injected);
    static_pod["metadata"]["annotations"] = {{"kubernetes.io/config.mirror", "0f3a9c"}};
    Objects pods{
        {"curl/a", pod("curl", "a", "uid-b", injected)},
        {"curl/b", pod("curl", "b", "uid-a", injected, {{"serviceAccountName", ""}})},
        {"curl/not-injected", pod("curl", "not-injected", "uid-c", {{"app", "x"}})},
        {"other-mesh/c", pod("other-mesh", "c", "uid-d", injected)},
        {"plain/d", pod("plain", "d", "uid-e", injected)},
        {"missing-ns/e", pod("missing-ns", "e", "uid-f", injected)},
        {"curl/host", pod("curl", "host", "uid-g", injected, {{"hostNetwork", true}})},
        {"curl/done", pod("curl", "done", "uid-h", injected, json::object(), {{"phase", "Succeeded"}})},
        {"curl/static-web", static_pod},
    };
    PodSelection selection = meshed_pods(pods, namespaces, fsm, "fsm");
    REQUIRE(selection.pods.size() == 3);
    CHECK(selection.pods[0].uid == "0f3a9c");  // the static pod, by its config hash
    CHECK(selection.pods[0].name == "static-web");
    CHECK(selection.pods[1].uid == "uid-a");
    CHECK(selection.pods[1].identity.str() == "curl/default");  // no serviceAccountName
    CHECK(selection.pods[2].uid == "uid-b");
    CHECK(selection.pods[2].identity.str() == "curl/a-sa");
    CHECK(selection.pods[2].qos_class == "Burstable");
    CHECK(selection.not_meshed == 4);
    CHECK(selection.host_network == 1);
    CHECK(selection.finished == 1);

    // Another mesh name selects the other namespace; OSM's label is another key.
    CHECK(meshed_pods(pods, namespaces, fsm, "blue").pods.size() == 1);
    CHECK(meshed_pods(pods, namespaces, mesh_conventions(Mesh::osm), "fsm").pods.empty());
}

TEST_CASE("kube: the cluster's ranges: nodes' pod CIDRs (both families) and ServiceCIDRs") {
    Objects nodes{
        {"a",
         {{"metadata", {{"name", "a"}}},
          {"spec", {{"podCIDR", "10.244.1.0/24"}, {"podCIDRs", {"10.244.1.0/24", "fd00:10:244:1::/64"}}}}}},
        {"b",
         {{"metadata", {{"name", "b"}}}, {"spec", {{"podCIDR", "10.244.2.0/24"}}}}},  // podCIDR alone (older nodes)
        {"c", {{"metadata", {{"name", "c"}}}, {"spec", json::object()}}},             // not allocated yet
        {"d", {{"metadata", {{"name", "d"}}}, {"spec", {{"podCIDRs", {"10.244.300.0/24"}}}}}},
    };
    Objects service_cidrs{
        {"kubernetes",
         {{"metadata", {{"name", "kubernetes"}}}, {"spec", {{"cidrs", {"10.96.0.0/12", "fd00:10:96::/112"}}}}}},
        {"again", {{"metadata", {{"name", "again"}}}, {"spec", {{"cidrs", {"10.96.0.0/12"}}}}}},
    };
    std::vector<std::string> problems;
    std::vector<std::string> texts = egressd::test::cidr_texts(cluster_cidrs(nodes, service_cidrs, problems));
    std::sort(texts.begin(), texts.end());
    CHECK(texts == std::vector<std::string>{"10.244.1.0/24", "10.244.2.0/24", "10.96.0.0/12", "fd00:10:244:1::/64",
                                            "fd00:10:96::/112"});
    REQUIRE(problems.size() == 1);
    CHECK_MESSAGE(problems[0].find("Node d spec.podCIDRs: \"10.244.300.0/24\"") != std::string::npos, problems[0]);

    std::vector<std::string> none;
    CHECK(cluster_cidrs({}, {}, none).empty());
    CHECK(none.empty());
}

namespace {

template <typename Keep>
Objects kept_all(const Objects& objects, Keep keep) {
    Objects out;
    for (const auto& [key, object] : objects) out[key] = keep(json(object));
    return out;
}

// A pod as an FSM-injected pod comes from the API server: what the agent never reads included.
json full_pod(const std::string& ns, const std::string& name, const std::string& uid, json labels, json spec = {},
              json status = {{"phase", "Running"}, {"qosClass", "Guaranteed"}}) {
    json p = pod(ns, name, uid, std::move(labels), spec.is_null() ? json::object() : spec, status);
    p["apiVersion"] = "v1";
    p["kind"] = "Pod";
    p["metadata"]["resourceVersion"] = "4711";
    p["metadata"]["annotations"] = {{"prometheus.io/scrape", "true"}};
    p["metadata"]["managedFields"] = json::array({{{"manager", "kubelet"}, {"fieldsV1", {{"f:status", {}}}}}});
    p["metadata"]["ownerReferences"] = json::array({{{"kind", "ReplicaSet"}, {"name", name + "-6d4cf"}}});
    p["spec"]["containers"] = json::array({{{"name", "app"}, {"image", "curlimages/curl"}},
                                           {{"name", "sidecar"}, {"image", "flomesh/pipy:1.5"}}});
    p["status"]["conditions"] = json::array({{{"type", "Ready"}, {"status", "True"}}});
    p["status"]["podIP"] = "10.244.1.7";
    return p;
}

}  // namespace

TEST_CASE("kube: what the reflectors keep gives the same answers as the whole objects") {
    const MeshConventions& fsm = mesh_conventions(Mesh::fsm);
    const json injected = {{"fsm-proxy-uuid", "2c0d"}, {"app", "curl"}};
    json static_pod = full_pod("curl", "static-web", "mirror-uid", injected);
    static_pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = "0f3a9c";
    const Objects pods{
        {"curl/a", full_pod("curl", "a", "uid-a", injected)},
        {"curl/b", full_pod("curl", "b", "uid-b", injected, {{"serviceAccountName", ""}})},
        {"curl/plain", full_pod("curl", "plain", "uid-c", {{"app", "x"}})},
        {"curl/host", full_pod("curl", "host", "uid-d", injected, {{"hostNetwork", true}})},
        {"curl/done", full_pod("curl", "done", "uid-e", injected, {}, {{"phase", "Failed"}})},
        {"other/f", full_pod("other", "f", "uid-f", injected)},
        {"curl/static-web", static_pod},
    };
    const Objects namespaces{
        {"curl", namespace_object("curl", {{"flomesh.io/monitored-by", "fsm"}, {"team", "a"}})},
        {"other", namespace_object("other", {{"flomesh.io/monitored-by", "blue"}})},
    };
    const auto keep_pod = [&](json&& o) { return kept_pod(std::move(o), fsm); };
    const auto keep_namespace = [&](json&& o) { return kept_namespace(std::move(o), fsm); };
    const Objects small_pods = kept_all(pods, keep_pod);
    const Objects small_namespaces = kept_all(namespaces, keep_namespace);

    const PodSelection full = meshed_pods(pods, namespaces, fsm, "fsm");
    const PodSelection small = meshed_pods(small_pods, small_namespaces, fsm, "fsm");
    CHECK(full.pods.size() == 3);
    CHECK(small.pods == full.pods);
    CHECK(small.not_meshed == full.not_meshed);
    CHECK(small.host_network == full.host_network);
    CHECK(small.finished == full.finished);
    CHECK(meshed_pods(small_pods, small_namespaces, fsm, "blue").pods ==
          meshed_pods(pods, namespaces, fsm, "blue").pods);

    // Only what is read is kept: a tenth of the text of the object.
    const json& a = small_pods.at("curl/a");
    CHECK(a["metadata"]["labels"] == json{{"fsm-proxy-uuid", "2c0d"}});
    CHECK_FALSE(a["metadata"].contains("managedFields"));
    CHECK_FALSE(a["spec"].contains("containers"));
    CHECK_FALSE(a["status"].contains("conditions"));
    CHECK(a.dump().size() * 3 < pods.at("curl/a").dump().size());
    CHECK(small_namespaces.at("curl")["metadata"]["labels"] == json{{"flomesh.io/monitored-by", "fsm"}});

    // MeshConfig and Egress: the parsers see the same input.
    json mesh_object = fsm_mesh_config({{"enableEgress", true}});
    auto from_full = mesh_config_from_object(mesh_object);
    auto from_kept = mesh_config_from_object(kept_spec_object(json(mesh_object)));
    REQUIRE(from_full.ok());
    REQUIRE(from_kept.ok());
    CHECK(*from_kept == *from_full);
    const json sources = json::array({{{"kind", "ServiceAccount"}, {"name", "a-sa"}, {"namespace", "curl"}}});
    const Objects egresses{
        {"curl/e", egress("curl", "e", {{"sources", sources}, {"ports", {{{"number", 443}}}}, {"hosts", {"x.io"}}})},
        {"curl/bad", egress("curl", "bad", {{"sources", sources}, {"ports", {{{"number", -1}}}}})}};
    const PolicySet policies = policies_from_objects(egresses);
    const PolicySet kept_policies =
        policies_from_objects(kept_all(egresses, [](json&& o) { return kept_spec_object(std::move(o)); }));
    CHECK(kept_policies.policies == policies.policies);
    CHECK(kept_policies.errors == policies.errors);

    // Nodes: the ranges.
    const Objects nodes{{"n", {{"metadata", {{"name", "n"}, {"labels", {{"zone", "a"}}}}},
                               {"spec", {{"podCIDR", "10.244.1.0/24"}, {"podCIDRs", {"10.244.1.0/24"}}, {"taints", {}}}},
                               {"status", {{"capacity", {{"cpu", "4"}}}}}}}};
    std::vector<std::string> problems;
    CHECK(egressd::test::cidr_texts(cluster_cidrs(kept_all(nodes, [](json&& o) { return kept_node(std::move(o)); }),
                                                  {}, problems)) ==
          egressd::test::cidr_texts(cluster_cidrs(nodes, {}, problems)));
}

TEST_CASE("kube: the cluster DNS's addresses: the Service's cluster IPs and its ready endpoints") {
    const Objects services{
        {"kube-system/kube-dns",
         {{"metadata", {{"name", "kube-dns"}, {"namespace", "kube-system"}}},
          {"spec", {{"clusterIP", "10.96.0.10"}, {"clusterIPs", {"10.96.0.10", "fd00:10:96::a"}}, {"ports", {}}}}}}};
    const Objects slices{
        {"kube-system/kube-dns-x7k2p",
         {{"metadata", {{"name", "kube-dns-x7k2p"}, {"namespace", "kube-system"}}},
          {"addressType", "IPv4"},
          {"endpoints",
           {{{"addresses", {"10.244.0.3"}}, {"conditions", {{"ready", true}}}},
            {{"addresses", {"10.244.1.4"}}, {"conditions", {{"ready", false}}}},  // not serving: left out
            {{"addresses", {"10.244.2.5", "bogus"}}}}}}}};                        // no conditions: ready
    std::vector<std::string> texts;
    const auto kept_services = [&] {
        Objects out;
        for (const auto& [k, v] : services) out[k] = kept_service(json(v));
        return out;
    }();
    const auto kept_slices = [&] {
        Objects out;
        for (const auto& [k, v] : slices) out[k] = kept_endpoint_slice(json(v));
        return out;
    }();
    for (const auto& address : cluster_dns_addresses(kept_services, kept_slices)) texts.push_back(address.str());
    CHECK(texts == std::vector<std::string>{"10.96.0.10", "10.244.0.3", "10.244.2.5", "fd00:10:96::a"});
    CHECK(cluster_dns_addresses({}, {}).empty());
    const Objects headless{{"kube-system/kube-dns", {{"spec", {{"clusterIP", "None"}}}}}};
    CHECK(cluster_dns_addresses(headless, {}).empty());
}
