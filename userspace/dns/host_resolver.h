// Resolves the exact host names of Egress policies to addresses, and keeps
// them fresh according to the records' TTLs. Runs on its own thread; the
// agent learns about changes through an eventfd.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "core/net.h"

namespace egressd {

struct HostState {
    std::vector<IpAddress> addresses;       // sorted, unique; A and AAAA answers together
    std::optional<std::string> last_error;  // the latest failure ("NXDOMAIN", "timeout", ...); cleared by an answer
    std::chrono::system_clock::time_point resolved_at{};  // last answer (epoch if never)
    std::chrono::system_clock::time_point expires_at{};   // when `addresses` stop being valid without a new answer
    bool operator==(const HostState&) const = default;
};

class HostResolver {
public:
    struct Options {
        // "" = the system resolver (/etc/resolv.conf); otherwise "ADDRESS[:PORT]" (IPv6 as "[addr]:port").
        std::string dns_server;  // ADDRESS[:PORT][,ADDRESS[:PORT]...]; "" = the system's
        // An answer is valid for its TTL clamped to [ttl_floor, ttl_ceiling] and
        // refreshed at three quarters of that, so a failing refresh keeps the
        // last addresses (with retries) until they expire.
        std::chrono::seconds ttl_floor{5};
        std::chrono::seconds ttl_ceiling{300};
        std::chrono::milliseconds query_timeout{1000};
        int attempts = 2;
        std::chrono::seconds retry_after_failure{2};  // next try after a failure (still bounded by expiry)
    };

    // Fails on a malformed dns_server or when c-ares cannot be initialised.
    static Result<std::unique_ptr<HostResolver>> start(const Options& options);
    virtual ~HostResolver() = default;

    // The names to track (replaces the previous set). New names are resolved at once; names no
    // longer listed are forgotten.
    virtual void set_hosts(const std::vector<std::string>& hosts) = 0;

    // Readable (EPOLLIN) when any host's addresses or error changed since the last snapshot().
    virtual int notify_fd() const = 0;

    // The current state of every tracked host; clears the notification. Semantics:
    //  - an answer replaces the address set (added and removed incrementally as answers change);
    //  - NXDOMAIN or an empty answer is an answer: the set becomes empty, last_error "NXDOMAIN"/"no addresses";
    //  - a failure (timeout, refused, SERVFAIL) keeps the last known addresses until expires_at, then
    //    drops them; last_error says why.
    virtual std::map<std::string, HostState> snapshot() = 0;
};

}  // namespace egressd
