// egressctl status: what is attached and enforced now, the agent's view of
// its inputs, and the decision counters. Exits 3 when nothing is enforced.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "agent/agent_state.h"
#include "cli/agent_http.h"
#include "cli/common.h"
#include "kernel/cgroup.h"

namespace egressd::cli {

namespace {

using nlohmann::json;

// Everything status reports, read once.
struct StatusView {
    bool pinned = false;
    egressd_control control{};
    MapImage active;
    std::vector<uint64_t> counters;
    std::vector<LinkInfo> links;
    bool running = false;                // an agent holds the pin directory
    Result<json> agent_status = json();  // the agent's status file
    Result<std::filesystem::path> cgroup_path = std::filesystem::path();
    std::optional<CgroupTarget> cgroup;  // the enforced cgroup, if it exists
    bool enforcing = false;
    json pods;  // Kubernetes mode: the pods with pinned links

    bool attached(const LinkInfo& link) const { return link.pinned && cgroup && link.cgroup_id == cgroup->id; }
};

Result<StatusView> read_status(const AgentConfig& config) {
    StatusView view;
    view.links = read_pinned_links(config.bpffs, config.track_flows);
    if (auto maps = MapSet::open_pinned(config.bpffs, true)) {
        view.pinned = true;
        auto active = read_active_config(*maps);
        if (!active) return active.error();
        view.control = active->control;
        view.active = std::move(active->image);
        auto counters = maps->read_counters();
        if (!counters) return counters.error();
        view.counters = std::move(counters).value();
    }
    view.running = agent_running(config.bpffs);
    view.agent_status = read_status_file(config.run_dir);
    if (config.kubernetes) {
        // Nothing on the pods' parent: each pod has its own links.
        bool all_attached = false;
        view.pods = pod_links_json(config, all_attached);
        view.enforcing = view.pinned && all_attached && (view.active.flags & EGRESSD_CFG_VALID);
        return view;
    }
    view.cgroup_path = resolve_cgroup_path(config.cgroup);
    if (view.cgroup_path) {
        if (auto c = open_existing_cgroup(*view.cgroup_path)) view.cgroup = *c;
    }
    int attached = 0;
    for (const auto& l : view.links) attached += view.attached(l);
    view.enforcing =
        view.pinned && attached == static_cast<int>(view.links.size()) && (view.active.flags & EGRESSD_CFG_VALID);
    return view;
}

// The agent's answer to /readyz; when it cannot be asked, status says nothing of it.
Result<HttpReply> get_readyz(const AgentConfig& config) {
    auto http = AgentHttp::open(config);
    if (!http) return http.error();
    return http->get("/readyz");
}

// The agent's own report: its status file (while it runs) and /readyz.
json agent_json(const AgentConfig& config, const StatusView& view) {
    json agent = {{"running", view.running}};
    if (view.agent_status && view.running) {
        const json& s = *view.agent_status;
        for (const char* key : {"pid", "startedAt", "lastChange", "appliedAt", "lastApplyMillis", "lastError"})
            agent[key] = s.contains(key) ? s[key] : json(nullptr);
        for (const char* key :
             {"policies", "policyErrors", "policyNotes", "hosts", "workloads", "kubernetes", "revocation",
              "enforcementProblem"})
            if (s.contains(key)) agent[key] = s[key];
    }
    if (view.running && !config.http_address.empty()) {
        if (auto ready = get_readyz(config)) {
            std::string reason = ready->body;
            while (!reason.empty() && reason.back() == '\n') reason.pop_back();
            agent["ready"] = ready->status == 200;
            agent["readiness"] = reason;
        }
    }
    return agent;
}

// What the kernel holds: the active generation, its flags, the counters.
json kernel_json(const StatusView& view) {
    const MapImage& a = view.active;
    return {{"activeSlot", view.control.active_slot},
            {"generation", a.generation},
            {"valid", (a.flags & EGRESSD_CFG_VALID) != 0},
            {"enableEgress", (a.flags & EGRESSD_CFG_ENABLE_EGRESS) != 0},
            {"enableEgressPolicy", (a.flags & EGRESSD_CFG_EGRESS_POLICY) != 0},
            {"sidecarUID", (a.flags & EGRESSD_CFG_SIDECAR_UID) ? json(a.sidecar_uid) : json(nullptr)},
            {"mode", a.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce"},
            {"counters", counters_json(view.counters)}};
}

// The event reporting statistics, null when they cannot be read.
json event_stats_json(const AgentConfig& config) {
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return nullptr;
    auto stats = maps->read_event_stats();
    if (!stats) return nullptr;
    return {{"sent", (*stats)[EGRESSD_STAT_EVENTS_SENT]},
            {"suppressed", (*stats)[EGRESSD_STAT_EVENTS_SUPPRESSED]},
            {"lost", (*stats)[EGRESSD_STAT_EVENTS_LOST]}};
}

json status_json(const AgentConfig& config, const StatusView& view) {
    json out = {
        {"agent", agent_json(config, view)},
        {"config", config.source_file.string()},
        {"pinDir", config.bpffs.string()},
        {"cgroup", view.cgroup_path ? view.cgroup_path->string() : config.cgroup},
        {"cgroupId", view.cgroup ? view.cgroup->id : 0},
        {"enforcing", view.enforcing},
        {"links", json::array()},
    };
    for (const auto& l : view.links)
        out["links"].push_back({{"hook", l.hook},
                                {"pinned", l.pinned},
                                {"attached", view.attached(l)},
                                {"linkId", l.link_id},
                                {"programId", l.prog_id},
                                {"program", l.prog_name},
                                {"cgroupId", l.cgroup_id}});
    if (config.kubernetes) out["pods"] = view.pods;
    if (view.pinned) {
        out["events"] = event_stats_json(config);
        out["kernel"] = kernel_json(view);
    }
    return out;
}

// The lines about the agent's inputs, from its status file.
void print_agent_report(const json& s) {
    std::cout << "last change: " << s.value("lastChange", "") << " (at " << s.value("appliedAt", "") << ")\n";
    if (s.contains("lastError") && !s["lastError"].is_null())
        std::cout << "last error:  " << s["lastError"].value("message", "") << " (at " << s["lastError"].value("at", "")
                  << ")\n";
    std::cout << fmt::format("policies:    {} applied, {} not applied (errors); workloads: {}\n",
                             s.value("policies", 0), s.value("policyErrors", json::array()).size(),
                             s.value("workloads", 0));
    for (const auto& e : s.value("policyErrors", json::array()))
        std::cout << "  not applied: " << e.get<std::string>() << "\n";
    const json hosts = s.value("hosts", json::object());  // named: items() must not outlive it
    for (const auto& [host, h] : hosts.items()) {
        std::string addresses;
        for (const auto& a : h["addresses"]) addresses += (addresses.empty() ? "" : ", ") + a.get<std::string>();
        std::cout << fmt::format("  host {}: {}{}\n", host, addresses.empty() ? "(no addresses)" : addresses,
                                 h["error"].is_null() ? "" : " (" + h["error"].get<std::string>() + ")");
    }
}

void print_kernel_report(const StatusView& view) {
    const auto& a = view.active;
    std::cout << fmt::format("generation:  {} (slot {}{})\n", a.generation, view.control.active_slot,
                             (a.flags & EGRESSD_CFG_VALID) ? "" : ", not valid: everything but loopback is denied");
    std::cout << fmt::format("kernel sees: enableEgress={} enableEgressPolicy={} sidecarUID={} mode={}\n",
                             (a.flags & EGRESSD_CFG_ENABLE_EGRESS) != 0, (a.flags & EGRESSD_CFG_EGRESS_POLICY) != 0,
                             (a.flags & EGRESSD_CFG_SIDECAR_UID) ? std::to_string(a.sidecar_uid) : "none",
                             a.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce");
}

void print_status(const AgentConfig& config, const StatusView& view, const json& out) {
    const json& agent = out["agent"];
    std::cout << "agent:       "
              << (view.running ? fmt::format("running (pid {})", agent.value("pid", 0)) : std::string("not running"))
              << "\n";
    std::cout << "config:      " << config.source_file.string() << "\n";
    std::cout << "pins:        " << config.bpffs.string() << (view.pinned ? "" : " (nothing pinned)") << "\n";
    if (config.kubernetes) {
        print_kubernetes_report(view.pods, view.agent_status && view.running ? *view.agent_status : json());
    } else {
        std::cout << "cgroup:      " << out["cgroup"].get<std::string>()
                  << (view.cgroup ? fmt::format(" (id {})", view.cgroup->id) : std::string(" (does not exist)"))
                  << "\n";
        std::cout << "hooks:      ";
        for (const auto& l : view.links)
            std::cout << " " << l.hook << (view.attached(l) ? "=attached" : l.pinned ? "=elsewhere" : "=detached");
        std::cout << "\n";
    }
    std::cout << "enforcing:   " << (view.enforcing ? "yes" : "NO") << "\n";
    if (view.pinned) print_kernel_report(view);
    if (agent.contains("ready"))
        std::cout << "ready:       " << (agent["ready"].get<bool>() ? "yes" : "NO") << " ("
                  << agent["readiness"].get<std::string>() << ")\n";
    if (out.contains("events") && !out["events"].is_null())
        std::cout << fmt::format("events:      {} sent, {} suppressed by the rate limit, {} lost (ring full)\n",
                                 out["events"]["sent"].get<uint64_t>(), out["events"]["suppressed"].get<uint64_t>(),
                                 out["events"]["lost"].get<uint64_t>());
    if (view.running && view.agent_status) print_agent_report(*view.agent_status);
    if (agent.contains("revocation")) std::cout << "revocation:  " << agent["revocation"].get<std::string>() << "\n";
    if (agent.contains("enforcementProblem") && agent["enforcementProblem"].is_string())
        std::cout << "PROBLEM:     " << agent["enforcementProblem"].get<std::string>() << "\n";
    if (view.pinned) print_counters(view.counters);
}

Exit status_command(const AgentConfig& config, bool as_json) {
    const auto view = read_status(config);
    if (!view) return view.error();
    const json out = status_json(config, *view);
    if (as_json)
        print_json(out);
    else
        print_status(config, *view, out);
    return view->enforcing ? 0 : 3;
}

}  // namespace

Command add_status_command(CLI::App& app) {
    auto as_json = std::make_shared<bool>(false);
    auto* sub = app.add_subcommand("status", "what is attached and enforced now, and the decision counters");
    sub->add_flag("--json", *as_json, "machine-readable output");
    return {sub, true, [as_json](const AgentConfig& config) { return status_command(config, *as_json); }};
}

}  // namespace egressd::cli
