// Workload identities: (namespace, serviceAccount) pairs, numbered for the
// kernel maps by a NumberRegistry (stable numbers, see core/registry.h).
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/result.h"
#include "core/registry.h"

namespace egressd {

struct IdentityName {
    std::string namespace_;
    std::string service_account;

    auto operator<=>(const IdentityName&) const = default;
    std::string str() const { return namespace_ + "/" + service_account; }
    // "NAMESPACE/SERVICEACCOUNT", both non-empty.
    static Result<IdentityName> parse(const std::string& text);
};

// Identity 0 is "unknown" in the kernel; numbers start at 1.
using IdentityRegistry = NumberRegistry<IdentityName>;

}  // namespace egressd
