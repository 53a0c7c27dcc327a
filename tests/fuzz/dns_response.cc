// parse_response: a UDP payload from port 53, as the workloads receive it
// (the reference of the packet program's parser). Checks the limits of
// maps/egressd_abi.h hold for whatever comes in.
#include <span>

#include "core/dns_message.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto r = egressd::dns::parse_response(std::span<const uint8_t>(data, size));
    if (r.status != EGRESSD_DNS_OK) {
        EGRESSD_FUZZ_CHECK(r.addresses.empty(), "addresses without status OK");
        return 0;
    }
    EGRESSD_FUZZ_CHECK(r.questions.size() <= EGRESSD_DNS_MAX_QUESTIONS, "questions");
    EGRESSD_FUZZ_CHECK(r.addresses.size() <= EGRESSD_DNS_MAX_ADDRESSES, "addresses");
    for (const auto& question : r.questions) EGRESSD_FUZZ_CHECK(question.size() <= EGRESSD_DNS_MAX_LABELS, "labels");
    for (const auto& a : r.addresses) EGRESSD_FUZZ_CHECK(a.question < r.questions.size(), "question index");
    return 0;
}
