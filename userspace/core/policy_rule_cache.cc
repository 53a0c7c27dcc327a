#include "core/policy_rule_cache.h"

#include <algorithm>
#include <iterator>

#include "core/dns_hosts.h"
#include "core/policy_rules.h"

namespace egressd {

namespace {

// From rules without shared keys to rules without shared keys, where `left`
// (rules of `from`) made way for `added` (each sorted by key, one rule per
// key): the rest is the same in both, so the diff of the two small lists is
// the diff of the whole.
RulesDelta rules_delta(const SharedVector<PolicyRule>& from, const SharedVector<PolicyRule>& to,
                       const std::vector<PolicyRule>& left, const std::vector<PolicyRule>& added) {
    RulesDelta delta{from, to, {}, {}};
    diff_policy_rules(left, added, delta.deletes, delta.upserts);
    return delta;
}

}  // namespace

void PolicyRuleCache::build(MapImage& image, const PolicyInputs& in) {
    try {
        build_from_cache(image, in);
    } catch (...) {
        // Half updated: forget it all, so that the next build makes every
        // policy's rules again instead of trusting a half-made record.
        auto list = std::move(list_);
        *this = PolicyRuleCache{};
        list_ = std::move(list);
        throw;
    }
}

void PolicyRuleCache::build_from_cache(MapImage& image, const PolicyInputs& in) {
    // The list the last build read, still alive (held): its policies are as they were.
    const bool same_list = list_ && in.policies == list_.get() && list_ == built_list_;
    changes_ = Changes{};
    changes_.since = built_list_;
    delta_.reset();
    built_list_ = in.policies == list_.get() ? list_ : nullptr;
    // The same list and the same host addresses (a MeshConfig toggle): the
    // same policies and rules, without a look at any policy.
    const bool same_addresses = in.host_addresses ? host_addresses_ && *host_addresses_ == *in.host_addresses
                                                  : !host_addresses_;
    if (same_list && same_addresses && policies_) {
        image.policies = *policies_;
        image.policy_rules = image_rules_;
        return;
    }
    if (in.host_addresses)
        host_addresses_ = *in.host_addresses;
    else
        host_addresses_.reset();
    const uint64_t build = ++builds_;
    std::vector<uint32_t> dropped;  // numbers whose rules leave all_
    std::vector<PolicyRule> added;  // rules of new and changed policies, marked with their number
    auto hint = entries_.begin();
    for (size_t position = 0; position < in.policies->size(); ++position) {
        const EgressPolicy& policy = (*in.policies)[position];
        const SharedPolicy& shared = in.policies->shared(position);
        PolicyRef ref{policy.namespace_, policy.name};
        const uint32_t number = in.policy_numbers->number_for(ref);
        image.policies.emplace_hint(image.policies.end(), number, ref);
        auto host_addresses = host_addresses_of(policy, in);
        auto host_numbers = host_numbers_of(policy, in);
        // Policies come sorted by (namespace, name), as the entries: the
        // last one found is usually just before.
        auto old = hint != entries_.end() && hint->first == ref ? hint : entries_.find(ref);
        const bool found = old != entries_.end();
        // The same object (its file or API object unchanged) is the same policy without a look.
        const bool unchanged = found && (same_list || same_policy(old->second.policy, shared));
        if (unchanged && old->second.number == number && old->second.host_addresses == host_addresses &&
            old->second.host_numbers == host_numbers) {
            old->second.build = build;
            hint = std::next(old);
            continue;
        }
        if (!unchanged) (found ? changes_.changed : changes_.added).push_back(ref);
        if (found) {
            dropped.push_back(old->second.number);
            entries_.erase(old);
        }
        append_rules(added, policy, host_addresses, host_numbers, *in.identities, number);
        auto made = entries_.insert_or_assign(
            std::move(ref), Entry{shared, std::move(host_addresses), std::move(host_numbers), number, build});
        hint = std::next(made.first);
    }
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->second.build == build) {
            ++it;
            continue;
        }
        dropped.push_back(it->second.number);
        changes_.removed.push_back(it->first);
        it = entries_.erase(it);
    }

    // Same key: the policy first in (namespace, name) order leads. The
    // search for an added rule's place meets the previous rules, dropped
    // policies' too: their names are the previous build's, by which all_
    // was sorted.
    auto name_of = [&image, this](uint32_t number) -> const PolicyRef& {
        if (auto it = image.policies.find(number); it != image.policies.end()) return it->second;
        return policies_->at(number);
    };
    auto less = [&name_of](const PolicyRule& a, const PolicyRule& b) {
        const auto order = policy_key_order(a, b);
        if (order != 0) return order < 0;
        return name_of(a.policy) < name_of(b.policy);
    };
    if (!dropped.empty() || !added.empty()) {
        // One flag per policy number: a look-up per rule, not a tree walk.
        std::vector<bool> gone;
        if (!dropped.empty()) gone.resize(*std::max_element(dropped.begin(), dropped.end()) + 1);
        for (uint32_t number : dropped) gone[number] = true;
        auto kept = [&gone](const PolicyRule& rule) { return rule.policy >= gone.size() || !gone[rule.policy]; };
        std::sort(added.begin(), added.end(), less);
        // One pass into new storage: the previous rules stay as they are,
        // shared with the image the kernel has until the next is published.
        // Between two added rules the previous ones are copied as a run,
        // found by a galloping search: adding a few rules to 100k costs
        // about one copy of the rules, not a comparison per rule (when some
        // policy's rules leave, each previous rule is still looked at once).
        std::vector<PolicyRule> next;
        next.reserve(all_.size() + added.size());
        std::vector<PolicyRule> left;  // the dropped policies' rules, in order
        auto copy_kept = [&](auto first, auto last) {
            if (dropped.empty()) return next.insert(next.end(), first, last), void();
            for (; first != last; ++first) (kept(*first) ? next : left).push_back(*first);
        };
        // The first rule after `from` that `rule` goes before.
        auto place = [&](std::vector<PolicyRule>::const_iterator from, const PolicyRule& rule) {
            for (size_t step = 1;; step *= 2) {
                const auto remaining = static_cast<size_t>(all_.vector().end() - from);
                if (remaining <= step) return std::upper_bound(from, all_.vector().end(), rule, less);
                if (less(rule, from[step - 1])) return std::upper_bound(from, from + step, rule, less);
                from += step;
            }
        };
        std::vector<size_t> inserted;  // where the added rules are in next
        inserted.reserve(added.size());
        auto from = all_.vector().begin();
        for (const PolicyRule& rule : added) {
            const auto at = place(from, rule);
            copy_kept(from, at);
            inserted.push_back(next.size());
            next.push_back(rule);
            from = at;
        }
        copy_kept(from, all_.vector().end());
        const SharedVector<PolicyRule> previous_image_rules = image_rules_;
        const bool shared_keys_before = shared_keys_;
        all_ = std::move(next);
        // Whether some key has rules of several policies: only then does the
        // image leave rules of all_ out. Taking rules out of sorted rules
        // without such keys makes none, so without them before only the
        // added rules' neighbours are looked at.
        auto same_key = [](const PolicyRule& a, const PolicyRule& b) { return policy_key_order(a, b) == 0; };
        if (shared_keys_) {
            shared_keys_ = std::adjacent_find(all_.begin(), all_.end(), same_key) != all_.end();
        } else {
            shared_keys_ = std::ranges::any_of(inserted, [&](size_t at) {
                return (at > 0 && same_key(all_[at - 1], all_[at])) ||
                       (at + 1 < all_.size() && same_key(all_[at], all_[at + 1]));
            });
        }
        // One entry per key: the first, i.e. the leading policy's. Without
        // shared keys that is all_ itself, shared, not copied.
        if (!shared_keys_) {
            image_rules_ = all_;
        } else {
            std::vector<PolicyRule> first;
            first.reserve(all_.size());
            for (const PolicyRule& rule : all_)
                if (first.empty() || policy_key_order(first.back(), rule) < 0) first.push_back(rule);
            image_rules_ = std::move(first);
        }
        // Worth it for a change, not for a first build or a big change,
        // which a walk over both lists diffs as fast.
        if (!shared_keys_before && !shared_keys_ && (left.size() + added.size()) * 4 < all_.size())
            delta_ = rules_delta(previous_image_rules, image_rules_, left, added);
        // Rules of one key have the same prefix: what holds for all_ holds
        // for the image's. Known from the added rules unless some left.
        auto prefix = [](const PolicyRule& rule) { return !is_host_rule(rule); };
        rules_have_prefixes_ = (rules_have_prefixes_ && !dropped.empty()) ? std::ranges::any_of(all_, prefix)
                                                                          : rules_have_prefixes_ ||
                                                                                std::ranges::any_of(added, prefix);
    }
    image.policy_rules = image_rules_;
    policies_ = image.policies;
}

SharedVector<PolicyRule> PolicyRuleCache::with_host_rules(const SharedVector<PolicyRule>& rules,
                                                          const std::vector<PolicyRule>& added) {
    if (!host_rules_base_.shares_with(rules) || added != host_rules_added_ || host_rules_result_.empty()) {
        host_rules_result_ = merge_rules(rules, added);
        host_rules_base_ = rules;
        host_rules_added_ = added;
    }
    return host_rules_result_;
}

}  // namespace egressd
