#include "agent/reconciler.h"

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/time_text.h"

namespace egressd {

namespace {

// "policies +ns/a -ns/b ~ns/c" for added, removed and changed policies.
std::string describe_policy_changes(const PolicyList& before, const PolicyList& after) {
    std::map<std::pair<std::string, std::string>, const EgressPolicy*> old_by_name;
    for (const auto& p : before) old_by_name[{p.namespace_, p.name}] = &p;
    std::string added, changed, removed;
    for (const auto& p : after) {
        auto it = old_by_name.find({p.namespace_, p.name});
        if (it == old_by_name.end())
            added += " +" + p.namespace_ + "/" + p.name;
        else if (it->second != &p && !(*it->second == p))
            changed += " ~" + p.namespace_ + "/" + p.name;
        if (it != old_by_name.end()) old_by_name.erase(it);
    }
    for (const auto& [name, p] : old_by_name) removed += " -" + name.first + "/" + name.second;
    const std::string all = added + removed + changed;
    return all.empty() ? "" : "policies" + all;
}

// The same line from what the rule cache found.
std::string describe_policy_changes(const PolicyRuleCache::Changes& found) {
    std::string all;
    for (const PolicyRef& ref : found.added) all += " +" + ref.str();
    for (const PolicyRef& ref : found.removed) all += " -" + ref.str();
    for (const PolicyRef& ref : found.changed) all += " ~" + ref.str();
    return all.empty() ? "" : "policies" + all;
}

}  // namespace

Reconciler::Reconciler(const AgentConfig& config, Datapath& datapath, CgroupTarget cgroup, uint32_t cgroup_level)
    : config_(config), datapath_(datapath), cgroup_(std::move(cgroup)), cgroup_level_(cgroup_level) {
    identities_ = IdentityRegistry(datapath_.identity_names());
}

void Reconciler::continue_pinned() {
    auto adopted = datapath_.active_image();
    if (!adopted) return;
    auto adopted_generation = std::make_shared<MapImage>();
    adopted_generation->generation = adopted->generation;
    applied_image_ = std::move(adopted_generation);
    policy_numbers_ = PolicyRegistry(adopted->policies);
    std::map<uint32_t, DnsHostName> hosts;
    for (const DnsHostRule& rule : adopted->dns_hosts) hosts[rule.number] = rule.host;
    host_numbers_ = HostRegistry(std::move(hosts));
}

void Reconciler::reserve_numbers(const NumbersInUse& in_use) {
    identities_.reserve_through(in_use.identity);
    policy_numbers_.reserve_through(in_use.policy);
    host_numbers_.reserve_through(in_use.host);
}

std::optional<PolicyRef> Reconciler::policy_name(uint32_t number) const {
    auto it = policy_names_seen_.find(number);
    if (it == policy_names_seen_.end()) return std::nullopt;
    return it->second;
}

Status Reconciler::push_identities(const std::map<uint64_t, uint32_t>& workload_ids) {
    if (pushed_identities_revision_ == identities_.revision() && workload_ids == datapath_.workload_identities())
        return {};
    if (auto written = datapath_.set_identities(identities_.names(), workload_ids); !written) {
        pushed_identities_revision_.reset();
        return written;
    }
    pushed_identities_revision_ = identities_.revision();
    return {};
}

// Workload cgroups exist before their identity does: a process moved in at
// once is decided with that identity. A pod's cgroup is the kubelet's: it is
// only opened, and waited for while it does not exist.
Result<std::map<uint64_t, uint32_t>> Reconciler::workload_cgroups(std::vector<std::string>& problems,
                                                                  std::map<std::string, CgroupTarget>& to_attach) {
    std::map<uint64_t, uint32_t> workload_ids;
    waiting_.clear();
    for (const auto& w : workloads_) {
        if (!w.attach_key.empty()) {
            const std::filesystem::path path = cgroup_.path / w.cgroup;  // w.cgroup is absolute here
            // Attached to the very cgroup the source found: nothing to look at again.
            if (auto it = attached_.find(w.attach_key);
                it != attached_.end() && w.cgroup_id != 0 && it->second.id == w.cgroup_id && it->second.path == path) {
                workload_ids[it->second.id] = identities_.number_for(w.identity);
                to_attach[w.attach_key] = it->second;
                continue;
            }
            auto pod = open_existing_cgroup(path);
            if (!pod) {
                if (pod.error().errnum == ENOENT)
                    waiting_.push_back(w.attach_key);
                else
                    problems.push_back("pod " + w.attach_key + " (" + w.identity.str() +
                                       "): " + pod.error().describe());
                continue;
            }
            workload_ids[pod->id] = identities_.number_for(w.identity);
            to_attach[w.attach_key] = *pod;
            continue;
        }
        auto cg = ensure_cgroup(cgroup_.path / w.cgroup);
        if (!cg) {
            problems.push_back("workload " + w.identity.str() + ": " + cg.error().describe());
            continue;
        }
        workload_ids[cg->id] = identities_.number_for(w.identity);
    }
    return workload_ids;
}

Status Reconciler::check_identity_capacity(size_t workload_cgroups) const {
    if (identities_.size() > config_.capacities.identities)
        return make_error(fmt::format("{} needs {} identities, capacity is {} (capacities.identities)",
                                      EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES), identities_.size(),
                                      config_.capacities.identities));
    if (workload_cgroups > config_.capacities.workloads)
        return make_error(fmt::format("{} needs {} workload cgroups, capacity is {} (capacities.workloads)",
                                      EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES), workload_cgroups,
                                      config_.capacities.workloads));
    return {};
}

void Reconciler::adopt_pinned_workloads(const std::vector<std::string>& keys) {
    for (const auto& key : keys) attached_.emplace(key, CgroupTarget{});
}

void Reconciler::attach_workloads(const std::map<std::string, CgroupTarget>& wanted,
                                  std::vector<std::string>& problems) {
    for (const auto& [key, target] : wanted) {
        auto it = attached_.find(key);
        if (it != attached_.end() && it->second.id == target.id) continue;
        auto reports = datapath_.attach_workload(key, target);
        if (!reports) {
            problems.push_back("pod " + key + ": attaching to " + target.path.string() + ": " +
                               reports.error().describe());
            continue;
        }
        attached_[key] = target;
    }
    for (auto it = attached_.begin(); it != attached_.end();) {
        if (wanted.contains(it->first)) {
            ++it;
            continue;
        }
        if (auto detached = datapath_.detach_workload(it->first); !detached)
            problems.push_back("pod " + it->first + ": " + detached.error().describe());
        it = attached_.erase(it);
    }
}

Status Reconciler::apply(std::vector<std::string>& problems) {
    std::map<std::string, CgroupTarget> to_attach;
    auto workload_ids = workload_cgroups(problems, to_attach);
    if (!workload_ids) return workload_ids.error();
    policy_rule_cache_.set_policies(policies_);  // the same list as last time: its policies are not compared again
    PolicyInputs policy_inputs{policies_.get(), &host_addresses_,    &identities_,  &policy_numbers_,
                               cgroup_level_,   &policy_rule_cache_, &host_numbers_};
    AgentConfig with_cluster_ranges;
    const AgentConfig* settings = &config_;
    if (mesh_cidrs_) {
        with_cluster_ranges = config_;
        with_cluster_ranges.mesh_cidrs = *mesh_cidrs_;
        settings = &with_cluster_ranges;
    }
    auto built = build_image(*settings, mesh_, applied_image_->generation + 1, policy_inputs);
    if (!built) return built.error();
    // Shared with the datapath's record of the slot: 100k entries are not copied.
    const auto image = std::make_shared<const MapImage>(std::move(*built));
    // The identities in use, sorted: the rules' (sorted by identity first, so
    // one entry per identity) and the workloads'.
    std::vector<uint32_t> used;
    for (uint32_t last = 0; const auto& rule : image->policy_rules)
        if (rule.identity != last) used.push_back(last = rule.identity);
    if (!workload_ids->empty()) {
        std::vector<uint32_t> workload_numbers;
        workload_numbers.reserve(workload_ids->size());
        for (const auto& [cgroup_id, number] : *workload_ids) workload_numbers.push_back(number);
        std::sort(workload_numbers.begin(), workload_numbers.end());
        std::vector<uint32_t> both;
        both.reserve(used.size() + workload_numbers.size());
        std::set_union(used.begin(), used.end(), workload_numbers.begin(), workload_numbers.end(),
                       std::back_inserter(both));
        both.erase(std::unique(both.begin(), both.end()), both.end());
        used = std::move(both);
    }
    if (auto fits = check_identity_capacity(workload_ids->size()); !fits) return fits;

    const std::map<uint64_t, uint32_t> previous_workloads = datapath_.workload_identities();
    // Names first (a generation may use new identities), then the generation,
    // then forget the names nothing uses any more.
    if (auto named = push_identities(*workload_ids); !named) return named;
    const std::optional<RulesDelta> delta = policy_rule_cache_.take_delta();
    if (auto published = datapath_.publish(image, delta ? &*delta : nullptr); !published) return published;
    if (used.size() != identities_.size())  // used is a subset of the numbered
        identities_.retain(std::set<uint32_t>(used.begin(), used.end()));
    std::set<uint32_t> policies_in_use;
    for (const auto& [number, ref] : image->policies) policies_in_use.insert(number);
    policy_numbers_.retain(policies_in_use);
    std::set<uint32_t> hosts_in_use;
    for (const DnsHostRule& rule : image->dns_hosts) hosts_in_use.insert(rule.number);
    host_numbers_.retain(hosts_in_use);
    if (auto pruned = push_identities(*workload_ids); !pruned) return pruned;
    // Programs on a pod's cgroup only once its identity is registered.
    if (!to_attach.empty() || !attached_.empty()) attach_workloads(to_attach, problems);

    last_change_ = describe(*image, previous_workloads, *workload_ids);
    for (const auto& [number, ref] : image->policies) policy_names_seen_[number] = ref;
    applied_mesh_ = mesh_;
    applied_policies_ = policies_;
    applied_image_ = image;
    applied_at_ = now_rfc3339();
    return {};
}

std::string Reconciler::describe(const MapImage& image, const std::map<uint64_t, uint32_t>& workloads_before,
                                 const std::map<uint64_t, uint32_t>& workloads_after) const {
    if (!(applied_image_->flags & EGRESSD_CFG_VALID)) return "";  // the first generation: the agent says it all
    std::vector<std::string> changes;
    if (!(mesh_ == applied_mesh_)) changes.push_back(describe_changes(applied_mesh_, mesh_));
    if (applied_policies_ != policies_) {
        // The cache compared the policies already, against the list applied last.
        const PolicyRuleCache::Changes& found = policy_rule_cache_.last_changes();
        std::string p = found.since == applied_policies_ ? describe_policy_changes(found)
                                                         : describe_policy_changes(*applied_policies_, *policies_);
        if (!p.empty()) changes.push_back(p);
    }
    if (changes.empty() && image.policy_rules != applied_image_->policy_rules)
        changes.push_back(
            fmt::format("policy entries {} -> {}", applied_image_->policy_rules.size(), image.policy_rules.size()));
    if (workloads_after != workloads_before || changes.empty())
        changes.push_back(fmt::format("workloads={}", workloads_after.size()));
    return fmt::format("{}", fmt::join(changes, "; "));
}

}  // namespace egressd
