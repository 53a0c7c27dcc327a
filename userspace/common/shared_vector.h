// An immutable vector shared by the values that hold it, copied on write.
// A generation's 100k policy rules are shared by the image the kernel has,
// the next image and the rule cache: a MeshConfig toggle copies, compares and
// diffs none of them, since equal storage is equal content.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace egressd {

template <typename T>
class SharedVector {
public:
    using value_type = T;
    using const_iterator = typename std::vector<T>::const_iterator;
    using iterator = const_iterator;  // read-only: edit() is the one way to change it

    SharedVector() = default;
    SharedVector(std::vector<T> items) : items_(std::make_shared<std::vector<T>>(std::move(items))) {}
    SharedVector(std::initializer_list<T> items) : SharedVector(std::vector<T>(items)) {}

    const std::vector<T>& vector() const { return items_ ? *items_ : empty_vector(); }
    const_iterator begin() const { return vector().begin(); }
    const_iterator end() const { return vector().end(); }
    size_t size() const { return items_ ? items_->size() : 0; }
    bool empty() const { return size() == 0; }
    const T& operator[](size_t i) const { return (*items_)[i]; }

    // The same storage: then equal without looking at the elements.
    bool shares_with(const SharedVector& other) const { return items_ == other.items_ || (empty() && other.empty()); }
    friend bool operator==(const SharedVector& a, const SharedVector& b) {
        return a.shares_with(b) || a.vector() == b.vector();
    }

    // The elements to change, copied first when another holder shares them.
    std::vector<T>& edit() {
        if (!items_)
            items_ = std::make_shared<std::vector<T>>();
        else if (items_.use_count() > 1)
            items_ = std::make_shared<std::vector<T>>(*items_);
        return *items_;
    }
    void push_back(const T& item) { edit().push_back(item); }

private:
    static const std::vector<T>& empty_vector() {
        static const std::vector<T> none;
        return none;
    }
    // Never changed while shared: edit() copies first.
    std::shared_ptr<std::vector<T>> items_;
};

}  // namespace egressd
