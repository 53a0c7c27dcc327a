// egressd: the node agent. Loads the BPF programs, attaches them to the
// configured cgroup, and keeps their maps equal to the MeshConfig file.
#include <pthread.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "agent/agent.h"
#include "common/log.h"
#include "kernel/pins.h"
#include "agent/agent_state.h"

using namespace egressd;

int main(int argc, char** argv) {
    CLI::App app{"egressd: kernel egress enforcement for FSM/OSM meshes"};
    std::string config_file;
    bool cleanup = false;
    app.add_option("-c,--config", config_file, "agent settings file (YAML), e.g. config/egressd.yaml")->required();
    app.add_flag("--cleanup", cleanup, "detach and unpin everything egressd owns for this configuration, then exit");
    std::string log_format = "text";
    app.add_option("--log-format", log_format, "text or json (one JSON object per line)")
        ->check(CLI::IsMember({"text", "json"}));
    app.set_version_flag("--version", std::string("egressd ") + EGRESSD_VERSION);
    CLI11_PARSE(app, argc, argv);

    log::json_format() = log_format == "json";
    // Each enforced pod holds five link descriptors: the soft limit (often
    // 1024) would stop at about 200 pods. Raise it to the hard limit.
    if (rlimit files{}; ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &files) != 0)
            log::error("raising the open files limit: {}", std::strerror(errno));
    }
    auto config = load_agent_config(config_file);
    if (!config) {
        std::cerr << "egressd: " << config.error().describe() << "\n";
        return 2;
    }
    if (::geteuid() != 0) {
        std::cerr << "egressd: must run as root (it loads BPF programs and attaches them to a cgroup)\n";
        return 2;
    }

    if (cleanup) {
        if (agent_running(config->bpffs)) {
            std::cerr << "egressd: an agent is running on " << config->bpffs.string() << "; stop it first\n";
            return 1;
        }
        std::vector<std::string> removed;
        auto done = cleanup_pins(config->bpffs, removed);
        for (const auto& r : removed) std::cout << "removed " << r << "\n";
        if (!done) {
            std::cerr << "egressd: cleanup: " << done.error().describe() << "\n";
            return 1;
        }
        std::cout << (removed.empty() ? "nothing pinned in " + config->bpffs.string() : "egressd detached and unpinned")
                  << "\n";
        return 0;
    }

    const sigset_t signals = Agent::handled_signals();
    ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread exists
    try {
        auto agent = Agent::start(*config);
        if (!agent) {
            log::error("{}", agent.error().describe());
            log::error("egressd did not start; nothing was attached or changed by this run");
            return 1;
        }
        return (*agent)->run();
    } catch (const std::exception& e) {
        // run() handles its own; this is start-up. Pinned enforcement, if any, stays.
        log::error("egressd stopped on an internal error: {}", e.what());
        return 1;
    }
}
