// The one place inputs become generations. It holds the latest accepted
// value of each input (the MeshConfig, the Egress policies, the workloads and
// the policies' host addresses), builds the image from all of them and
// publishes it. Sources set inputs: files today (file_sources.h), the API
// server next. The agent calls apply() once after a batch of changes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "core/agent_config.h"
#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/image.h"
#include "core/meshconfig.h"
#include "core/policy_rule_cache.h"
#include "core/workloads.h"
#include "kernel/cgroup.h"
#include "kernel/datapath.h"

namespace egressd {

class Reconciler {
public:
    // `datapath` outlives the reconciler. Workload cgroups are below `cgroup`,
    // which is `cgroup_level` levels below the cgroup2 mount.
    Reconciler(const AgentConfig& config, Datapath& datapath, CgroupTarget cgroup, uint32_t cgroup_level);

    // Continues from what the datapath adopted from the pins: the generation
    // number, the identities' and the policies' numbers.
    void continue_pinned();
    // Adoption: numbers the kept state uses are never handed out again.
    void reserve_numbers(const NumbersInUse& in_use);

    // The inputs. Each replaces the previous value of its kind.
    void set_mesh(MeshConfig mesh) { mesh_ = std::move(mesh); }
    // The policies as one immutable list, shared with the applied
    // generation's record: the same list again is known unchanged, and is
    // neither compared nor rebuilt.
    void set_policies(std::shared_ptr<const PolicyList> policies) { policies_ = std::move(policies); }
    void set_workloads(std::vector<Workload> workloads) { workloads_ = std::move(workloads); }
    void set_host_addresses(std::map<std::string, std::vector<IpAddress>> addresses) {
        host_addresses_ = std::move(addresses);
    }
    // meshCIDRs found in the cluster, in place of the settings' (which are empty then).
    void set_mesh_cidrs(std::vector<Cidr> cidrs) { mesh_cidrs_ = std::move(cidrs); }
    const MeshConfig& mesh() const { return mesh_; }
    // The enforced cgroup, made anew at the same path (file mode).
    void set_cgroup(CgroupTarget cgroup) { cgroup_ = std::move(cgroup); }

    // Builds the next generation from the inputs and publishes it. A
    // workload whose cgroup cannot be made is left out and named in
    // `problems`; an error leaves the generation in force as it is.
    Status apply(std::vector<std::string>& problems);

    const MapImage& applied() const { return *applied_image_; }
    std::shared_ptr<const MapImage> applied_shared() const { return applied_image_; }
    size_t applied_policies() const { return applied_policies_->size(); }
    size_t workloads() const { return workloads_.size(); }
    // What the last apply() changed, for the log and the status file.
    const std::string& last_change() const { return last_change_; }
    const std::string& applied_at() const { return applied_at_; }
    // A policy's name by number, also after it is gone: events may name it late.
    std::optional<PolicyRef> policy_name(uint32_t number) const;

    // Kubernetes mode: the workloads with their own links (attach keys), by
    // key, with the cgroup they are attached to; and those whose cgroup does
    // not exist yet (the pod object comes before its cgroup).
    const std::map<std::string, CgroupTarget>& attached() const { return attached_; }
    const std::vector<std::string>& waiting() const { return waiting_; }
    // Takes the workloads pinned by an earlier agent: the first apply adopts
    // those still wanted and detaches the others. Call before the first apply,
    // and only with a complete list of workloads to come (after a full sync).
    void adopt_pinned_workloads(const std::vector<std::string>& keys);

private:
    // Writes identity names and workload cgroups when they differ from what the kernel has.
    Status push_identities(const std::map<uint64_t, uint32_t>& workload_ids);
    Result<std::map<uint64_t, uint32_t>> workload_cgroups(std::vector<std::string>& problems,
                                                          std::map<std::string, CgroupTarget>& to_attach);
    // Attaches what is new or moved, detaches what is gone.
    void attach_workloads(const std::map<std::string, CgroupTarget>& wanted, std::vector<std::string>& problems);
    Status check_identity_capacity(size_t workload_cgroups) const;
    std::string describe(const MapImage& image, const std::map<uint64_t, uint32_t>& workloads_before,
                         const std::map<uint64_t, uint32_t>& workloads_after) const;

    const AgentConfig& config_;
    Datapath& datapath_;
    CgroupTarget cgroup_;
    uint32_t cgroup_level_ = 0;

    MeshConfig mesh_;
    std::shared_ptr<const PolicyList> policies_ = std::make_shared<const PolicyList>();
    std::vector<Workload> workloads_;
    std::map<std::string, std::vector<IpAddress>> host_addresses_;
    std::optional<std::vector<Cidr>> mesh_cidrs_;

    IdentityRegistry identities_;
    PolicyRegistry policy_numbers_;
    // Host names for learning from DNS answers; adopted with the pins, since
    // learned addresses in the kernel carry these numbers.
    HostRegistry host_numbers_;
    PolicyRuleCache policy_rule_cache_;
    std::optional<uint64_t> pushed_identities_revision_;  // identities_.revision() the kernel has
    std::map<uint32_t, PolicyRef> policy_names_seen_;
    std::map<std::string, CgroupTarget> attached_;  // id 0: pinned by an earlier agent, not yet adopted
    std::vector<std::string> waiting_;

    // What the kernel enforces.
    MeshConfig applied_mesh_;
    std::shared_ptr<const MapImage> applied_image_ = std::make_shared<const MapImage>();
    std::shared_ptr<const PolicyList> applied_policies_ = policies_;
    std::string last_change_;
    std::string applied_at_;
};

}  // namespace egressd
