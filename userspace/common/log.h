// Log lines on stderr: "<RFC 3339 UTC time> <level> <message>", or with
// --log-format json one JSON object per line: {"time", "level", "msg"}.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "common/json_text.h"
#include "common/time_text.h"

namespace egressd::log {

inline std::string timestamp() { return now_rfc3339(); }

inline bool& json_format() {
    static bool json = false;
    return json;
}

inline void line(const char* level, const std::string& message) {
    const std::string text =
        json_format()
            ? json_text(nlohmann::ordered_json{{"time", timestamp()}, {"level", level}, {"msg", message}}) + "\n"
            : fmt::format("{} {} {}\n", timestamp(), level, valid_utf8(message));
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
}

template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
    line("info", fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
    line("error", fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace egressd::log
