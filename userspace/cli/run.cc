// egressctl run [--as NS/SA] [--] CMD ARGS...: runs a command inside the
// enforced cgroup (or a workload's cgroup below it) by becoming it (execvp):
// the exit code is the command's.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "agent/agent_state.h"
#include "cli/common.h"
#include "core/files.h"
#include "core/workloads.h"
#include "kernel/cgroup.h"

namespace egressd::cli {

namespace {

namespace fs = std::filesystem;

struct RunArguments {
    std::optional<std::string> as;  // --as NS/SA, not parsed yet
    std::vector<std::string> command;
};

// Takes everything after `run` out of argv: run's own option (--as), then the
// command, options included (CLI11 would take its `-c` for --config). The
// options before `run` are the main app's: -c/--config and its value, or
// flags; the first other word is a subcommand, and not `run` then.
RunArguments take_run_arguments(int& argc, char** argv) {
    RunArguments run;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-c" || arg == "--config") {
            ++i;
            continue;
        }
        if (arg == "run") {
            run.command.assign(argv + i + 1, argv + argc);
            argc = i + 1;
            auto& command = run.command;
            if (command.size() >= 2 && command[0] == "--as") {
                run.as = command[1];
                command.erase(command.begin(), command.begin() + 2);
            } else if (!command.empty() && command[0].rfind("--as=", 0) == 0) {
                run.as = command[0].substr(5);
                command.erase(command.begin());
            }
            if (!command.empty() && command.front() == "--") command.erase(command.begin());
            break;
        }
        if (!arg.empty() && arg[0] != '-') break;  // another subcommand
    }
    return run;
}

// Until the kernel knows the identity of the workload in `cgroup`, for 3 s at most.
Status wait_until_registered(const AgentConfig& config, const CgroupTarget& cgroup, const IdentityName& identity) {
    if (!agent_running(config.bpffs))
        return make_error("egressd is not running: it registers " + identity.str() + " when it starts (scripts/run)");
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return maps.error();
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
        auto known = maps->read_workload_identities();
        if (known && known->contains(cgroup.id)) return {};
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return make_error("egressd has not registered " + identity.str() + " after 3 s; see its log (egressctl status)");
}

// Registers the workload (cgroup <enforced>/<ns>/<sa> in the workloads file,
// which the settings name) and waits until the kernel knows its identity;
// returns its cgroup.
Result<fs::path> register_workload(const AgentConfig& config, const fs::path& enforced, const IdentityName& identity) {
    auto workloads = load_workloads(config.workloads_file);
    if (!workloads) return workloads.error();
    auto it = std::ranges::find_if(*workloads, [&](const Workload& w) { return w.identity == identity; });
    if (it == workloads->end()) {
        workloads->push_back(Workload{default_workload_cgroup(identity), identity});
        if (auto written = write_file_atomically(config.workloads_file, render_workloads(*workloads)); !written)
            return written.error();
        it = std::prev(workloads->end());
    }
    const fs::path path = enforced / it->cgroup;
    const auto cgroup = ensure_cgroup(path);
    if (!cgroup) return cgroup.error();
    if (auto registered = wait_until_registered(config, *cgroup, identity); !registered) return registered.error();
    return path;
}

// The enforced cgroup, when all of egressd's programs are attached to it.
Result<fs::path> enforced_cgroup(const AgentConfig& config) {
    auto enforced = resolve_cgroup_path(config.cgroup);
    if (!enforced) return enforced.error();
    const auto cgroup = open_existing_cgroup(*enforced);
    if (!cgroup) return cgroup.error().with_context("is egressd running? (scripts/run)");
    int attached = 0;
    const auto links = read_pinned_links(config.bpffs, config.track_flows);
    for (const auto& l : links) attached += l.pinned && l.cgroup_id == cgroup->id;
    if (attached != static_cast<int>(links.size()))
        return make_error(
            fmt::format("egressd is not enforcing on {} ({} of {} programs attached); start it with scripts/run",
                        enforced->string(), attached, links.size()));
    return enforced;
}

Exit run_command(const AgentConfig& config, const RunArguments& arguments) {
    std::optional<IdentityName> as;
    if (arguments.as) {
        auto parsed = IdentityName::parse(*arguments.as);
        if (!parsed) return parsed.error().with_context("--as");
        as = std::move(parsed).value();
    }
    const auto& command = arguments.command;
    if (command.empty()) return Exit::usage("run: no command given (egressctl run [--as NS/SA] -- CMD ARGS...)");
    const auto enforced = enforced_cgroup(config);
    if (!enforced) return enforced.error();
    if (as && config.workloads_file.empty())
        return Exit::usage("run --as needs the agent setting `workloads` (a file egressctl can register workloads in)");
    Result<fs::path> path = *enforced;
    if (as) path = register_workload(config, *enforced, *as);
    if (!path) return path.error();
    if (auto joined = join_cgroup(*path); !joined) return joined.error();
    std::vector<char*> argv;
    for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    return Exit(system_error("run: cannot execute " + command[0]), 127);
}

}  // namespace

Command add_run_command(CLI::App& app, int& argc, char** argv) {
    auto arguments = std::make_shared<RunArguments>(take_run_arguments(argc, argv));
    auto* sub = app.add_subcommand("run", "run a command inside the enforced cgroup: egressctl run [--] CMD ARGS...");
    return {sub, true, [arguments](const AgentConfig& config) { return run_command(config, *arguments); }};
}

}  // namespace egressd::cli
