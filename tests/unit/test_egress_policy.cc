#include <doctest/doctest.h>

#include <netinet/in.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "test_support.h"
#include "core/files.h"
#include "core/egress_policy.h"
#include "core/yaml_input.h"

using namespace egressd;
using egressd::test::cidr_texts;
namespace fs = std::filesystem;

namespace {

const fs::path kEgressFixtures = fs::path(EGRESSD_FIXTURES) / "egress";

std::vector<std::string> names(const PolicySet& set) {
    std::vector<std::string> texts;
    for (const EgressPolicy& policy : set.policies) texts.push_back(policy.namespace_ + "/" + policy.name);
    return texts;
}

// Messages one per line, so that doctest shows them when a check fails.
std::string lines(const std::vector<std::string>& messages) { return fmt::format("{}", fmt::join(messages, "\n")); }

const EgressPolicy& find(const PolicySet& set, std::string_view ns, std::string_view name) {
    const auto it = std::find_if(set.policies.begin(), set.policies.end(),
                                 [&](const EgressPolicy& p) { return p.namespace_ == ns && p.name == name; });
    REQUIRE_MESSAGE(it != set.policies.end(), "no policy ", ns, "/", name);
    return *it;
}

// One fixture file, parsed alone under its own path.
PolicySet parse_fixture(const fs::path& file) {
    auto text = read_file(file);
    REQUIRE_MESSAGE(text.ok(), egressd::test::why(text));
    return parse_policy_documents(*text, file.string());
}

// An Egress in namespace "shop" whose spec lines start at line 7.
std::string egress(std::string_view spec_lines, std::string_view name = "web-out",
                   std::string_view api_version = "policy.flomesh.io/v1alpha1") {
    return fmt::format(
        "apiVersion: {}\n"     // 1
        "kind: Egress\n"       // 2
        "metadata:\n"          // 3
        "  name: {}\n"         // 4
        "  namespace: shop\n"  // 5
        "spec:\n"              // 6
        "{}",
        api_version, name, spec_lines);
}
const std::string kSources = "  sources: [{kind: ServiceAccount, name: web, namespace: shop}]\n";
const std::string kPorts = "  ports: [{number: 443, protocol: https}]\n";
const std::string kWebOut = "document 1 (Egress shop/web-out): ";

// A fresh directory under $TMPDIR, removed with everything in it.
struct TempDir {
    fs::path path;
    TempDir() {
        std::string name = (fs::temp_directory_path() / "egressd-policy-XXXXXX").string();
        REQUIRE(::mkdtemp(name.data()) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    void write(const fs::path& relative, std::string_view text) const { std::ofstream(path / relative) << text; }
};

std::string minimal_egress(std::string_view name, uint16_t port) {
    return fmt::format(
        "kind: Egress\n"
        "apiVersion: policy.openservicemesh.io/v1alpha1\n"
        "metadata: {{name: {}, namespace: ops}}\n"  // line 3, the name at column 18
        "spec:\n"
        "  sources: [{{kind: ServiceAccount, name: bot, namespace: ops}}]\n"
        "  ports: [{{number: {}, protocol: tcp}}]\n",
        name, port);
}

}  // namespace

TEST_CASE("FSM multi-document file: HTTPRouteGroup, Egress by host with a match, an ignored kind, any destination") {
    const fs::path file = kEgressFixtures / "good/10-fsm-shop.yaml";
    const PolicySet set = parse_fixture(file);
    CHECK(set.errors.empty());
    REQUIRE(names(set) == std::vector<std::string>{"shop/any-smtp", "shop/catalog-api"});

    EgressPolicy expected;
    expected.api_version = "policy.flomesh.io/v1alpha1";
    expected.namespace_ = "shop";
    expected.name = "catalog-api";
    expected.file = file.string();
    expected.document = 1;
    expected.sources = {{"shop", "frontend"}};
    expected.hosts = {"catalog.example.com", "api.example.net"};  // lower-cased, trailing dot removed
    expected.ports = {{80, "http", IPPROTO_TCP}, {443, "https", IPPROTO_TCP}};
    expected.matches = {"HTTPRouteGroup/catalog-routes"};
    CHECK(set.policies[1] == expected);
    CHECK_FALSE(set.policies[1].any_destination());

    const EgressPolicy& smtp = set.policies[0];
    CHECK(smtp.document == 4);  // after an empty document and the Deployment
    CHECK(smtp.any_destination());
    CHECK(smtp.ports == std::vector<PolicyPort>{{587, "tcp-server-first", IPPROTO_TCP}});
    CHECK(smtp.sources == std::vector<PolicySource>{{"shop", "mailer"}});

    // catalog-routes is defined in the same file: no note about the reference.
    CHECK(lines(set.notes) ==
          lines({
              file.string() + ":32:3: document 2 (Egress shop/catalog-api): spec.matches: L7 matches are "
                              "delegated to the proxy; egressd enforces sources, destinations and ports",
              file.string() + ":37:1: document 4: kind Deployment ignored",
          }));
}

TEST_CASE("OSM file: IPv4 and IPv6 ranges, UDP, default namespace, UpstreamTrafficSetting match") {
    const fs::path file = kEgressFixtures / "good/20-osm-ranges.yml";
    const PolicySet set = parse_fixture(file);
    CHECK(set.errors.empty());
    REQUIRE(names(set) == std::vector<std::string>{"billing/payments", "default/databases"});

    const EgressPolicy& databases = set.policies[1];
    CHECK(databases.api_version == "policy.openservicemesh.io/v1alpha1");
    CHECK(databases.namespace_ == "default");  // metadata.namespace absent
    CHECK(cidr_texts(databases.ip_addresses) ==
          std::vector<std::string>{"192.0.2.0/24", "2001:db8:abcd::/48", "2001:db8::7/128", "198.51.100.9/32"});
    CHECK(databases.hosts.empty());
    CHECK_FALSE(databases.any_destination());
    CHECK(databases.ports == std::vector<PolicyPort>{{5432, "tcp", IPPROTO_TCP}, {53, "udp", IPPROTO_UDP}});

    const EgressPolicy& payments = set.policies[0];
    CHECK(payments.document == 2);
    CHECK(payments.hosts == std::vector<std::string>{"pay.example.org"});
    CHECK(payments.matches == std::vector<std::string>{"UpstreamTrafficSetting/payments-limits"});
    CHECK(lines(set.notes) ==
          lines({file.string() + ":50:3: document 3 (Egress billing/payments): spec.matches: L7 matches "
                                 "are delegated to the proxy; egressd enforces sources, destinations "
                                 "and ports"}));
}

TEST_CASE("FSM mtls source: accepted with a note; duplicate sources merged; a wildcard host is a note") {
    const fs::path file = kEgressFixtures / "good/30-mtls.yaml";
    const PolicySet set = parse_fixture(file);
    CHECK(set.errors.empty());
    REQUIRE(set.policies.size() == 1);
    const EgressPolicy& policy = set.policies[0];
    CHECK(policy.sources == std::vector<PolicySource>{{"edge", "gateway"}, {"jobs", "batch"}});
    CHECK(policy.hosts == std::vector<std::string>{"partner.example.org"});
    CHECK(policy.wildcard_hosts == std::vector<std::string>{"*.cdn.example.org"});
    CHECK(lines(set.notes) ==
          lines({
              file.string() + ":13:7: document 1 (Egress edge/partner-tls): spec.sources[0].mtls: mtls ignored: "
                              "egressd decides at connect() time",
              file.string() + ":27:5: document 1 (Egress edge/partner-tls): spec.hosts[1]: wildcard host "
                              "\"*.cdn.example.org\" cannot be resolved by the agent: it allows only the "
                              "addresses the workloads learn from DNS answers",
          }));
}

TEST_CASE("a policy whose only host is a wildcard allows no destination by itself") {
    const PolicySet set = parse_policy_documents(egress(kSources + kPorts + "  hosts: ['*.example.com']\n"), "p.yaml");
    REQUIRE(set.policies.size() == 1);
    CHECK(set.policies[0].hosts.empty());
    CHECK(set.policies[0].wildcard_hosts == std::vector<std::string>{"*.example.com"});
    CHECK_FALSE(set.policies[0].any_destination());
}

TEST_CASE("protocols are case-insensitive; udp is UDP, the others TCP") {
    const std::pair<const char*, PolicyPort> cases[] = {
        {"TCP", {443, "tcp", IPPROTO_TCP}},   {"Tcp-Server-First", {443, "tcp-server-first", IPPROTO_TCP}},
        {"HTTP", {443, "http", IPPROTO_TCP}}, {"hTTps", {443, "https", IPPROTO_TCP}},
        {"Udp", {443, "udp", IPPROTO_UDP}},
    };
    for (const auto& [written, expected] : cases) {
        INFO(written);
        const PolicySet set = parse_policy_documents(
            egress(kSources + "  ports: [{number: 443, protocol: " + written + "}]\n"), "p.yaml");
        REQUIRE(set.errors.empty());
        REQUIRE(set.policies.size() == 1);
        CHECK(set.policies[0].ports == std::vector<PolicyPort>{expected});
    }
}

TEST_CASE("protocol icmp is ICMP echo: no port, or port 0; any other number is an error") {
    for (const char* port : {"{protocol: icmp}", "{number: 0, protocol: ICMP}"}) {
        INFO(port);
        const PolicySet set = parse_policy_documents(egress(kSources + "  ports: [" + port + "]\n"), "p.yaml");
        REQUIRE(set.errors.empty());
        REQUIRE(set.policies.size() == 1);
        CHECK(set.policies[0].ports == std::vector<PolicyPort>{{0, "icmp", EGRESSD_PROTO_ICMP}});
    }
    const PolicySet bad = parse_policy_documents(egress(kSources + "  ports: [{number: 8, protocol: icmp}]\n"), "p.yaml");
    CHECK(bad.policies.empty());
    REQUIRE(bad.errors.size() == 1);
    CHECK(bad.errors[0].find("spec.ports[0].number: must be 0 or absent with protocol icmp") != std::string::npos);
}

TEST_CASE("hosts are lower-cased with one trailing dot removed, and merged") {
    const PolicySet set = parse_policy_documents(
        egress(kSources + kPorts + "  hosts: [Example.COM., example.com, a-1.b2.example.org, xn--bcher-kva.example]\n"),
        "p.yaml");
    CHECK(set.errors.empty());
    REQUIRE(set.policies.size() == 1);
    CHECK(set.policies[0].hosts ==
          std::vector<std::string>{"example.com", "a-1.b2.example.org", "xn--bcher-kva.example"});
}

TEST_CASE("empty documents and comment-only files give nothing and no error") {
    for (const std::string text : {"", "# nothing here\n", "---\n---\n# c\n---\n"}) {
        CAPTURE(text);
        CHECK(parse_policy_documents(text, "p.yaml") == PolicySet{});
    }
}

TEST_CASE("bad Egress documents: file, line, column, document, policy, field path and reason") {
    struct Case {
        std::string name;
        std::string yaml;
        std::string message;  // after "p.yaml:"
    };
    const std::string long_label(64, 'a');
    const std::string long_name = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                                  std::string(63, 'd');  // 255 characters
    const Case cases[] = {
        // The document as a whole.
        {"top level is a list", "- kind: Egress\n", "1:1: document 1: expected a mapping at the top level, got a list"},
        {"top level is a scalar", "Egress\n", "1:1: document 1: expected a mapping at the top level, got \"Egress\""},
        {"no kind", "apiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: x}\n",
         "1:1: document 1: kind: required field is missing"},
        {"syntax error", egress(kSources + "  ports: [{number: 443, protocol: https}\n"),
         "9:1: did not find expected ',' or ']' (while parsing a flow sequence at line 8) (no document of this file is applied)"},
        // apiVersion and metadata.
        {"apiVersion of another group", egress(kSources + kPorts, "web-out", "networking.k8s.io/v1"),
         "1:13: " + kWebOut +
             "apiVersion: \"networking.k8s.io/v1\" is not supported; expected one of policy.flomesh.io/v1alpha1, "
             "policy.openservicemesh.io/v1alpha1"},
        {"apiVersion v1alpha2", egress(kSources + kPorts, "web-out", "policy.flomesh.io/v1alpha2"),
         "1:13: " + kWebOut +
             "apiVersion: \"policy.flomesh.io/v1alpha2\" is not supported; expected one of policy.flomesh.io/v1alpha1, "
             "policy.openservicemesh.io/v1alpha1"},
        {"no apiVersion", "kind: Egress\nmetadata: {name: x}\nspec: {}\n",
         "1:1: document 1 (Egress default/x): apiVersion: required field is missing"},
        {"no metadata", "kind: Egress\napiVersion: policy.flomesh.io/v1alpha1\n",
         "1:1: document 1: metadata.name: required field is missing"},
        {"no metadata.name", "kind: Egress\nmetadata:\n  namespace: shop\n",
         "3:3: document 1: metadata.name: required field is missing"},
        {"empty metadata.name", "kind: Egress\nmetadata:\n  name: \"\"\n",
         "3:9: document 1: metadata.name: must not be empty"},
        {"empty metadata.namespace", "kind: Egress\nmetadata:\n  name: x\n  namespace: ''\n",
         "4:14: document 1: metadata.namespace: must not be empty"},
        {"no spec", "kind: Egress\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: x, namespace: y}\n",
         "1:1: document 1 (Egress y/x): spec: required field is missing"},
        // spec.sources.
        {"no sources", egress(kPorts), "7:3: " + kWebOut + "spec.sources: required field is missing"},
        {"empty sources", egress("  sources: []\n" + kPorts),
         "7:12: " + kWebOut + "spec.sources: must list at least one item"},
        {"null sources", egress("  sources:\n" + kPorts),
         "7:3: " + kWebOut + "spec.sources: must list at least one item"},
        {"source kind User", egress("  sources:\n  - {kind: User, name: web, namespace: shop}\n" + kPorts),
         "8:12: " + kWebOut +
             "spec.sources[0].kind: \"User\" is not supported; expected ServiceAccount (case-sensitive)"},
        {"source kind lower-case",
         egress("  sources:\n  - {kind: serviceaccount, name: web, namespace: shop}\n" + kPorts),
         "8:12: " + kWebOut +
             "spec.sources[0].kind: \"serviceaccount\" is not supported; expected ServiceAccount (case-sensitive)"},
        {"source without kind", egress("  sources:\n  - {name: web, namespace: shop}\n" + kPorts),
         "8:5: " + kWebOut + "spec.sources[0].kind: required field is missing"},
        {"source without name", egress("  sources:\n  - kind: ServiceAccount\n    namespace: shop\n" + kPorts),
         "8:5: " + kWebOut + "spec.sources[0].name: required field is missing"},
        {"source without namespace", egress("  sources:\n  - kind: ServiceAccount\n    name: web\n" + kPorts),
         "8:5: " + kWebOut + "spec.sources[0].namespace: required field is missing"},
        {"source with an empty name",
         egress("  sources:\n  - {kind: ServiceAccount, name: '', namespace: shop}\n" + kPorts),
         "8:34: " + kWebOut + "spec.sources[0].name: must not be empty"},
        // spec.ports.
        {"no ports", egress(kSources), "7:3: " + kWebOut + "spec.ports: required field is missing"},
        {"empty ports", egress(kSources + "  ports: []\n"),
         "8:10: " + kWebOut + "spec.ports: must list at least one item"},
        {"port 0", egress(kSources + "  ports:\n  - number: 0\n    protocol: tcp\n"),
         "9:13: " + kWebOut + "spec.ports[0].number: port 0 is out of range 1-65535"},
        {"port 70000", egress(kSources + "  ports:\n  - {number: 70000, protocol: tcp}\n"),
         "9:14: " + kWebOut + "spec.ports[0].number: port 70000 is out of range 1-65535"},
        {"port as a name", egress(kSources + "  ports:\n  - {number: https, protocol: tcp}\n"),
         "9:14: " + kWebOut + "spec.ports[0].number: expected an integer, got \"https\""},
        {"port without number", egress(kSources + "  ports:\n  - protocol: tcp\n"),
         "9:5: " + kWebOut + "spec.ports[0].number: required field is missing"},
        {"port without protocol", egress(kSources + "  ports:\n  - number: 443\n"),
         "9:5: " + kWebOut + "spec.ports[0].protocol: required field is missing"},
        {"protocol grpc",
         egress(kSources + "  ports:\n  - {number: 443, protocol: https}\n  - {number: 50051, protocol: GRPC}\n"),
         "10:31: " + kWebOut +
             "spec.ports[1].protocol: \"GRPC\" is not supported; expected one of tcp, tcp-server-first, http, https, "
             "udp, icmp"},
        {"protocol tls", egress(kSources + "  ports:\n  - {number: 443, protocol: tls}\n"),
         "9:29: " + kWebOut +
             "spec.ports[0].protocol: \"tls\" is not supported; expected one of tcp, tcp-server-first, http, https, "
             "udp, icmp"},
        {"empty protocol", egress(kSources + "  ports:\n  - {number: 443, protocol: \"\"}\n"),
         "9:29: " + kWebOut +
             "spec.ports[0].protocol: \"\" is not supported; expected one of tcp, tcp-server-first, http, https, udp, icmp"},
        {"protocol a list", egress(kSources + "  ports:\n  - {number: 443, protocol: [tcp]}\n"),
         "9:29: " + kWebOut + "spec.ports[0].protocol: expected a string, got a list"},
        // spec.ipAddresses.
        {"octet out of range", egress(kSources + kPorts + "  ipAddresses:\n  - 10.0.0.0/8\n  - 10.0.0.300/8\n"),
         "11:5: " + kWebOut + "spec.ipAddresses[1]: \"10.0.0.300/8\" is not a valid CIDR: octet 300 out of range"},
        {"IPv6 prefix too long", egress(kSources + kPorts + "  ipAddresses: [\"2001:db8::/129\"]\n"),
         "9:17: " + kWebOut +
             "spec.ipAddresses[0]: \"2001:db8::/129\" is not a valid CIDR: prefix length 129 exceeds 128 for IPv6"},
        {"a host name in ipAddresses", egress(kSources + kPorts + "  ipAddresses: [example.com]\n"),
         "9:17: " + kWebOut +
             "spec.ipAddresses[0]: \"example.com\" is not a valid CIDR: invalid character 'e' in IPv4 address"},
        // spec.hosts.
        {"IPv4 address in hosts", egress(kSources + kPorts + "  hosts:\n  - example.com\n  - 10.0.0.1\n"),
         "11:5: " + kWebOut + "spec.hosts[1]: \"10.0.0.1\" is an IP address, not a host name; list it in ipAddresses"},
        {"IPv6 range in hosts", egress(kSources + kPorts + "  hosts: [\"2001:db8::/32\"]\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"2001:db8::/32\" is an IP address, not a host name; list it in ipAddresses"},
        {"lone wildcard", egress(kSources + kPorts + "  hosts: ['*']\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"*\": a wildcard is accepted only as the whole first label, as in \"*.example.com\""},
        {"inner wildcard", egress(kSources + kPorts + "  hosts: [a.*.com]\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"a.*.com\": a wildcard is accepted only as the whole first label, as in "
             "\"*.example.com\""},
        {"partial wildcard label", egress(kSources + kPorts + "  hosts: ['*example.com']\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"*example.com\": a wildcard is accepted only as the whole first label, as in "
             "\"*.example.com\""},
        {"label starting with a hyphen", egress(kSources + kPorts + "  hosts: [-api.example.com]\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"-api.example.com\" is not a valid host name: label \"-api\" starts or ends with '-'"},
        {"underscore", egress(kSources + kPorts + "  hosts: [my_host.example.com]\n"),
         "9:11: " + kWebOut +
             "spec.hosts[0]: \"my_host.example.com\" is not a valid host name: label \"my_host\" has a character "
             "other than a-z, 0-9 and '-'"},
        {"empty label", egress(kSources + kPorts + "  hosts: [example..com]\n"),
         "9:11: " + kWebOut + "spec.hosts[0]: \"example..com\" is not a valid host name: empty label"},
        {"two trailing dots", egress(kSources + kPorts + "  hosts: [example.com..]\n"),
         "9:11: " + kWebOut + "spec.hosts[0]: \"example.com..\" is not a valid host name: empty label"},
        {"empty host", egress(kSources + kPorts + "  hosts: ['']\n"),
         "9:11: " + kWebOut + "spec.hosts[0]: \"\" is not a valid host name: empty label"},
        {"label of 64 characters", egress(kSources + kPorts + "  hosts: [" + long_label + ".com]\n"),
         "9:11: " + kWebOut + "spec.hosts[0]: \"" + long_label + ".com\" is not a valid host name: label \"" +
             long_label + "\" is longer than 63 characters"},
        {"name of 255 characters", egress(kSources + kPorts + "  hosts: [" + long_name + "]\n"),
         "9:11: " + kWebOut + "spec.hosts[0]: \"" + long_name +
             "\" is not a valid host name: longer than 253 characters (255)"},
        {"host a mapping", egress(kSources + kPorts + "  hosts:\n  - name: example.com\n"),
         "10:5: " + kWebOut + "spec.hosts[0]: expected a string, got a mapping"},
        // spec.matches.
        {"match of another kind",
         egress(kSources + kPorts + "  matches:\n  - {apiGroup: v1, kind: Service, name: api}\n"),
         "10:26: " + kWebOut +
             "spec.matches[0].kind: \"Service\" is not supported; expected one of HTTPRouteGroup, "
             "UpstreamTrafficSetting"},
        {"match without name", egress(kSources + kPorts + "  matches:\n  - {kind: HTTPRouteGroup}\n"),
         "10:5: " + kWebOut + "spec.matches[0].name: required field is missing"},
        {"match without kind", egress(kSources + kPorts + "  matches:\n  - {name: routes}\n"),
         "10:5: " + kWebOut + "spec.matches[0].kind: required field is missing"},
        // The kinds read for references.
        {"HTTPRouteGroup without a name",
         "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {}\n",
         "3:11: document 1: metadata.name: required field is missing"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.name);
        const PolicySet set = parse_policy_documents(c.yaml, "p.yaml");
        CHECK(set.policies.empty());
        CHECK(lines(set.errors) == lines({"p.yaml:" + c.message}));
    }
}

TEST_CASE("one bad document does not block the others in the same file") {
    const std::string text = egress(kSources + kPorts) + "---\n" +                                         // lines 1-9
                             egress(kSources + "  ports: [{number: 443, protocol: grpc}]\n", "bad-out") +  // 10-17
                             "---\n" + egress(kSources + kPorts, "ok-out");
    const PolicySet set = parse_policy_documents(text, "p.yaml");
    CHECK(names(set) == std::vector<std::string>{"shop/ok-out", "shop/web-out"});
    CHECK(set.policies[0].document == 2);
    CHECK(lines(set.errors) ==
          lines({"p.yaml:17:35: document 2 (Egress shop/bad-out): spec.ports[0].protocol: \"grpc\" is not "
                 "supported; expected one of tcp, tcp-server-first, http, https, udp, icmp"}));
}

TEST_CASE("the same namespace/name twice in one text: the first is kept") {
    const std::string text =
        egress(kSources + kPorts) + "---\n" + egress(kSources + "  ports: [{number: 80, protocol: http}]\n");
    const PolicySet set = parse_policy_documents(text, "p.yaml");
    REQUIRE(set.policies.size() == 1);
    CHECK(set.policies[0].ports == std::vector<PolicyPort>{{443, "https", IPPROTO_TCP}});
    CHECK(lines(set.errors) ==
          lines({"p.yaml:13:9: document 2 (Egress shop/web-out): metadata.name: Egress shop/web-out is "
                 "already defined in p.yaml document 1; the first one is kept"}));
}

TEST_CASE("a reference to a route group or traffic setting not in the load, or in another namespace, is a note") {
    const std::string text =
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\n"  // 1-2
        "metadata: {name: routes, namespace: other}\n"                    // 3
        "---\n" +                                                         // 4
        egress(kSources + kPorts +                                        // 5-12
               "  matches:\n"                                             // 13
               "  - {kind: HTTPRouteGroup, name: routes}\n"               // 14
               "  - {kind: UpstreamTrafficSetting, name: limits}\n"       // 15
               "  - {kind: HTTPRouteGroup, name: later}\n") +             // 16
        "---\n"                                                           // 17
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\n"  // 18-19
        "metadata: {name: later, namespace: shop}\n";                     // 20
    const PolicySet set = parse_policy_documents(text, "p.yaml");
    CHECK(set.errors.empty());
    REQUIRE(set.policies.size() == 1);
    CHECK(set.policies[0].matches ==
          std::vector<std::string>{"HTTPRouteGroup/routes", "UpstreamTrafficSetting/limits", "HTTPRouteGroup/later"});
    CHECK(lines(set.notes) ==
          lines({
              "p.yaml:14:3: document 2 (Egress shop/web-out): spec.matches: L7 matches are delegated to the proxy; "
              "egressd enforces sources, destinations and ports",
              "p.yaml:14:5: document 2 (Egress shop/web-out): spec.matches[0]: HTTPRouteGroup/routes is not defined "
              "in namespace shop in the loaded documents",
              "p.yaml:15:5: document 2 (Egress shop/web-out): spec.matches[1]: UpstreamTrafficSetting/limits is not "
              "defined in namespace shop in the loaded documents",
          }));
}

TEST_CASE("a directory of good files: name order, hidden files, other extensions and subdirectories skipped") {
    const fs::path dir = kEgressFixtures / "good";
    const PolicySet set = load_policy_dir(dir);
    CHECK(set.errors.empty());
    CHECK(names(set) == std::vector<std::string>{"billing/payments", "default/databases", "edge/partner-tls",
                                                 "shop/any-smtp", "shop/catalog-api"});
    CHECK(find(set, "edge", "partner-tls").file == (dir / "30-mtls.yaml").string());
    // The notes of the three files, in file order.
    REQUIRE(set.notes.size() == 5);
    CHECK(set.notes[0].starts_with((dir / "10-fsm-shop.yaml").string() + ":32:3: "));
    CHECK(set.notes[2].starts_with((dir / "20-osm-ranges.yml").string() + ":50:3: "));
    CHECK(set.notes[4].starts_with((dir / "30-mtls.yaml").string() + ":27:5: "));
}

TEST_CASE("a directory with bad documents, a duplicate, a broken file: the good policies are kept") {
    const fs::path dir = kEgressFixtures / "mixed";
    const std::string first = (dir / "10-first.yaml").string();
    const std::string second = (dir / "20-second.yaml").string();
    const std::string last = (dir / "40-last.yml").string();
    const PolicySet set = load_policy_dir(dir);
    // delta (30-broken.yaml) is lost with its file; epsilon, read after it, is kept.
    CHECK(names(set) == std::vector<std::string>{"shop/alpha", "shop/beta", "shop/epsilon", "shop/gamma"});
    const EgressPolicy& alpha = find(set, "shop", "alpha");
    CHECK(alpha.file == first);
    CHECK(alpha.ports == std::vector<PolicyPort>{{443, "https", IPPROTO_TCP}});
    CHECK(
        lines(set.errors) ==
        lines({
            first + ":16:15: document 2 (Egress shop/broken): spec.ports[0].protocol: \"grpc\" is not supported; "
                    "expected one of tcp, tcp-server-first, http, https, udp, icmp",
            first + ":26:1: document 4: expected a mapping at the top level, got a list",
            second + ":5:18: document 1 (Egress shop/alpha): metadata.name: Egress shop/alpha is already defined in " +
                first + " document 1; the first one is kept",
            (dir / "30-broken.yaml").string() +
                ":12:1: did not find expected ',' or ']' (while parsing a flow sequence at line 11) (no document of this file "
                "is applied)",
        }));
    // late-routes is defined in a later file: resolved. shared-routes is in another namespace.
    CHECK(lines(set.notes) ==
          lines({
              second + ":18:3: document 2 (Egress shop/gamma): spec.matches: L7 matches are delegated to the proxy; "
                       "egressd enforces sources, destinations and ports",
              last + ":21:12: document 3 (Egress shop/epsilon): spec.matches: L7 matches are delegated to the proxy; "
                     "egressd enforces sources, destinations and ports",
              second + ":19:5: document 2 (Egress shop/gamma): spec.matches[1]: HTTPRouteGroup/missing-routes is not "
                       "defined in namespace shop in the loaded documents",
              last + ":21:13: document 3 (Egress shop/epsilon): spec.matches[0]: HTTPRouteGroup/shared-routes is not "
                     "defined in namespace shop in the loaded documents",
          }));
}

TEST_CASE("files are read in name order whatever the creation order; .yml and .yaml alike") {
    TempDir tmp;
    tmp.write("b.yaml", minimal_egress("same", 2));
    tmp.write("a.yml", minimal_egress("same", 1));
    tmp.write("c.YAML", minimal_egress("upper-case-extension", 3));  // not *.yaml: skipped
    const PolicySet set = load_policy_dir(tmp.path);
    REQUIRE(names(set) == std::vector<std::string>{"ops/same"});
    CHECK(set.policies[0].file == (tmp.path / "a.yml").string());
    CHECK(set.policies[0].ports[0].number == 1);
    CHECK(lines(set.errors) == lines({(tmp.path / "b.yaml").string() +
                                      ":3:18: document 1 (Egress ops/same): metadata.name: Egress ops/same "
                                      "is already defined in " +
                                      (tmp.path / "a.yml").string() + " document 1; the first one is kept"}));
}

TEST_CASE("a ConfigMap mount: symlinked files are followed, the ..data machinery skipped") {
    TempDir tmp;
    fs::create_directory(tmp.path / "..2024_05_01_12_00_00.000000001");
    tmp.write("..2024_05_01_12_00_00.000000001/api.yaml", minimal_egress("api", 443));
    tmp.write("..2024_05_01_12_00_00.000000001/db.yaml", minimal_egress("db", 5432));
    fs::create_directory_symlink("..2024_05_01_12_00_00.000000001", tmp.path / "..data");
    fs::create_symlink("..data/api.yaml", tmp.path / "api.yaml");
    fs::create_symlink("..data/db.yaml", tmp.path / "db.yaml");
    fs::create_symlink("..data/gone.yaml", tmp.path / "gone.yaml");  // dangling: an error, not a stop

    const PolicySet set = load_policy_dir(tmp.path);
    CHECK(names(set) == std::vector<std::string>{"ops/api", "ops/db"});
    CHECK(find(set, "ops", "db").file == (tmp.path / "db.yaml").string());
    CHECK(lines(set.errors) == lines({"reading " + (tmp.path / "gone.yaml").string() + ": No such file or directory"}));
}

TEST_CASE("a missing directory, or a file given as the directory, is an error in the set") {
    const PolicySet missing = load_policy_dir(kEgressFixtures / "no-such-dir");
    CHECK(missing.policies.empty());
    CHECK(lines(missing.errors) ==
          lines({"reading " + (kEgressFixtures / "no-such-dir").string() + ": No such file or directory"}));

    const PolicySet file = load_policy_dir(kEgressFixtures / "good/30-mtls.yaml");
    CHECK(file.policies.empty());
    CHECK(lines(file.errors) ==
          lines({"reading " + (kEgressFixtures / "good/30-mtls.yaml").string() + ": Not a directory"}));
}

// PolicyDirLoader: load_policy_dir's result, parsing only the files whose bytes changed.

namespace {

// An Egress in namespace ops that refers to the HTTPRouteGroup `routes` (spec.matches at line 7).
std::string egress_with_match(std::string_view name, std::string_view routes) {
    return minimal_egress(name, 443) + fmt::format("  matches: [{{kind: HTTPRouteGroup, name: {}}}]\n", routes);
}

std::string route_group(std::string_view name) {
    return fmt::format(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: {}, namespace: ops}}\n", name);
}

// load() of `loader`, checked against a fresh load_policy_dir of the same directory.
PolicySet load_checked(PolicyDirLoader& loader) {
    PolicySet set = loader.load();
    CHECK(set == load_policy_dir(loader.dir()));
    return set;
}

}  // namespace

TEST_CASE("PolicyDirLoader: the fixture directories give load_policy_dir's result, then from the cache") {
    for (const fs::path& dir : {kEgressFixtures / "good", kEgressFixtures / "mixed"}) {
        CAPTURE(dir);
        const PolicySet expected = load_policy_dir(dir);
        PolicyDirLoader loader(dir);
        CHECK(loader.load() == expected);
        CHECK(loader.files_parsed_last_load() == (dir.filename() == "good" ? 3 : 4));
        CHECK(loader.files_cached() == loader.files_parsed_last_load());
        CHECK(loader.load() == expected);  // the duplicate and the references are worked out again
        CHECK(loader.files_parsed_last_load() == 0);
    }
    for (const fs::path& dir : {kEgressFixtures / "no-such-dir", kEgressFixtures / "good/30-mtls.yaml"}) {
        CAPTURE(dir);
        PolicyDirLoader loader(dir);
        const PolicySet set = loader.load();
        CHECK(set == load_policy_dir(dir));
        CHECK(set.errors.size() == 1);
        CHECK(loader.files_cached() == 0);
    }
}

TEST_CASE("PolicyDirLoader: an edited file is parsed again, the others come from the cache") {
    TempDir tmp;
    tmp.write("a.yaml", minimal_egress("api", 443));
    tmp.write("b.yaml", minimal_egress("db", 5432));
    tmp.write("c.yaml", minimal_egress("cache", 6379));
    PolicyDirLoader loader(tmp.path);
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api", "ops/cache", "ops/db"});
    CHECK(loader.files_parsed_last_load() == 3);

    tmp.write("b.yaml", minimal_egress("db", 5433));  // same length, other bytes
    const PolicySet set = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(set, "ops", "db").ports == std::vector<PolicyPort>{{5433, "tcp", IPPROTO_TCP}});
    CHECK(find(set, "ops", "api").ports == std::vector<PolicyPort>{{443, "tcp", IPPROTO_TCP}});

    tmp.write("b.yaml", minimal_egress("db", 5433));  // written again, the same bytes
    CHECK(load_checked(loader) == set);
    CHECK(loader.files_parsed_last_load() == 0);

    tmp.write("c.yaml", "spec: [unclosed\n");  // now broken: its policy is gone, the error is new
    const PolicySet broken = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(names(broken) == std::vector<std::string>{"ops/api", "ops/db"});
    REQUIRE(broken.errors.size() == 1);
    CHECK(broken.errors[0].starts_with((tmp.path / "c.yaml").string() + ":"));
    CHECK(broken.errors[0].ends_with("(no document of this file is applied)"));
}

TEST_CASE("PolicyDirLoader: a removed file's policies disappear and it leaves the cache; a new file appears") {
    TempDir tmp;
    tmp.write("a.yaml", minimal_egress("api", 443));
    tmp.write("b.yml", minimal_egress("db", 5432) + "---\n" + minimal_egress("db-replica", 5432));
    PolicyDirLoader loader(tmp.path);
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api", "ops/db", "ops/db-replica"});

    fs::remove(tmp.path / "b.yml");
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api"});
    CHECK(loader.files_parsed_last_load() == 0);
    CHECK(loader.files_cached() == 1);

    tmp.write("c.yaml", minimal_egress("cache", 6379));
    tmp.write("notes.txt", minimal_egress("not-a-policy-file", 1));
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api", "ops/cache"});
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(loader.files_cached() == 2);

    // The same bytes under another name: parsed again, since messages and EgressPolicy::file name it.
    fs::rename(tmp.path / "c.yaml", tmp.path / "d.yaml");
    const PolicySet renamed = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(renamed, "ops", "cache").file == (tmp.path / "d.yaml").string());

    // A file that cannot be read is an error and leaves the cache; readable again, it is parsed again.
    fs::rename(tmp.path / "d.yaml", tmp.path / "elsewhere");
    fs::create_symlink("elsewhere", tmp.path / "d.yaml");
    fs::remove(tmp.path / "elsewhere");
    const PolicySet dangling = load_checked(loader);
    CHECK(names(dangling) == std::vector<std::string>{"ops/api"});
    CHECK(lines(dangling.errors) ==
          lines({"reading " + (tmp.path / "d.yaml").string() + ": No such file or directory"}));
    CHECK(loader.files_cached() == 1);
    tmp.write("elsewhere", minimal_egress("cache", 6379));
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api", "ops/cache"});
    CHECK(loader.files_parsed_last_load() == 1);

    // The directory itself gone: the error of load_policy_dir, and an empty cache.
    const fs::path moved = tmp.path.string() + "-moved";
    fs::rename(tmp.path, moved);
    const PolicySet missing = load_checked(loader);
    fs::rename(moved, tmp.path);
    CHECK(lines(missing.errors) == lines({"reading " + tmp.path.string() + ": No such file or directory"}));
    CHECK(loader.files_cached() == 0);
}

TEST_CASE("PolicyDirLoader: duplicates across files and references are worked out on every load, cached or not") {
    TempDir tmp;
    tmp.write("a.yml", minimal_egress("same", 1));
    tmp.write("b.yaml", minimal_egress("same", 2) + "---\n" + egress_with_match("web", "routes"));
    tmp.write("c.yaml", route_group("routes"));
    PolicyDirLoader loader(tmp.path);
    const PolicySet first = load_checked(loader);
    CHECK(names(first) == std::vector<std::string>{"ops/same", "ops/web"});
    CHECK(find(first, "ops", "same").ports[0].number == 1);
    CHECK(lines(first.errors) == lines({(tmp.path / "b.yaml").string() +
                                        ":3:18: document 1 (Egress ops/same): metadata.name: Egress ops/same "
                                        "is already defined in " +
                                        (tmp.path / "a.yml").string() + " document 1; the first one is kept"}));
    CHECK(first.notes.size() == 1);  // matches delegated; routes is defined in c.yaml

    // The first definition gone: b.yaml's, from the cache, is kept now, with no error.
    fs::remove(tmp.path / "a.yml");
    const PolicySet second = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 0);
    CHECK(second.errors.empty());
    CHECK(find(second, "ops", "same").ports[0].number == 2);

    // The route group gone: the reference in b.yaml, from the cache, is a note now.
    fs::remove(tmp.path / "c.yaml");
    const PolicySet third = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 0);
    REQUIRE(third.notes.size() == 2);
    CHECK(third.notes[1] == (tmp.path / "b.yaml").string() +
                                ":14:13: document 2 (Egress ops/web): spec.matches[0]: HTTPRouteGroup/routes is not "
                                "defined in namespace ops in the loaded documents");

    // A new file before b.yaml in name order takes the name: b.yaml's policy, cached, is the duplicate again.
    tmp.write("0.yaml", minimal_egress("same", 3));
    const PolicySet fourth = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(fourth, "ops", "same").ports[0].number == 3);
    CHECK(lines(fourth.errors) == lines({(tmp.path / "b.yaml").string() +
                                         ":3:18: document 1 (Egress ops/same): metadata.name: Egress ops/same "
                                         "is already defined in " +
                                         (tmp.path / "0.yaml").string() + " document 1; the first one is kept"}));
}

TEST_CASE("PolicyDirLoader: a ConfigMap update swaps ..data; only the file whose bytes changed is parsed") {
    TempDir tmp;
    const auto version = [&](std::string_view name, uint16_t db_port) {
        fs::create_directory(tmp.path / name);
        tmp.write(fs::path(name) / "api.yaml", minimal_egress("api", 443));
        tmp.write(fs::path(name) / "db.yaml", minimal_egress("db", db_port));
    };
    version("..2024_05_01_12_00_00.000000001", 5432);
    fs::create_directory_symlink("..2024_05_01_12_00_00.000000001", tmp.path / "..data");
    fs::create_symlink("..data/api.yaml", tmp.path / "api.yaml");
    fs::create_symlink("..data/db.yaml", tmp.path / "db.yaml");
    PolicyDirLoader loader(tmp.path);
    CHECK(names(load_checked(loader)) == std::vector<std::string>{"ops/api", "ops/db"});

    version("..2024_05_01_12_05_00.000000002", 5433);  // what the kubelet does: a new version, then ..data swapped
    fs::create_directory_symlink("..2024_05_01_12_05_00.000000002", tmp.path / "..data_tmp");
    fs::rename(tmp.path / "..data_tmp", tmp.path / "..data");
    fs::remove_all(tmp.path / "..2024_05_01_12_00_00.000000001");
    const PolicySet set = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(set, "ops", "db").ports[0].number == 5433);
}

TEST_CASE("PolicyDirLoader: 200 files, one changed: one file parsed, the result that of a fresh load") {
    TempDir tmp;
    const auto file_text = [](int i, int port) {
        std::string text = minimal_egress(fmt::format("p{:03}", i), static_cast<uint16_t>(port)) + "  ipAddresses:\n";
        for (int j = 0; j < 20; ++j) text += fmt::format("  - 10.{}.{}.0/24\n", i % 256, j);
        return text;
    };
    for (int i = 0; i < 200; ++i) tmp.write(fmt::format("{:03}.yaml", i), file_text(i, 443));
    PolicyDirLoader loader(tmp.path);
    const PolicySet before = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 200);
    CHECK(before.policies.size() == 200);
    CHECK(before.errors.empty());

    tmp.write("137.yaml", file_text(137, 8443));
    const PolicySet after = load_checked(loader);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(after, "ops", "p137").ports[0].number == 8443);
    PolicySet expected = before;  // the same, but for the one port
    expected.policies = {};
    for (EgressPolicy policy : before.policies) {
        if (policy.name == "p137") policy.ports[0].number = 8443;
        expected.policies.push_back(std::move(policy));
    }
    CHECK(after == expected);
    // Policies of the files that did not change are the very objects of the previous load.
    for (size_t i = 0; i < after.policies.size(); ++i) {
        CAPTURE(after.policies[i].name);
        CHECK((after.policies.shared(i) == before.policies.shared(i)) == (after.policies[i].name != "p137"));
    }

    CHECK(loader.load() == after);
    CHECK(loader.files_parsed_last_load() == 0);
}

TEST_CASE("PolicyDirLoader: a moved-to loader keeps the cache; load_policy_dir is a fresh loader's load") {
    TempDir tmp;
    tmp.write("a.yaml", minimal_egress("api", 443));
    PolicyDirLoader first(tmp.path);
    const PolicySet set = first.load();
    PolicyDirLoader second = std::move(first);
    CHECK(second.load() == set);
    CHECK(second.files_parsed_last_load() == 0);
    CHECK(set == load_policy_dir(tmp.path));
}

TEST_CASE("PolicyDirLoader: a settled file whose stamp holds is not read again; a same-size change is seen") {
    TempDir tmp;
    tmp.write("a.yaml", minimal_egress("api", 443));
    tmp.write("b.yaml", minimal_egress("db", 5432));
    PolicyDirLoader loader(tmp.path, std::chrono::seconds(1));  // settled a second after a change
    const PolicySet set = load_checked(loader);
    CHECK(loader.files_read_last_load() == 2);
    // Changed less than a second ago: read and compared again, not parsed.
    CHECK(loader.load() == set);
    CHECK(loader.files_read_last_load() == 2);
    CHECK(loader.files_parsed_last_load() == 0);

    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    CHECK(loader.load() == set);  // read once more, now settled
    CHECK(loader.files_read_last_load() == 2);
    CHECK(loader.load() == set);
    CHECK(loader.files_read_last_load() == 0);
    CHECK(loader.load(true) == set);  // SIGHUP: every file read, whatever its stamp
    CHECK(loader.files_read_last_load() == 2);
    CHECK(loader.files_parsed_last_load() == 0);

    // The same size, other bytes, rewritten in place: the times differ.
    tmp.write("a.yaml", minimal_egress("api", 444));
    const PolicySet after = load_checked(loader);
    CHECK(loader.files_read_last_load() == 1);
    CHECK(loader.files_parsed_last_load() == 1);
    CHECK(find(after, "ops", "api").ports[0].number == 444);
    CHECK(after == load_policy_dir(tmp.path));
}

TEST_CASE("PolicyList: shared objects, compared by address first and by value otherwise") {
    EgressPolicy a;
    a.namespace_ = "ops";
    a.name = "a";
    a.ports = {{443, "https", IPPROTO_TCP}};
    EgressPolicy b = a;
    b.name = "b";
    PolicyList list{b, a};
    list.sort();
    CHECK(list[0].name == "a");
    CHECK(list.shared(1)->name == "b");

    const PolicyList copy = list;  // copies pointers
    CHECK(copy.shared(0) == list.shared(0));
    CHECK(copy == list);
    CHECK(PolicyList{a, b} == list);  // other objects, equal values
    EgressPolicy other_port = b;
    other_port.ports[0].number = 8443;
    CHECK_FALSE((PolicyList{a, other_port} == list));
    CHECK_FALSE((PolicyList{a} == list));
    CHECK(same_policy(list.shared(0), std::make_shared<const EgressPolicy>(a)));
    CHECK_FALSE(same_policy(list.shared(0), list.shared(1)));
}
