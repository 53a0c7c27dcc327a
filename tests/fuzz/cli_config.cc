// egressctl's reading of the agent's settings: the settings file
// (load_agent_config's parse), then what egressctl derives from it and from
// the agent's status file in runDir: the agent's HTTP endpoint
// (AgentHttp::open: httpAddress, the bound port for port 0) and the policy
// host names (dns_host_names). Input: "SETTINGS\0STATUS.JSON".
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "agent/agent_state.h"
#include "cli/agent_http.h"
#include "cli/common.h"
#include "fuzz_support.h"

namespace {

// The status file's directory: one per fuzzing process, removed at exit
// (never destroyed itself, so that the exit handler may still read it).
const std::filesystem::path& run_dir() {
    static const std::filesystem::path* dir = [] {
        std::string name = (std::filesystem::temp_directory_path() / "egressd-fuzz-cli.XXXXXX").string();
        if (!mkdtemp(name.data())) egressd::fuzz::fail("mkdtemp");
        return new std::filesystem::path(name);
    }();
    static const bool cleanup = std::atexit([] {
        std::error_code ec;
        std::filesystem::remove_all(*dir, ec);
    }) == 0;
    (void)cleanup;
    return *dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto [settings, status] = egressd::fuzz::split_at_nul(egressd::fuzz::text(data, size));
    auto config = egressd::parse_agent_config(settings, "/etc/egressd/egressd.yaml");
    if (!config) return 0;
    config->run_dir = run_dir();
    if (!egressd::write_status_file(run_dir(), std::string(status))) egressd::fuzz::fail("writing the status file");

    auto http = egressd::cli::AgentHttp::open(*config);
    if (!http) EGRESSD_FUZZ_CHECK(http.error().message.starts_with("httpAddress \""), http.error().message);
    (void)egressd::cli::dns_host_names(*config);
    return 0;
}
