// Small, stable numbers for names (identities, policies) in the kernel maps.
// A name keeps its number while it is in use, so a change never renumbers
// what the kernel holds and counters keyed by number stay meaningful across
// generations; a number is not reused while the agent runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>

namespace egressd {

template <typename Name>
class NumberRegistry {
public:
    NumberRegistry() = default;
    // Continues numbering after what the kernel already holds (adoption).
    explicit NumberRegistry(std::map<uint32_t, Name> existing) : names_(std::move(existing)) {
        for (const auto& [number, name] : names_) {
            numbers_[name] = number;
            next_ = std::max(next_, number + 1);
        }
    }

    // The name's number, allocating a new one when needed.
    uint32_t number_for(const Name& name) {
        if (auto found = find(name)) return *found;
        const uint32_t number = next_++;
        names_[number] = name;
        numbers_[name] = number;
        ++revision_;
        return number;
    }

    std::optional<uint32_t> find(const Name& name) const {
        auto it = numbers_.find(name);
        if (it == numbers_.end()) return std::nullopt;
        return it->second;
    }

    // Never hands out `number` or a smaller one again: numbers that state
    // kept in the kernel still uses (a learned DNS answer names its host's
    // number) must not come back with another meaning after a restart.
    void reserve_through(uint32_t number) {
        if (number != UINT32_MAX) next_ = std::max(next_, number + 1);
    }

    const std::map<uint32_t, Name>& names() const { return names_; }
    size_t size() const { return names_.size(); }
    // Changes whenever a number is allocated or forgotten: a caller that
    // copied names() at one revision need not compare 10k names to know
    // whether they are still the same.
    uint64_t revision() const { return revision_; }

    // Forgets every number not in `in_use`.
    void retain(const std::set<uint32_t>& in_use) {
        for (auto it = names_.begin(); it != names_.end();) {
            if (in_use.contains(it->first)) {
                ++it;
                continue;
            }
            numbers_.erase(it->second);
            it = names_.erase(it);
            ++revision_;
        }
    }

private:
    std::map<uint32_t, Name> names_;
    std::map<Name, uint32_t> numbers_;
    uint32_t next_ = 1;  // 0 is "none"
    uint64_t revision_ = 0;
};

}  // namespace egressd
