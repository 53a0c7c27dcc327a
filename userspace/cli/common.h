// What egressctl's commands share: how a command is registered and how it
// ends (Command, Exit), and the readers and printers of the pinned maps that
// more than one command uses.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "core/agent_config.h"
#include "kernel/map_set.h"
#include "kernel/pins.h"

namespace CLI {
class App;
}

namespace egressd::cli {

// How a command ends: with an exit code it chose (0; check: 1 when the
// connection is denied; status: 3 when nothing is enforced), or with an error
// that main prints as "egressctl: <error>" on stderr (one line) before exiting
// with the error's code: 1, 2 when the command line cannot work (an option's
// value, not root), 127 when run cannot execute its command. Error has no
// exit code, and these codes are part of egressctl's interface: hence this
// type around it rather than Result<int>.
class [[nodiscard]] Exit {
public:
    Exit(int code) : code_(code) {}
    Exit(Error error, int code = 1) : error_(std::move(error)), code_(code) {}
    static Exit usage(std::string message) { return Exit(make_error(std::move(message)), 2); }

    bool failed() const { return error_.has_value(); }
    int code() const { return code_; }
    const Error& error() const { return *error_; }

private:
    std::optional<Error> error_;
    int code_ = 0;
};

// One subcommand: its file registers it and its options (add_*_command), and
// main runs the one given once the settings are loaded.
struct Command {
    CLI::App* app = nullptr;  // the subcommand, owned by the main app
    bool needs_root = false;  // it reads BPF objects: main says so before anything else can fail
    std::function<Exit(const AgentConfig&)> run;
};

// Kubernetes mode's half of egressctl egress (egress_kubernetes.cc).
Exit patch_mesh_config_egress(const AgentConfig& config, bool enable, const std::string& kubeconfig);

// Kubernetes mode's half of egressctl status (status_kubernetes.cc): the pods
// with pinned links, and the agent's report of its source and pods.
nlohmann::json pod_links_json(const AgentConfig& config, bool& all_attached);
void print_kubernetes_report(const nlohmann::json& pods, const nlohmann::json& agent_status);

// In the order of `egressctl --help`.
Command add_status_command(CLI::App& app);
Command add_egress_command(CLI::App& app);
// Everything after `run` on the command line is the command to run, options
// included: it is taken out of argv (argc shrinks) before CLI11 parses it.
Command add_run_command(CLI::App& app, int& argc, char** argv);
Command add_check_command(CLI::App& app);
Command add_events_command(CLI::App& app);
Command add_flows_command(CLI::App& app);
Command add_hosts_command(CLI::App& app);
Command add_dump_command(CLI::App& app);

// ---- reading the pinned maps ------------------------------------------------

// The maps the agent pinned, read-only; the error says nothing is pinned.
Result<MapSet> open_pinned_maps(const AgentConfig& config);

// The control map and the image of the slot it names as active: what the
// kernel enforces now.
struct ActiveImage {
    egressd_control control{};
    MapImage image;
};
Result<ActiveImage> read_active_image(const MapSet& maps);
// The active slot's configuration only (generation, flags, sidecar UID, mode):
// for who needs a flag, without reading every entry of the slot.
Result<ActiveImage> read_active_config(const MapSet& maps);

// ---- output -------------------------------------------------------------------

// `value` indented by 2, then a newline, through json_text.
void print_json(const nlohmann::json& value);

// An address as it is written before ":PORT": IPv6 in brackets.
std::string address_for_port(std::string address);
// CLOCK_BOOTTIME now, in ns: the kernel's bpf_ktime_get_boot_ns().
uint64_t boot_time_ns();
// Policy host numbers -> names, as the agent's status file gives them (the
// kernel keeps only the numbers); empty without one.
std::map<uint32_t, std::string> dns_host_names(const AgentConfig& config);

// Who made a connection: the identity's name, or the cgroup when it has none.
std::string workload_name(const nlohmann::json& identity, uint64_t cgroup_id);

// The decision counters (reason x hook, as read_counters returns them).
nlohmann::json counters_json(const std::vector<uint64_t>& counters);
void print_counters(const std::vector<uint64_t>& counters);

}  // namespace egressd::cli
