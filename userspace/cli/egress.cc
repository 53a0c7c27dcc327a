// egressctl egress enable|disable: sets spec.traffic.enableEgress in the
// MeshConfig file, or on the API server in Kubernetes mode
// (egress_kubernetes.cc), then waits until the kernel enforces it.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "agent/agent_state.h"
#include "cli/common.h"
#include "core/files.h"
#include "core/meshconfig.h"
#include "core/yaml_edit.h"

namespace egressd::cli {

namespace {

// Until the active generation has enableEgress == `enable`, for 3 s at most.
Exit wait_until_applied(const AgentConfig& config, bool enable) {
    if (::geteuid() != 0 || !agent_running(config.bpffs)) {
        std::cout << "egressd is not running on " << config.bpffs.string() << ": the change applies when it starts\n";
        return 0;
    }
    auto maps = MapSet::open_pinned(config.bpffs, true);
    if (!maps) return 0;
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
        auto active = read_active_config(*maps);
        if (active && ((active->image.flags & EGRESSD_CFG_ENABLE_EGRESS) != 0) == enable) {
            const auto waited = std::chrono::steady_clock::now() - start;
            const double ms = std::chrono::duration<double, std::milli>(waited).count();
            std::cout << fmt::format("egressd applied it: generation {} enforced (seen after {:.0f} ms)\n",
                                     active->image.generation, ms);
            return 0;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return make_error(
        "egressd has not applied the change after 3 s; see its log (egressctl status shows the last error)");
}

Exit egress_command(const AgentConfig& config, bool enable, bool wait, const std::string& kubeconfig) {
    if (config.kubernetes) {
        Exit patched = patch_mesh_config_egress(config, enable, kubeconfig);
        if (patched.failed() || !wait) return patched;
        return wait_until_applied(config, enable);
    }
    const std::filesystem::path file = config.mesh_config;
    // Read, edit, and replace only if no one wrote the file meanwhile (an
    // editor saving): otherwise their change would be lost. Then again.
    Result<BoolEdit> edit = make_error("");
    for (int attempt = 0;; ++attempt) {
        const auto version = file_version(file);
        if (!version) return version.error();
        const auto text = read_file(file);
        if (!text) return text.error();
        edit = set_enable_egress(*text, enable, file.string());
        if (!edit) return edit.error();
        if (!edit->changed) {
            std::cout << fmt::format("{}: spec.traffic.enableEgress is already {}\n", file.string(), enable);
            return 0;
        }
        // Never write a file the agent would reject.
        if (auto valid = parse_meshconfig(edit->text, file.string()); !valid)
            return valid.error().with_context("refusing to write " + file.string());
        auto replaced = replace_file_if_unchanged(file, edit->text, *version);
        if (!replaced) return replaced.error();
        if (*replaced) break;
        if (attempt == 100) return make_error(file.string() + " keeps changing under egressctl; not written");
    }
    std::cout << fmt::format("{}: spec.traffic.enableEgress: {} -> {}\n", file.string(),
                             edit->had_value ? (edit->old_value ? "true" : "false") : "(unset)", enable);
    if (!wait) return 0;
    return wait_until_applied(config, enable);
}

}  // namespace

Command add_egress_command(CLI::App& app) {
    auto* egress = app.add_subcommand(
        "egress",
        "set spec.traffic.enableEgress in the MeshConfig (its file, or on the API server in Kubernetes mode)");
    egress->require_subcommand(1);
    auto no_wait = std::make_shared<bool>(false);
    auto kubeconfig = std::make_shared<std::string>();
    auto* enable = egress->add_subcommand("enable", "allow passthrough egress (enableEgress: true)");
    auto* disable = egress->add_subcommand("disable", "deny egress not allowed otherwise (enableEgress: false)");
    for (auto* sub : {enable, disable}) {
        sub->add_flag("--no-wait", *no_wait, "do not wait for the agent to apply it");
        sub->add_option("--kubeconfig", *kubeconfig,
                        "Kubernetes mode: your credentials (default: $KUBECONFIG, then the settings' kubeconfig, "
                        "then in-cluster)");
    }
    return {egress, false, [enable, no_wait, kubeconfig](const AgentConfig& config) {
                return egress_command(config, enable->parsed(), !*no_wait, *kubeconfig);
            }};
}

}  // namespace egressd::cli
