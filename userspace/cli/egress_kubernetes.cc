// egressctl egress enable|disable in Kubernetes mode: the same JSON merge
// patch of the MeshConfig as `kubectl patch --type=merge`, with the user's
// credentials (not the agent's), then the wait for the kernel where an
// agent runs on this machine.
#include <cstdlib>
#include <iostream>

#include <fmt/format.h>

#include "cli/common.h"
#include "k8s/cluster_config.h"
#include "k8s/discovery.h"
#include "k8s/http_client.h"

namespace egressd::cli {

namespace {

constexpr std::chrono::seconds kRequestTimeout{15};

// --kubeconfig, then $KUBECONFIG (its first file), then the settings', then in-cluster.
Result<k8s::ClusterConfig> user_credentials(const AgentConfig& config, const std::string& kubeconfig) {
    if (!kubeconfig.empty()) return k8s::load_kubeconfig(kubeconfig);
    if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
        const std::string first = std::string(env).substr(0, std::string(env).find(':'));
        return k8s::load_kubeconfig(first);
    }
    if (!config.kubernetes->kubeconfig.empty()) return k8s::load_kubeconfig(config.kubernetes->kubeconfig);
    return k8s::in_cluster_config();
}

}  // namespace

Exit patch_mesh_config_egress(const AgentConfig& config, bool enable, const std::string& kubeconfig) {
    auto credentials = user_credentials(config, kubeconfig);
    if (!credentials) return credentials.error();
    auto client = k8s::Client::create(std::move(*credentials));
    if (!client) return client.error();
    const KubernetesSettings& k8s = *config.kubernetes;
    const k8s::Resource resource{
        mesh_conventions(k8s.mesh).mesh_config_group, "", "meshconfigs", k8s.mesh_config_namespace, "", ""};
    auto discovered = k8s::discover_version(**client, resource, kRequestTimeout, nullptr);
    if (!discovered) return discovered.error();
    if (discovered->failure)
        return make_error(fmt::format("{} is not served by {}: {}", resource.describe(), (*client)->config().server,
                                      discovered->failure->message));
    const std::string path = k8s::collection_path(resource, discovered->version) + "/" + k8s.mesh_config_name;
    const nlohmann::json patch = {{"spec", {{"traffic", {{"enableEgress", enable}}}}}};
    auto response = (*client)->merge_patch(path, patch, kRequestTimeout);
    if (!response) return response.error();
    if (response->status != 200)
        return make_error(fmt::format("patching MeshConfig {}/{}: HTTP {}: {}", k8s.mesh_config_namespace,
                                      k8s.mesh_config_name, response->status, k8s::failure_message(*response)));
    std::cout << fmt::format("meshconfig {}/{} patched: spec.traffic.enableEgress: {} (API server {})\n",
                             k8s.mesh_config_namespace, k8s.mesh_config_name, enable, (*client)->config().server);
    return 0;
}

}  // namespace egressd::cli
