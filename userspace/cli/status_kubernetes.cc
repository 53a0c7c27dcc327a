// egressctl status in Kubernetes mode: the pods with pinned links on this
// node (from the pin directory), and the agent's source (from its status
// file): the API server, each watched resource, the meshed pods.
#include <iostream>

#include <fmt/format.h>

#include "cli/common.h"
#include "kernel/pins.h"

namespace egressd::cli {

using nlohmann::json;

json pod_links_json(const AgentConfig& config, bool& all_attached) {
    json pods = json::array();
    all_attached = true;
    for (const auto& uid : pinned_workload_keys(config.bpffs)) {
        const auto links = read_pinned_links_in(workload_links_dir(config.bpffs, uid), config.track_flows);
        uint64_t cgroup_id = 0;
        size_t pinned = 0;
        for (const auto& l : links) {
            pinned += l.pinned;
            if (l.pinned) cgroup_id = l.cgroup_id;
        }
        all_attached &= pinned == links.size();
        pods.push_back({{"uid", uid}, {"cgroupId", cgroup_id}, {"linksPinned", pinned}, {"linksInUse", links.size()}});
    }
    return pods;
}

void print_kubernetes_report(const json& pods, const json& agent_status) {
    const json k8s = agent_status.is_object() ? agent_status.value("kubernetes", json()) : json();
    if (k8s.is_object()) {
        std::cout << fmt::format("source:      API server {} ({}), node {}, mesh {} ({})\n", k8s.value("server", ""),
                                 k8s.value("credentials", ""), k8s.value("node", ""), k8s.value("mesh", ""),
                                 k8s.value("meshName", ""));
        for (const auto& r : k8s.value("resources", json::array())) {
            std::cout << fmt::format("  {:<12} {}{} resourceVersion {} last sync {} relists {} watch restarts {}{}\n",
                                     r.value("resource", ""), r.value("synced", false) ? "synced" : "NOT SYNCED",
                                     r.value("missing", false) ? " (not served)" : "", r.value("resourceVersion", ""),
                                     r["lastSync"].is_string() ? r["lastSync"].get<std::string>() : "never",
                                     r.value("relists", 0), r.value("watchRestarts", 0),
                                     r.value("lastError", "").empty() ? "" : " (" + r.value("lastError", "") + ")");
        }
    }
    std::map<std::string, std::string> identity_by_uid, cgroup_by_uid;
    if (k8s.is_object()) {
        for (const auto& p : k8s.value("meshedPods", json::array()))
            identity_by_uid[p.value("uid", "")] = p.value("pod", "") + " as " + p.value("identity", "");
        for (const auto& p : k8s.value("enforcedPods", json::array()))
            cgroup_by_uid[p.value("uid", "")] = p.value("cgroup", "");
    }
    std::cout << fmt::format("pods:        {} enforced on this node\n", pods.size());
    for (const auto& p : pods) {
        const std::string uid = p.value("uid", "");
        std::cout << fmt::format(
            "  {} {} cgroup {}{}\n", uid, identity_by_uid.contains(uid) ? identity_by_uid[uid] : "(unknown pod)",
            cgroup_by_uid.contains(uid) ? cgroup_by_uid[uid] : std::to_string(p.value("cgroupId", 0ull)),
            p.value("linksPinned", 0u) == p.value("linksInUse", 0u) ? "" : " (links missing)");
    }
    if (k8s.is_object())
        for (const auto& waiting : k8s.value("podsWaitingForCgroup", json::array()))
            std::cout << "  waiting for its cgroup: " << waiting.get<std::string>() << "\n";
}

}  // namespace egressd::cli
