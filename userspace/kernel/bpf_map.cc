#include "kernel/bpf_map.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

namespace egressd::bpf_map_detail {

namespace {

// The kernel's ENOTSUPP (not in userspace errno.h): an operation the map type lacks.
constexpr int kKernelNotSupported = 524;

bool batch_unsupported(int err) { return err == EINVAL || err == EOPNOTSUPP || err == kKernelNotSupported; }

Error full_or_failed(const std::string& name, const std::string& what, int err) {
    std::string message = name + ": " + what;
    if (err == ENOSPC || err == E2BIG) message += " (the map is full: raise capacities in the agent settings)";
    return system_error(message, err);
}

Status read_batched(int fd, const std::string& name, const Shape& shape, size_t stride, std::vector<uint8_t>& keys,
                    std::vector<uint8_t>& values, size_t& count) {
    // The batch position is opaque: a bucket index for hashes, a key for arrays.
    std::vector<uint8_t> position(std::max<size_t>(shape.key_size, 8)), next(position.size());
    size_t chunk = std::clamp<size_t>(shape.max_entries, 1, 4096);
    bool first = true;
    for (;;) {
        keys.resize((count + chunk) * shape.key_size);
        values.resize((count + chunk) * stride);
        uint32_t n = static_cast<uint32_t>(chunk);
        LIBBPF_OPTS(bpf_map_batch_opts, opts);
        const int rc =
            bpf_map_lookup_batch(fd, first ? nullptr : position.data(), next.data(),
                                 keys.data() + count * shape.key_size, values.data() + count * stride, &n, &opts);
        const int err = rc == 0 ? 0 : errno;
        if (err == ENOSPC && n == 0 && chunk < shape.max_entries) {  // one bucket holds more than a chunk
            chunk *= 2;
            continue;
        }
        if (err != 0 && err != ENOENT) return system_error("reading " + name, err);
        count += n;
        if (err == ENOENT) return {};  // the end of the map
        position.swap(next);
        first = false;
    }
}

}  // namespace

Status walk_raw(int fd, const std::string& name, const Shape& shape, size_t stride, std::vector<uint8_t>& keys,
                std::vector<uint8_t>& values, size_t& count,
                const std::function<void(const uint8_t* key)>& after_step) {
    std::unordered_map<std::string, size_t> seen;  // key bytes -> index in the result
    std::vector<uint8_t> key(shape.key_size), next(shape.key_size), value(stride);
    const uint64_t max_steps = 4ULL * shape.max_entries + 4;
    bool first = true;
    for (uint64_t step = 0; step < max_steps; ++step) {
        if (bpf_map_get_next_key(fd, first ? nullptr : key.data(), next.data()) != 0) {
            if (errno == ENOENT) return {};  // the end of the map
            return system_error("reading " + name);
        }
        key.swap(next);
        first = false;
        if (bpf_map_lookup_elem(fd, key.data(), value.data()) != 0) {
            if (errno == ENOENT) continue;  // deleted since get_next_key: not there any more
            return system_error("reading " + name);
        }
        std::string id(key.begin(), key.end());
        auto [at, added] = seen.try_emplace(std::move(id), count);
        if (added) {
            keys.insert(keys.end(), key.begin(), key.end());
            values.insert(values.end(), value.begin(), value.end());
            ++count;
        } else {  // seen before the walk restarted: the newer value wins
            std::copy(value.begin(), value.end(), values.begin() + static_cast<ptrdiff_t>(at->second * stride));
        }
        if (after_step) after_step(key.data());
    }
    return {};  // the bound: see bpf_map.h
}

int possible_cpus() {
    static const int cpus = std::max(1, libbpf_num_possible_cpus());
    return cpus;
}

bool is_per_cpu(uint32_t map_type) {
    return map_type == BPF_MAP_TYPE_PERCPU_ARRAY || map_type == BPF_MAP_TYPE_PERCPU_HASH ||
           map_type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

Result<Shape> check_shape(int fd, const std::string& name, uint32_t key_size, uint32_t value_size) {
    bpf_map_info info{};
    uint32_t length = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &length) != 0) return system_error("reading the map info of " + name);
    if (info.key_size != key_size || info.value_size != value_size)
        return make_error(
            fmt::format("{}: the kernel's map has {}-byte keys and {}-byte values, "
                        "maps/egressd_abi.h says {} and {} (a program built from another ABI?)",
                        name, info.key_size, info.value_size, key_size, value_size));
    // The kernel lays a per-CPU value out in 8-byte units.
    if (is_per_cpu(info.type) && value_size % 8 != 0)
        return make_error(fmt::format("{}: a per-CPU value of {} bytes is not a multiple of 8", name, value_size));
    return Shape{info.key_size, info.value_size, info.max_entries, info.type};
}

Status read_all_raw(int fd, const std::string& name, const Shape& shape, size_t value_stride,
                    std::vector<uint8_t>& keys, std::vector<uint8_t>& values, size_t& count) {
    count = 0;
    keys.clear();
    values.clear();
    if (auto batched = read_batched(fd, name, shape, value_stride, keys, values, count);
        batched || count != 0 || !batch_unsupported(batched.error().errnum)) {
        keys.resize(count * shape.key_size);
        values.resize(count * value_stride);
        return batched;
    }
    keys.clear();
    values.clear();
    return walk_raw(fd, name, shape, value_stride, keys, values, count);
}

namespace {

// Entries per batch syscall: the kernel copies a batch in one call, element
// by element, and stops at the first that fails, saying how many it did.
constexpr size_t kWriteBatch = 4096;

struct Failed {
    size_t entry;  // 0-based
    int err;
};

// Operations 0..total-1: batch(first, count) does up to `count` from `first`
// in one call and sets `count` to how many it did; one(i) does one. Both
// return 0, or -1 with errno. The error `skipped` (ENOENT for a delete)
// passes over its entry. Without batches in the map type, one by one.
template <typename Batch, typename One>
std::optional<Failed> run_in_batches(size_t total, bool& batches, int skipped, Batch batch, One one) {
    for (size_t i = 0; i < total;) {
        if (batches && total - i > 1) {
            __u32 count = __u32(std::min(kWriteBatch, total - i));
            if (batch(i, count) == 0) {
                i += count;
                continue;
            }
            const int err = errno;
            if (count == 0 && batch_unsupported(err)) {
                batches = false;
                continue;
            }
            i += count;  // done before the one that failed
            if (err != skipped) return Failed{i, err};
            ++i;
            continue;
        }
        if (one(i) != 0 && errno != skipped) return Failed{i, errno};
        ++i;
    }
    return std::nullopt;
}

}  // namespace

// 100k entries at load, twice (both slots), would be 200k syscalls one by
// one: they go in batches where the map type has them.
Status apply_raw(int fd, const std::string& name, size_t key_size, const uint8_t* deletes, size_t delete_count,
                 const uint8_t* entries, size_t entry_size, size_t value_offset, size_t upsert_count) {
    bool batches = true;
    const auto deleted = run_in_batches(
        delete_count, batches, ENOENT,
        [&](size_t first, __u32& count) { return bpf_map_delete_batch(fd, deletes + first * key_size, &count, nullptr); },
        [&](size_t i) { return bpf_map_delete_elem(fd, deletes + i * key_size); });
    if (deleted)
        return full_or_failed(name, fmt::format("deleting {} of {} entries", deleted->entry + 1, delete_count),
                              deleted->err);
    // The batch call takes the keys and the values apart.
    const size_t value_size = entry_size - value_offset;
    std::vector<uint8_t> keys, values;
    auto write_batch = [&](size_t first, __u32& count) {
        keys.resize(count * key_size);
        values.resize(count * value_size);
        for (size_t j = 0; j < count; ++j) {
            const uint8_t* entry = entries + (first + j) * entry_size;
            std::memcpy(keys.data() + j * key_size, entry, key_size);
            std::memcpy(values.data() + j * value_size, entry + value_offset, value_size);
        }
        return bpf_map_update_batch(fd, keys.data(), values.data(), &count, nullptr);
    };
    auto write_one = [&](size_t i) {
        const uint8_t* entry = entries + i * entry_size;
        return bpf_map_update_elem(fd, entry, entry + value_offset, BPF_ANY);
    };
    if (const auto written = run_in_batches(upsert_count, batches, 0, write_batch, write_one))
        return full_or_failed(name, fmt::format("writing {} of {} entries", written->entry + 1, upsert_count),
                              written->err);
    return {};
}

Status update_raw(int fd, const std::string& name, const void* key, const void* value, uint64_t flags) {
    if (bpf_map_update_elem(fd, key, value, flags) != 0) return full_or_failed(name, "writing", errno);
    return {};
}

Status erase_raw(int fd, const std::string& name, const void* key) {
    if (bpf_map_delete_elem(fd, key) != 0 && errno != ENOENT) return system_error(name + ": deleting");
    return {};
}

Result<bool> lookup_raw(int fd, const std::string& name, const void* key, void* value) {
    if (bpf_map_lookup_elem(fd, key, value) == 0) return true;
    if (errno == ENOENT) return false;
    return system_error("reading " + name);
}

}  // namespace egressd::bpf_map_detail
