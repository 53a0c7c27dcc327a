// Log lines on stderr: "<RFC 3339 UTC time> <level> <message>", or with
// --log-format json one JSON object per line: {"time", "level", "msg"}.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "common/json_text.h"

namespace egressd::log {

inline std::string timestamp() {
    const auto now = std::chrono::system_clock::now();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
}

inline bool& json_format() {
    static bool json = false;
    return json;
}

inline void line(const char* level, const std::string& message) {
    const std::string text =
        json_format() ? json_text(nlohmann::ordered_json{{"time", timestamp()}, {"level", level}, {"msg", message}}) + "\n"
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
