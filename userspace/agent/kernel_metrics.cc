#include "agent/kernel_metrics.h"

#include <time.h>

#include <algorithm>
#include <map>

#include "common/log.h"
#include "core/decision.h"

namespace egressd {

namespace {

bool is_deny_reason(egressd_reason reason) {
    return reason == EGRESSD_REASON_DENY || reason == EGRESSD_REASON_NO_CONFIG ||
           reason == EGRESSD_REASON_RAW_SOCKET || reason == EGRESSD_REASON_PROTOCOL;
}

void render(const observe::FamilyBase& family, std::vector<RenderedFamily>& families) {
    std::string text;
    family.render(text);
    families.emplace_back(family.name(), std::move(text));
}

void set_total(observe::CounterFamily* family, uint64_t total) { family->get().set_total(static_cast<double>(total)); }

}  // namespace

Result<std::unique_ptr<KernelMetrics>> KernelMetrics::create(observe::Registry& registry, const MapSet* maps) {
    std::unique_ptr<KernelMetrics> metrics(new KernelMetrics(maps));
    if (auto status = metrics->register_families(registry); !status) return status.error();
    return metrics;
}

Status KernelMetrics::register_families(observe::Registry& registry) {
    observe::Registrations r;
    auto& k = kernel_registry_;
    read_errors_ = r.take_only(registry.counter("egressd_kernel_read_errors_total",
                                                "Failed reads of the kernel's counters or event statistics at "
                                                "scrape time (the metrics read are then left out)."));
    decisions_ = r.take(k.counter(
        "egressd_decisions_total",
        "Decisions of the BPF programs, by reason and hook (kernel counters). verdict is deny for the reasons deny, "
        "no-config, raw-socket and protocol (in audit mode these calls were allowed; see egressd_audit_events_total), "
        "allow otherwise.",
        {"verdict", "reason", "hook"}));
    denied_ = r.take(k.counter("egressd_denied_connections_total",
                               "Calls decided deny (reasons deny, no-config, raw-socket and protocol, every hook; kernel counters)."));
    events_sent_ = r.take(k.counter("egressd_events_sent_total", "Decision events the kernel put in the ring buffer."));
    events_suppressed_ = r.take(k.counter("egressd_events_suppressed_total",
                                          "Decision events the kernel dropped by the per-source rate limit."));
    events_lost_ = r.take(
        k.counter("egressd_events_lost_total", "Decision events the kernel lost because the ring buffer was full."));
    flows_lost_ = r.take(
        k.counter("egressd_flows_lost_total", "Tracked egress connections evicted from flows_v2 before they closed."));
    traffic_lost_ =
        r.take(k.counter("egressd_traffic_lost_total",
                         "Closed egress connections not added to the traffic totals because those maps were full."));
    egress_connections_ = r.take(
        k.counter("egressd_egress_connections_total",
                  "Closed egress TCP connections, by the rule that allowed them (rule: the policy NAMESPACE/NAME for "
                  "reason policy, else the index in its list).",
                  {"reason", "rule"}));
    egress_bytes_ = r.take(k.counter("egressd_egress_bytes_total",
                                     "Bytes of closed egress TCP connections by rule and direction (the sockets' own "
                                     "counters, which count SYN and FIN as one byte each).",
                                     {"reason", "rule", "direction"}));
    identity_bytes_ = r.take(
        k.counter("egressd_identity_egress_bytes_total",
                  "Bytes of closed egress TCP connections by source identity (NAMESPACE/SERVICEACCOUNT, or unknown).",
                  {"identity", "direction"}));
    open_connections_ = r.take(k.gauge("egressd_open_egress_connections",
                                       "Open egress TCP connections (tracked flows), by the rule that allowed them.",
                                       {"reason", "rule"}));
    open_bytes_ = r.take(k.gauge("egressd_open_egress_bytes",
                                 "Bytes of open egress TCP connections so far, by rule and direction, read from the "
                                 "sockets at scrape time; at close they move to egressd_egress_bytes_total.",
                                 {"reason", "rule", "direction"}));
    dns_queries_ = r.take(k.counter("egressd_dns_queries_total",
                                    "DNS queries from enforced workloads to a trusted resolver, recorded to match "
                                    "their answers."));
    dns_responses_ = r.take(k.counter(
        "egressd_dns_responses_total",
        "DNS responses arriving at enforced workloads, by outcome: learned (a policy host's answer), no-policy-host, "
        "and the ignored ones: untrusted, unsolicited, malformed, unsupported (past the parser's limits), no-answer "
        "(an error rcode).",
        {"outcome"}));
    dns_learned_ = r.take(k.counter("egressd_dns_learned_addresses_total",
                                    "Addresses learned from DNS answers, by event: learned (or refreshed), evicted (a "
                                    "live entry replaced by the same identity's), expired (an expired entry replaced "
                                    "by a new address).",
                                    {"event"}));
    dns_entries_ = r.take(k.gauge("egressd_dns_learned_addresses",
                                  "Entries of dns_learned_v1 now, by state: live, or expired (its TTL ran out; the "
                                  "entry stays until a new address of the same identity takes its place).",
                                  {"state"}));
    return r.status();
}

void KernelMetrics::scrape(std::vector<RenderedFamily>& families) {
    if (maps_ == nullptr) return;
    std::lock_guard lock(scrape_mutex_);
    scrape_decisions(families);
    scrape_event_stats(families);
    scrape_dns_stats(families);
    scrape_traffic(families);
    scrape_open_flows(families);
}

void KernelMetrics::scrape_dns_stats(std::vector<RenderedFamily>& families) {
    auto stats = maps_->read_dns_stats();
    if (!stats.ok()) return read_failed("DNS statistics", stats.error());
    read_works("DNS statistics");
    const auto& n = *stats;
    set_total(dns_queries_, n[EGRESSD_DNS_STAT_QUERIES]);
    const std::pair<const char*, uint64_t> outcomes[] = {
        {"learned", n[EGRESSD_DNS_STAT_ANSWERS_LEARNED]},
        {"no-policy-host", n[EGRESSD_DNS_STAT_NO_POLICY_HOST]},
        {"untrusted", n[EGRESSD_DNS_STAT_UNTRUSTED]},
        {"unsolicited", n[EGRESSD_DNS_STAT_UNSOLICITED]},
        {"malformed", n[EGRESSD_DNS_STAT_MALFORMED]},
        {"unsupported", n[EGRESSD_DNS_STAT_UNSUPPORTED]},
        {"no-answer", n[EGRESSD_DNS_STAT_NO_ANSWER]},
    };
    for (const auto& [outcome, total] : outcomes) dns_responses_->labels({outcome}).set_total(double(total));
    const std::pair<const char*, int> events[] = {{"learned", EGRESSD_DNS_STAT_LEARNED},
                                                   {"evicted", EGRESSD_DNS_STAT_EVICTED},
                                                   {"expired", EGRESSD_DNS_STAT_EXPIRED}};
    for (const auto& [event, stat] : events) dns_learned_->labels({event}).set_total(double(n[stat]));
    render(*dns_queries_, families);
    render(*dns_responses_, families);
    render(*dns_learned_, families);
    // What the entries are now: a batch read of the map (a few ms at 100k).
    auto entries = maps_->dns_learned.read_all();
    if (!entries.ok()) return read_failed("learned DNS addresses", entries.error());
    timespec boot{};
    ::clock_gettime(CLOCK_BOOTTIME, &boot);
    const uint64_t now = uint64_t(boot.tv_sec) * 1'000'000'000ull + uint64_t(boot.tv_nsec);
    uint64_t live = 0;
    for (const auto& [key, entry] : *entries) live += entry.expires_ns > now;
    dns_entries_->labels({"live"}).set(double(live));
    dns_entries_->labels({"expired"}).set(double(entries->size() - live));
    render(*dns_entries_, families);
}

void KernelMetrics::scrape_decisions(std::vector<RenderedFamily>& families) {
    auto counters = maps_->read_counters();
    if (!counters.ok()) return read_failed("decision counters", counters.error());
    read_works("decision counters");
    const std::vector<uint64_t>& totals = *counters;
    uint64_t denied = 0;
    const size_t slots = std::min<size_t>(totals.size(), EGRESSD_COUNTER_SLOTS);
    for (size_t i = 0; i < slots; ++i) {
        const auto reason = static_cast<egressd_reason>(i / EGRESSD_HOOK_MAX);
        const auto hook = static_cast<egressd_hook>(i % EGRESSD_HOOK_MAX);
        if (reason == EGRESSD_REASON_NONE && totals[i] == 0) continue;  // never decided
        const bool deny = is_deny_reason(reason);
        if (deny) denied += totals[i];
        decisions_->labels({deny ? "deny" : "allow", std::string(reason_name(reason)), std::string(hook_name(hook))})
            .set_total(static_cast<double>(totals[i]));
    }
    set_total(denied_, denied);
    render(*decisions_, families);
    render(*denied_, families);
}

void KernelMetrics::scrape_event_stats(std::vector<RenderedFamily>& families) {
    auto stats = maps_->read_event_stats();
    if (!stats.ok()) return read_failed("event statistics", stats.error());
    read_works("event statistics");
    const std::pair<observe::CounterFamily*, int> families_by_stat[] = {
        {events_sent_, EGRESSD_STAT_EVENTS_SENT},   {events_suppressed_, EGRESSD_STAT_EVENTS_SUPPRESSED},
        {events_lost_, EGRESSD_STAT_EVENTS_LOST},   {flows_lost_, EGRESSD_STAT_FLOWS_LOST},
        {traffic_lost_, EGRESSD_STAT_TRAFFIC_LOST},
    };
    for (const auto& [family, stat] : families_by_stat) {
        set_total(family, (*stats)[stat]);
        render(*family, families);
    }
}

// Egress traffic of closed connections, per rule and per identity, named with
// the active generation's policy names and the identity names.
void KernelMetrics::scrape_traffic(std::vector<RenderedFamily>& families) {
    auto rules = maps_->read_rule_traffic();
    auto identities = maps_->read_identity_traffic();
    auto names = maps_->read_identity_names();
    auto control = maps_->read_control();
    if (!rules.ok()) return read_failed("traffic totals", rules.error());
    if (!identities.ok()) return read_failed("traffic totals", identities.error());
    if (!names.ok()) return read_failed("traffic totals", names.error());
    if (!control.ok()) return read_failed("traffic totals", control.error());
    read_works("traffic totals");
    std::map<uint32_t, PolicyRef> policies;
    // The names only: not the slot's policy entries (100k and more).
    if (auto names_in_force = maps_->read_policy_names(control->active_slot & 1); names_in_force.ok())
        policies = std::move(*names_in_force);
    for (const auto& [key, t] : *rules) {
        const auto reason = reason_from(key.first);
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
    render(*egress_connections_, families);
    render(*egress_bytes_, families);
    render(*identity_bytes_, families);
}

// The connections flows_v2 tracks, with their sockets' bytes so far.
void KernelMetrics::scrape_open_flows(std::vector<RenderedFamily>& families) {
    auto flows = maps_->read_flows();
    auto control = maps_->read_control();
    if (!flows.ok()) return read_failed("open flows", flows.error());
    if (!control.ok()) return read_failed("open flows", control.error());
    const std::map<uint64_t, SocketBytes> none;
    const std::map<uint64_t, SocketBytes>* bytes = &none;
    if (!flows->empty() && read_open_sockets_) {
        // Reading the sockets walks every enforced cgroup and enters each
        // network namespace: at most once per kOpenBytesMaxAge, however
        // often /metrics is scraped.
        const auto now = std::chrono::steady_clock::now();
        if (!socket_bytes_read_at_ || now - *socket_bytes_read_at_ >= kOpenBytesMaxAge) {
            auto read = read_open_sockets_();
            if (!read.ok()) return read_failed("open sockets", read.error());
            socket_bytes_ = std::move(*read);
            socket_bytes_read_at_ = now;
        }
        bytes = &socket_bytes_;
    }
    read_works("open flows");
    std::map<uint32_t, PolicyRef> policies;
    if (!flows->empty()) {
        if (auto names_in_force = maps_->read_policy_names(control->active_slot & 1); names_in_force.ok())
            policies = std::move(*names_in_force);
    }
    open_connections_->clear();
    open_bytes_->clear();
    for (const auto& [cookie, flow] : *flows) {
        const auto reason = reason_from(flow.reason);
        std::string rule = std::to_string(flow.rule);
        if (reason == EGRESSD_REASON_POLICY && policies.contains(flow.rule)) rule = policies.at(flow.rule).str();
        const std::string why(reason_name(reason));
        open_connections_->labels({why, rule}).inc();
        const auto socket = bytes->find(cookie);
        open_bytes_->labels({why, rule, "sent"}).inc(socket == bytes->end() ? 0.0 : double(socket->second.sent));
        open_bytes_->labels({why, rule, "received"}).inc(socket == bytes->end() ? 0.0 : double(socket->second.received));
    }
    render(*open_connections_, families);
    render(*open_bytes_, families);
}

// Logs a failing read once, until it succeeds again.
void KernelMetrics::read_failed(const std::string& what, const Error& error) {
    read_errors_->inc();
    if (failing_reads_.insert(what).second) {
        log::error("metrics: reading the kernel's {}: {} (left out of /metrics)", what, error.describe());
    }
}

void KernelMetrics::read_works(const std::string& what) {
    if (failing_reads_.erase(what) > 0) log::info("metrics: reading the kernel's {} works again", what);
}

}  // namespace egressd
