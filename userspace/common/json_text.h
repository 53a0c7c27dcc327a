// JSON and log text from strings that came from input files or the kernel.
// Such strings may hold any bytes (a broken editor, a bad copy, a process
// name); nlohmann's dump() throws on invalid UTF-8 by default. Every writer
// of JSON or other UTF-8 text goes through these, so an invalid byte shows
// up as U+FFFD and never ends the agent.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace egressd {

// `value` serialised; invalid UTF-8 in its strings becomes U+FFFD.
inline std::string json_text(const nlohmann::json& value, int indent = -1) {
    return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}
inline std::string json_text(const nlohmann::ordered_json& value, int indent = -1) {
    return value.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

// `text` with every invalid UTF-8 sequence replaced by U+FFFD, for text
// formats that must be UTF-8 (Prometheus label values, log lines).
inline std::string valid_utf8(std::string_view text) {
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
        return std::string(text);
    // nlohmann's replacing serialiser is the UTF-8 decoder; parsing its
    // output back gives the repaired string without JSON escapes.
    return nlohmann::json::parse(json_text(nlohmann::json(std::string(text)))).get<std::string>();
}

}  // namespace egressd
