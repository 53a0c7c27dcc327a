#include "k8s/reflector.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <vector>

#include "common/log.h"
#include "k8s/line_framer.h"

namespace egressd::k8s {

using std::chrono::milliseconds;
using Map = std::map<std::string, nlohmann::json>;

namespace {

// client-go treats a watch that ends this soon with no event as an error, so
// that a server closing every watch at once does not make a hot loop.
constexpr milliseconds kVeryShortWatch{1000};
constexpr auto kStallMargin = std::chrono::seconds(30);

}  // namespace

Backoff::Backoff(milliseconds initial, milliseconds max, uint64_t seed)
    : initial_(initial), max_(std::max(initial, max)), step_(initial), random_(seed) {}

milliseconds Backoff::next() {
    const milliseconds base = std::min(step_, max_);
    step_ = std::min(step_ * 2, max_);
    const double factor = 1.0 - 0.2 * std::uniform_real_distribution<double>(0.0, 1.0)(random_);
    return std::max(milliseconds(1), milliseconds(static_cast<int64_t>(double(base.count()) * factor)));
}

struct Reflector::Impl {
    enum class Next { kList, kWatch };

    // How a watch ended, besides the HTTP status.
    struct WatchEnd {
        uint64_t events = 0;
        bool gone = false;
        std::optional<std::string> error;  // an ERROR event (not 410) or an undecodable line
    };

    Impl(std::shared_ptr<Client> c, Options o, std::function<void()> n)
        : client(std::move(c)),
          options(std::move(o)),
          notify(std::move(n)),
          backoff(options.initial_backoff, options.max_backoff) {}

    void run();
    Next list();
    Next watch();
    Next gone(const std::string& why);
    Next missing(const std::string& why);
    Next fail(const std::string& why, std::optional<double> retry_after, Next then);
    void succeeded(bool watch_opened = false);
    void apply(std::vector<WatchEvent>& batch);
    void replace(Map items, const std::string& resource_version, bool relist);
    bool sleep(milliseconds duration);
    std::chrono::seconds jittered_watch_timeout();
    std::string name() const;

    // Shared with the other threads.
    mutable std::mutex mutex;
    std::shared_ptr<Map> store = std::make_shared<Map>();
    uint64_t revision = 0;
    ReflectorStats stats;
    std::atomic<bool> stop{false};
    std::mutex wait_mutex;
    std::condition_variable wait_cv;

    const std::shared_ptr<Client> client;
    const Options options;
    const std::function<void()> notify;

    // The reflector thread's own.
    Backoff backoff;
    std::mt19937_64 random{std::random_device{}()};
    std::string version;           // served version in use, "" = discover
    std::string resource_version;  // where the next watch starts
    bool relist_pending = false;   // the next LIST follows a 410
    bool watch_after_list = true;  // the next WATCH is the first after a LIST
    std::string logged_error;      // the last error logged, to log each once
    // A watch that opens and then ends at once, again and again, is one
    // failure: its start is kept across such an open.
    std::chrono::steady_clock::time_point opened_at{};
    std::chrono::system_clock::time_point failing_before_open{};
};

std::string Reflector::Impl::name() const {
    Resource described = options.resource;
    if (described.version.empty()) described.version = version;
    return described.describe();
}

bool Reflector::Impl::sleep(milliseconds duration) {
    std::unique_lock lock(wait_mutex);
    return !wait_cv.wait_for(lock, duration, [this] { return stop.load(); });
}

std::chrono::seconds Reflector::Impl::jittered_watch_timeout() {
    const double factor = 1.0 + std::uniform_real_distribution<double>(0.0, 1.0)(random);
    return std::chrono::seconds(static_cast<int64_t>(double(options.watch_timeout.count()) * factor));
}

void Reflector::Impl::run() {
    Next next = Next::kList;
    while (!stop.load()) next = next == Next::kList ? list() : watch();
}

void Reflector::Impl::succeeded(bool watch_opened) {
    backoff.reset();
    if (!logged_error.empty()) log::info("{}: recovered", name());
    logged_error.clear();
    bool recovered;
    {
        std::lock_guard lock(mutex);
        recovered = !stats.last_error.empty();
        failing_before_open = watch_opened ? stats.failing_since : std::chrono::system_clock::time_point{};
        if (watch_opened) opened_at = std::chrono::steady_clock::now();
        stats.last_error.clear();
        stats.failing_since = {};
    }
    if (recovered) notify();  // the agent's readiness says so
}

Reflector::Impl::Next Reflector::Impl::fail(const std::string& why, std::optional<double> retry_after, Next then) {
    bool started_failing;
    {
        std::lock_guard lock(mutex);
        ++stats.errors;
        started_failing = stats.last_error.empty();
        const bool open_was_brief = failing_before_open != std::chrono::system_clock::time_point{} &&
                                    std::chrono::steady_clock::now() - opened_at < kVeryShortWatch;
        if (started_failing)
            stats.failing_since = open_was_brief ? failing_before_open : std::chrono::system_clock::now();
        stats.last_error = why;
    }
    if (started_failing) notify();  // the agent's readiness says what is stale, and since when
    milliseconds wait = backoff.next();
    if (retry_after) wait = std::max(wait, milliseconds(static_cast<int64_t>(*retry_after * 1000)));
    if (why != logged_error) log::error("{}: {}; retrying in {} ms", name(), why, wait.count());
    logged_error = why;
    sleep(wait);
    return then;
}

Reflector::Impl::Next Reflector::Impl::gone(const std::string& why) {
    log::info("{}: {}: listing again", name(), why);
    relist_pending = true;
    std::lock_guard lock(mutex);
    ++stats.gone;
    return Next::kList;
}

// Not served: no objects. Logged once; retried every missing_retry.
Reflector::Impl::Next Reflector::Impl::missing(const std::string& why) {
    bool changed;
    {
        std::lock_guard lock(mutex);
        changed = !stats.missing || !store->empty();
        if (!stats.missing)
            log::info("{}: not served ({}); retrying every {} s", name(), why, options.missing_retry.count());
        if (!store->empty()) {
            store = std::make_shared<Map>();
            ++revision;
        }
        stats.missing = true;
        stats.last_error = why;
        if (options.resource.version.empty()) stats.served_version.clear();
    }
    if (options.resource.version.empty()) version.clear();  // a new CRD may serve another version
    backoff.reset();
    logged_error.clear();
    if (changed) notify();
    sleep(options.missing_retry);
    return Next::kList;
}

Reflector::Impl::Next Reflector::Impl::list() {
    if (version.empty()) {
        auto discovered = discover_version(*client, options.resource, options.request_timeout, &stop);
        if (stop.load()) return Next::kList;
        if (!discovered) return fail(discovered.error().describe(), std::nullopt, Next::kList);
        if (const auto& f = discovered->failure) {
            if (f->status == 404) return missing(f->message);
            return fail("discovery: " + f->message, f->retry_after_seconds, Next::kList);
        }
        version = discovered->version;
        std::lock_guard lock(mutex);
        stats.served_version = version;
    }
    auto listed =
        list_collection(*client, options.resource, version, options.page_size, options.request_timeout, &stop,
                        options.transform);
    if (stop.load()) return Next::kList;
    if (!listed) return fail(listed.error().describe(), std::nullopt, Next::kList);
    if (const auto& f = listed->failure) {
        if (f->status == 404) return missing(f->message);
        return fail("list: " + f->message, f->retry_after_seconds, Next::kList);
    }
    if (listed->continue_expired) {
        log::info("{}: a continue token expired (410): listed again in one request", name());
        std::lock_guard lock(mutex);
        ++stats.gone;
    }
    replace(std::move(listed->items), listed->resource_version, relist_pending || listed->continue_expired);
    relist_pending = false;
    watch_after_list = true;
    succeeded();
    return Next::kWatch;
}

// The list REPLACES the store: objects deleted while not watching vanish.
void Reflector::Impl::replace(Map items, const std::string& list_version, bool relist) {
    resource_version = list_version;
    bool notify_now;
    {
        std::lock_guard lock(mutex);
        const bool changed = *store != items;
        if (changed) {
            store = std::make_shared<Map>(std::move(items));
            ++revision;
        }
        notify_now = changed || !stats.synced || stats.missing;
        if (stats.missing) log::info("{}: now served", name());
        if (!stats.synced)
            log::info("{}: synced, {} objects at resourceVersion {}", name(), store->size(), list_version);
        stats.synced = true;
        stats.missing = false;
        stats.resource_version = list_version;
        ++stats.lists;
        if (relist) ++stats.relists;
        stats.last_sync = std::chrono::system_clock::now();
    }
    if (notify_now) notify();
}

void Reflector::Impl::apply(std::vector<WatchEvent>& batch) {
    if (batch.empty()) return;
    bool changed = false;
    {
        std::lock_guard lock(mutex);
        bool copied = false;
        auto writable = [&]() -> Map& {
            // Copy-on-write: only when a reader still holds the snapshot.
            if (!copied && store.use_count() > 1) store = std::make_shared<Map>(*store);
            copied = true;
            return *store;
        };
        for (WatchEvent& event : batch) {
            if (std::string rv = resource_version_of(event.object); !rv.empty()) resource_version = std::move(rv);
            if (event.type == WatchEvent::Type::kBookmark) continue;
            std::string key = object_key(event.object);
            if (key.empty()) continue;
            if (event.type == WatchEvent::Type::kDeleted) {
                if (store->count(key)) {
                    writable().erase(key);
                    changed = true;
                }
            } else {
                nlohmann::json kept =
                    options.transform ? options.transform(std::move(event.object)) : std::move(event.object);
                // A status update of a pod that changes nothing the agent reads is no change.
                if (auto it = store->find(key); it != store->end() && it->second == kept) continue;
                writable()[std::move(key)] = std::move(kept);
                changed = true;
            }
        }
        if (changed) ++revision;
        stats.resource_version = resource_version;
        stats.last_event = std::chrono::system_clock::now();
    }
    if (changed) notify();
}

Reflector::Impl::Next Reflector::Impl::watch() {
    if (!watch_after_list) {
        std::lock_guard lock(mutex);
        ++stats.watch_restarts;
    }
    watch_after_list = false;
    const std::chrono::seconds timeout = jittered_watch_timeout();
    const milliseconds stall = options.stall_timeout.count() > 0 ? options.stall_timeout : timeout + kStallMargin;
    LineFramer framer;
    WatchEnd end;
    const auto on_data = [&](std::string_view chunk) {
        std::vector<WatchEvent> batch;
        Status framed = framer.feed(chunk, [&](std::string_view line) {
            auto event = parse_watch_event(line);
            if (!event)
                end.error = event.error().message;
            else if (event->type != WatchEvent::Type::kError)
                batch.push_back(std::move(*event));
            else if (is_expired_status(event->object))
                end.gone = true;
            else
                end.error = "watch ERROR event: " + status_message(event->object);
            return !end.error && !end.gone;
        });
        if (!framed) end.error = framed.error().message;
        end.events += batch.size();
        apply(batch);
        return !end.error && !end.gone;
    };
    const auto started = std::chrono::steady_clock::now();
    const std::string path = watch_path(options.resource, version, resource_version, timeout);
    // The server took the watch: whatever failed before has recovered, even
    // if no event comes for a while. A 410 or an ERROR event right after
    // is a relist, not a failure.
    const auto on_open = [this] { succeeded(true); };
    auto response = client->stream(path, on_data, stall, stop, on_open);
    if (stop.load()) return Next::kWatch;
    if (!response) {
        if (response.error().errnum != kStalled) return fail(response.error().describe(), std::nullopt, Next::kWatch);
        bool started_failing;
        {
            std::lock_guard lock(mutex);
            ++stats.errors;
            started_failing = stats.last_error.empty();
            if (started_failing) stats.failing_since = std::chrono::system_clock::now();
            stats.last_error = response.error().message;
        }
        log::info("{}: watch {}: restarting it", name(), response.error().message);
        if (started_failing) notify();
        return Next::kWatch;
    }
    if (response->status == 410 ||
        (response->status == 504 && is_expired_status(nlohmann::json::parse(response->body, nullptr, false))))
        return gone("watch: " + failure_message(*response));
    if (response->status == 404) return missing(failure_message(*response));
    if (response->status != 200)
        return fail("watch: " + failure_message(*response), response->retry_after_seconds, Next::kWatch);
    if (end.gone) return gone("watch: resourceVersion " + resource_version + " expired (ERROR event)");
    if (end.error) return fail(*end.error, std::nullopt, Next::kWatch);
    if (end.events == 0 && std::chrono::steady_clock::now() - started < kVeryShortWatch)
        return fail("watch ended at once without an event", std::nullopt, Next::kWatch);
    return Next::kWatch;  // a normal end (timeoutSeconds): watch again from resource_version
}

Reflector::Reflector(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Reflector>> Reflector::start(std::shared_ptr<Client> client, Options options,
                                                    std::function<void()> notify) {
    if (!client) return make_error("reflector: no client");
    if (options.resource.plural.empty()) return make_error("reflector: no resource plural");
    if (options.watch_timeout.count() <= 0) return make_error("reflector: watch_timeout must be positive");
    if (!notify) notify = [] {};
    auto impl = std::make_shared<Impl>(std::move(client), std::move(options), std::move(notify));
    std::unique_ptr<Reflector> reflector(new Reflector(impl));
    reflector->thread_ = std::thread([impl] { impl->run(); });
    return reflector;
}

Reflector::~Reflector() {
    impl_->stop.store(true);
    {
        std::lock_guard lock(impl_->wait_mutex);  // no lost wakeup between its check and its wait
    }
    impl_->wait_cv.notify_all();
    impl_->client->interrupt(impl_->stop);
    if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const Map> Reflector::objects() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->store;
}

uint64_t Reflector::revision() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->revision;
}

ReflectorStats Reflector::stats() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->stats;
}

}  // namespace egressd::k8s
