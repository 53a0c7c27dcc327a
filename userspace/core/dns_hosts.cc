#include "core/dns_hosts.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <string_view>

#include "core/dns_message.h"
#include "core/policy_rule_cache.h"
#include "core/policy_rules.h"

namespace egressd {

namespace {

// What one policy grants for one of its host names to one source identity.
struct Grant {
    uint8_t proto = 0;
    uint16_t port = 0;
    uint32_t position = 0;  // the policy's, in PolicySet order: the first wins a shared key
    uint32_t policy = 0;    // its number
};

struct IdentityHost {
    DnsHostName name;
    uint32_t number = 0;
    std::vector<Grant> grants;
};

// Whether every name `covered` matches is also matched by `wildcard`
// ("*.example.com" covers "api.example.com" and "*.eu.example.com").
bool covers(const std::string& wildcard, const std::string& covered) {
    if (!wildcard.starts_with("*.")) return false;
    const std::string suffix = wildcard.substr(1);  // ".example.com"
    const std::string_view name = covered.starts_with("*.") ? std::string_view(covered).substr(2) : covered;
    return name.size() > suffix.size() && name.ends_with(suffix);
}

bool has_host_names(const EgressPolicy& policy) { return !policy.hosts.empty() || !policy.wildcard_hosts.empty(); }

// identity -> host name text -> what the policies grant for it.
using HostsByIdentity = std::map<uint32_t, std::map<std::string, IdentityHost>>;

HostsByIdentity hosts_by_identity(const PolicyInputs& in) {
    HostsByIdentity out;
    for (uint32_t position = 0; position < in.policies->size(); ++position) {
        const EgressPolicy& policy = (*in.policies)[position];
        // Without host names a policy gives nothing here; at 10k identities,
        // looking up its sources would cost more than the rest of a change.
        if (!has_host_names(policy)) continue;
        const auto number = in.policy_numbers->find({policy.namespace_, policy.name});
        if (!number) continue;
        // Each name hashed and numbered once, not once per source.
        std::vector<std::pair<const std::string*, std::pair<DnsHostName, uint32_t>>> names;
        for (const auto* hosts : {&policy.hosts, &policy.wildcard_hosts})
            for (const std::string& host : *hosts) {
                const DnsHostName name = dns_host_name(host);
                names.push_back({&host, {name, in.host_numbers->number_for(name)}});
            }
        for (const PolicySource& source : policy.sources) {
            const uint32_t identity = in.identities->number_for({source.namespace_, source.service_account});
            for (const auto& [host, name_number] : names) {
                IdentityHost& entry = out[identity][*host];
                entry.name = name_number.first;
                entry.number = name_number.second;
                for (const PolicyPort& port : policy.ports)
                    entry.grants.push_back({port.l4, port.number, position, *number});
            }
        }
    }
    return out;
}

}  // namespace

IpAddress dns_host_address(uint32_t number) {
    IpAddress address;
    address.bytes = {0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, uint8_t(number >> 24), uint8_t(number >> 16),
                     uint8_t(number >> 8), uint8_t(number)};
    return address;
}

DnsHostName dns_host_name(const std::string& host) {
    DnsHostName out;
    std::string_view rest = host;
    if (rest.starts_with("*.")) {
        out.wildcard = true;
        rest.remove_prefix(2);
    }
    std::vector<std::string> labels;
    for (size_t start = 0;;) {
        const size_t dot = rest.find('.', start);
        labels.emplace_back(rest.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    out.name = dns::name_hash(labels);
    return out;
}

std::vector<PolicyRule> merge_rules(const SharedVector<PolicyRule>& rules, const std::vector<PolicyRule>& added) {
    std::vector<PolicyRule> merged;
    merged.reserve(rules.size() + added.size());
    std::merge(rules.begin(), rules.end(), added.begin(), added.end(), std::back_inserter(merged),
               [](const PolicyRule& a, const PolicyRule& b) { return policy_key_order(a, b) < 0; });
    return merged;
}

namespace {

// Whether a policy of the list names, in its ipAddresses, an address 100::N
// under which row 7 keeps host N's rules.
bool lists_host_addresses(const PolicyList& policies) {
    const Cidr host_addresses{dns_host_address(0), 96};
    return std::ranges::any_of(policies, [&host_addresses](const EgressPolicy& policy) {
        return std::ranges::any_of(policy.ip_addresses, [&host_addresses](const Cidr& cidr) {
            return cidr.prefix == 128 && host_addresses.contains(cidr.addr);
        });
    });
}

// The last part, when `policies` has the same policies with host names and
// neither list names a host's address: the rules of the other policies,
// which changed, cannot meet the keys of its covering rules.
bool part_still_holds(const DnsHostPart& last, const PolicyList& policies) {
    if (last.lists_host_addresses || lists_host_addresses(policies)) return false;
    size_t next = 0;
    for (size_t i = 0; i < policies.size(); ++i) {
        if (!has_host_names(policies[i])) continue;
        if (next == last.host_policies.size() || !same_policy(policies.shared(i), last.host_policies[next]))
            return false;
        ++next;
    }
    return next == last.host_policies.size();
}

DnsHostPart dns_host_part(const SharedVector<PolicyRule>& rules, const PolicyInputs& in) {
    DnsHostPart part;
    for (size_t i = 0; i < in.policies->size(); ++i)
        if (has_host_names((*in.policies)[i])) part.host_policies.push_back(in.policies->shared(i));
    part.lists_host_addresses = lists_host_addresses(*in.policies);
    const HostsByIdentity hosts = hosts_by_identity(in);
    // Rules a covering host name gives, with the policy's position for first-wins.
    std::vector<std::pair<PolicyRule, uint32_t>> extra;
    for (const auto& [identity, names] : hosts) {
        for (const auto& [text, host] : names) {
            part.dns_hosts.push_back(DnsHostRule{identity, host.name, host.number});
            part.names[host.number] = text;
            for (const auto& [other_text, other] : names) {
                if (!covers(other_text, text)) continue;
                for (const Grant& g : other.grants)
                    extra.push_back({PolicyRule{identity, g.proto, g.port, Cidr{dns_host_address(host.number), 128},
                                                g.policy},
                                     g.position});
            }
        }
    }
    std::sort(part.dns_hosts.begin(), part.dns_hosts.end());
    std::sort(extra.begin(), extra.end(), [](const auto& a, const auto& b) {
        const auto order = policy_key_order(a.first, b.first);
        return order != 0 ? order < 0 : a.second < b.second;
    });
    const auto key_less = [](const PolicyRule& a, const PolicyRule& b) { return policy_key_order(a, b) < 0; };
    for (size_t i = 0; i < extra.size(); ++i) {
        if (i > 0 && policy_key_order(extra[i].first, extra[i - 1].first) == 0) continue;  // the first policy won
        // The host's own policies keep their rules (100::N of their own host
        // numbers): a covering one only fills in.
        if (!std::binary_search(rules.begin(), rules.end(), extra[i].first, key_less))
            part.covering_rules.push_back(extra[i].first);
    }
    return part;
}

}  // namespace

void add_dns_hosts(MapImage& image, const PolicyInputs& in) {
    if (!in.policies || !in.host_numbers) return;
    // The very list of the last build: the same names, numbers and rules
    // (2,000 (identity, host) pairs at 100k rules: most of a toggle's work).
    const DnsHostPart* part = in.cache ? in.cache->dns_hosts_of(in.policies) : nullptr;
    // Another list, with the same policies with host names (a change to
    // others): the same part, kept for this list.
    if (!part && in.cache && in.cache->last_dns_hosts() && part_still_holds(*in.cache->last_dns_hosts(), *in.policies))
        part = in.cache->reuse_dns_hosts(in.policies);
    DnsHostPart made;
    if (!part) {
        made = dns_host_part(image.policy_rules, in);
        part = &made;
        if (in.cache) part = in.cache->keep_dns_hosts(in.policies, std::move(made));
    }
    image.dns_hosts = part->dns_hosts;
    image.dns_host_names = part->names;
    if (part->covering_rules.empty()) return;  // the rules stay shared with the previous image's
    if (in.cache) {  // the same rules as last time stay shared too
        image.policy_rules = in.cache->with_host_rules(image.policy_rules, part->covering_rules);
        return;
    }
    image.policy_rules = merge_rules(image.policy_rules, part->covering_rules);
}

}  // namespace egressd
