#include "agent/event_buffer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <iterator>
#include <vector>

#include "common/json_text.h"

namespace egressd {

namespace {

const char* const kVerdicts[] = {"deny", "audit", "allow", "revoked"};

std::optional<uint64_t> parse_u64(const std::string& text) {
    uint64_t value = 0;
    const auto* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
    return value;
}

}  // namespace

bool is_known_verdict(const std::string& verdict) {
    return std::find(std::begin(kVerdicts), std::end(kVerdicts), verdict) != std::end(kVerdicts);
}

std::string event_string_field(const nlohmann::json& event, const char* name) {
    if (!event.is_object()) return {};
    const auto it = event.find(name);
    if (it == event.end() || !it->is_string()) return {};
    return it->get<std::string>();
}

Result<EventQuery> EventQuery::parse(const std::multimap<std::string, std::string>& params) {
    EventQuery query;
    for (const auto& [name, value] : params) {
        if (params.count(name) > 1) return make_error(fmt::format("parameter \"{}\" given twice", name));
        if (name == "since" || name == "limit") {
            const auto number = parse_u64(value);
            if (!number) return make_error(fmt::format("{}: \"{}\" is not a non-negative integer", name, value));
            (name == "since" ? query.since : query.limit) = number;
        } else if (name == "verdict") {
            if (!is_known_verdict(value))
                return make_error(fmt::format("verdict: \"{}\" is not deny, audit or allow", value));
            query.verdict = value;
        } else if (name == "identity") {
            query.identity = value;
        } else {
            return make_error(fmt::format("unknown parameter \"{}\" (known: since, verdict, identity, limit)", name));
        }
    }
    return query;
}

uint64_t EventBuffer::push(const nlohmann::json& event) {
    Stored stored;
    stored.verdict = event_string_field(event, "verdict");
    stored.identity = event_string_field(event, "identity");
    nlohmann::json with_seq = event.is_object() ? event : nlohmann::json{{"event", event}};
    std::lock_guard lock(mutex_);
    stored.seq = ++last_seq_;
    if (capacity_ == 0) return stored.seq;
    with_seq["seq"] = stored.seq;
    stored.json = std::make_shared<const nlohmann::json>(std::move(with_seq));
    events_.push_back(std::move(stored));
    while (events_.size() > capacity_) events_.pop_front();
    return last_seq_;
}

std::string EventBuffer::select_json(const EventQuery& query) const {
    std::vector<std::shared_ptr<const nlohmann::json>> selected;
    {
        std::lock_guard lock(mutex_);
        auto it = events_.begin();
        if (query.since) {
            it = std::upper_bound(events_.begin(), events_.end(), *query.since,
                                  [](uint64_t seq, const Stored& e) { return seq < e.seq; });
        }
        for (; it != events_.end(); ++it) {
            if (query.verdict && it->verdict != *query.verdict) continue;
            if (query.identity && it->identity != *query.identity) continue;
            selected.push_back(it->json);
        }
    }
    if (query.limit && selected.size() > *query.limit) {
        selected.erase(selected.begin(), selected.end() - static_cast<std::ptrdiff_t>(*query.limit));
    }
    std::string body = "[";
    for (size_t i = 0; i < selected.size(); ++i) {
        body += i == 0 ? "\n" : ",\n";
        body += json_text(*selected[i]);
    }
    body += selected.empty() ? "]\n" : "\n]\n";
    return body;
}

}  // namespace egressd
