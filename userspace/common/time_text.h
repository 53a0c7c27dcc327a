// RFC 3339 UTC timestamps with milliseconds ("2026-12-02T03:04:05.678Z"): the
// one format of log lines, the status file and decision events.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace egressd {

inline std::string rfc3339_ms(int64_t unix_ns) {
    const time_t secs = static_cast<time_t>(unix_ns / 1'000'000'000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>((unix_ns / 1'000'000) % 1000));
}

inline std::string now_rfc3339() {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    return rfc3339_ms(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
}

}  // namespace egressd
