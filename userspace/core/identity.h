// Workload identities: (namespace, serviceAccount) pairs numbered with small
// integers for the kernel maps. Numbers are stable for as long as a name is
// in use, so registering a workload or changing policies never renumbers
// what the kernel holds; a number is not reused while the agent runs.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/result.h"

namespace egressd {

struct IdentityName {
    std::string namespace_;
    std::string service_account;

    auto operator<=>(const IdentityName&) const = default;
    std::string str() const { return namespace_ + "/" + service_account; }
    // "NAMESPACE/SERVICEACCOUNT", both non-empty.
    static Result<IdentityName> parse(const std::string& text);
};

class IdentityRegistry {
public:
    IdentityRegistry() = default;
    // Continues numbering after what the kernel already holds (adoption).
    explicit IdentityRegistry(std::map<uint32_t, IdentityName> existing);

    uint32_t number_for(const IdentityName& name);  // allocates a new number when needed
    std::optional<uint32_t> find(const IdentityName& name) const;
    const std::map<uint32_t, IdentityName>& names() const { return names_; }
    size_t size() const { return names_.size(); }
    // Forgets every number not in `in_use`.
    void retain(const std::set<uint32_t>& in_use);

private:
    std::map<uint32_t, IdentityName> names_;
    std::map<IdentityName, uint32_t> numbers_;
    uint32_t next_ = 1;  // 0 is "unknown"
};

}  // namespace egressd
