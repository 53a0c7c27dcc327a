#include "core/identity.h"

namespace egressd {

Result<IdentityName> IdentityName::parse(const std::string& text) {
    const auto slash = text.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
        text.find('/', slash + 1) != std::string::npos)
        return make_error("\"" + text + "\" is not NAMESPACE/SERVICEACCOUNT");
    return IdentityName{text.substr(0, slash), text.substr(slash + 1)};
}

IdentityRegistry::IdentityRegistry(std::map<uint32_t, IdentityName> existing) : names_(std::move(existing)) {
    for (const auto& [number, name] : names_) {
        numbers_[name] = number;
        next_ = std::max(next_, number + 1);
    }
}

uint32_t IdentityRegistry::number_for(const IdentityName& name) {
    if (auto found = find(name)) return *found;
    const uint32_t number = next_++;
    names_[number] = name;
    numbers_[name] = number;
    return number;
}

std::optional<uint32_t> IdentityRegistry::find(const IdentityName& name) const {
    auto it = numbers_.find(name);
    if (it == numbers_.end()) return std::nullopt;
    return it->second;
}

void IdentityRegistry::retain(const std::set<uint32_t>& in_use) {
    for (auto it = names_.begin(); it != names_.end();) {
        if (in_use.contains(it->first)) {
            ++it;
            continue;
        }
        numbers_.erase(it->second);
        it = names_.erase(it);
    }
}

}  // namespace egressd
