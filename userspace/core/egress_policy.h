// Egress policies (FSM policy.flomesh.io/v1alpha1, OSM
// policy.openservicemesh.io/v1alpha1, kind Egress), read from a directory of
// YAML files. One bad policy never blocks the good ones: it is reported and
// left out.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/net.h"
#include "core/policy_list.h"

namespace egressd {

struct PolicySource {
    std::string namespace_;       // spec.sources[i].namespace
    std::string service_account;  // spec.sources[i].name (kind ServiceAccount)
    bool operator==(const PolicySource&) const = default;
    auto operator<=>(const PolicySource&) const = default;
};

struct PolicyPort {
    uint16_t number = 0;   // 1..65535; 0 for icmp
    std::string protocol;  // as written, lower-cased: tcp, tcp-server-first, http, https, udp, icmp
    uint8_t l4 = 0;        // IPPROTO_TCP (6), IPPROTO_UDP (17) or EGRESSD_PROTO_ICMP (1)
    bool operator==(const PolicyPort&) const = default;
};

struct EgressPolicy {
    std::string api_version;
    std::string namespace_;  // metadata.namespace ("default" when absent, as Kubernetes does)
    std::string name;        // metadata.name (required)
    std::string file;        // where it was read: file name and document index, for messages
    int document = 0;        // 0-based index of the YAML document in the file

    std::vector<PolicySource> sources;        // at least one
    std::vector<Cidr> ip_addresses;           // spec.ipAddresses
    std::vector<std::string> hosts;           // spec.hosts, exact names (lower-cased, trailing dot removed)
    std::vector<std::string> wildcard_hosts;  // spec.hosts like "*.example.com": accepted, not enforceable by address
    std::vector<PolicyPort> ports;            // at least one
    std::vector<std::string> matches;         // spec.matches as "Kind/name": L7, delegated to the proxy

    // Neither ipAddresses nor hosts (nor wildcard hosts): any destination on the ports.
    bool any_destination() const { return ip_addresses.empty() && hosts.empty() && wildcard_hosts.empty(); }
    bool operator==(const EgressPolicy&) const = default;
};

struct PolicySet {
    PolicyList policies;                 // valid ones, sorted by (namespace, name), unique by (namespace, name)
    std::vector<std::string> errors;     // invalid documents and policies, not applied
    std::vector<std::string> notes;      // accepted with a remark: mtls ignored, matches delegated, wildcard hosts,
                                         // other kinds passed over, unresolvable references
    bool operator==(const PolicySet&) const = default;
};

// Every message starts "<file>:<line>:<column>: document <n> (Egress <namespace>/<name>): <field path>: <why>"
// (document numbers 1-based in messages; the Egress part where the name is known).
//
// Accepted: apiVersion policy.flomesh.io/v1alpha1 or policy.openservicemesh.io/v1alpha1 with kind
// Egress. Kinds HTTPRouteGroup (specs.smi-spec.io) and UpstreamTrafficSetting (policy.*) are read
// so that spec.matches references can be checked, otherwise passed over with a note; any other
// kind is reported as a note and ignored. Fields: metadata.name (required), metadata.namespace;
// spec.sources[] (kind ServiceAccount, name, namespace required; mtls accepted and ignored with
// a note; another kind is an error); spec.ipAddresses[] (IPv4/IPv6 CIDRs or addresses);
// spec.hosts[] (DNS names; "*.domain" wildcards); spec.ports[] (number 1..65535, protocol
// case-insensitive among tcp, tcp-server-first, http, https, udp; anything else is an error);
// spec.matches[] (apiGroup, kind, name). Unknown fields are ignored.
PolicySet parse_policy_documents(std::string_view yaml_text, const std::string& file_name);

// Every *.yaml / *.yml file directly in `dir`, in name order (hidden files and the ConfigMap
// "..data" machinery skipped). An unreadable file or directory is an error in the set. Two
// policies with the same namespace/name: the first (by file order) wins, the second is an error.
PolicySet load_policy_dir(const std::filesystem::path& dir);

// Loads a policy directory like load_policy_dir, re-parsing only files whose bytes changed since
// the previous load (by path); unchanged files reuse their parsed result. The result of load() is
// identical to load_policy_dir(dir) at that moment, within the limits of the stamps below.
//
// Every load lists the directory and stats every file. A file is read again only when its stamp
// (device, inode, size, mtime, ctime: FileState) differs from the one it had when it was last
// read, or when that read came less than `settled` (2 s) after its last change: a change within
// the filesystem's timestamp granularity may keep all of the stamp ("racily clean", as git calls
// it), so such a file is read and compared until it has settled. This trusts timestamps from this
// machine's clock: on a network filesystem whose server's clock runs ahead, or with writes through
// a shared mapping (which may not touch the times), a same-size change can be missed until the
// next one; load(true), which the agent makes on SIGHUP, reads every file. What is cached per file
// is its bytes, the YAML parse and its reading into policies, errors, notes and spec.matches
// targets and references. Only
// the steps that need the whole load run every time: file order, namespace/name duplicates across
// files, references that nothing in the load defines, sorting. A file that is gone, or unreadable,
// leaves the cache. Not thread-safe: one load at a time.
class PolicyDirLoader {
public:
    explicit PolicyDirLoader(std::filesystem::path dir,
                             std::chrono::nanoseconds settled = std::chrono::seconds(2));
    ~PolicyDirLoader();
    PolicyDirLoader(PolicyDirLoader&&) noexcept;
    PolicyDirLoader& operator=(PolicyDirLoader&&) noexcept;
    PolicyDirLoader(const PolicyDirLoader&) = delete;
    PolicyDirLoader& operator=(const PolicyDirLoader&) = delete;

    // `reread`: every file read and compared, whatever its stamp.
    PolicySet load(bool reread = false);

    const std::filesystem::path& dir() const { return dir_; }
    // How many files the last load() parsed (new or changed bytes); the others came from the cache.
    size_t files_parsed_last_load() const { return files_parsed_last_load_; }
    // How many files the last load() read (the others' stamps were as when they were read).
    size_t files_read_last_load() const { return files_read_last_load_; }
    // How many files the cache holds: those the last load() found (read or not).
    size_t files_cached() const;

private:
    struct Cache;
    std::filesystem::path dir_;
    std::chrono::nanoseconds settled_;
    std::unique_ptr<Cache> cache_;
    size_t files_parsed_last_load_ = 0;
    size_t files_read_last_load_ = 0;
};

}  // namespace egressd
