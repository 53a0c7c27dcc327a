// Incremental policy rules: what the last build made of each policy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "core/dns_hosts.h"
#include "core/egress_policy.h"
#include "core/image.h"

namespace egressd {

// What the last build made of each policy, for the next build. 100k rules
// take ~30 ms to generate and sort; with the cache, adding, changing or
// removing a few policies (or a host's addresses) regenerates only theirs
// and merges them into the sorted rules of the others: a few linear passes.
// A MeshConfig change reuses every policy, and the image shares the
// previous image's rules. The image is exactly the one a
// build without the cache gives (tested against it). One cache per sequence
// of builds that share the registries.
class PolicyRuleCache {
public:
    // Fills image.policy_rules and image.policies from `in`. If it throws,
    // the cache is left empty: the next build makes every rule again.
    void build(MapImage& image, const PolicyInputs& in);
    size_t rules() const { return all_.size(); }
    // Whether the last build's rules hold prefixes other than single
    // addresses (EGRESSD_CFG_POLICY_PREFIXES): known without a pass over
    // them while they stay as they were.
    bool rules_have_prefixes() const { return rules_have_prefixes_; }
    // What the last build changed in the rules it gives images, when known
    // (no key shared by several policies before or after) and small against
    // them; nothing otherwise, or when it changed nothing. Taken, not kept:
    // held past its publish, it would keep the previous rules' storage alive.
    // The next build drops one not taken.
    std::optional<RulesDelta> take_delta() { return std::exchange(delta_, std::nullopt); }

    // The policies the last build found new, changed (the policy itself, not
    // its hosts' addresses) or gone, against the list the build before read
    // (`since`; null when that was no list given by set_policies).
    struct Changes {
        std::shared_ptr<const PolicyList> since;
        std::vector<PolicyRef> added, changed, removed;  // removed: sorted
    };
    const Changes& last_changes() const { return changes_; }

    // The DNS-host part of the last build (add_dns_hosts) while the builds
    // read that very list: the same policies on the same registries give the
    // same part. Null otherwise.
    const DnsHostPart* dns_hosts_of(const PolicyList* list) const {
        return dns_part_ && list_ && list == list_.get() && dns_list_ == list_ ? &*dns_part_ : nullptr;
    }
    // The last part kept, whatever list it was made from (null before any).
    const DnsHostPart* last_dns_hosts() const { return dns_part_ ? &*dns_part_ : nullptr; }
    // Keeps `part`, made from `list`, for the next builds; returns it.
    const DnsHostPart* keep_dns_hosts(const PolicyList* list, DnsHostPart part) {
        dns_part_ = std::move(part);
        return reuse_dns_hosts(list);
    }
    // Keeps the last part, as it is, for `list` too (it holds for it); returns it.
    const DnsHostPart* reuse_dns_hosts(const PolicyList* list) {
        dns_list_ = list_ && list == list_.get() ? list_ : nullptr;
        return &*dns_part_;
    }

    // `rules` (this cache's output) with the rules that covering host names
    // add (add_dns_hosts): the previous result again, shared, when both are
    // as they were.
    SharedVector<PolicyRule> with_host_rules(const SharedVector<PolicyRule>& rules, const std::vector<PolicyRule>& added);

    // Optional: the immutable list the next builds read (in.policies ==
    // list.get()). While builds read the very list the previous one read,
    // its policies are known unchanged and are not compared one by one
    // again (a MeshConfig toggle at 100k rules looks at none of them).
    void set_policies(std::shared_ptr<const PolicyList> list) { list_ = std::move(list); }

private:
    void build_from_cache(MapImage& image, const PolicyInputs& in);

    struct Entry {
        SharedPolicy policy;
        std::vector<std::vector<IpAddress>> host_addresses;  // of policy.hosts, as built
        std::vector<uint32_t> host_numbers;                  // of its host names, as built
        uint32_t number = 0;
        uint64_t build = 0;  // the last build that found the policy
    };
    std::map<PolicyRef, Entry> entries_;
    // Every cached policy's rules (before first-policy-wins), sorted by key,
    // then by the policy's (namespace, name).
    SharedVector<PolicyRule> all_;
    // all_ with one rule per key: what images get, shared while all_ stays.
    SharedVector<PolicyRule> image_rules_;
    bool rules_have_prefixes_ = false;  // of all_, and so of image_rules_
    bool shared_keys_ = false;          // some key of all_ has rules of several policies
    std::optional<RulesDelta> delta_;   // of the last build
    // The last with_host_rules(): its inputs and its result.
    SharedVector<PolicyRule> host_rules_base_, host_rules_result_;
    std::vector<PolicyRule> host_rules_added_;
    uint64_t builds_ = 0;
    std::shared_ptr<const PolicyList> list_;        // from set_policies
    std::shared_ptr<const PolicyList> built_list_;  // the list the last build read, if list_
    Changes changes_;
    // The last build's host addresses and policy names, for the next.
    std::optional<std::map<std::string, std::vector<IpAddress>>> host_addresses_;
    std::optional<std::map<uint32_t, PolicyRef>> policies_;
    std::shared_ptr<const PolicyList> dns_list_;  // the list dns_part_ was made from
    std::optional<DnsHostPart> dns_part_;
};

}  // namespace egressd
