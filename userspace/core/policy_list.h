// A list of Egress policies whose members are shared, immutable objects.
// A policy read once is the same object in every later load while its file
// (or its API object) is unchanged, in the agent's lists and in the rule
// cache. Telling what a change touched then compares pointers, not 600
// policies with their sources and addresses, and copying a list copies
// pointers. It reads like a std::vector<EgressPolicy>.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <utility>
#include <vector>

namespace egressd {

struct EgressPolicy;
using SharedPolicy = std::shared_ptr<const EgressPolicy>;

class PolicyList {
public:
    // Reads the shared objects as `const EgressPolicy&`.
    class const_iterator {
    public:
        using iterator_category = std::random_access_iterator_tag;
        using value_type = EgressPolicy;
        using difference_type = std::ptrdiff_t;
        using pointer = const EgressPolicy*;
        using reference = const EgressPolicy&;

        const_iterator() = default;
        explicit const_iterator(std::vector<SharedPolicy>::const_iterator at) : at_(at) {}
        reference operator*() const { return **at_; }
        pointer operator->() const { return at_->get(); }
        reference operator[](difference_type n) const { return *at_[n]; }
        const_iterator& operator++() { return ++at_, *this; }
        const_iterator operator++(int) { return const_iterator(at_++); }
        const_iterator& operator--() { return --at_, *this; }
        const_iterator operator--(int) { return const_iterator(at_--); }
        const_iterator& operator+=(difference_type n) { return at_ += n, *this; }
        const_iterator& operator-=(difference_type n) { return at_ -= n, *this; }
        friend const_iterator operator+(const_iterator i, difference_type n) { return i += n; }
        friend const_iterator operator+(difference_type n, const_iterator i) { return i += n; }
        friend const_iterator operator-(const_iterator i, difference_type n) { return i -= n; }
        friend difference_type operator-(const const_iterator& a, const const_iterator& b) { return a.at_ - b.at_; }
        friend bool operator==(const const_iterator&, const const_iterator&) = default;
        friend auto operator<=>(const const_iterator&, const const_iterator&) = default;

    private:
        std::vector<SharedPolicy>::const_iterator at_;
    };
    using value_type = EgressPolicy;
    using iterator = const_iterator;  // read-only, as the objects are

    PolicyList() = default;
    PolicyList(std::vector<EgressPolicy> policies);  // each made a shared object, in order
    PolicyList(std::initializer_list<EgressPolicy> policies);

    void push_back(SharedPolicy policy) { items_.push_back(std::move(policy)); }
    void push_back(EgressPolicy policy);
    void reserve(size_t n) { items_.reserve(n); }
    // Sorted by (namespace, name), the order of a policy set.
    void sort();

    size_t size() const { return items_.size(); }
    bool empty() const { return items_.empty(); }
    const EgressPolicy& operator[](size_t i) const { return *items_[i]; }
    const EgressPolicy& front() const { return *items_.front(); }
    const EgressPolicy& back() const { return *items_.back(); }
    const_iterator begin() const { return const_iterator(items_.begin()); }
    const_iterator end() const { return const_iterator(items_.end()); }
    // The shared object itself, to hold it or to compare it by address.
    const SharedPolicy& shared(size_t i) const { return items_[i]; }

    // Equal policies in the same order; the same object is equal without a look.
    friend bool operator==(const PolicyList& a, const PolicyList& b);

private:
    std::vector<SharedPolicy> items_;  // never null
};

// The same object, or equal policies.
bool same_policy(const SharedPolicy& a, const SharedPolicy& b);

}  // namespace egressd
