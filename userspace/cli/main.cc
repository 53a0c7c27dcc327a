// egressctl: inspect and steer egressd. Reads the kernel's pinned maps (the
// source of truth for what is enforced) and the agent's status file.
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fmt/format.h>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/json_text.h"
#include "core/agent_config.h"
#include "core/decision.h"
#include "core/files.h"
#include "core/meshconfig.h"
#include "core/workloads.h"
#include "core/yaml_edit.h"
#include "kernel/bpf_adapter.h"
#include "kernel/cgroup.h"
#include "agent/agent_state.h"

using namespace egressd;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A failure the user must see: one line on stderr, a non-zero exit.
struct Failure {
    std::string message;
    int code = 1;
};

[[noreturn]] void fail(const std::string& message, int code = 1) { throw Failure{message, code}; }

template <typename T>
T must(Result<T> result, const std::string& context = "") {
    if (!result) fail(context.empty() ? result.error().describe() : context + ": " + result.error().describe());
    return std::move(result).value();
}

void must(const Status& status, const std::string& context = "") {
    if (!status) fail(context.empty() ? status.error().describe() : context + ": " + status.error().describe());
}

void require_root(const char* what) {
    if (::geteuid() != 0) fail(std::string("egressctl ") + what + " must run as root (it reads BPF maps and cgroups)", 2);
}

// --config, else $EGRESSD_CONFIG, else /etc/egressd/egressd.yaml, else the
// bundled config of the checkout this binary was built in (build/bin/..).
fs::path default_config_file() {
    if (const char* env = std::getenv("EGRESSD_CONFIG"); env && *env) return env;
    if (fs::exists("/etc/egressd/egressd.yaml")) return "/etc/egressd/egressd.yaml";
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    const fs::path bundled = exe.parent_path().parent_path().parent_path() / "config" / "egressd.yaml";
    if (!ec && fs::exists(bundled)) return bundled;
    return "/etc/egressd/egressd.yaml";
}

std::string flag_names(uint32_t flags) {
    static const std::pair<uint32_t, const char*> names[] = {
        {EGRESSD_CFG_VALID, "valid"},
        {EGRESSD_CFG_ENABLE_EGRESS, "enable-egress"},
        {EGRESSD_CFG_EGRESS_POLICY, "egress-policy"},
        {EGRESSD_CFG_POLICY_ACTIVE, "policy-active"},
        {EGRESSD_CFG_HAS_INCLUSION, "has-inclusion"},
        {EGRESSD_CFG_SIDECAR_UID, "sidecar-uid"},
        {EGRESSD_CFG_EVENTS_POLICY, "events-policy"},
        {EGRESSD_CFG_EVENTS_PASSTHROUGH, "events-passthrough"},
        {EGRESSD_CFG_POLICY_PREFIXES, "policy-prefixes"},
    };
    std::string out;
    for (const auto& [bit, name] : names)
        if (flags & bit) out += (out.empty() ? "" : "|") + std::string(name);
    return out.empty() ? "none" : out;
}

const char* table_name(uint8_t table) {
    switch (table) {
        case EGRESSD_TABLE_EXCLUDE: return "exclude";
        case EGRESSD_TABLE_INCLUDE: return "include";
        case EGRESSD_TABLE_MESH: return "mesh";
        default: return "unknown";
    }
}

// The view of the kernel every read-only command starts from.
struct KernelView {
    bool pinned = false;
    egressd_control control{};
    MapImage active;
    std::vector<uint64_t> counters;
    std::vector<LinkInfo> links;
};

KernelView read_kernel(const AgentConfig& config) {
    KernelView view;
    view.links = read_pinned_links(config.bpffs);
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return view;
    view.pinned = true;
    view.control = must(maps->read_control());
    view.active = must(maps->read_slot(view.control.active_slot & 1));
    view.counters = must(maps->read_counters());
    return view;
}

json counters_json(const std::vector<uint64_t>& counters) {
    json out = json::object();
    for (int reason = 1; reason < EGRESSD_REASON_MAX; ++reason) {
        json by_hook = json::object();
        uint64_t total = 0;
        for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook) {
            const uint64_t n = counters.empty() ? 0 : counters[reason * EGRESSD_HOOK_MAX + hook];
            by_hook[std::string(hook_name(static_cast<egressd_hook>(hook)))] = n;
            total += n;
        }
        by_hook["total"] = total;
        out[std::string(reason_name(static_cast<egressd_reason>(reason)))] = by_hook;
    }
    return out;
}

void print_counters(const std::vector<uint64_t>& counters) {
    std::cout << fmt::format("  {:<15}", "decisions");
    for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook)
        std::cout << fmt::format("{:>10}", hook_name(static_cast<egressd_hook>(hook)));
    std::cout << "\n";
    for (int reason = 1; reason < EGRESSD_REASON_MAX; ++reason) {
        std::cout << fmt::format("  {:<15}", reason_name(static_cast<egressd_reason>(reason)));
        for (int hook = 0; hook < EGRESSD_HOOK_MAX; ++hook)
            std::cout << fmt::format("{:>10}", counters.empty() ? 0 : counters[reason * EGRESSD_HOOK_MAX + hook]);
        std::cout << "\n";
    }
}

// ---- talking to the agent over HTTP ---------------------------------------------

struct HttpReply {
    int status = 0;
    std::string body;
};

// One GET to the agent's httpAddress ("HOST:PORT" or "[V6]:PORT"), HTTP/1.0.
Result<HttpReply> http_get(const std::string& address, const std::string& path) {
    std::string host, port;
    if (!address.empty() && address[0] == '[') {
        const auto close = address.find("]:");
        if (close == std::string::npos) return make_error("httpAddress \"" + address + "\" is not [HOST]:PORT");
        host = address.substr(1, close - 1);
        port = address.substr(close + 2);
    } else {
        const auto colon = address.rfind(':');
        if (colon == std::string::npos) return make_error("httpAddress \"" + address + "\" is not HOST:PORT");
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
    }
    addrinfo hints{};
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || !found)
        return make_error("httpAddress \"" + address + "\" is not a numeric address and port");
    UniqueFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const int connected = fd.valid() ? ::connect(fd.get(), found->ai_addr, found->ai_addrlen) : -1;
    ::freeaddrinfo(found);
    if (connected != 0) return system_error("connecting to egressd at " + address + " (is it running?)");
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
    if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
        return system_error("sending to egressd at " + address);
    std::string response;
    char buf[65536];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
    const auto header_end = response.find("\r\n\r\n");
    if (response.compare(0, 5, "HTTP/") != 0 || header_end == std::string::npos)
        return make_error("egressd at " + address + " sent no HTTP response");
    HttpReply reply;
    reply.status = std::atoi(response.c_str() + response.find(' ') + 1);
    reply.body = response.substr(header_end + 4);
    return reply;
}

std::string url_encode(const std::string& text) {
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out += static_cast<char>(c);
        else out += fmt::format("%{:02X}", c);
    }
    return out;
}

// ---- events -------------------------------------------------------------------

std::string event_line(const json& e) {
    std::string who = e["identity"].is_null() ? fmt::format("cgroup {}", e.value("cgroupId", 0ull))
                                              : e["identity"].get<std::string>();
    std::string target = e.value("destination", "");
    if (target.find(':') != std::string::npos) target = "[" + target + "]";
    std::string why = fmt::format("{} (row {})", e.value("reason", ""), e.value("row", 0));
    if (!e["policy"].is_null()) why += " Egress " + e["policy"].get<std::string>();
    const std::string protocol = e["protocol"].is_string() ? e["protocol"].get<std::string>() : json_text(e["protocol"]);
    return fmt::format("{} {:<5} {} -> {}:{}/{} {} {}[{}]", e.value("time", ""), e.value("verdict", ""), who, target,
                       e.value("port", 0), protocol, why, e.value("comm", ""), e.value("pid", 0));
}

int cmd_events(const AgentConfig& config, bool follow, bool as_json, const std::string& identity,
               const std::string& verdict) {
    if (config.http_address.empty()) fail("events come from the agent's HTTP endpoint; httpAddress is off");
    if (!verdict.empty() && verdict != "deny" && verdict != "audit" && verdict != "allow")
        fail("--verdict: expected deny, audit or allow", 2);
    if (!identity.empty()) must(IdentityName::parse(identity), "--identity");
    uint64_t since = 0;
    for (;;) {
        std::string path = fmt::format("/events?since={}", since);
        if (!identity.empty()) path += "&identity=" + url_encode(identity);
        if (!verdict.empty()) path += "&verdict=" + verdict;
        const HttpReply reply = must(http_get(config.http_address, path));
        if (reply.status != 200) fail(fmt::format("egressd answered {} to /events", reply.status));
        json events;
        try {
            events = json::parse(reply.body);
        } catch (const json::exception& e) {
            fail(std::string("egressd sent malformed events: ") + e.what());
        }
        for (const auto& e : events) {
            since = std::max<uint64_t>(since, e.value("seq", 0ull));
            std::cout << (as_json ? json_text(e) : event_line(e)) << "\n";
        }
        std::cout.flush();
        if (!follow) return 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
}

// ---- flows --------------------------------------------------------------------

int cmd_flows(const AgentConfig& config, bool as_json) {
    auto maps = must(MapSet::open_pinned(config.bpffs, true), "nothing pinned (is egressd running?)");
    const auto flows = must(maps.read_flows());
    const auto names = must(maps.read_identity_names());
    const egressd_control control = must(maps.read_control());
    const MapImage image = must(maps.read_slot(control.active_slot & 1));
    timespec boot{};
    clock_gettime(CLOCK_BOOTTIME, &boot);
    const uint64_t now_ns = static_cast<uint64_t>(boot.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(boot.tv_nsec);

    json out = json::array();
    for (const auto& [cookie, f] : flows) {
        IpAddress dst;
        std::copy(std::begin(f.addr), std::end(f.addr), dst.bytes.begin());
        const auto reason = static_cast<egressd_reason>(f.reason);
        json identity = nullptr, policy = nullptr;
        if (auto it = names.find(f.identity); f.identity && it != names.end()) identity = it->second.str();
        if (reason == EGRESSD_REASON_POLICY && image.policies.contains(f.rule))
            policy = image.policies.at(f.rule).str();
        out.push_back({{"cookie", cookie},
                       {"identity", identity},
                       {"cgroupId", f.cgroup_id},
                       {"destination", dst.str()},
                       {"port", f.port},
                       {"reason", std::string(reason_name(reason))},
                       {"policy", policy},
                       {"ageSeconds", now_ns > f.started_ns ? static_cast<double>(now_ns - f.started_ns) / 1e9 : 0.0},
                       {"bytesSent", f.bytes_sent},
                       {"bytesReceived", f.bytes_received}});
    }
    if (as_json) {
        std::cout << json_text(out, 2) << "\n";
        return 0;
    }
    std::cout << fmt::format("{:<22} {:<40} {:<14} {:>9} {:>12} {:>12}\n", "IDENTITY", "DESTINATION", "REASON", "AGE",
                             "SENT", "RECEIVED");
    for (const auto& f : out) {
        const std::string who = f["identity"].is_null() ? fmt::format("cgroup {}", f["cgroupId"].get<uint64_t>())
                                                        : f["identity"].get<std::string>();
        std::string dst = f["destination"].get<std::string>();
        if (dst.find(':') != std::string::npos) dst = "[" + dst + "]";
        const std::string why =
            f["policy"].is_null() ? f["reason"].get<std::string>() : "policy " + f["policy"].get<std::string>();
        std::cout << fmt::format("{:<22} {:<40} {:<14} {:>8.1f}s {:>12} {:>12}\n", who,
                                 dst + ":" + std::to_string(f["port"].get<int>()), why, f["ageSeconds"].get<double>(),
                                 f["bytesSent"].get<uint64_t>(), f["bytesReceived"].get<uint64_t>());
    }
    std::cout << fmt::format("{} open egress connections\n", out.size());
    return 0;
}

// ---- status -------------------------------------------------------------------

int cmd_status(const AgentConfig& config, bool as_json) {
    require_root("status");
    const KernelView view = read_kernel(config);
    const bool running = agent_running(config.bpffs);
    auto agent_status = read_status_file(config.run_dir);
    auto cgroup_path = resolve_cgroup_path(config.cgroup);
    std::optional<CgroupTarget> cgroup;
    if (cgroup_path) {
        if (auto c = open_existing_cgroup(*cgroup_path)) cgroup = *c;
    }
    int attached = 0;
    for (const auto& l : view.links) attached += l.pinned && cgroup && l.cgroup_id == cgroup->id;
    const bool enforcing =
        view.pinned && attached == static_cast<int>(kLinkNames.size()) && (view.active.flags & EGRESSD_CFG_VALID);

    json out = {
        {"agent", {{"running", running}}},
        {"config", config.source_file.string()},
        {"pinDir", config.bpffs.string()},
        {"cgroup", cgroup_path ? cgroup_path->string() : config.cgroup},
        {"cgroupId", cgroup ? cgroup->id : 0},
        {"enforcing", enforcing},
        {"links", json::array()},
    };
    if (agent_status && running) {
        out["agent"]["pid"] = (*agent_status)["pid"];
        out["agent"]["startedAt"] = (*agent_status)["startedAt"];
        out["agent"]["lastChange"] = (*agent_status)["lastChange"];
        out["agent"]["appliedAt"] = (*agent_status)["appliedAt"];
        out["agent"]["lastApplyMillis"] = (*agent_status)["lastApplyMillis"];
        out["agent"]["lastError"] = (*agent_status)["lastError"];
        for (const char* key : {"policies", "policyErrors", "policyNotes", "hosts", "workloads"})
            if (agent_status->contains(key)) out["agent"][key] = (*agent_status)[key];
    }
    for (const auto& l : view.links)
        out["links"].push_back({{"hook", l.hook},
                                {"pinned", l.pinned},
                                {"attached", l.pinned && cgroup && l.cgroup_id == cgroup->id},
                                {"linkId", l.link_id},
                                {"programId", l.prog_id},
                                {"program", l.prog_name},
                                {"cgroupId", l.cgroup_id}});
    if (running && !config.http_address.empty()) {
        if (auto ready = http_get(config.http_address, "/readyz")) {
            std::string reason = ready->body;
            while (!reason.empty() && reason.back() == '\n') reason.pop_back();
            out["agent"]["ready"] = ready->status == 200;
            out["agent"]["readiness"] = reason;
        }
    }
    if (view.pinned) {
        json events = nullptr;
        if (auto maps = MapSet::open_pinned(config.bpffs, true)) {
            if (auto stats = maps->read_event_stats())
                events = {{"sent", (*stats)[EGRESSD_STAT_EVENTS_SENT]},
                          {"suppressed", (*stats)[EGRESSD_STAT_EVENTS_SUPPRESSED]},
                          {"lost", (*stats)[EGRESSD_STAT_EVENTS_LOST]}};
        }
        out["events"] = events;
        out["kernel"] = {{"activeSlot", view.control.active_slot},
                         {"generation", view.active.generation},
                         {"valid", (view.active.flags & EGRESSD_CFG_VALID) != 0},
                         {"enableEgress", (view.active.flags & EGRESSD_CFG_ENABLE_EGRESS) != 0},
                         {"enableEgressPolicy", (view.active.flags & EGRESSD_CFG_EGRESS_POLICY) != 0},
                         {"sidecarUID", (view.active.flags & EGRESSD_CFG_SIDECAR_UID)
                                            ? json(view.active.sidecar_uid)
                                            : json(nullptr)},
                         {"mode", view.active.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce"},
                         {"counters", counters_json(view.counters)}};
    }
    if (as_json) {
        std::cout << json_text(out, 2) << "\n";
        return enforcing ? 0 : 3;
    }

    std::cout << "agent:       "
              << (running ? fmt::format("running (pid {})", out["agent"].value("pid", 0)) : std::string("not running"))
              << "\n";
    std::cout << "config:      " << config.source_file.string() << "\n";
    std::cout << "cgroup:      " << out["cgroup"].get<std::string>()
              << (cgroup ? fmt::format(" (id {})", cgroup->id) : std::string(" (does not exist)")) << "\n";
    std::cout << "pins:        " << config.bpffs.string() << (view.pinned ? "" : " (nothing pinned)") << "\n";
    std::cout << "hooks:      ";
    for (const auto& l : view.links) {
        const bool on = l.pinned && cgroup && l.cgroup_id == cgroup->id;
        std::cout << " " << l.hook << (on ? "=attached" : l.pinned ? "=elsewhere" : "=detached");
    }
    std::cout << "\n";
    std::cout << "enforcing:   " << (enforcing ? "yes" : "NO") << "\n";
    if (view.pinned) {
        const auto& a = view.active;
        std::cout << fmt::format("generation:  {} (slot {}{})\n", a.generation, view.control.active_slot,
                                 (a.flags & EGRESSD_CFG_VALID) ? "" : ", not valid: everything but loopback is denied");
        std::cout << fmt::format("kernel sees: enableEgress={} enableEgressPolicy={} sidecarUID={} mode={}\n",
                                 (a.flags & EGRESSD_CFG_ENABLE_EGRESS) != 0, (a.flags & EGRESSD_CFG_EGRESS_POLICY) != 0,
                                 (a.flags & EGRESSD_CFG_SIDECAR_UID) ? std::to_string(a.sidecar_uid) : "none",
                                 a.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce");
    }
    if (out["agent"].contains("ready"))
        std::cout << "ready:       " << (out["agent"]["ready"].get<bool>() ? "yes" : "NO") << " ("
                  << out["agent"]["readiness"].get<std::string>() << ")\n";
    if (!out["events"].is_null() && out.contains("events"))
        std::cout << fmt::format("events:      {} sent, {} suppressed by the rate limit, {} lost (ring full)\n",
                                 out["events"]["sent"].get<uint64_t>(), out["events"]["suppressed"].get<uint64_t>(),
                                 out["events"]["lost"].get<uint64_t>());
    if (running && agent_status) {
        const json& s = *agent_status;
        std::cout << "last change: " << s.value("lastChange", "") << " (at " << s.value("appliedAt", "") << ")\n";
        if (s.contains("lastError") && !s["lastError"].is_null())
            std::cout << "last error:  " << s["lastError"].value("message", "") << " (at "
                      << s["lastError"].value("at", "") << ")\n";
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
    if (view.pinned) print_counters(view.counters);
    return enforcing ? 0 : 3;
}

// ---- egress enable|disable ----------------------------------------------------

int cmd_egress(const AgentConfig& config, bool enable, bool wait) {
    const fs::path file = config.mesh_config;
    const std::string text = must(read_file(file));
    const BoolEdit edit = must(set_enable_egress(text, enable, file.string()));
    if (!edit.changed) {
        std::cout << fmt::format("{}: spec.traffic.enableEgress is already {}\n", file.string(), enable);
        return 0;
    }
    // Never write a file the agent would reject.
    must(parse_meshconfig(edit.text, file.string()), "refusing to write " + file.string());
    must(write_file_atomically(file, edit.text));
    std::cout << fmt::format("{}: spec.traffic.enableEgress: {} -> {}\n", file.string(),
                             edit.had_value ? (edit.old_value ? "true" : "false") : "(unset)", enable);
    if (!wait) return 0;
    if (::geteuid() != 0 || !agent_running(config.bpffs)) {
        std::cout << "egressd is not running on " << config.bpffs.string() << ": the change applies when it starts\n";
        return 0;
    }
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return 0;
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
        auto control = maps->read_control();
        if (control) {
            auto slot = maps->read_slot(control->active_slot & 1);
            if (slot && ((slot->flags & EGRESSD_CFG_ENABLE_EGRESS) != 0) == enable) {
                const double ms =
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
                std::cout << fmt::format("egressd applied it: generation {} enforced (seen after {:.0f} ms)\n",
                                         slot->generation, ms);
                return 0;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    fail("egressd has not applied the change after 3 s; see its log (egressctl status shows the last error)");
}

// ---- run ----------------------------------------------------------------------

// Registers the workload (cgroup <enforced>/<ns>/<sa> in the workloads file)
// and waits until the kernel knows its identity; returns its cgroup.
fs::path register_workload(const AgentConfig& config, const fs::path& enforced, const IdentityName& identity) {
    if (config.workloads_file.empty())
        fail("run --as needs the agent setting `workloads` (a file egressctl can register workloads in)", 2);
    std::vector<Workload> workloads = must(load_workloads(config.workloads_file));
    auto it = std::find_if(workloads.begin(), workloads.end(), [&](const Workload& w) { return w.identity == identity; });
    if (it == workloads.end()) {
        workloads.push_back(Workload{default_workload_cgroup(identity), identity});
        must(write_file_atomically(config.workloads_file, render_workloads(workloads)));
        it = std::prev(workloads.end());
    }
    const fs::path path = enforced / it->cgroup;
    const CgroupTarget cgroup = must(ensure_cgroup(path));
    if (!agent_running(config.bpffs))
        fail("egressd is not running: it registers " + identity.str() + " when it starts (scripts/run)");
    auto maps = must(MapSet::open_pinned(config.bpffs, true));
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
        auto known = maps.read_workload_identities();
        if (known && known->contains(cgroup.id)) return path;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    fail("egressd has not registered " + identity.str() + " after 3 s; see its log (egressctl status)");
}

int cmd_run(const AgentConfig& config, const std::optional<IdentityName>& as, const std::vector<std::string>& command) {
    if (command.empty()) fail("run: no command given (egressctl run [--as NS/SA] -- CMD ARGS...)", 2);
    const fs::path enforced = must(resolve_cgroup_path(config.cgroup));
    const CgroupTarget cgroup = must(open_existing_cgroup(enforced), "is egressd running? (scripts/run)");
    int attached = 0;
    for (const auto& l : read_pinned_links(config.bpffs)) attached += l.pinned && l.cgroup_id == cgroup.id;
    if (attached != static_cast<int>(kLinkNames.size()))
        fail(fmt::format("egressd is not enforcing on {} ({} of {} programs attached); start it with scripts/run",
                         enforced.string(), attached, kLinkNames.size()));
    const fs::path path = as ? register_workload(config, enforced, *as) : enforced;
    must(join_cgroup(path));
    std::vector<char*> argv;
    for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    fail(fmt::format("run: cannot execute {}: {}", command[0], std::strerror(errno)), 127);
}

// ---- check ----------------------------------------------------------------------

struct Destination {
    IpAddress address;
    uint16_t port = 0;
};

// ADDRESS:PORT, with an IPv6 address in brackets: [2001:db8::1]:443.
Destination parse_destination(const std::string& text) {
    std::string address, port;
    if (!text.empty() && text[0] == '[') {
        const auto close = text.find("]:");
        if (close == std::string::npos) fail("--to: expected [IPV6]:PORT, got \"" + text + "\"", 2);
        address = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string::npos || text.find(':') != colon)
            fail("--to: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT), got \"" + text + "\"", 2);
        address = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    Destination d;
    d.address = must(IpAddress::parse(address), "--to");
    long long number = -1;
    try {
        size_t used = 0;
        number = std::stoll(port, &used);
        if (used != port.size()) number = -1;
    } catch (const std::exception&) {
    }
    d.port = must(validate_port(number), "--to");
    return d;
}

int cmd_check(const AgentConfig& config, const std::string& from, const std::string& to, const std::string& proto_name,
              uint32_t uid, bool as_json) {
    const IdentityName identity = must(IdentityName::parse(from), "--from");
    const Destination dst = parse_destination(to);
    if (proto_name != "tcp" && proto_name != "udp") fail("--proto: expected tcp or udp", 2);
    const uint8_t proto = proto_name == "tcp" ? IPPROTO_TCP : IPPROTO_UDP;

    // The live kernel maps, evaluated by the reference model: what the kernel does now.
    auto maps = must(MapSet::open_pinned(config.bpffs, true), "nothing pinned (is egressd running?)");
    const egressd_control control = must(maps.read_control());
    const MapImage image = must(maps.read_slot(control.active_slot & 1));
    uint32_t number = 0;
    for (const auto& [n, name] : must(maps.read_identity_names()))
        if (name == identity) number = n;
    const Decision d = decide(&image, Query{dst.address, dst.port, proto, uid, number});

    const bool allowed = d.verdict == EGRESSD_VERDICT_ALLOW;
    std::optional<PolicyRef> policy;
    if (d.reason == EGRESSD_REASON_POLICY && image.policies.contains(d.rule)) policy = image.policies.at(d.rule);
    const std::string target = fmt::format("{}:{}/{}", dst.address.str(), dst.port, proto_name);
    std::string why;
    switch (d.reason) {
        case EGRESSD_REASON_POLICY:
            why = policy ? fmt::format("Egress {}/{} allows {} to {}", policy->namespace_, policy->name, identity.str(),
                                       target)
                         : "an Egress policy allows it";
            break;
        case EGRESSD_REASON_DENY:
            if (!(image.flags & EGRESSD_CFG_POLICY_ACTIVE))
                why = "enableEgress is false and Egress policies do not apply (enableEgressPolicy is false)";
            else if (number == 0)
                why = identity.str() + " is not a known identity (no registered workload, no policy names it)";
            else
                why = fmt::format("enableEgress is false and no Egress policy allows {} to {}", identity.str(), target);
            break;
        case EGRESSD_REASON_PASSTHROUGH: why = "enableEgress is true: mesh-wide passthrough"; break;
        case EGRESSD_REASON_MESH: why = "the destination is in a mesh CIDR: the sidecar's business"; break;
        case EGRESSD_REASON_EXCLUDED_CIDR: why = "the destination is in outboundIPRangeExclusionList"; break;
        case EGRESSD_REASON_EXCLUDED_PORT: why = "the port is in outboundPortExclusionList"; break;
        case EGRESSD_REASON_NOT_INCLUDED: why = "the destination is outside outboundIPRangeInclusionList"; break;
        case EGRESSD_REASON_SIDECAR_UID: why = "the caller runs as the sidecar UID"; break;
        case EGRESSD_REASON_LOCAL: why = "local destination (loopback)"; break;
        case EGRESSD_REASON_NO_CONFIG: why = "no valid generation is loaded: fail closed"; break;
        default: break;
    }
    if (as_json) {
        json out = {{"verdict", allowed ? "allow" : "deny"},
                    {"reason", reason_name(d.reason)},
                    {"row", reason_row(d.reason)},
                    {"why", why},
                    {"from", {{"namespace", identity.namespace_}, {"serviceAccount", identity.service_account},
                              {"identity", number}}},
                    {"to", {{"address", dst.address.str()}, {"port", dst.port}, {"protocol", proto_name}}},
                    {"generation", image.generation},
                    {"policy", policy ? json{{"namespace", policy->namespace_}, {"name", policy->name}} : json(nullptr)}};
        std::cout << json_text(out, 2) << "\n";
    } else {
        std::cout << fmt::format("{} {} -> {}: {} (row {}: {})\n", allowed ? "ALLOW" : "DENY", identity.str(), target,
                                 why, reason_row(d.reason), reason_name(d.reason));
        std::cout << fmt::format("  identity {} = {}; generation {}\n", identity.str(),
                                 number ? std::to_string(number) : std::string("unknown"), image.generation);
    }
    return allowed ? 0 : 1;
}

// ---- dump ---------------------------------------------------------------------

int cmd_dump(const AgentConfig& config, bool as_json) {
    require_root("dump");
    auto maps = must(MapSet::open_pinned(config.bpffs, true), "nothing pinned (is egressd running?)");
    const egressd_control control = must(maps.read_control());
    const uint32_t slot = control.active_slot & 1;
    const MapImage image = must(maps.read_slot(slot));
    const auto counters = must(maps.read_counters());
    const auto names = must(maps.read_identity_names());
    const auto workloads = must(maps.read_workload_identities());
    const std::string dir = config.bpffs.string();
    const std::vector<std::string> bpftool = {
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONTROL),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONFIG),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_COUNTERS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICIES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_HOSTS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_ID_NAMES),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITIES),
        "bpftool link show pinned " + dir + "/links/connect4",
        "bpftool cgroup show <cgroup path>",
    };
    if (as_json) {
        json out = {{"pinDir", dir},
                    {"activeSlot", slot},
                    {"abiVersion", control.abi_version},
                    {"config",
                     {{"generation", image.generation},
                      {"flags", flag_names(image.flags)},
                      {"sidecarUID", image.sidecar_uid},
                      {"mode", image.mode}}},
                    {"cidrs", json::array()},
                    {"ports", json::array()},
                    {"counters", counters_json(counters)},
                    {"bpftool", bpftool}};
        for (const auto& r : image.cidrs)
            out["cidrs"].push_back({{"table", table_name(r.table)}, {"cidr", r.cidr.str()}, {"rule", r.rule}});
        for (const auto& p : image.ports)
            out["ports"].push_back({{"table", "exclude"}, {"port", p.port}, {"rule", p.rule}});
        out["policies"] = json::array();
        for (const auto& [n, p] : image.policies)
            out["policies"].push_back({{"number", n}, {"namespace", p.namespace_}, {"name", p.name}});
        out["policyRules"] = json::array();
        for (const auto& r : image.policy_rules)
            out["policyRules"].push_back({{"identity", r.identity},
                                          {"protocol", r.proto == IPPROTO_TCP ? "tcp" : "udp"},
                                          {"port", r.port},
                                          {"cidr", r.cidr.str()},
                                          {"policy", r.policy}});
        out["identities"] = json::object();
        for (const auto& [n, name] : names) out["identities"][std::to_string(n)] = name.str();
        out["workloads"] = json::object();
        for (const auto& [cg, n] : workloads) out["workloads"][std::to_string(cg)] = n;
        std::cout << json_text(out, 2) << "\n";
        return 0;
    }
    std::cout << fmt::format("{}/control_v1: active slot {} (written by ABI {})\n", dir, slot, control.abi_version);
    std::cout << fmt::format("{}/config_v1[{}]: generation {}, flags {}, sidecar uid {}, mode {}\n", dir, slot,
                             image.generation, flag_names(image.flags), image.sidecar_uid,
                             image.mode == EGRESSD_MODE_AUDIT ? "audit" : "enforce");
    std::cout << fmt::format("{}/cidrs_v1 (slot {}): {} entries\n", dir, slot, image.cidrs.size());
    for (const auto& r : image.cidrs)
        std::cout << fmt::format("  {:<8} {:<45} rule {}\n", table_name(r.table), r.cidr.str(), r.rule);
    std::cout << fmt::format("{}/ports_v1 (slot {}): {} entries\n", dir, slot, image.ports.size());
    for (const auto& p : image.ports) std::cout << fmt::format("  exclude  port {:<5} rule {}\n", p.port, p.rule);
    std::cout << fmt::format("{}/policy_names_v1 (slot {}): {} policies\n", dir, slot, image.policies.size());
    for (const auto& [n, p] : image.policies) std::cout << fmt::format("  {:<5} {}\n", n, p.str());
    const auto host_rules = std::ranges::count_if(image.policy_rules, is_host_rule);
    std::cout << fmt::format("{}/policies_v1 and policy_hosts_v1 (slot {}): {} entries ({} prefixes, {} addresses)\n",
                             dir, slot, image.policy_rules.size(), image.policy_rules.size() - host_rules, host_rules);
    constexpr size_t kShown = 50;
    for (size_t i = 0; i < image.policy_rules.size() && i < kShown; ++i) {
        const auto& r = image.policy_rules[i];
        std::cout << fmt::format("  identity {:<5} {}/{:<5} {:<45} policy {}\n", r.identity,
                                 r.proto == IPPROTO_TCP ? "tcp" : "udp", r.port, r.cidr.str(), r.policy);
    }
    if (image.policy_rules.size() > kShown)
        std::cout << fmt::format("  ... {} more (egressctl dump --json lists all)\n", image.policy_rules.size() - kShown);
    std::cout << fmt::format("{}/id_names_v1: {} identities\n", dir, names.size());
    for (const auto& [n, name] : names) std::cout << fmt::format("  {:<5} {}\n", n, name.str());
    std::cout << fmt::format("{}/identities_v1: {} workload cgroups\n", dir, workloads.size());
    for (const auto& [cg, n] : workloads) std::cout << fmt::format("  cgroup id {:<10} identity {}\n", cg, n);
    std::cout << dir << "/counters_v1:\n";
    print_counters(counters);
    std::cout << "\nThe same with bpftool (field names come from the maps' BTF):\n";
    for (const auto& line : bpftool) std::cout << "  " << line << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"egressctl: inspect and steer egressd"};
    app.require_subcommand(1);
    std::string config_file;
    app.add_option("-c,--config", config_file, "agent settings file (default: $EGRESSD_CONFIG, /etc/egressd/egressd.yaml, "
                                               "or the bundled config/egressd.yaml)");

    bool json_output = false;
    auto* status = app.add_subcommand("status", "what is attached and enforced now, and the decision counters");
    status->add_flag("--json", json_output, "machine-readable output");

    auto* egress = app.add_subcommand("egress", "set spec.traffic.enableEgress in the MeshConfig file");
    egress->require_subcommand(1);
    bool no_wait = false;
    auto* enable = egress->add_subcommand("enable", "allow passthrough egress (enableEgress: true)");
    auto* disable = egress->add_subcommand("disable", "deny egress not allowed otherwise (enableEgress: false)");
    for (auto* sub : {enable, disable}) sub->add_flag("--no-wait", no_wait, "do not wait for the agent to apply it");

    auto* run = app.add_subcommand("run", "run a command inside the enforced cgroup: egressctl run [--] CMD ARGS...");
    // Everything after `run` belongs to the command, options included, so it
    // is split off before CLI11 sees it (CLI11 would take `-c` for --config).
    std::vector<std::string> command;
    std::optional<std::string> run_as;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-c" || arg == "--config") {
            ++i;
            continue;
        }
        if (arg == "run") {
            command.assign(argv + i + 1, argv + argc);
            argc = i + 1;
            // run's own option, then the command.
            if (command.size() >= 2 && command[0] == "--as") {
                run_as = command[1];
                command.erase(command.begin(), command.begin() + 2);
            } else if (!command.empty() && command[0].rfind("--as=", 0) == 0) {
                run_as = command[0].substr(5);
                command.erase(command.begin());
            }
            if (!command.empty() && command.front() == "--") command.erase(command.begin());
            break;
        }
        if (!arg.empty() && arg[0] != '-') break;  // another subcommand
    }

    std::string check_from, check_to, check_proto = "tcp";
    uint32_t check_uid = 0;
    auto* check = app.add_subcommand("check", "explain what the kernel decides now for a connection");
    check->add_option("--from", check_from, "source identity NAMESPACE/SERVICEACCOUNT")->required();
    check->add_option("--to", check_to, "destination ADDRESS:PORT ([IPV6]:PORT)")->required();
    check->add_option("--proto", check_proto, "tcp or udp")->capture_default_str();
    check->add_option("--uid", check_uid, "uid of the caller (row 2)")->capture_default_str();
    check->add_flag("--json", json_output, "machine-readable output");

    bool follow = false;
    std::string events_identity, events_verdict;
    auto* events = app.add_subcommand("events", "decision events kept by the agent (denials, audit, allowed if asked)");
    events->add_flag("-f,--follow", follow, "keep printing new events");
    events->add_flag("--json", json_output, "one JSON object per line");
    events->add_option("--identity", events_identity, "only events of NAMESPACE/SERVICEACCOUNT");
    events->add_option("--verdict", events_verdict, "only deny, audit or allow");

    auto* flows = app.add_subcommand("flows", "open egress TCP connections: identity, destination, age, bytes");
    flows->add_flag("--json", json_output, "machine-readable output");

    auto* dump = app.add_subcommand("dump", "the pinned maps decoded, and the bpftool commands that show them");
    dump->add_flag("--json", json_output, "machine-readable output");

    CLI11_PARSE(app, argc, argv);

    try {
        // Commands that read BPF objects say so before anything else fails.
        if (status->parsed()) require_root("status");
        if (run->parsed()) require_root("run");
        if (dump->parsed()) require_root("dump");
        if (flows->parsed()) require_root("flows");
        if (check->parsed()) require_root("check");
        const fs::path file = config_file.empty() ? default_config_file() : fs::path(config_file);
        const AgentConfig config = must(load_agent_config(file));
        if (status->parsed()) return cmd_status(config, json_output);
        if (enable->parsed()) return cmd_egress(config, true, !no_wait);
        if (disable->parsed()) return cmd_egress(config, false, !no_wait);
        if (run->parsed()) {
            std::optional<IdentityName> as;
            if (run_as) as = must(IdentityName::parse(*run_as), "--as");
            return cmd_run(config, as, command);
        }
        if (check->parsed()) return cmd_check(config, check_from, check_to, check_proto, check_uid, json_output);
        if (flows->parsed()) return cmd_flows(config, json_output);
        if (events->parsed()) return cmd_events(config, follow, json_output, events_identity, events_verdict);
        if (dump->parsed()) return cmd_dump(config, json_output);
    } catch (const Failure& f) {
        std::cerr << "egressctl: " << f.message << "\n";
        return f.code;
    }
    return 2;
}
