// The last decision events in memory, numbered in arrival order, and the
// /events query over them (since, verdict, identity, limit). The agent thread
// pushes; HTTP threads query. A query copies pointers under the lock and
// serialises outside it, so a large answer does not hold up the agent.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace egressd {

// The three verdicts an event may carry; anything else counts as "other".
bool is_known_verdict(const std::string& verdict);

struct EventQuery {
    std::optional<uint64_t> since;  // events with a larger sequence number
    std::optional<uint64_t> limit;  // the last N of those selected
    std::optional<std::string> verdict;
    std::optional<std::string> identity;

    // From the query string's parameters; an error names the parameter and why.
    static Result<EventQuery> parse(const std::multimap<std::string, std::string>& params);
};

class EventBuffer {
public:
    explicit EventBuffer(size_t capacity) : capacity_(capacity) {}

    // Numbers the event, keeps it (with "seq" added) and returns its number.
    // "verdict" and "identity" are taken from the event for filtering.
    uint64_t push(const nlohmann::json& event);

    // The selected events as a JSON array, one event per line.
    std::string select_json(const EventQuery& query) const;

private:
    struct Stored {
        uint64_t seq = 0;
        std::string verdict;
        std::string identity;                        // "" when unknown
        std::shared_ptr<const nlohmann::json> json;  // with "seq"
    };

    const size_t capacity_;
    mutable std::mutex mutex_;
    std::deque<Stored> events_;
    uint64_t last_seq_ = 0;
};

// A field of the event as a string; "" when absent or not a string.
std::string event_string_field(const nlohmann::json& event, const char* name);

}  // namespace egressd
