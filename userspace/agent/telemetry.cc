// Telemetry: the agent's metrics, the HTTP routes and the event log. The
// kernel's families are in kernel_metrics.h, the event buffer and the /events
// query in event_buffer.h. See telemetry.h.
//
// Locking (the agent thread records, up to two HTTP threads read):
//  - every metric child has its own lock (observe/metrics.h);
//  - the event buffer and the kernel scrape have their own (see their headers);
//  - log_mutex_ keeps event log lines in sequence order; /events and /metrics
//    never take it, so a slow disk does not slow a scrape;
//  - state_mutex_ guards readiness and the mode.
#include "agent/telemetry.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/log.h"
#include "agent/event_buffer.h"
#include "agent/kernel_metrics.h"
#include "common/json_text.h"
#include "observe/http_server.h"
#include "observe/metrics.h"

namespace egressd {

namespace {

constexpr const char* kTextPlain = "text/plain; charset=utf-8";
constexpr const char* kJson = "application/json";

// Prometheus' default buckets shifted down: a generation applies in
// milliseconds, a large policy set with DNS in seconds.
const std::vector<double> kApplyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

Status write_all(int fd, const std::string& data) {
    size_t written = 0;
    while (written < data.size()) {
        const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
        if (n < 0) {
            if (errno == EINTR) continue;
            return system_error("write");
        }
        written += static_cast<size_t>(n);
    }
    return {};
}

// Splits a registry rendering into its families ("# HELP <name> ..." starts each).
void split_families(const std::string& text, std::vector<RenderedFamily>& out) {
    const std::string marker = "# HELP ";
    size_t start = text.rfind(marker, 0) == 0 ? 0 : text.find("\n" + marker);
    if (start == std::string::npos) return;
    if (start != 0) ++start;
    while (start < text.size()) {
        size_t next = text.find("\n" + marker, start);
        next = next == std::string::npos ? text.size() : next + 1;
        const size_t name_start = start + marker.size();
        const size_t name_end = text.find(' ', name_start);
        out.emplace_back(text.substr(name_start, name_end - name_start), text.substr(start, next - start));
        start = next;
    }
}

class TelemetryImpl final : public Telemetry {
public:
    TelemetryImpl(const Options& options, const MapSet* maps)
        : options_(options), maps_(maps), events_(options.event_buffer) {}

    ~TelemetryImpl() override {
        server_.reset();  // no handler runs past this point
    }

    Status init() {
        if (auto status = register_metrics(); !status) return status;
        if (!options_.event_log.empty()) {
            std::error_code ec;
            const auto parent = options_.event_log.parent_path();
            if (!parent.empty()) std::filesystem::create_directories(parent, ec);
            if (ec) {
                return system_error(fmt::format("event log: creating {}", parent.string()), ec.value());
            }
            log_fd_ = UniqueFd(::open(options_.event_log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640));
            if (!log_fd_.valid()) {
                return system_error(fmt::format("event log: opening {}", options_.event_log.string()));
            }
        }
        if (!options_.http_address.empty()) {
            observe::Routes routes{
                {"/healthz",
                 [] {
                     return observe::Response{200, kTextPlain, "ok\n"};
                 }},
                {"/readyz", [this] { return readyz(); }},
                {"/metrics", [this] { return metrics(); }},
                {"/events", [this](const observe::Request& request) { return events(request); }},
            };
            auto server = observe::HttpServer::start(options_.http_address, std::move(routes));
            if (!server.ok()) return server.error().with_context("telemetry");
            server_ = std::move(server).value();
        }
        return {};
    }

    void record_event(const nlohmann::json& event) override {
        const std::string verdict = event_string_field(event, "verdict");
        const std::string identity = event_string_field(event, "identity");
        const std::string counted = is_known_verdict(verdict) ? verdict : "other";
        events_total_->labels({counted}).inc();
        identity_events_->labels({identity.empty() ? "unknown" : identity, counted}).inc();
        if (verdict == "audit") audit_events_->inc();

        const std::string line = json_text(event) + "\n";
        std::lock_guard log_lock(log_mutex_);  // log lines in sequence order
        events_.push(event);
        write_event_line(line);
    }

    void record_apply(uint64_t generation, double millis) override {
        generation_->set(static_cast<double>(generation));
        apply_duration_->observe(millis / 1000.0);
    }

    void record_kubernetes_apply_lag(double seconds) override {
        if (watch_families_.apply_lag) watch_families_.apply_lag->observe(seconds);
    }

    void record_config_error() override { config_errors_->inc(); }

    void record_revocation(size_t connections, double seconds) override {
        revoked_->inc(static_cast<double>(connections));
        revocation_duration_->observe(seconds);
    }

    void record_resolution_failure(const std::string& host) override { resolution_failures_->labels({host}).inc(); }

    void set_map_entries(const std::string& map, uint64_t entries) override {
        map_entries_->labels({map}).set(static_cast<double>(entries));
    }

    void set_ready(bool ready, const std::string& reason) override {
        std::lock_guard lock(state_mutex_);
        ready_ = ready;
        not_ready_reason_ = reason;
        ready_gauge_->set(ready_ && enforcement_problem_.empty() ? 1 : 0);
    }

    void set_enforcement_problem(const std::string& problem) override {
        std::lock_guard lock(state_mutex_);
        enforcement_problem_ = problem;
        ready_gauge_->set(ready_ && enforcement_problem_.empty() ? 1 : 0);
    }

    void set_state(const std::string& mode, size_t policies, size_t policy_errors) override {
        {
            std::lock_guard lock(state_mutex_);
            modes_.insert(mode);
            for (const auto& known : modes_) mode_->labels({known}).set(known == mode ? 1 : 0);
        }
        policies_->set(static_cast<double>(policies));
        policy_errors_->set(static_cast<double>(policy_errors));
    }

    uint16_t http_port() const override { return server_ ? server_->port() : 0; }

    void read_open_sockets(KernelMetrics::OpenSocketBytes read) override {
        if (kernel_) kernel_->read_open_sockets(std::move(read));
    }

    Status watch_resources(std::function<std::vector<WatchedResource>()> read) override {
        observe::Registrations r;
        auto& g = registry_;
        const std::vector<std::string> by_resource = {"resource"};
        watch_families_.synced = r.take(g.gauge(
            "egressd_kubernetes_synced", "1 once the resource's first LIST completed (Kubernetes mode).", by_resource));
        watch_families_.lists = r.take(
            g.counter("egressd_kubernetes_lists_total", "Complete LISTs of each watched resource.", by_resource));
        watch_families_.relists =
            r.take(g.counter("egressd_kubernetes_relists_total",
                             "LISTs again after a 410 (history expired) or a too new resourceVersion.", by_resource));
        watch_families_.restarts =
            r.take(g.counter("egressd_kubernetes_watch_restarts_total",
                             "WATCHes started again without a LIST (timeout, stall, error).", by_resource));
        watch_families_.errors = r.take(g.counter("egressd_kubernetes_errors_total",
                                                  "Failed requests and broken or stalled watch streams.", by_resource));
        watch_families_.last_sync =
            r.take(g.gauge("egressd_kubernetes_last_sync_timestamp_seconds",
                           "When the resource's last complete LIST ended (Unix time).", by_resource));
        watch_families_.apply_lag = r.take_only(
            g.histogram("egressd_kubernetes_apply_lag_seconds",
                        "Time from the API server's change reaching the agent (a watch event or a LIST) to the "
                        "generation that enforces it.",
                        kApplyBuckets));
        if (!r.status()) return r.status().error().with_context("telemetry: registering metrics");
        std::lock_guard lock(state_mutex_);
        read_watched_ = std::move(read);
        return {};
    }

private:
    Status register_metrics() {
        auto kernel = KernelMetrics::create(registry_, maps_);
        if (!kernel.ok()) return kernel.error().with_context("telemetry: registering metrics");
        kernel_ = std::move(*kernel);
        observe::Registrations r;
        auto& g = registry_;
        events_total_ = r.take(
            g.counter("egressd_events_total", "Decision events received by the agent, by verdict.", {"verdict"}));
        identity_events_ = r.take(g.counter(
            "egressd_identity_decisions_total",
            "Reported decisions (denials, audit, and allows when asked) by source identity (NAMESPACE/SERVICEACCOUNT "
            "or unknown) and verdict. Bounded labels; rate-limited at the source like the events.",
            {"identity", "verdict"}));
        audit_events_ = r.take_only(g.counter("egressd_audit_events_total",
                                              "Decision events of calls that would have been denied (audit mode)."));
        event_log_errors_ = r.take_only(
            g.counter("egressd_event_log_write_errors_total", "Event log lines that could not be written."));
        map_entries_ = r.take(g.gauge("egressd_map_entries", "Entries in each BPF map.", {"map"}));
        map_capacity_ =
            r.take(g.gauge("egressd_map_capacity",
                           "Capacity of each BPF map (per generation where the map is per generation).", {"map"}));
        generation_ = r.take_only(g.gauge("egressd_generation", "The generation last applied."));
        apply_duration_ =
            r.take_only(g.histogram("egressd_apply_duration_seconds",
                                    "Time from an input change to its generation being enforced.", kApplyBuckets));
        config_errors_ =
            r.take_only(g.counter("egressd_config_errors_total", "Configuration changes that could not be applied."));
        revoked_ = r.take_only(g.counter("egressd_revoked_connections_total",
                                         "Open connections torn down because a new generation denies them."));
        revocation_duration_ = r.take_only(
            g.histogram("egressd_revocation_duration_seconds",
                        "Time from a tightening generation's flip to the end of its revocation pass.", kApplyBuckets));
        resolution_failures_ = r.take(g.counter("egressd_host_resolution_failures_total",
                                                "Failed resolutions of policy host names, by host.", {"host"}));
        policies_ = r.take_only(g.gauge("egressd_policies", "Egress policies loaded."));
        policy_errors_ = r.take_only(g.gauge("egressd_policy_errors", "Egress policy files with errors."));
        mode_ = r.take(g.gauge("egressd_mode", "The enforcement mode: 1 for the current one.", {"mode"}));
        ready_gauge_ = r.take_only(g.gauge("egressd_ready", "1 when the agent is ready (as /readyz)."));
        if (!r.status()) return r.status().error().with_context("telemetry: registering metrics");

        const std::pair<const char*, uint32_t> capacities[] = {
            {EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), options_.capacities.cidrs},
            {EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS), options_.capacities.ports},
            {EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), options_.capacities.policy_rules},
            {EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES), options_.capacities.policies},
            {EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES), options_.capacities.identities},
            {EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES), options_.capacities.workloads},
        };
        for (const auto& [map, capacity] : capacities) map_capacity_->labels({map}).set(capacity);
        ready_gauge_->set(0);
        return {};
    }

    observe::Response readyz() const {
        std::lock_guard lock(state_mutex_);
        if (!enforcement_problem_.empty()) return {503, kTextPlain, enforcement_problem_ + "\n"};
        if (ready_) return {200, kTextPlain, "ready\n"};
        return {503, kTextPlain, not_ready_reason_ + "\n"};
    }

    void scrape_watched_resources() {
        std::function<std::vector<WatchedResource>()> read;
        {
            std::lock_guard lock(state_mutex_);
            read = read_watched_;
        }
        if (!read) return;
        for (const auto& w : read()) {
            watch_families_.synced->labels({w.resource}).set(w.synced ? 1 : 0);
            watch_families_.lists->labels({w.resource}).set_total(static_cast<double>(w.lists));
            watch_families_.relists->labels({w.resource}).set_total(static_cast<double>(w.relists));
            watch_families_.restarts->labels({w.resource}).set_total(static_cast<double>(w.watch_restarts));
            watch_families_.errors->labels({w.resource}).set_total(static_cast<double>(w.errors));
            watch_families_.last_sync->labels({w.resource}).set(w.last_sync_unix_seconds);
        }
    }

    // Under log_mutex_. Logs a failing event log once, until it works again.
    void write_event_line(const std::string& line) {
        const int fd = log_fd_.valid() ? log_fd_.get() : STDERR_FILENO;
        if (auto status = write_all(fd, line); !status) {
            event_log_errors_->inc();
            if (!log_failing_) {
                log::error("event log {}: {}", log_fd_.valid() ? options_.event_log.string() : "stderr",
                           status.error().describe());
            }
            log_failing_ = true;
        } else {
            log_failing_ = false;
        }
    }

    observe::Response metrics() {
        std::vector<RenderedFamily> families;
        kernel_->scrape(families);  // first: a failed read counts in this very scrape
        scrape_watched_resources();
        split_families(registry_.render(), families);
        std::sort(families.begin(), families.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::string body;
        for (const auto& family : families) body += family.second;
        return {200, observe::kPrometheusContentType, std::move(body)};
    }

    // The events name workloads and destinations: kept to loopback clients
    // when /metrics is served to the network (the DaemonSet's kubelet probes).
    observe::Response events(const observe::Request& request) const {
        if (!request.from_loopback) return {403, kTextPlain, "/events is served to loopback clients only\n"};
        auto query = EventQuery::parse(request.params);
        if (!query.ok()) return {400, kTextPlain, query.error().message + "\n"};
        return {200, kJson, events_.select_json(*query)};
    }

    const Options options_;
    const MapSet* const maps_;

    observe::Registry registry_;
    std::unique_ptr<KernelMetrics> kernel_;
    observe::CounterFamily* identity_events_ = nullptr;
    observe::CounterFamily* events_total_ = nullptr;
    observe::Counter* audit_events_ = nullptr;
    observe::Counter* event_log_errors_ = nullptr;
    observe::GaugeFamily* map_entries_ = nullptr;
    observe::GaugeFamily* map_capacity_ = nullptr;
    observe::Gauge* generation_ = nullptr;
    observe::Histogram* apply_duration_ = nullptr;
    observe::Counter* config_errors_ = nullptr;
    observe::Counter* revoked_ = nullptr;
    observe::Histogram* revocation_duration_ = nullptr;
    observe::CounterFamily* resolution_failures_ = nullptr;
    observe::Gauge* policies_ = nullptr;
    observe::Gauge* policy_errors_ = nullptr;
    observe::GaugeFamily* mode_ = nullptr;
    observe::Gauge* ready_gauge_ = nullptr;

    EventBuffer events_;

    struct WatchFamilies {
        observe::GaugeFamily* synced = nullptr;
        observe::CounterFamily *lists = nullptr, *relists = nullptr, *restarts = nullptr, *errors = nullptr;
        observe::GaugeFamily* last_sync = nullptr;
        observe::Histogram* apply_lag = nullptr;
    } watch_families_;
    std::function<std::vector<WatchedResource>()> read_watched_;  // under state_mutex_

    std::mutex log_mutex_;
    UniqueFd log_fd_;           // invalid: stderr
    bool log_failing_ = false;  // under log_mutex_

    mutable std::mutex state_mutex_;
    bool ready_ = false;
    std::string not_ready_reason_ = "starting";
    std::string enforcement_problem_;
    std::set<std::string> modes_;

    std::unique_ptr<observe::HttpServer> server_;  // last: stopped first
};

}  // namespace

Result<std::unique_ptr<Telemetry>> Telemetry::start(const Options& options, const MapSet* maps) {
    auto telemetry = std::make_unique<TelemetryImpl>(options, maps);
    if (auto status = telemetry->init(); !status) return status.error();
    return std::unique_ptr<Telemetry>(std::move(telemetry));
}

}  // namespace egressd
