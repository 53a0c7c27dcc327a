#include "core/policy_rule_cache.h"

#include <algorithm>
#include <iterator>
#include <set>

#include "core/policy_rules.h"

namespace egressd {

void PolicyRuleCache::build(MapImage& image, const PolicyInputs& in) {
    std::map<PolicyRef, Entry> next;
    std::set<uint32_t> dropped;     // numbers whose rules leave all_
    std::vector<PolicyRule> added;  // rules of new and changed policies, marked with their number
    for (const EgressPolicy& policy : *in.policies) {
        PolicyRef ref{policy.namespace_, policy.name};
        const uint32_t number = in.policy_numbers->number_for(ref);
        image.policies[number] = ref;
        auto host_addresses = host_addresses_of(policy, in);
        auto host_numbers = host_numbers_of(policy, in);
        auto old = entries_.find(ref);
        if (old != entries_.end() && old->second.number == number && old->second.policy == policy &&
            old->second.host_addresses == host_addresses && old->second.host_numbers == host_numbers) {
            next.emplace(std::move(ref), std::move(old->second));
            continue;
        }
        if (old != entries_.end()) dropped.insert(old->second.number);
        append_rules(added, policy, host_addresses, host_numbers, *in.identities, number);
        next.emplace(std::move(ref), Entry{policy, std::move(host_addresses), std::move(host_numbers), number});
    }
    for (const auto& [ref, entry] : entries_)
        if (!next.contains(ref)) dropped.insert(entry.number);
    entries_ = std::move(next);

    // Same key: the policy first in (namespace, name) order leads.
    auto less = [&image](const PolicyRule& a, const PolicyRule& b) {
        const auto order = policy_key_order(a, b);
        if (order != 0) return order < 0;
        return image.policies.at(a.policy) < image.policies.at(b.policy);
    };
    if (!dropped.empty())
        std::erase_if(all_, [&dropped](const PolicyRule& rule) { return dropped.contains(rule.policy); });
    if (!added.empty()) {
        std::sort(added.begin(), added.end(), less);
        if (all_.empty()) {
            all_ = std::move(added);
        } else if (added.size() <= 8) {
            // A policy or two more: insert in place (a memmove of the tail)
            // rather than merge into a new vector of 100k entries.
            for (const PolicyRule& rule : added)
                all_.insert(std::upper_bound(all_.begin(), all_.end(), rule, less), rule);
        } else {
            std::vector<PolicyRule> merged;
            merged.reserve(all_.size() + added.size());
            std::merge(all_.begin(), all_.end(), added.begin(), added.end(), std::back_inserter(merged), less);
            all_ = std::move(merged);
        }
    }
    // One entry per key: the first, i.e. the leading policy's.
    image.policy_rules.clear();
    image.policy_rules.reserve(all_.size());
    for (const PolicyRule& rule : all_)
        if (image.policy_rules.empty() || policy_key_order(image.policy_rules.back(), rule) < 0)
            image.policy_rules.push_back(rule);
}

}  // namespace egressd
