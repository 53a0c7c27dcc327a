// parse_host_name: a host name as written in an Egress policy's spec.hosts.
// An accepted name keeps the documented limits, and its hash (what the agent
// writes for the packet program) is that of its last suffix and ignores
// ASCII case, as the program's does.
#include <algorithm>
#include <cctype>

#include "core/dns_message.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view input = egressd::fuzz::text(data, size);
    const auto host = egressd::dns::parse_host_name(input);
    if (!host) return 0;
    const auto& labels = host->labels;
    EGRESSD_FUZZ_CHECK(!labels.empty() && labels.size() <= EGRESSD_DNS_MAX_LABELS, input);
    size_t length = labels.size() - 1;
    for (const std::string& label : labels) {
        EGRESSD_FUZZ_CHECK(!label.empty() && label.size() <= 63 && label.find('.') == std::string::npos, input);
        length += label.size();
    }
    EGRESSD_FUZZ_CHECK(length <= 253, input);

    const auto suffixes = egressd::dns::suffix_hashes(labels);
    EGRESSD_FUZZ_CHECK(suffixes.size() == labels.size(), input);
    EGRESSD_FUZZ_CHECK(suffixes.back() == egressd::dns::name_hash(labels), input);
    std::vector<std::string> upper = labels;
    for (auto& label : upper)
        std::transform(label.begin(), label.end(), label.begin(), [](unsigned char c) {
            return c < 0x80 ? static_cast<char>(std::toupper(c)) : static_cast<char>(c);
        });
    EGRESSD_FUZZ_CHECK(egressd::dns::suffix_hashes(upper) == suffixes, input);
    return 0;
}
