#include "core/agent_config.h"

#include <fmt/format.h>

#include "core/endpoint.h"
#include "core/files.h"
#include "core/yaml_input.h"

namespace egressd {

namespace {

namespace fs = std::filesystem;
using yaml_input::Field;

constexpr long long kMaxCidrCapacity = 1'000'000;
constexpr long long kMaxPortCapacity = 65'536;
constexpr long long kMaxPolicyRuleCapacity = 4'000'000;
constexpr long long kMaxTableCapacity = 1'000'000;
constexpr long long kMaxUid = 4'294'967'294;  // (uid_t)-1 means "no uid" to the kernel

uint32_t bounded(const Field& field, long long min, long long max) {
    const long long value = field.integer();
    if (value < min || value > max) field.fail(fmt::format("{} is out of range {}-{}", value, min, max));
    return static_cast<uint32_t>(value);
}

std::string non_empty_string(const Field& field) {
    std::string text = field.string();
    if (text.empty()) field.fail("must not be empty");
    return text;
}

// Relative paths are relative to the settings file's directory, not to the
// agent's working directory.
fs::path resolved_path(const Field& field, const fs::path& directory) { return directory / non_empty_string(field); }

std::string cgroup_setting(const Field& field) {
    std::string cgroup = non_empty_string(field);
    const fs::path normal = fs::path(cgroup).lexically_normal();
    if (normal.relative_path().empty() || normal == ".")
        field.fail(fmt::format("\"{}\" is the cgroup root; name the cgroup to enforce on", cgroup));
    return cgroup;
}

PolicySemantics semantics_setting(const Field& field) {
    const std::string name = field.string();
    if (name == "fsm") return PolicySemantics::fsm;
    if (name == "osm") return PolicySemantics::osm;
    field.fail(fmt::format("expected fsm or osm, got \"{}\"", name));
}

void read_events(const Field& events, const fs::path& directory, AgentConfig& config) {
    events.reject_unknown_keys({"allowedByPolicy", "passthrough", "log", "buffer"});
    if (const Field f = events.child("allowedByPolicy"); f.present()) config.report_policy_allows = f.boolean();
    if (const Field f = events.child("passthrough"); f.present()) config.report_passthrough = f.boolean();
    if (const Field f = events.child("log"); f.present()) config.event_log = resolved_path(f, directory);
    if (const Field f = events.child("buffer"); f.present()) config.event_buffer = bounded(f, 1, 1'000'000);
}

// HOST:PORT, port 0 for any; "" disables the HTTP server.
std::string http_address_setting(const Field& field) {
    const std::string text = field.string();
    if (text.empty()) return text;
    if (auto address = parse_endpoint(text, {.default_port = std::nullopt, .port_zero = true}); !address)
        field.fail(fmt::format("\"{}\": {}", text, address.error().message));
    return text;
}

Capacities capacities_setting(const Field& field) {
    field.reject_unknown_keys({"cidrs", "ports", "policyRules", "policies", "identities", "workloads", "dnsLearned"});
    Capacities capacities;
    const std::pair<const char*, std::pair<uint32_t*, long long>> limits[] = {
        {"cidrs", {&capacities.cidrs, kMaxCidrCapacity}},
        {"ports", {&capacities.ports, kMaxPortCapacity}},
        {"policyRules", {&capacities.policy_rules, kMaxPolicyRuleCapacity}},
        {"policies", {&capacities.policies, kMaxTableCapacity}},
        {"identities", {&capacities.identities, kMaxTableCapacity}},
        {"workloads", {&capacities.workloads, kMaxTableCapacity}},
        {"dnsLearned", {&capacities.dns_learned, kMaxPolicyRuleCapacity}},
    };
    for (const auto& [key, target] : limits)
        if (const Field value = field.child(key); value.present()) *target.first = bounded(value, 1, target.second);
    return capacities;
}

// One ADDRESS[:PORT] or a list of them.
std::vector<std::string> dns_servers_setting(const Field& field) {
    std::vector<Field> items = field.node().is_sequence() ? field.items() : std::vector<Field>{field};
    if (items.empty()) field.fail("expected a resolver ADDRESS[:PORT] or a list of them, got an empty list");
    std::vector<std::string> servers;
    for (const Field& item : items) {
        const std::string text = non_empty_string(item);
        auto endpoint = parse_endpoint(text, {.default_port = 53, .port_zero = false});
        if (!endpoint) item.fail(fmt::format("\"{}\": {}", text, endpoint.error().message));
        servers.push_back(endpoint->str());
    }
    return servers;
}

DnsLearning dns_learning_setting(const Field& field) {
    field.reject_unknown_keys({"minTTL", "maxTTL", "perIdentity"});
    DnsLearning learning;
    constexpr long long kDay = 86400;
    if (const Field min = field.child("minTTL"); min.present()) learning.min_ttl = bounded(min, 0, kDay);
    if (const Field max = field.child("maxTTL"); max.present()) learning.max_ttl = bounded(max, 1, 7 * kDay);
    if (learning.min_ttl > learning.max_ttl)
        field.fail(fmt::format("minTTL {} is above maxTTL {}", learning.min_ttl, learning.max_ttl));
    if (const Field per = field.child("perIdentity"); per.present()) {
        learning.per_identity = bounded(per, 2, 65536);
        if (learning.per_identity & (learning.per_identity - 1))
            per.fail(fmt::format("{} is not a power of 2 (entries are kept in sets of 2)", learning.per_identity));
    }
    return learning;
}

Mesh mesh_setting(const Field& field) {
    const std::string name = field.string();
    if (name == "fsm") return Mesh::fsm;
    if (name == "osm") return Mesh::osm;
    field.fail(fmt::format("expected fsm or osm, got \"{}\"", name));
}

KubernetesSettings kubernetes_setting(const Field& field, const fs::path& directory) {
    field.reject_unknown_keys({"kubeconfig", "nodeName", "mesh", "meshName", "meshConfigRef"});
    KubernetesSettings k8s;
    if (const Field f = field.child("kubeconfig"); f.present()) k8s.kubeconfig = resolved_path(f, directory);
    if (const Field f = field.child("nodeName"); f.present()) k8s.node_name = non_empty_string(f);
    k8s.mesh = mesh_setting(field.required("mesh"));
    const MeshConventions& conventions = mesh_conventions(k8s.mesh);
    k8s.mesh_name = conventions.default_mesh_name;
    if (const Field f = field.child("meshName"); f.present()) k8s.mesh_name = non_empty_string(f);
    k8s.mesh_config_namespace = conventions.default_namespace;
    k8s.mesh_config_name = conventions.default_mesh_config;
    if (const Field ref = field.child("meshConfigRef"); ref.present()) {
        ref.reject_unknown_keys({"namespace", "name"});
        if (const Field f = ref.child("namespace"); f.present()) k8s.mesh_config_namespace = non_empty_string(f);
        if (const Field f = ref.child("name"); f.present()) k8s.mesh_config_name = non_empty_string(f);
    }
    return k8s;
}

// The settings that name the inputs: files, or the API server.
void read_sources(const Field& root, const fs::path& directory, AgentConfig& config) {
    if (const Field k8s = root.child("kubernetes"); k8s.present()) {
        for (const char* key : {"meshConfig", "policyDir", "workloads"}) {
            if (const Field file_key = root.child(key); file_key.present() || file_key.is_null())
                file_key.fail(
                    "not with kubernetes: the API server is the source of the MeshConfig, the policies "
                    "and the workloads");
        }
        config.kubernetes = kubernetes_setting(k8s, directory);
        config.egress_policy_semantics =
            config.kubernetes->mesh == Mesh::osm ? PolicySemantics::osm : PolicySemantics::fsm;
        if (const Field cgroup = root.child("cgroup"); cgroup.present()) config.cgroup = cgroup_setting(cgroup);
        return;
    }
    config.cgroup = cgroup_setting(root.required("cgroup"));
    config.mesh_config = resolved_path(root.required("meshConfig"), directory);
    if (const Field dir = root.child("policyDir"); dir.present()) config.policy_dir = resolved_path(dir, directory);
    if (const Field file = root.child("workloads"); file.present())
        config.workloads_file = resolved_path(file, directory);
}

AgentConfig read_agent_config(const Field& root, const fs::path& source_file) {
    root.reject_unknown_keys({"cgroup", "cgroupMount", "bpffs", "meshConfig", "meshCIDRs", "sidecarUID", "runDir",
                              "egressPolicySemantics", "policyDir", "workloads", "dnsServer", "dnsLearning", "mode",
                              "rawSockets", "revokeOnTighten", "flows", "events", "httpAddress", "capacities", "kubernetes"});
    AgentConfig config;
    config.source_file = source_file;
    const fs::path directory = source_file.parent_path();

    read_sources(root, directory, config);
    if (const Field mount = root.child("cgroupMount"); mount.present()) {
        config.cgroup_mount = non_empty_string(mount);
        if (!config.cgroup_mount.is_absolute()) mount.fail("must be an absolute path (the host's cgroup2 mount)");
    }
    if (const Field bpffs = root.child("bpffs"); bpffs.present()) {
        config.bpffs = non_empty_string(bpffs);
        if (!config.bpffs.is_absolute()) bpffs.fail("must be an absolute path on the bpf filesystem");
    }
    config.mesh_cidrs = root.child("meshCIDRs").cidrs();
    if (const Field uid = root.child("sidecarUID"); uid.is_null())
        config.sidecar_uid.reset();
    else if (uid.present())
        config.sidecar_uid = bounded(uid, 0, kMaxUid);
    if (const Field run_dir = root.child("runDir"); run_dir.present())
        config.run_dir = resolved_path(run_dir, directory);
    if (const Field semantics = root.child("egressPolicySemantics"); semantics.present())
        config.egress_policy_semantics = semantics_setting(semantics);
    if (const Field server = root.child("dnsServer"); server.present()) config.dns_servers = dns_servers_setting(server);
    config.dns_learning = dns_learning_setting(root.child("dnsLearning"));
    if (const Field mode = root.child("mode"); mode.present()) {
        const std::string name = mode.string();
        if (name != "enforce" && name != "audit") mode.fail(fmt::format("expected enforce or audit, got \"{}\"", name));
        config.audit = name == "audit";
    }
    if (const Field raw = root.child("rawSockets"); raw.present()) {
        const std::string name = raw.string();
        if (name != "deny" && name != "allow") raw.fail(fmt::format("expected deny or allow, got \"{}\"", name));
        config.allow_raw_sockets = name == "allow";
    }
    if (const Field revoke = root.child("revokeOnTighten"); revoke.present()) config.revoke_on_tighten = revoke.boolean();
    if (const Field flows = root.child("flows"); flows.present()) {
        const std::string name = flows.string();
        if (name != "on" && name != "off") flows.fail(fmt::format("expected on or off, got \"{}\"", name));
        config.track_flows = name == "on";
    }
    read_events(root.child("events"), directory, config);
    if (const Field http = root.child("httpAddress"); http.is_null()) {
        config.http_address.clear();
    } else if (http.present()) {
        config.http_address = http_address_setting(http);
    }
    config.capacities = capacities_setting(root.child("capacities"));
    return config;
}

}  // namespace

const MeshConventions& mesh_conventions(Mesh mesh) {
    // FSM's and OSM's constants (pkg/constants) and their charts' defaults.
    static const MeshConventions fsm{
        "config.flomesh.io", "policy.flomesh.io", "flomesh.io/monitored-by", "fsm-proxy-uuid", "fsm",
        "fsm-system",        "fsm-mesh-config"};
    static const MeshConventions osm{"config.openservicemesh.io",
                                     "policy.openservicemesh.io",
                                     "openservicemesh.io/monitored-by",
                                     "osm-proxy-uuid",
                                     "osm",
                                     "osm-system",
                                     "osm-mesh-config"};
    return mesh == Mesh::osm ? osm : fsm;
}

std::string_view mesh_name(Mesh mesh) { return mesh == Mesh::osm ? "osm" : "fsm"; }

Result<AgentConfig> parse_agent_config(std::string_view yaml_text, const std::filesystem::path& file) {
    std::error_code error;
    const fs::path source_file = fs::absolute(file, error);
    if (error) return Error{error.value(), fmt::format("resolving {}", file.string())};
    try {
        return read_agent_config(Field::load(yaml_text, file.string()), source_file);
    } catch (const yaml_input::ParseError& e) {
        return make_error(e.message);
    }
}

Result<AgentConfig> load_agent_config(const std::filesystem::path& file) {
    auto text = read_file(file);
    if (!text) return text.error();
    return parse_agent_config(*text, file);
}

}  // namespace egressd
