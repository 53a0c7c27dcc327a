// parse_policy_documents: a file of Egress policies (any number of YAML
// documents). Checks what egress_policy.h promises of the set: valid
// policies sorted and unique by (namespace, name), each with a source and a
// port (a number for TCP and UDP, none for ICMP), every message starting
// with the file's name.
#include <netinet/in.h>

#include <tuple>

#include "core/egress_policy.h"
#include "egressd_abi.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string file = "policies.yaml";
    const egressd::PolicySet set = egressd::parse_policy_documents(egressd::fuzz::text(data, size), file);
    for (size_t i = 0; i < set.policies.size(); ++i) {
        const auto& p = set.policies[i];
        EGRESSD_FUZZ_CHECK(!p.sources.empty() && !p.ports.empty() && !p.name.empty(), p.name);
        for (const auto& port : p.ports) {
            // As egress_policy.h's PolicyPort says: a port for TCP and UDP, none for ICMP.
            const bool icmp = port.protocol == "icmp";
            EGRESSD_FUZZ_CHECK(icmp ? port.number == 0 && port.l4 == EGRESSD_PROTO_ICMP
                                    : port.number != 0 && (port.l4 == IPPROTO_TCP || port.l4 == IPPROTO_UDP),
                               p.name);
        }
        if (i > 0) {
            const auto& q = set.policies[i - 1];
            EGRESSD_FUZZ_CHECK(std::tie(q.namespace_, q.name) < std::tie(p.namespace_, p.name), p.name);
        }
    }
    for (const auto* messages : {&set.errors, &set.notes})
        for (const std::string& message : *messages) EGRESSD_FUZZ_CHECK(message.starts_with(file + ":"), message);
    return 0;
}
