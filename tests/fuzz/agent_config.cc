// parse_agent_config: the agent's settings file. Besides not crashing: a
// relative path setting comes out absolute (resolved against the file's
// directory), and an error says where it is ("<file>:...").
#include "core/agent_config.h"

#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string file = "/etc/egressd/egressd.yaml";
    const auto config = egressd::parse_agent_config(egressd::fuzz::text(data, size), file);
    if (!config) {
        EGRESSD_FUZZ_CHECK(config.error().message.starts_with(file + ":"), config.error().message);
        return 0;
    }
    for (const auto* path : {&config->mesh_config, &config->policy_dir, &config->workloads_file, &config->run_dir,
                             &config->event_log})
        EGRESSD_FUZZ_CHECK(path->empty() || path->is_absolute(), path->string());
    return 0;
}
