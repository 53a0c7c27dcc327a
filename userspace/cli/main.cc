// egressctl: inspect and steer egressd. Reads the kernel's pinned maps (the
// source of truth for what is enforced) and the agent's status file, and asks
// the agent over HTTP. One file per command (status.cc, egress.cc, ...): each
// registers its subcommand and options; this file builds the app, loads the
// agent's settings and runs the command given.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli/common.h"

using namespace egressd;
using namespace egressd::cli;
namespace fs = std::filesystem;

namespace {

// --config, else $EGRESSD_CONFIG, else /etc/egressd/egressd.yaml, else the
// bundled config of the checkout this binary was built in (build/bin/..).
fs::path default_config_file() {
    if (const char* env = std::getenv("EGRESSD_CONFIG"); env && *env) return env;
    std::error_code ec;
    if (fs::exists("/etc/egressd/egressd.yaml", ec)) return "/etc/egressd/egressd.yaml";
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    const fs::path bundled = exe.parent_path().parent_path().parent_path() / "config" / "egressd.yaml";
    if (!ec && fs::exists(bundled, ec)) return bundled;
    return "/etc/egressd/egressd.yaml";
}

// The command CLI11 parsed, run with the settings.
Exit run_parsed(const std::vector<Command>& commands, const std::string& config_file) {
    for (const Command& command : commands) {
        if (!command.app->parsed()) continue;
        // Commands that read BPF objects say so before anything else fails.
        if (command.needs_root && ::geteuid() != 0)
            return Exit::usage(
                fmt::format("egressctl {} must run as root (it reads BPF maps and cgroups)", command.app->get_name()));
        const fs::path file = config_file.empty() ? default_config_file() : fs::path(config_file);
        const auto config = load_agent_config(file);
        if (!config) return config.error();
        return command.run(*config);
    }
    return 2;  // not reached: CLI11 requires a subcommand
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"egressctl: inspect and steer egressd"};
    app.require_subcommand(1);
    std::string config_file;
    app.add_option("-c,--config", config_file,
                   "agent settings file (default: $EGRESSD_CONFIG, /etc/egressd/egressd.yaml, "
                   "or the bundled config/egressd.yaml)");
    // In the order of `egressctl --help` (a braced list runs left to right).
    const std::vector<Command> commands = {
        add_status_command(app), add_egress_command(app), add_run_command(app, argc, argv),
        add_check_command(app),  add_events_command(app), add_flows_command(app), add_hosts_command(app),
        add_dump_command(app),
    };
    CLI11_PARSE(app, argc, argv);

    const Exit outcome = run_parsed(commands, config_file);
    if (outcome.failed()) std::cerr << "egressctl: " << outcome.error().describe() << "\n";
    return outcome.code();
}
