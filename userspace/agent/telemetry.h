// What the agent tells operators: /metrics, /healthz, /readyz and /events
// over HTTP, the decision event log (JSON lines), and the last events in
// memory for egressctl events. The agent thread records; the HTTP threads read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "agent/kernel_metrics.h"
#include "kernel/map_set.h"

namespace egressd {

class Telemetry {
public:
    struct Options {
        std::string http_address = "127.0.0.1:9477";  // "" disables the HTTP server
        size_t event_buffer = 1000;                   // events kept in memory for /events
        std::filesystem::path event_log;              // JSON lines; empty = stderr
        Capacities capacities;                        // reported as map capacities
    };

    // Starts the HTTP server. `maps` (owned by the agent's Datapath, alive for
    // as long as the Telemetry) is read at scrape time for the kernel's
    // decision counters and event statistics.
    static Result<std::unique_ptr<Telemetry>> start(const Options& options, const MapSet* maps);
    virtual ~Telemetry() = default;

    // One decision event, already decoded and named (see core/event.h): it is
    // written as one JSON line to the event log and kept for /events with a
    // sequence number. Fields used for filtering: "verdict" ("deny", "audit",
    // "allow") and "identity" ("NS/SA" or null).
    virtual void record_event(const nlohmann::json& event) = 0;

    // A generation was applied (took `millis` from the input change), or
    // applying failed (a configuration error).
    virtual void record_apply(uint64_t generation, double millis) = 0;
    virtual void record_config_error() = 0;
    // A revocation pass: the connections it tore down, and how long it took
    // from the generation's flip.
    virtual void record_revocation(size_t connections, double seconds) = 0;
    // Kubernetes mode (after watch_resources): a generation enforced what the
    // API server changed `seconds` ago, as the agent received it.
    virtual void record_kubernetes_apply_lag(double seconds) = 0;
    // A host's resolution failed (one count per failure the agent sees).
    virtual void record_resolution_failure(const std::string& host) = 0;

    // Entries currently in each map by name (e.g. "policy_rules_v1" -> 1234).
    virtual void set_map_entries(const std::string& map, uint64_t entries) = 0;
    // /readyz: 200 "ready" when ready, 503 with the reason otherwise.
    virtual void set_ready(bool ready, const std::string& reason) = 0;
    // What keeps the kernel from enforcing what the inputs say (the enforced
    // cgroup removed, the pins gone), or "" when nothing does. While set,
    // /readyz answers 503 with it, whatever set_ready() said.
    virtual void set_enforcement_problem(const std::string& problem) = 0;
    // Mode ("enforce" or "audit") and policy counts for /metrics.
    virtual void set_state(const std::string& mode, size_t policies, size_t policy_errors) = 0;

    // Kubernetes mode: what each watched resource reports, read at scrape time
    // for egressd_kubernetes_* (synced, lists, relists, watch restarts,
    // errors, last sync). The callback must be safe to call from the HTTP
    // threads for as long as the Telemetry lives.
    struct WatchedResource {
        std::string resource;
        bool synced = false;
        uint64_t lists = 0, relists = 0, watch_restarts = 0, errors = 0;
        double last_sync_unix_seconds = 0;  // 0: never
    };
    virtual Status watch_resources(std::function<std::vector<WatchedResource>()> read) = 0;

    // How /metrics reads open connections' bytes (KernelMetrics::OpenSocketBytes).
    virtual void read_open_sockets(KernelMetrics::OpenSocketBytes read) = 0;

    // The bound HTTP port (0 when disabled).
    virtual uint16_t http_port() const = 0;
};

}  // namespace egressd
