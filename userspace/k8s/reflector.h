// One watched collection kept in memory with client-go Reflector semantics:
// LIST (paginated), then WATCH from the list's resourceVersion; relist on 410;
// back off on errors; on its own thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "k8s/discovery.h"
#include "k8s/http_client.h"

namespace egressd::k8s {

struct ReflectorStats {
    bool synced = false;           // the first LIST completed
    bool missing = false;          // the group or resource is not served (404 on discovery or list): retried slowly
    std::string resource_version;  // last seen (list or event or bookmark)
    std::string served_version;    // the version in use
    uint64_t lists = 0;            // LISTs completed (all pages)
    uint64_t relists = 0;          // of them, LISTs again after a 410 (watch or expired continue token)
    uint64_t watch_restarts = 0;   // WATCHes started again without a LIST (timeout, stall, error)
    uint64_t gone = 0;             // 410s: HTTP status or ERROR event
    uint64_t errors = 0;           // failed requests and broken or stalled streams
    std::chrono::system_clock::time_point last_sync{};      // last completed LIST
    std::chrono::system_clock::time_point last_event{};     // last event or bookmark
    std::string last_error;                                 // "" when the last request succeeded
    std::chrono::system_clock::time_point failing_since{};  // the first failure since the last success
};

// Exponential backoff: `initial`, doubling up to `max`, each delay scaled by
// a random factor in (0.8, 1] so that reflectors do not retry in step.
class Backoff {
public:
    Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, uint64_t seed = std::random_device{}());
    std::chrono::milliseconds next();
    void reset() { step_ = initial_; }

private:
    std::chrono::milliseconds initial_, max_, step_;
    std::mt19937_64 random_;
};

class Reflector {
public:
    struct Options {
        Resource resource;
        uint32_t page_size = 500;
        std::chrono::seconds watch_timeout{300};  // timeoutSeconds of a watch, jittered x1..2 like client-go
        // No byte (not even a bookmark) for this long restarts the watch;
        // 0 = the watch's timeoutSeconds + 30 s.
        std::chrono::milliseconds stall_timeout{0};
        std::chrono::milliseconds initial_backoff{800}, max_backoff{30000};  // doubling, with jitter
        std::chrono::seconds missing_retry{30};                              // retry period while the CRD is missing
        std::chrono::milliseconds request_timeout{60000};                    // a discovery or LIST page request
        // What is kept of each object (discovery.h). With a transform, an
        // event whose kept part did not change leaves the store as it is.
        ObjectTransform transform;
    };

    // Starts the thread. `notify` is called (from the reflector thread) after
    // every change of the store and of stats.synced or stats.missing; keep it
    // cheap.
    static Result<std::unique_ptr<Reflector>> start(std::shared_ptr<Client> client, Options options,
                                                    std::function<void()> notify);
    // Stops and joins at once: the in-flight request is aborted.
    ~Reflector();
    Reflector(const Reflector&) = delete;
    Reflector& operator=(const Reflector&) = delete;

    // The objects by "namespace/name" ("name" when cluster-scoped). An
    // immutable snapshot: cheap to take, never changed afterwards.
    std::shared_ptr<const std::map<std::string, nlohmann::json>> objects() const;
    uint64_t revision() const;  // increments with every change of the store (of what the transform keeps)
    ReflectorStats stats() const;

    struct Impl;

private:
    explicit Reflector(std::shared_ptr<Impl> impl);

    std::shared_ptr<Impl> impl_;
    std::thread thread_;
};

}  // namespace egressd::k8s
