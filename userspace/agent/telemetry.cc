// Telemetry: the metrics registry, the HTTP routes, the event log and the
// in-memory event buffer. See telemetry.h.
//
// Locking (the agent thread records, up to two HTTP threads read):
//  - every metric child has its own lock (observe/metrics.h);
//  - events_mutex_ guards the event buffer and the sequence numbers; it is
//    held only to push/pop pointers or to copy pointers out (JSON is built and
//    serialised outside it);
//  - log_mutex_ keeps event log lines in sequence order; /events and /metrics
//    never take it, so a slow disk does not slow a scrape;
//  - scrape_mutex_ serialises the kernel reads and their set_total(), so two
//    concurrent scrapes cannot apply totals out of order (a smaller total
//    would be taken as a restart of the kernel counters);
//  - state_mutex_ guards readiness and the mode.
#include "agent/telemetry.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <deque>
#include <mutex>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/log.h"
#include "core/decision.h"
#include "observe/http_server.h"
#include "observe/metrics.h"

namespace egressd {

namespace {

constexpr const char* kTextPlain = "text/plain; charset=utf-8";
constexpr const char* kJson = "application/json";

// Prometheus' default buckets shifted down: a generation applies in
// milliseconds, a large policy set with DNS in seconds.
const std::vector<double> kApplyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

const char* const kVerdicts[] = {"deny", "audit", "allow"};

bool is_deny_reason(egressd_reason reason) {
    return reason == EGRESSD_REASON_DENY || reason == EGRESSD_REASON_NO_CONFIG;
}

// A field of the event as a string; "" when absent or not a string.
std::string string_field(const nlohmann::json& event, const char* name) {
    if (!event.is_object()) return {};
    const auto it = event.find(name);
    if (it == event.end() || !it->is_string()) return {};
    return it->get<std::string>();
}

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

std::optional<uint64_t> parse_u64(const std::string& text) {
    uint64_t value = 0;
    const auto* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
    return value;
}

observe::Response bad_request(const std::string& why) { return {400, kTextPlain, why + "\n"}; }

// Splits a registry rendering into its families ("# HELP <name> ..." starts each).
void split_families(const std::string& text, std::vector<std::pair<std::string, std::string>>& out) {
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

struct StoredEvent {
    uint64_t seq = 0;
    std::string verdict;
    std::string identity;                        // "" when unknown
    std::shared_ptr<const nlohmann::json> json;  // with "seq"
};

class TelemetryImpl final : public Telemetry {
public:
    TelemetryImpl(const Options& options, const MapSet* maps) : options_(options), maps_(maps) {}

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
        StoredEvent stored;
        stored.verdict = string_field(event, "verdict");
        stored.identity = string_field(event, "identity");
        nlohmann::json with_seq = event.is_object() ? event : nlohmann::json{{"event", event}};
        const std::string line = json_text(event) + "\n";

        const bool known = std::find(std::begin(kVerdicts), std::end(kVerdicts), stored.verdict) != std::end(kVerdicts);
        events_total_->labels({known ? stored.verdict : "other"}).inc();
        identity_events_
            ->labels({stored.identity.empty() ? "unknown" : stored.identity, known ? stored.verdict : "other"})
            .inc();
        if (stored.verdict == "audit") audit_events_->inc();

        std::lock_guard log_lock(log_mutex_);  // log lines in sequence order
        {
            std::lock_guard lock(events_mutex_);
            stored.seq = ++last_seq_;
            with_seq["seq"] = stored.seq;
            if (options_.event_buffer > 0) {
                stored.json = std::make_shared<const nlohmann::json>(std::move(with_seq));
                buffer_.push_back(std::move(stored));
                while (buffer_.size() > options_.event_buffer) buffer_.pop_front();
            }
        }
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

    void record_apply(uint64_t generation, double millis) override {
        generation_->set(static_cast<double>(generation));
        apply_duration_->observe(millis / 1000.0);
    }

    void record_config_error() override { config_errors_->inc(); }

    void record_resolution_failure(const std::string& host) override { resolution_failures_->labels({host}).inc(); }

    void set_map_entries(const std::string& map, uint64_t entries) override {
        map_entries_->labels({map}).set(static_cast<double>(entries));
    }

    void set_ready(bool ready, const std::string& reason) override {
        {
            std::lock_guard lock(state_mutex_);
            ready_ = ready;
            not_ready_reason_ = reason;
        }
        ready_gauge_->set(ready ? 1 : 0);
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

private:
    Status register_metrics() {
        Error error;
        bool failed = false;
        auto take = [&](auto result) {
            using Pointer = std::remove_reference_t<decltype(*result)>;
            if (!result.ok()) {
                if (!failed) error = result.error();
                failed = true;
                return Pointer{};
            }
            return *result;
        };
        // The only child of a family without labels.
        auto only = [](auto* family) -> decltype(&family->get()) { return family ? &family->get() : nullptr; };

        // Kernel families: rendered only when their read succeeds.
        decisions_ = take(kernel_registry_.counter(
            "egressd_decisions_total",
            "Decisions of the BPF programs, by reason and hook (kernel counters). verdict is deny for the reasons deny "
            "and no-config (in audit mode these calls were allowed; see egressd_audit_events_total), allow otherwise.",
            {"verdict", "reason", "hook"}));
        denied_ = take(
            kernel_registry_.counter("egressd_denied_connections_total",
                                     "Calls decided deny (reasons deny and no-config, every hook; kernel counters)."));
        events_sent_ = take(kernel_registry_.counter("egressd_events_sent_total",
                                                     "Decision events the kernel put in the ring buffer."));
        events_suppressed_ = take(kernel_registry_.counter(
            "egressd_events_suppressed_total", "Decision events the kernel dropped by the per-source rate limit."));
        events_lost_ = take(kernel_registry_.counter(
            "egressd_events_lost_total", "Decision events the kernel lost because the ring buffer was full."));
        flows_lost_ = take(kernel_registry_.counter(
            "egressd_flows_lost_total", "Tracked egress connections evicted from flows_v1 before they closed."));
        traffic_lost_ = take(kernel_registry_.counter(
            "egressd_traffic_lost_total",
            "Closed egress connections not added to the traffic totals because those maps were full."));
        egress_connections_ = take(kernel_registry_.counter(
            "egressd_egress_connections_total",
            "Closed egress TCP connections, by the rule that allowed them (rule: the policy NAMESPACE/NAME for "
            "reason policy, else the index in its list).",
            {"reason", "rule"}));
        egress_bytes_ = take(kernel_registry_.counter(
            "egressd_egress_bytes_total",
            "Bytes of closed egress TCP connections by rule and direction (the sockets' own counters, which count "
            "SYN and FIN as one byte each).",
            {"reason", "rule", "direction"}));
        identity_bytes_ = take(kernel_registry_.counter(
            "egressd_identity_egress_bytes_total",
            "Bytes of closed egress TCP connections by source identity (NAMESPACE/SERVICEACCOUNT, or unknown).",
            {"identity", "direction"}));

        kernel_read_errors_ = take(registry_.counter("egressd_kernel_read_errors_total",
                                                     "Failed reads of the kernel's counters or event statistics at "
                                                     "scrape time (the metrics read are then left out)."));
        events_total_ = take(registry_.counter("egressd_events_total",
                                               "Decision events received by the agent, by verdict.", {"verdict"}));
        identity_events_ = take(registry_.counter(
            "egressd_identity_decisions_total",
            "Reported decisions (denials, audit, and allows when asked) by source identity (NAMESPACE/SERVICEACCOUNT "
            "or unknown) and verdict. Bounded labels; rate-limited at the source like the events.",
            {"identity", "verdict"}));
        audit_events_ = only(take(registry_.counter(
            "egressd_audit_events_total", "Decision events of calls that would have been denied (audit mode).")));
        event_log_errors_ = only(take(
            registry_.counter("egressd_event_log_write_errors_total", "Event log lines that could not be written.")));
        map_entries_ = take(registry_.gauge("egressd_map_entries", "Entries in each BPF map.", {"map"}));
        map_capacity_ = take(
            registry_.gauge("egressd_map_capacity",
                            "Capacity of each BPF map (per generation where the map is per generation).", {"map"}));
        generation_ = only(take(registry_.gauge("egressd_generation", "The generation last applied.")));
        apply_duration_ = only(
            take(registry_.histogram("egressd_apply_duration_seconds",
                                     "Time from an input change to its generation being enforced.", kApplyBuckets)));
        config_errors_ = only(
            take(registry_.counter("egressd_config_errors_total", "Configuration changes that could not be applied.")));
        resolution_failures_ = take(registry_.counter("egressd_host_resolution_failures_total",
                                                      "Failed resolutions of policy host names, by host.", {"host"}));
        policies_ = only(take(registry_.gauge("egressd_policies", "Egress policies loaded.")));
        policy_errors_ = only(take(registry_.gauge("egressd_policy_errors", "Egress policy files with errors.")));
        mode_ = take(registry_.gauge("egressd_mode", "The enforcement mode: 1 for the current one.", {"mode"}));
        ready_gauge_ = only(take(registry_.gauge("egressd_ready", "1 when the agent is ready (as /readyz).")));
        if (failed) return error.with_context("telemetry: registering metrics");

        const std::pair<const char*, uint32_t> capacities[] = {
            {"cidrs_v1", options_.capacities.cidrs},           {"ports_v1", options_.capacities.ports},
            {"policies_v1", options_.capacities.policy_rules}, {"policy_hosts_v1", options_.capacities.policy_rules},
            {"policy_names_v1", options_.capacities.policies}, {"id_names_v1", options_.capacities.identities},
            {"identities_v1", options_.capacities.workloads},
        };
        for (const auto& [map, capacity] : capacities) map_capacity_->labels({map}).set(capacity);
        ready_gauge_->set(0);
        return {};
    }

    observe::Response readyz() const {
        std::lock_guard lock(state_mutex_);
        if (ready_) return {200, kTextPlain, "ready\n"};
        return {503, kTextPlain, not_ready_reason_ + "\n"};
    }

    // Reads the kernel and renders the families read; returns (name, text) pairs.
    void scrape_kernel(std::vector<std::pair<std::string, std::string>>& families) {
        if (maps_ == nullptr) return;
        std::lock_guard lock(scrape_mutex_);
        auto counters = maps_->read_counters();
        if (counters.ok()) {
            kernel_ok("decision counters");
            const std::vector<uint64_t>& totals = *counters;
            uint64_t denied = 0;
            const size_t slots = std::min<size_t>(totals.size(), EGRESSD_COUNTER_SLOTS);
            for (size_t i = 0; i < slots; ++i) {
                const auto reason = static_cast<egressd_reason>(i / EGRESSD_HOOK_MAX);
                const auto hook = static_cast<egressd_hook>(i % EGRESSD_HOOK_MAX);
                if (reason == EGRESSD_REASON_NONE && totals[i] == 0) continue;  // never decided
                const bool deny = is_deny_reason(reason);
                if (deny) denied += totals[i];
                decisions_
                    ->labels({deny ? "deny" : "allow", std::string(reason_name(reason)), std::string(hook_name(hook))})
                    .set_total(static_cast<double>(totals[i]));
            }
            denied_->get().set_total(static_cast<double>(denied));
            render_family(*decisions_, families);
            render_family(*denied_, families);
        } else {
            kernel_failed("decision counters", counters.error());
        }

        auto stats = maps_->read_event_stats();
        if (stats.ok()) {
            kernel_ok("event statistics");
            events_sent_->get().set_total(static_cast<double>((*stats)[EGRESSD_STAT_EVENTS_SENT]));
            events_suppressed_->get().set_total(static_cast<double>((*stats)[EGRESSD_STAT_EVENTS_SUPPRESSED]));
            events_lost_->get().set_total(static_cast<double>((*stats)[EGRESSD_STAT_EVENTS_LOST]));
            flows_lost_->get().set_total(static_cast<double>((*stats)[EGRESSD_STAT_FLOWS_LOST]));
            traffic_lost_->get().set_total(static_cast<double>((*stats)[EGRESSD_STAT_TRAFFIC_LOST]));
            render_family(*events_sent_, families);
            render_family(*events_suppressed_, families);
            render_family(*events_lost_, families);
            render_family(*flows_lost_, families);
            render_family(*traffic_lost_, families);
        } else {
            kernel_failed("event statistics", stats.error());
        }
        scrape_traffic(families);
    }

    // Egress traffic of closed connections, per rule and per identity, named
    // with the active generation's policy names and the identity names.
    void scrape_traffic(std::vector<std::pair<std::string, std::string>>& families) {
        auto rules = maps_->read_rule_traffic();
        auto identities = maps_->read_identity_traffic();
        auto names = maps_->read_identity_names();
        auto control = maps_->read_control();
        if (!rules.ok() || !identities.ok() || !names.ok() || !control.ok()) {
            kernel_failed("traffic totals", !rules.ok()        ? rules.error()
                                            : !identities.ok() ? identities.error()
                                            : !names.ok()      ? names.error()
                                                               : control.error());
            return;
        }
        kernel_ok("traffic totals");
        std::map<uint32_t, PolicyRef> policies;
        // The names only: not the slot's policy entries (100k and more).
        if (auto names_in_force = maps_->read_policy_names(control->active_slot & 1); names_in_force.ok())
            policies = std::move(*names_in_force);
        for (const auto& [key, t] : *rules) {
            const auto reason = static_cast<egressd_reason>(key.first);
            std::string rule = std::to_string(key.second);
            if (reason == EGRESSD_REASON_POLICY && policies.contains(key.second)) rule = policies.at(key.second).str();
            const std::string why(reason_name(reason));
            egress_connections_->labels({why, rule}).set_total(static_cast<double>(t.connections));
            egress_bytes_->labels({why, rule, "sent"}).set_total(static_cast<double>(t.bytes_sent));
            egress_bytes_->labels({why, rule, "received"}).set_total(static_cast<double>(t.bytes_received));
        }
        for (const auto& [number, t] : *identities) {
            auto it = names->find(number);
            const std::string who = number == 0 || it == names->end() ? "unknown" : it->second.str();
            identity_bytes_->labels({who, "sent"}).set_total(static_cast<double>(t.bytes_sent));
            identity_bytes_->labels({who, "received"}).set_total(static_cast<double>(t.bytes_received));
        }
        render_family(*egress_connections_, families);
        render_family(*egress_bytes_, families);
        render_family(*identity_bytes_, families);
    }

    static void render_family(const observe::FamilyBase& family,
                              std::vector<std::pair<std::string, std::string>>& families) {
        std::string text;
        family.render(text);
        families.emplace_back(family.name(), std::move(text));
    }

    // Under scrape_mutex_. Logs a failing read once, until it succeeds again.
    void kernel_failed(const std::string& what, const Error& error) {
        kernel_read_errors_->get().inc();
        if (failing_reads_.insert(what).second) {
            log::error("metrics: reading the kernel's {}: {} (left out of /metrics)", what, error.describe());
        }
    }
    void kernel_ok(const std::string& what) {
        if (failing_reads_.erase(what) > 0) log::info("metrics: reading the kernel's {} works again", what);
    }

    observe::Response metrics() {
        std::vector<std::pair<std::string, std::string>> families;
        scrape_kernel(families);  // first: a failed read counts in this very scrape
        split_families(registry_.render(), families);
        std::sort(families.begin(), families.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::string body;
        for (const auto& family : families) body += family.second;
        return {200, observe::kPrometheusContentType, std::move(body)};
    }

    observe::Response events(const observe::Request& request) const {
        std::optional<uint64_t> since, limit;
        std::optional<std::string> verdict, identity;
        for (const auto& [name, value] : request.params) {
            if (request.params.count(name) > 1) return bad_request(fmt::format("parameter \"{}\" given twice", name));
            if (name == "since" || name == "limit") {
                const auto number = parse_u64(value);
                if (!number) return bad_request(fmt::format("{}: \"{}\" is not a non-negative integer", name, value));
                (name == "since" ? since : limit) = number;
            } else if (name == "verdict") {
                if (std::find(std::begin(kVerdicts), std::end(kVerdicts), value) == std::end(kVerdicts)) {
                    return bad_request(fmt::format("verdict: \"{}\" is not deny, audit or allow", value));
                }
                verdict = value;
            } else if (name == "identity") {
                identity = value;
            } else {
                return bad_request(
                    fmt::format("unknown parameter \"{}\" (known: since, verdict, identity, limit)", name));
            }
        }

        std::vector<std::shared_ptr<const nlohmann::json>> selected;
        {
            std::lock_guard lock(events_mutex_);
            auto it = buffer_.begin();
            if (since) {
                it = std::upper_bound(buffer_.begin(), buffer_.end(), *since,
                                      [](uint64_t seq, const StoredEvent& e) { return seq < e.seq; });
            }
            for (; it != buffer_.end(); ++it) {
                if (verdict && it->verdict != *verdict) continue;
                if (identity && it->identity != *identity) continue;
                selected.push_back(it->json);
            }
        }
        if (limit && selected.size() > *limit) {
            selected.erase(selected.begin(), selected.end() - static_cast<std::ptrdiff_t>(*limit));
        }
        std::string body = "[";
        for (size_t i = 0; i < selected.size(); ++i) {
            body += i == 0 ? "\n" : ",\n";
            body += json_text(*selected[i]);
        }
        body += selected.empty() ? "]\n" : "\n]\n";
        return {200, kJson, std::move(body)};
    }

    const Options options_;
    const MapSet* const maps_;

    observe::Registry registry_;
    observe::Registry kernel_registry_;  // families left out when their read fails
    observe::CounterFamily* decisions_ = nullptr;
    observe::CounterFamily* denied_ = nullptr;
    observe::CounterFamily* events_sent_ = nullptr;
    observe::CounterFamily* events_suppressed_ = nullptr;
    observe::CounterFamily* events_lost_ = nullptr;
    observe::CounterFamily* flows_lost_ = nullptr;
    observe::CounterFamily* traffic_lost_ = nullptr;
    observe::CounterFamily* identity_events_ = nullptr;
    observe::CounterFamily* egress_connections_ = nullptr;
    observe::CounterFamily* egress_bytes_ = nullptr;
    observe::CounterFamily* identity_bytes_ = nullptr;
    observe::CounterFamily* kernel_read_errors_ = nullptr;
    observe::CounterFamily* events_total_ = nullptr;
    observe::Counter* audit_events_ = nullptr;
    observe::Counter* event_log_errors_ = nullptr;
    observe::GaugeFamily* map_entries_ = nullptr;
    observe::GaugeFamily* map_capacity_ = nullptr;
    observe::Gauge* generation_ = nullptr;
    observe::Histogram* apply_duration_ = nullptr;
    observe::Counter* config_errors_ = nullptr;
    observe::CounterFamily* resolution_failures_ = nullptr;
    observe::Gauge* policies_ = nullptr;
    observe::Gauge* policy_errors_ = nullptr;
    observe::GaugeFamily* mode_ = nullptr;
    observe::Gauge* ready_gauge_ = nullptr;

    mutable std::mutex events_mutex_;
    std::deque<StoredEvent> buffer_;
    uint64_t last_seq_ = 0;

    std::mutex log_mutex_;
    UniqueFd log_fd_;           // invalid: stderr
    bool log_failing_ = false;  // under log_mutex_

    std::mutex scrape_mutex_;
    std::set<std::string> failing_reads_;  // under scrape_mutex_

    mutable std::mutex state_mutex_;
    bool ready_ = false;
    std::string not_ready_reason_ = "starting";
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
