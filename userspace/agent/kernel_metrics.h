// The families of /metrics that the kernel counts: decisions by reason and
// hook, event statistics, the traffic of closed egress connections by rule
// and by identity, and the bytes of open ones so far (read from their sockets
// at scrape time: nothing in the kernel counts them while they flow). They are read from the maps at scrape time; a family whose
// read fails is left out of that scrape (and counted), never shown stale.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"
#include "core/revocation.h"
#include "kernel/map_set.h"
#include "observe/metrics.h"

namespace egressd {

// A rendered family: its name (for sorting) and its text.
using RenderedFamily = std::pair<std::string, std::string>;

class KernelMetrics {
public:
    // `maps` must outlive this object. The read-error counter goes into
    // `registry` (it is always shown); the kernel families into their own.
    static Result<std::unique_ptr<KernelMetrics>> create(observe::Registry& registry, const MapSet* maps);

    // Reads the kernel and appends the families read. Scrapes are serialised,
    // so that totals are applied in order (a smaller total would be taken as
    // a restart of the kernel's counters).
    void scrape(std::vector<RenderedFamily>& families);

    // The enforced processes' TCP sockets' counters (sent, received) by
    // cookie, read now; called from the HTTP threads while a flow is open.
    using OpenSocketBytes = std::function<Result<std::map<uint64_t, SocketBytes>>()>;
    void read_open_sockets(OpenSocketBytes read) {
        std::lock_guard lock(scrape_mutex_);
        read_open_sockets_ = std::move(read);
    }

private:
    explicit KernelMetrics(const MapSet* maps) : maps_(maps) {}
    Status register_families(observe::Registry& registry);
    void scrape_decisions(std::vector<RenderedFamily>& families);
    void scrape_event_stats(std::vector<RenderedFamily>& families);
    void scrape_dns_stats(std::vector<RenderedFamily>& families);
    void scrape_traffic(std::vector<RenderedFamily>& families);
    void scrape_open_flows(std::vector<RenderedFamily>& families);
    void read_failed(const std::string& what, const Error& error);
    void read_works(const std::string& what);

    const MapSet* const maps_;
    observe::Registry kernel_registry_;
    observe::Counter* read_errors_ = nullptr;
    observe::CounterFamily* decisions_ = nullptr;
    observe::CounterFamily* denied_ = nullptr;
    observe::CounterFamily* events_sent_ = nullptr;
    observe::CounterFamily* events_suppressed_ = nullptr;
    observe::CounterFamily* events_lost_ = nullptr;
    observe::CounterFamily* flows_lost_ = nullptr;
    observe::CounterFamily* traffic_lost_ = nullptr;
    observe::CounterFamily* egress_connections_ = nullptr;
    observe::CounterFamily* egress_bytes_ = nullptr;
    observe::CounterFamily* identity_bytes_ = nullptr;
    observe::GaugeFamily* open_connections_ = nullptr;
    observe::GaugeFamily* open_bytes_ = nullptr;
    OpenSocketBytes read_open_sockets_;
    static constexpr std::chrono::seconds kOpenBytesMaxAge{1};
    std::optional<std::chrono::steady_clock::time_point> socket_bytes_read_at_;
    std::map<uint64_t, SocketBytes> socket_bytes_;  // as last read
    observe::CounterFamily* dns_responses_ = nullptr;
    observe::CounterFamily* dns_queries_ = nullptr;
    observe::CounterFamily* dns_learned_ = nullptr;
    observe::GaugeFamily* dns_entries_ = nullptr;

    std::mutex scrape_mutex_;
    std::set<std::string> failing_reads_;  // under scrape_mutex_
};

}  // namespace egressd
