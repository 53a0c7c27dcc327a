#include "core/policy_rule_cache.h"

#include <algorithm>
#include <iterator>

#include "core/policy_rules.h"

namespace egressd {

void PolicyRuleCache::build(MapImage& image, const PolicyInputs& in) {
    // The list the last build read, still alive (held): its policies are as they were.
    const bool same_list = list_ && in.policies == list_.get() && list_ == built_list_;
    built_list_ = in.policies == list_.get() ? list_ : nullptr;
    const uint64_t build = ++builds_;
    std::vector<uint32_t> dropped;  // numbers whose rules leave all_
    std::vector<PolicyRule> added;  // rules of new and changed policies, marked with their number
    auto hint = entries_.begin();
    for (const EgressPolicy& policy : *in.policies) {
        PolicyRef ref{policy.namespace_, policy.name};
        const uint32_t number = in.policy_numbers->number_for(ref);
        image.policies.emplace_hint(image.policies.end(), number, ref);
        auto host_addresses = host_addresses_of(policy, in);
        auto host_numbers = host_numbers_of(policy, in);
        // Policies come sorted by (namespace, name), as the entries: the
        // last one found is usually just before.
        auto old = hint != entries_.end() && hint->first == ref ? hint : entries_.find(ref);
        if (old != entries_.end() && old->second.number == number && (same_list || old->second.policy == policy) &&
            old->second.host_addresses == host_addresses && old->second.host_numbers == host_numbers) {
            old->second.build = build;
            hint = std::next(old);
            continue;
        }
        if (old != entries_.end()) {
            dropped.push_back(old->second.number);
            entries_.erase(old);
        }
        append_rules(added, policy, host_addresses, host_numbers, *in.identities, number);
        auto made = entries_.insert_or_assign(
            std::move(ref), Entry{policy, std::move(host_addresses), std::move(host_numbers), number, build});
        hint = std::next(made.first);
    }
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->second.build == build) {
            ++it;
            continue;
        }
        dropped.push_back(it->second.number);
        it = entries_.erase(it);
    }

    // Same key: the policy first in (namespace, name) order leads.
    auto less = [&image](const PolicyRule& a, const PolicyRule& b) {
        const auto order = policy_key_order(a, b);
        if (order != 0) return order < 0;
        return image.policies.at(a.policy) < image.policies.at(b.policy);
    };
    if (!dropped.empty()) {
        // One flag per policy number: a look-up per rule, not a tree walk.
        std::vector<bool> gone(*std::max_element(dropped.begin(), dropped.end()) + 1);
        for (uint32_t number : dropped) gone[number] = true;
        std::erase_if(all_, [&gone](const PolicyRule& rule) { return rule.policy < gone.size() && gone[rule.policy]; });
    }
    const bool changed = !dropped.empty() || !added.empty();
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
    if (changed) {
        // Whether some key has rules of several policies: only then does the
        // image leave rules of all_ out. Known until all_ changes again.
        shared_keys_ = std::adjacent_find(all_.begin(), all_.end(), [](const PolicyRule& a, const PolicyRule& b) {
                           return policy_key_order(a, b) == 0;
                       }) != all_.end();
    }
    // One entry per key: the first, i.e. the leading policy's. Without
    // shared keys that is all_ as it is: one copy of trivially copyable rules.
    if (!shared_keys_) {
        image.policy_rules = all_;
        return;
    }
    image.policy_rules.clear();
    image.policy_rules.reserve(all_.size());
    for (const PolicyRule& rule : all_)
        if (image.policy_rules.empty() || policy_key_order(image.policy_rules.back(), rule) < 0)
            image.policy_rules.push_back(rule);
}

}  // namespace egressd
