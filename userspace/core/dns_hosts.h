// The policies' host names for learning from DNS answers in the kernel
// (maps/egressd_abi.h, "learning from answers"): each host name of a valid
// policy is numbered (HostRegistry), its source identities get a
// dns_hosts_v1 entry for it, and row 7 holds its ports under the address
// 100::N (policy_rules.cc adds those with the policy's other rules).
//
// A name can match several host names of one identity: api.example.com is
// matched by "api.example.com" and by "*.example.com". The kernel learns an
// address for the most specific one only (the whole name, else the longest
// wildcard suffix), so the rules under a host's address also carry those of
// every host name that covers it; the first policy still wins a shared key.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/image.h"

namespace egressd {

// A policy host name ("api.example.com", "*.example.com"; lower case, as the
// policy parser keeps it) as the kernel compares it.
DnsHostName dns_host_name(const std::string& host);

// What add_dns_hosts gives an image: dns_hosts, dns_host_names, and the
// rules covering host names add (100::N, sorted, none of the policies' own).
struct DnsHostPart {
    std::vector<DnsHostRule> dns_hosts;
    std::map<uint32_t, std::string> names;
    std::vector<PolicyRule> covering_rules;
    // What it was made from: the policies with host names, in list order.
    // Another list with the same ones gives the same part, unless a policy
    // lists a host's own address 100::N (then other rules may meet its keys).
    std::vector<SharedPolicy> host_policies;
    bool lists_host_addresses = false;
};

// Fills image.dns_hosts, and adds to image.policy_rules (sorted, one per key)
// the rules that covering host names give. Needs in.host_numbers; the
// policies' rules must be in the image already.
void add_dns_hosts(MapImage& image, const PolicyInputs& in);

// `rules` and `added` (both sorted by key, no key in both) as one sorted list.
std::vector<PolicyRule> merge_rules(const SharedVector<PolicyRule>& rules, const std::vector<PolicyRule>& added);

}  // namespace egressd
