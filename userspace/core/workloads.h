// Stand-alone workload registry (no Kubernetes): which cgroups below the
// enforced cgroup are which (namespace, serviceAccount). The agent setting
// `workloads` names the file; `egressctl run --as NS/SA` adds to it.
//
//   workloads:
//     - cgroup: curl/curl        # relative to the enforced cgroup
//       namespace: curl
//       serviceAccount: curl
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "core/identity.h"

namespace egressd {

struct Workload {
    std::string cgroup;  // relative to the enforced cgroup, normalised, never leaving it
    IdentityName identity;
    // Kubernetes mode: the pod's UID. Its cgroup (then an absolute path, found
    // on the host) is never created, and gets its own programs and links.
    std::string attach_key;
    // Kubernetes mode: the cgroup's id (inode) when the source found it; a
    // pod cgroup made again at the same path has another and is attached again.
    uint64_t cgroup_id = 0;
    bool operator==(const Workload&) const = default;
};

// Errors: "<file>:<line>:<column>: workloads[i].cgroup: <why>". Two entries for
// one cgroup are an error. An empty document is an empty list.
Result<std::vector<Workload>> parse_workloads(std::string_view yaml_text, const std::string& file_name);
// A missing file is an empty list (nothing registered yet).
Result<std::vector<Workload>> load_workloads(const std::filesystem::path& file);
// The file text for a list (what `egressctl run --as` writes).
std::string render_workloads(const std::vector<Workload>& workloads);
// The cgroup egressctl run --as uses for an identity: "<namespace>/<serviceAccount>".
std::string default_workload_cgroup(const IdentityName& identity);

}  // namespace egressd
