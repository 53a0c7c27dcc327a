// egressctl: inspect and steer egressd. Reads the kernel's pinned maps (the
// source of truth for what is enforced) and the agent's status file.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fmt/format.h>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/agent_config.h"
#include "core/decision.h"
#include "core/meshconfig.h"
#include "core/yaml_edit.h"
#include "kernel/bpf_adapter.h"
#include "kernel/cgroup.h"
#include "kernel/runtime.h"

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
    const bool enforcing = view.pinned && attached == EGRESSD_HOOK_MAX && (view.active.flags & EGRESSD_CFG_VALID);

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
    }
    for (const auto& l : view.links)
        out["links"].push_back({{"hook", l.hook},
                                {"pinned", l.pinned},
                                {"attached", l.pinned && cgroup && l.cgroup_id == cgroup->id},
                                {"linkId", l.link_id},
                                {"programId", l.prog_id},
                                {"program", l.prog_name},
                                {"cgroupId", l.cgroup_id}});
    if (view.pinned) {
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
        std::cout << out.dump(2) << "\n";
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
    if (running && agent_status) {
        const json& s = *agent_status;
        std::cout << "last change: " << s.value("lastChange", "") << " (at " << s.value("appliedAt", "") << ")\n";
        if (s.contains("lastError") && !s["lastError"].is_null())
            std::cout << "last error:  " << s["lastError"].value("message", "") << " (at "
                      << s["lastError"].value("at", "") << ")\n";
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

int cmd_run(const AgentConfig& config, const std::vector<std::string>& command) {
    require_root("run");
    if (command.empty()) fail("run: no command given (egressctl run -- CMD ARGS...)", 2);
    const fs::path path = must(resolve_cgroup_path(config.cgroup));
    const CgroupTarget cgroup = must(open_existing_cgroup(path), "is egressd running? (scripts/run)");
    int attached = 0;
    for (const auto& l : read_pinned_links(config.bpffs)) attached += l.pinned && l.cgroup_id == cgroup.id;
    if (attached != EGRESSD_HOOK_MAX)
        fail(fmt::format("egressd is not enforcing on {} ({} of {} hooks attached); start it with scripts/run",
                         path.string(), attached, EGRESSD_HOOK_MAX));
    must(join_cgroup(path));
    std::vector<char*> argv;
    for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    fail(fmt::format("run: cannot execute {}: {}", command[0], std::strerror(errno)), 127);
}

// ---- dump ---------------------------------------------------------------------

int cmd_dump(const AgentConfig& config, bool as_json) {
    require_root("dump");
    auto maps = must(MapSet::open_pinned(config.bpffs, true), "nothing pinned (is egressd running?)");
    const egressd_control control = must(maps.read_control());
    const uint32_t slot = control.active_slot & 1;
    const MapImage image = must(maps.read_slot(slot));
    const auto counters = must(maps.read_counters());
    const std::string dir = config.bpffs.string();
    const std::vector<std::string> bpftool = {
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONTROL),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CONFIG),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS),
        "bpftool map dump pinned " + dir + "/" EGRESSD_STRINGIFY(EGRESSD_MAP_COUNTERS),
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
        std::cout << out.dump(2) << "\n";
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
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-c" || arg == "--config") {
            ++i;
            continue;
        }
        if (arg == "run") {
            command.assign(argv + i + 1, argv + argc);
            if (!command.empty() && command.front() == "--") command.erase(command.begin());
            argc = i + 1;
            break;
        }
        if (!arg.empty() && arg[0] != '-') break;  // another subcommand
    }

    auto* dump = app.add_subcommand("dump", "the pinned maps decoded, and the bpftool commands that show them");
    dump->add_flag("--json", json_output, "machine-readable output");

    CLI11_PARSE(app, argc, argv);

    try {
        // Commands that read BPF objects say so before anything else fails.
        if (status->parsed()) require_root("status");
        if (run->parsed()) require_root("run");
        if (dump->parsed()) require_root("dump");
        const fs::path file = config_file.empty() ? default_config_file() : fs::path(config_file);
        const AgentConfig config = must(load_agent_config(file));
        if (status->parsed()) return cmd_status(config, json_output);
        if (enable->parsed()) return cmd_egress(config, true, !no_wait);
        if (disable->parsed()) return cmd_egress(config, false, !no_wait);
        if (run->parsed()) return cmd_run(config, command);
        if (dump->parsed()) return cmd_dump(config, json_output);
    } catch (const Failure& f) {
        std::cerr << "egressctl: " << f.message << "\n";
        return f.code;
    }
    return 2;
}
