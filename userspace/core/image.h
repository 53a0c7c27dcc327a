// The desired content of one generation of the maps, computed from the typed
// model. Pure C++: no libbpf, no root. The kernel adapter writes an image into
// a slot; the reference decision (decision.h) evaluates one.
#pragma once

#include <compare>
#include <map>
#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/shared_vector.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/meshconfig.h"
#include "core/registry.h"
#include "core/net.h"
#include "egressd_abi.h"

namespace egressd {

struct CidrRule {
    uint8_t table = EGRESSD_TABLE_NONE;  // enum egressd_cidr_table
    Cidr cidr;
    uint32_t rule = 0;  // index of the CIDR in its list as written

    auto operator<=>(const CidrRule&) const = default;
};

struct PortRule {
    uint8_t table = EGRESSD_PORTS_NONE;  // enum egressd_port_table
    uint16_t port = 0;
    uint32_t rule = 0;

    auto operator<=>(const PortRule&) const = default;
};

// Row 7: one entry per (source identity, protocol, port, destination prefix).
struct PolicyRule {
    uint32_t identity = 0;
    uint8_t proto = 0;  // IPPROTO_TCP / IPPROTO_UDP
    uint16_t port = 0;
    Cidr cidr;            // ::/0 for "any destination"
    uint32_t policy = 0;  // the policy's number (MapImage::policies)

    auto operator<=>(const PolicyRule&) const = default;
};

// A policy host name as the kernel compares it (ABI: learning from answers):
// the whole name's hash, and whether it is a wildcard (*.<name>).
struct DnsHostName {
    bool wildcard = false;
    uint64_t name = 0;  // dns::name_hash of the labels (without "*")
    auto operator<=>(const DnsHostName&) const = default;
};

// Host names are numbered like policies, and a number keeps its meaning while
// it is in use: addresses learned for it in the kernel carry it.
using HostRegistry = NumberRegistry<DnsHostName>;

// dns_hosts_v1: one entry per (identity, host name) of the valid policies.
struct DnsHostRule {
    uint32_t identity = 0;
    DnsHostName host;
    uint32_t number = 0;  // HostRegistry's; its rules are under dns_host_address(number)
    auto operator<=>(const DnsHostRule&) const = default;
};

// 100::N (ABI): the address under which row 7 keeps the rules of host N.
IpAddress dns_host_address(uint32_t number);

struct PolicyRef {
    std::string namespace_;
    std::string name;
    std::string str() const { return namespace_ + "/" + name; }  // "ns/name", as events and metrics show it
    auto operator<=>(const PolicyRef&) const = default;
};

// Policies are numbered like identities: a policy keeps its number across
// generations while it exists, so events and per-rule totals stay attached
// to the right policy.
using PolicyRegistry = NumberRegistry<PolicyRef>;

struct MapImage {
    // Slot-independent configuration (generation, flags, sidecar uid, mode).
    uint64_t generation = 0;
    uint32_t flags = 0;  // enum egressd_config_flag
    uint32_t sidecar_uid = 0;
    uint32_t mode = EGRESSD_MODE_ENFORCE;
    uint32_t cgroup_level = 0;  // level of the enforced cgroup

    std::vector<CidrRule> cidrs;             // sorted by (table, cidr), one entry per (table, cidr)
    std::vector<PortRule> ports;             // sorted by (table, port), one entry per (table, port)
    // Sorted by (identity, proto, port, cidr), one entry per those; shared
    // with the generations and the rule cache that have the same rules.
    SharedVector<PolicyRule> policy_rules;
    std::map<uint32_t, PolicyRef> policies;  // policy number -> namespace/name
    std::vector<DnsHostRule> dns_hosts;      // sorted, one entry per (identity, host name)
    // Host number -> the name as the policies write it ("*.example.com"):
    // for people (status, egressctl hosts); the kernel has only hashes.
    std::map<uint32_t, std::string> dns_host_names;

    bool operator==(const MapImage&) const = default;
};

// Builds the image for one generation. Duplicate CIDRs or ports within a list
// keep the first occurrence's rule index. Sets EGRESSD_CFG_VALID and derives
// EGRESSD_CFG_POLICY_ACTIVE from the semantics (fsm: !enableEgress &&
// enableEgressPolicy; osm: !enableEgress). Refuses, whole, an image that does
// not fit the capacities: "cidrs_v1 needs 20000 entries per generation, capacity
// is 16384 (capacities.cidrs)".
//
// Egress policies become policy rules: for every valid policy (numbered by
// `policy_numbers`), every source identity (numbered by `identities`; both
// allocate new numbers), every port, and every destination (ipAddresses, the
// current addresses of its hosts, or ::/0 when it names neither). Several
// policies on the same key: the first in PolicySet order, (namespace, name),
// wins. A policy whose hosts have no addresses yet and which has no
// ipAddresses allows nothing.
struct PolicyInputs {
    const PolicyList* policies = nullptr;
    const std::map<std::string, std::vector<IpAddress>>* host_addresses = nullptr;
    IdentityRegistry* identities = nullptr;    // required when policies is non-empty
    PolicyRegistry* policy_numbers = nullptr;  // required when policies is non-empty
    uint32_t cgroup_level = 0;
    // Optional: makes a build after a small change cost linear passes over
    // the rules instead of generating and sorting all of them. Same result.
    class PolicyRuleCache* cache = nullptr;
    // Optional: numbers the policies' host names, so that addresses learned
    // from DNS answers in the kernel allow what the policies say (rules under
    // 100::N, and dns_hosts). Without it, hosts allow only their resolved
    // addresses.
    HostRegistry* host_numbers = nullptr;
};
Result<MapImage> build_image(const AgentConfig& agent, const MeshConfig& mesh, uint64_t generation,
                             const PolicyInputs& policy = {});

// A rule for a single address (prefix 128 in the one address space): found
// by the kernel's first probe, before any prefix length (policy_rules_v1).
inline bool is_host_rule(const PolicyRule& rule) { return rule.cidr.prefix == 128; }

// What turns one slot's content into another: delete what is gone, upsert what
// is new or whose value changed. Applying it leaves exactly `to`.
struct ImageDiff {
    std::vector<CidrRule> cidr_deletes, cidr_upserts;
    std::vector<PortRule> port_deletes, port_upserts;
    std::vector<PolicyRule> policy_deletes, policy_upserts;
    std::vector<uint32_t> policy_name_deletes;  // numbers no longer named
    std::vector<uint32_t> policy_name_upserts;  // numbers whose name is new or changed
    std::vector<DnsHostRule> dns_host_deletes, dns_host_upserts;
    bool empty() const {
        return cidr_deletes.empty() && cidr_upserts.empty() && port_deletes.empty() && port_upserts.empty() &&
               policy_deletes.empty() && policy_upserts.empty() && policy_name_deletes.empty() &&
               policy_name_upserts.empty() && dns_host_deletes.empty() && dns_host_upserts.empty();
    }
};
// What one build changed in the policy rules, as the rule cache knows it:
// applied to `from` it gives `to` (both sorted, one rule per key), in the
// order and form diff_images gives for them.
struct RulesDelta {
    SharedVector<PolicyRule> from, to;
    std::vector<PolicyRule> deletes, upserts;
};

// The deletes and upserts that turn `from` into `to`, policy rules sorted by
// key with one rule per key, as diff_images finds them.
void diff_policy_rules(const std::vector<PolicyRule>& from, const std::vector<PolicyRule>& to,
                       std::vector<PolicyRule>& deletes, std::vector<PolicyRule>& upserts);

// `delta`, when given and made between exactly these rules (the same
// storage), stands for the policy rules' comparison: a change's diff then
// costs the change, not a pass over 100k entries. The result is the same.
ImageDiff diff_images(const MapImage& from, const MapImage& to, const RulesDelta* delta = nullptr);

// One line for the log, naming what changed between two applied inputs, e.g.
// "enableEgress true -> false; outboundIPRangeExclusionList +10.0.0.0/8 -192.168.0.0/16".
// "no effective change" when nothing egressd enforces changed.
std::string describe_changes(const MeshConfig& before, const MeshConfig& after);

}  // namespace egressd
