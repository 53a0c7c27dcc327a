// A typed handle on one BPF map: the key and value types of maps/egressd_abi.h
// bound to a map's file descriptor, with their sizes checked against what the
// kernel says the map holds when it is opened (as Katran's BpfBatchUtil
// does). That check is where the ABI header meets the built object or the
// pinned maps: a drifted struct fails at open, naming the map and the sizes,
// instead of reading garbage.
//
// Whole-map reads (read_all) use BPF_MAP_LOOKUP_BATCH where the map type has
// it (hash, LRU and per-CPU hash, arrays), which reads bucket by bucket and
// never restarts. Elsewhere (LPM tries) they walk with get_next_key, which
// restarts from the first key when the key it stands on was deleted meanwhile
// (LRU eviction, a concurrent writer): entries seen again are kept once, by
// key (the last value read wins), and the walk stops after 4 x max_entries
// steps, so a map that churns faster than it is read cannot hold the reader.
// Either way the result is a set of entries that each existed during the read,
// not an atomic snapshot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/result.h"

namespace egressd {

namespace bpf_map_detail {

struct Shape {
    uint32_t key_size = 0;
    uint32_t value_size = 0;  // per CPU for per-CPU maps
    uint32_t max_entries = 0;
    uint32_t type = 0;
};

// Checks that the map behind `fd` has `key_size` and `value_size`; returns its shape.
Result<Shape> check_shape(int fd, const std::string& name, uint32_t key_size, uint32_t value_size);
int possible_cpus();  // at least 1
bool is_per_cpu(uint32_t map_type);

// Every entry as raw bytes: keys of key_size, values of value_stride (the
// per-CPU values of one entry side by side for per-CPU maps).
Status read_all_raw(int fd, const std::string& name, const Shape& shape, size_t value_stride,
                    std::vector<uint8_t>& keys, std::vector<uint8_t>& values, size_t& count);
// The get_next_key walk of read_all_raw, for the map types without batch
// reads. `after_step`, if set, runs after each entry is read (tests delete
// entries there to make the walk restart).
Status walk_raw(int fd, const std::string& name, const Shape& shape, size_t value_stride, std::vector<uint8_t>& keys,
                std::vector<uint8_t>& values, size_t& count,
                const std::function<void(const uint8_t* key)>& after_step = nullptr);
// Deletes the keys then writes the entries: `entries` holds upsert_count
// records of entry_size bytes, each its key at offset 0 and its value at
// value_offset. A key already absent counts as deleted. ENOSPC and E2BIG say
// the map is full.
Status apply_raw(int fd, const std::string& name, size_t key_size, const uint8_t* deletes, size_t delete_count,
                 const uint8_t* entries, size_t entry_size, size_t value_offset, size_t upsert_count);
Status update_raw(int fd, const std::string& name, const void* key, const void* value, uint64_t flags);
Status erase_raw(int fd, const std::string& name, const void* key);
// Found: true; absent: false; an error otherwise.
Result<bool> lookup_raw(int fd, const std::string& name, const void* key, void* value);

}  // namespace bpf_map_detail

// Value is the type of one entry's value; for a per-CPU map, of one CPU's.
template <typename Key, typename Value>
class BpfMap {
public:
    BpfMap() = default;

    // Takes ownership of `fd`, a map named `name`, after checking its key and value sizes.
    static Result<BpfMap> adopt(UniqueFd fd, std::string name) {
        auto shape = bpf_map_detail::check_shape(fd.get(), name, sizeof(Key), sizeof(Value));
        if (!shape) return shape.error();
        BpfMap map;
        map.fd_ = std::move(fd);
        map.name_ = std::move(name);
        map.shape_ = *shape;
        map.cpus_ = bpf_map_detail::is_per_cpu(shape->type) ? bpf_map_detail::possible_cpus() : 1;
        return map;
    }

    int fd() const { return fd_.get(); }
    const std::string& name() const { return name_; }
    bool valid() const { return fd_.valid(); }
    uint32_t max_entries() const { return shape_.max_entries; }
    // Values per entry: the number of possible CPUs for a per-CPU map, else 1.
    size_t values_per_entry() const { return static_cast<size_t>(cpus_); }

    Status update(const Key& key, const Value& value, uint64_t flags = 0 /* BPF_ANY */) const {
        return bpf_map_detail::update_raw(fd(), name_, &key, &value, flags);
    }
    // Absent is not an error: the key is not there afterwards either way.
    Status erase(const Key& key) const { return bpf_map_detail::erase_raw(fd(), name_, &key); }

    // The value, or nullopt when the key is absent.
    Result<std::optional<Value>> lookup(const Key& key) const {
        Value value{};
        auto found = bpf_map_detail::lookup_raw(fd(), name_, &key, &value);
        if (!found) return found.error();
        return *found ? std::optional<Value>(value) : std::nullopt;
    }
    // Every CPU's value of a per-CPU map's entry (empty when absent).
    Result<std::vector<Value>> lookup_per_cpu(const Key& key) const {
        std::vector<Value> values(values_per_entry());
        auto found = bpf_map_detail::lookup_raw(fd(), name_, &key, values.data());
        if (!found) return found.error();
        if (!*found) values.clear();
        return values;
    }

    // Every entry, with values_per_entry() values each (see the top of this file).
    Result<std::vector<std::pair<Key, std::vector<Value>>>> read_all_per_cpu() const {
        std::vector<uint8_t> keys, values;
        size_t count = 0;
        const size_t stride = sizeof(Value) * values_per_entry();
        if (auto read = bpf_map_detail::read_all_raw(fd(), name_, shape_, stride, keys, values, count); !read)
            return read.error();
        std::vector<std::pair<Key, std::vector<Value>>> out(count);
        for (size_t i = 0; i < count; ++i) {
            std::memcpy(&out[i].first, keys.data() + i * sizeof(Key), sizeof(Key));
            out[i].second.resize(values_per_entry());
            std::memcpy(out[i].second.data(), values.data() + i * stride, stride);
        }
        return out;
    }
    Result<std::vector<std::pair<Key, Value>>> read_all() const {
        auto all = read_all_per_cpu();
        if (!all) return all.error();
        std::vector<std::pair<Key, Value>> out;
        out.reserve(all->size());
        for (auto& [key, values] : *all) out.emplace_back(key, values.front());
        return out;
    }

    // Deletes `deletes`, then writes `upserts`: how a diff reaches one map.
    // The pairs are written where they are, not copied apart.
    Status apply(std::span<const Key> deletes, std::span<const std::pair<Key, Value>> upserts) const {
        using Entry = std::pair<Key, Value>;
        return bpf_map_detail::apply_raw(fd(), name_, sizeof(Key), reinterpret_cast<const uint8_t*>(deletes.data()),
                                         deletes.size(), reinterpret_cast<const uint8_t*>(upserts.data()),
                                         sizeof(Entry), offsetof(Entry, second), upserts.size());
    }

private:
    UniqueFd fd_;
    std::string name_;
    bpf_map_detail::Shape shape_;
    int cpus_ = 1;
};

}  // namespace egressd
