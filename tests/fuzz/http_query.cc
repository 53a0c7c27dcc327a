// The /events query string, as the agent's HTTP server reads it: decoded
// into parameters by cpp-httplib (parse_query_text, what its server runs on
// the request target's query), then EventQuery::parse, then the selection
// over a small event buffer. The answer must be a JSON array of the events
// the query asks for: numbered after `since`, at most `limit`, with the
// verdict and identity asked.
#include <httplib.h>

#include <string>

#include "agent/event_buffer.h"
#include "fuzz_support.h"

namespace {

const egressd::EventBuffer& events() {
    static const egressd::EventBuffer* buffer = [] {
        auto* b = new egressd::EventBuffer(6);
        const char* verdicts[] = {"deny", "allow", "audit", "deny", "other"};
        const char* identities[] = {"ns/a", "ns/b", "", "ns/a", "x y"};
        for (int i = 0; i < 9; ++i) {
            nlohmann::json event = {{"verdict", verdicts[i % 5]}, {"port", i}};
            event["identity"] = identities[i % 5][0] ? nlohmann::json(identities[i % 5]) : nlohmann::json();
            b->push(event);
        }
        return b;
    }();
    return *buffer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    httplib::Params params;
    httplib::detail::parse_query_text(std::string(egressd::fuzz::text(data, size)), params);
    const auto query = egressd::EventQuery::parse(params);
    if (!query) return 0;

    const std::string body = events().select_json(*query);
    const auto answer = nlohmann::json::parse(body, nullptr, false);
    EGRESSD_FUZZ_CHECK(answer.is_array(), body);
    if (query->limit) EGRESSD_FUZZ_CHECK(answer.size() <= *query->limit, body);
    uint64_t previous = 0;
    for (const auto& event : answer) {
        const uint64_t seq = event.at("seq").get<uint64_t>();
        EGRESSD_FUZZ_CHECK(seq > previous && (!query->since || seq > *query->since), body);
        previous = seq;
        if (query->verdict) EGRESSD_FUZZ_CHECK(event.at("verdict") == *query->verdict, body);
        if (query->identity) EGRESSD_FUZZ_CHECK(egressd::event_string_field(event, "identity") == *query->identity, body);
    }
    return 0;
}
