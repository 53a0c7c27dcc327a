// parse_workloads: the workloads file. egressctl run --as reads it, adds an
// entry and writes it back with render_workloads, which the agent then
// reads: whatever parses must render to text that parses to the same list.
#include "core/workloads.h"

#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string file = "workloads.yaml";
    const auto workloads = egressd::parse_workloads(egressd::fuzz::text(data, size), file);
    if (!workloads) {
        EGRESSD_FUZZ_CHECK(workloads.error().message.starts_with(file + ":"), workloads.error().message);
        return 0;
    }
    const std::string rendered = egressd::render_workloads(*workloads);
    const auto again = egressd::parse_workloads(rendered, file);
    EGRESSD_FUZZ_CHECK(again.ok(), rendered + "\n" + again.error().message);
    EGRESSD_FUZZ_CHECK(*again == *workloads, rendered);
    return 0;
}
