// The agent's own settings (config/egressd.yaml).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "core/net.h"
#include "egressd_abi.h"

namespace egressd {

enum class PolicySemantics { fsm, osm };

struct Capacities {
    // Defaults from the ABI header, the one place they are written.
    uint32_t cidrs = EGRESSD_DEFAULT_CIDR_CAPACITY;                // CIDR entries per generation (all lists)
    uint32_t ports = EGRESSD_DEFAULT_PORT_CAPACITY;                // port entries per generation
    uint32_t policy_rules = EGRESSD_DEFAULT_POLICY_RULE_CAPACITY;  // sources x ports x destinations, per generation
    uint32_t policies = EGRESSD_DEFAULT_POLICY_CAPACITY;           // Egress policies per generation
    uint32_t identities = EGRESSD_DEFAULT_IDENTITY_CAPACITY;       // (namespace, serviceAccount) pairs known at once
    uint32_t workloads = EGRESSD_DEFAULT_WORKLOAD_CAPACITY;        // registered workload cgroups
    uint32_t dns_learned = EGRESSD_DEFAULT_DNS_LEARNED_CAPACITY;   // addresses learned from DNS answers, in all
    bool operator==(const Capacities&) const = default;
};

// dnsLearning: addresses learned from the DNS answers the workloads receive.
struct DnsLearning {
    uint32_t min_ttl = 5;         // seconds: a shorter TTL counts as this (0 allowed, for tests)
    uint32_t max_ttl = 3600;      // seconds: a longer TTL counts as this
    uint32_t per_identity = 256;  // addresses kept per identity (a power of 2, at least 2)
    bool operator==(const DnsLearning&) const = default;
};

enum class Mesh { fsm, osm };

// Kubernetes mode: the API server is the source of the MeshConfig, the Egress
// policies and the workloads (the meshed pods of this node).
struct KubernetesSettings {
    std::filesystem::path kubeconfig;  // empty: the in-cluster config
    std::string node_name;             // "" : $NODE_NAME when the agent starts
    Mesh mesh = Mesh::fsm;
    std::string mesh_name;              // the namespaces' monitored-by label value; default: the mesh's
    std::string mesh_config_namespace;  // default: the mesh's (fsm-system, osm-system)
    std::string mesh_config_name;       // default: the mesh's (fsm-mesh-config, osm-mesh-config)
    bool operator==(const KubernetesSettings&) const = default;
};

// The names a mesh uses, for its defaults and for finding its pods.
struct MeshConventions {
    std::string mesh_config_group;    // config.flomesh.io
    std::string egress_group;         // policy.flomesh.io
    std::string monitored_by_label;   // on namespaces: flomesh.io/monitored-by
    std::string proxy_uuid_label;     // on every injected pod: fsm-proxy-uuid
    std::string default_mesh_name;    // fsm
    std::string default_namespace;    // fsm-system
    std::string default_mesh_config;  // fsm-mesh-config
};
const MeshConventions& mesh_conventions(Mesh mesh);
std::string_view mesh_name(Mesh mesh);  // "fsm", "osm"

struct AgentConfig {
    std::filesystem::path source_file;  // absolute path of the settings file

    // cgroup: the cgroup v2 path to enforce on, as written. Relative paths are
    // under the cgroup2 mount; an absolute path must lie under it. "" or "/"
    // (the cgroup root) is an error.
    // In Kubernetes mode: where the pods' cgroups are (e.g. kubepods.slice);
    // "" means detected.
    std::string cgroup;
    // The host's cgroup2 mount as the agent sees it; empty: from /proc/mounts.
    std::filesystem::path cgroup_mount;
    std::filesystem::path bpffs = "/sys/fs/bpf/egressd";  // pin directory
    std::filesystem::path mesh_config;                    // absolute, resolved against the file's directory
    std::vector<Cidr> mesh_cidrs;
    std::optional<uint32_t> sidecar_uid = 1500;      // `sidecarUID: null` disables row 2
    std::filesystem::path run_dir = "/run/egressd";  // pid/lock and status files
    PolicySemantics egress_policy_semantics = PolicySemantics::fsm;
    std::filesystem::path policy_dir;             // Egress policies (*.yaml); empty: none
    std::filesystem::path workloads_file;         // workload cgroups and their identities; empty: none
    // dnsServer: the resolvers (ADDRESS[:PORT], port 53 by default), one or a
    // list. The agent's own lookups use them, and only their answers are
    // learned from (on port 53). Empty: the system's (/etc/resolv.conf).
    std::vector<std::string> dns_servers;
    DnsLearning dns_learning;
    bool audit = false;                           // mode: audit: report what rows 0 and 8 would deny, allow it
    // rawSockets: deny (the default): every packet a raw socket sends is
    // dropped, loopback included. allow: decided by rows 1-8 like any other.
    bool allow_raw_sockets = false;
    // revokeOnTighten: a generation that denies what an open connection of an
    // enforced workload does tears that connection down.
    bool revoke_on_tighten = true;
    // flows: on (the default) tracks allowed egress TCP connections for
    // egressctl flows and the traffic totals; off leaves the decision alone
    // on the connect path. Fixed when the programs load (an agent restart).
    bool track_flows = true;
    bool report_policy_allows = false;            // events.allowedByPolicy
    bool report_passthrough = false;              // events.passthrough
    std::filesystem::path event_log;              // events.log: JSON lines; empty = stderr
    uint32_t event_buffer = 1000;                 // events.buffer: kept in memory for egressctl events
    std::string http_address = "127.0.0.1:9477";  // /metrics, /healthz, /readyz, /events; "" = off
    Capacities capacities;
    std::optional<KubernetesSettings> kubernetes;  // set: Kubernetes mode

    bool operator==(const AgentConfig&) const = default;
};

// Keys (camelCase): cgroup (required), cgroupMount, bpffs, meshConfig (required), meshCIDRs,
// sidecarUID (integer 0..4294967294 or null), runDir,
// egressPolicySemantics (fsm|osm), policyDir, workloads, dnsServer (one or a list),
// dnsLearning: {minTTL, maxTTL, perIdentity},
// mode (enforce|audit), rawSockets (deny|allow), revokeOnTighten (bool), events: {allowedByPolicy, passthrough, log, buffer},
// httpAddress (HOST:PORT, [IPV6]:PORT, or "" for none),
// capacities: {cidrs, ports, policyRules, policies, identities, workloads, dnsLearned},
// kubernetes: {kubeconfig, nodeName, mesh (fsm|osm), meshName,
// meshConfigRef: {namespace, name}}. With kubernetes, cgroup is optional
// (detected) and meshConfig, policyDir and workloads are refused: the API
// server is their source. egressPolicySemantics then defaults to the mesh's.
// Unknown keys are an error (a typo in an agent setting must not pass
// silently). Relative paths (meshConfig, runDir) are relative to the file's
// directory. Errors: "<file>:<line>:<column>: <key path>: <why>".
Result<AgentConfig> parse_agent_config(std::string_view yaml_text, const std::filesystem::path& file);
Result<AgentConfig> load_agent_config(const std::filesystem::path& file);

}  // namespace egressd
