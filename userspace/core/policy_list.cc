#include "core/policy_list.h"

#include <algorithm>
#include <tuple>

#include "core/egress_policy.h"

namespace egressd {

PolicyList::PolicyList(std::vector<EgressPolicy> policies) {
    items_.reserve(policies.size());
    for (EgressPolicy& policy : policies) push_back(std::move(policy));
}

PolicyList::PolicyList(std::initializer_list<EgressPolicy> policies) {
    items_.reserve(policies.size());
    for (const EgressPolicy& policy : policies) push_back(policy);
}

void PolicyList::push_back(EgressPolicy policy) {
    items_.push_back(std::make_shared<const EgressPolicy>(std::move(policy)));
}

void PolicyList::sort() {
    std::ranges::sort(items_, {}, [](const SharedPolicy& p) { return std::tie(p->namespace_, p->name); });
}

bool same_policy(const SharedPolicy& a, const SharedPolicy& b) { return a == b || *a == *b; }

bool operator==(const PolicyList& a, const PolicyList& b) {
    return std::ranges::equal(a.items_, b.items_, same_policy);
}

}  // namespace egressd
