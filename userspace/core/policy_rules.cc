#include "core/policy_rules.h"

#include "core/dns_hosts.h"

namespace egressd {

namespace {

const Cidr kAnyDestination{};  // ::/0

// Every destination a policy allows: its ipAddresses, the current addresses
// of its hosts, or ::/0 when it names neither.
std::vector<Cidr> destinations_of(const EgressPolicy& policy, const std::vector<std::vector<IpAddress>>& host_addresses,
                                  const std::vector<uint32_t>& host_numbers) {
    std::vector<Cidr> destinations = policy.ip_addresses;
    for (const auto& addresses : host_addresses)
        for (const IpAddress& addr : addresses) destinations.push_back(Cidr{addr, 128});
    for (uint32_t number : host_numbers) destinations.push_back(Cidr{dns_host_address(number), 128});
    if (policy.any_destination()) destinations.push_back(kAnyDestination);
    return destinations;
}

}  // namespace

std::vector<std::vector<IpAddress>> host_addresses_of(const EgressPolicy& policy, const PolicyInputs& in) {
    std::vector<std::vector<IpAddress>> out(policy.hosts.size());
    if (!in.host_addresses) return out;
    for (size_t i = 0; i < policy.hosts.size(); ++i)
        if (auto found = in.host_addresses->find(policy.hosts[i]); found != in.host_addresses->end())
            out[i] = found->second;
    return out;
}

std::vector<uint32_t> host_numbers_of(const EgressPolicy& policy, const PolicyInputs& in) {
    std::vector<uint32_t> out;
    if (!in.host_numbers) return out;
    for (const auto* hosts : {&policy.hosts, &policy.wildcard_hosts})
        for (const std::string& host : *hosts) out.push_back(in.host_numbers->number_for(dns_host_name(host)));
    return out;
}

void append_rules(std::vector<PolicyRule>& rules, const EgressPolicy& policy,
                  const std::vector<std::vector<IpAddress>>& host_addresses,
                  const std::vector<uint32_t>& host_numbers, IdentityRegistry& identities, uint32_t mark) {
    const std::vector<Cidr> destinations = destinations_of(policy, host_addresses, host_numbers);
    for (const PolicySource& source : policy.sources) {
        const uint32_t identity = identities.number_for({source.namespace_, source.service_account});
        for (const PolicyPort& port : policy.ports)
            for (const Cidr& cidr : destinations)
                rules.push_back(PolicyRule{identity, port.l4, port.number, cidr, mark});
    }
}

}  // namespace egressd
