// The typed map layer against real kernel maps (root): the ABI size check at
// open, whole-map reads by batch and by walk, and a walk that restarts
// because the key it stands on is deleted meanwhile (as LRU eviction does in
// flows_v1): every entry once, nothing invented.
#include <bpf/bpf.h>
#include <doctest/doctest.h>

#include <map>
#include <set>

#include "kernel/bpf_map.h"

using namespace egressd;

namespace {

struct Value16 {
    uint64_t a = 0, b = 0;
};

UniqueFd make_map(bpf_map_type type, uint32_t key_size, uint32_t value_size, uint32_t max_entries) {
    LIBBPF_OPTS(bpf_map_create_opts, opts);
    if (type == BPF_MAP_TYPE_LPM_TRIE) opts.map_flags = BPF_F_NO_PREALLOC;
    UniqueFd fd(bpf_map_create(type, "egressd_test", key_size, value_size, max_entries, &opts));
    REQUIRE_MESSAGE(fd.valid(), "bpf_map_create: " << std::strerror(errno));
    return fd;
}

template <typename K, typename V>
BpfMap<K, V> adopt(UniqueFd fd) {
    auto map = BpfMap<K, V>::adopt(std::move(fd), "test_map");
    REQUIRE_MESSAGE(map.ok(), (map.ok() ? "" : map.error().describe()));
    return std::move(*map);
}

// An LPM trie key: prefix length, then 4 bytes of address.
struct TrieKey {
    uint32_t prefixlen = 32;
    uint32_t addr = 0;
};

}  // namespace

TEST_CASE("BpfMap: a map whose key or value size differs from the ABI fails at open, naming both") {
    auto wrong_value = BpfMap<uint64_t, Value16>::adopt(make_map(BPF_MAP_TYPE_HASH, 8, 24, 4), "flows_v1");
    REQUIRE_FALSE(wrong_value.ok());
    CHECK(wrong_value.error().message ==
          "flows_v1: the kernel's map has 8-byte keys and 24-byte values, maps/egressd_abi.h says 8 and 16 "
          "(a program built from another ABI?)");
    auto wrong_key = BpfMap<uint32_t, Value16>::adopt(make_map(BPF_MAP_TYPE_HASH, 8, 16, 4), "x_v1");
    CHECK_FALSE(wrong_key.ok());
    CHECK(BpfMap<uint64_t, Value16>::adopt(make_map(BPF_MAP_TYPE_HASH, 8, 16, 4), "ok_v1").ok());
}

TEST_CASE("BpfMap: update, lookup, erase and apply") {
    auto map = adopt<uint64_t, Value16>(make_map(BPF_MAP_TYPE_HASH, 8, 16, 8));
    REQUIRE(map.update(1, {1, 2}).ok());
    auto found = map.lookup(1);
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK((*found)->b == 2);
    CHECK_FALSE(map.lookup(2)->has_value());
    CHECK(map.erase(1).ok());
    CHECK(map.erase(1).ok());  // absent: still what was asked
    std::vector<std::pair<uint64_t, Value16>> upserts;
    for (uint64_t k = 0; k < 8; ++k) upserts.push_back({k, {k, k}});
    CHECK(map.apply({}, upserts).ok());
    upserts.push_back({99, {}});
    const std::vector<uint64_t> deletes = {0, 1};
    const Status full = map.apply({}, upserts);  // 9 entries into 8
    REQUIRE_FALSE(full.ok());
    CHECK(full.error().describe().find("the map is full") != std::string::npos);
    const std::vector<std::pair<uint64_t, Value16>> one_more = {{99, {}}};
    CHECK(map.apply(deletes, one_more).ok());  // deletes first make the room
    CHECK(map.lookup(99)->has_value());
    CHECK_FALSE(map.lookup(0)->has_value());
}

TEST_CASE("BpfMap: apply writes and deletes thousands of entries, by batch (hash) and one by one (LPM trie)") {
    auto hash = adopt<uint64_t, Value16>(make_map(BPF_MAP_TYPE_HASH, 8, 16, 12000));
    auto trie = adopt<TrieKey, Value16>(make_map(BPF_MAP_TYPE_LPM_TRIE, 8, 16, 12000));
    std::vector<std::pair<uint64_t, Value16>> hash_entries;
    std::vector<std::pair<TrieKey, Value16>> trie_entries;
    for (uint32_t i = 0; i < 10000; ++i) {  // more than one batch
        hash_entries.push_back({i, {i, i * 5}});
        trie_entries.push_back({{32, i}, {i, i * 5}});
    }
    REQUIRE(hash.apply({}, hash_entries).ok());
    REQUIRE(trie.apply({}, trie_entries).ok());
    // Deletes with absent keys among them: each one is gone, the rest stays.
    std::vector<uint64_t> hash_deletes;
    std::vector<TrieKey> trie_deletes;
    for (uint32_t i = 0; i < 10000; i += 2) {
        hash_deletes.push_back(i);
        trie_deletes.push_back({32, i});
        if (i % 1000 == 0) {
            hash_deletes.push_back(1000000 + i);
            trie_deletes.push_back({32, 1000000 + i});
        }
    }
    REQUIRE(hash.apply(hash_deletes, {}).ok());
    REQUIRE(trie.apply(trie_deletes, {}).ok());
    auto hash_left = hash.read_all();
    auto trie_left = trie.read_all();
    REQUIRE(hash_left.ok());
    REQUIRE(trie_left.ok());
    CHECK(hash_left->size() == 5000);
    CHECK(trie_left->size() == 5000);
    for (const auto& [key, value] : *hash_left) CHECK((key % 2 == 1 && value.b == key * 5));
    for (const auto& [key, value] : *trie_left) CHECK((key.addr % 2 == 1 && value.b == uint64_t{key.addr} * 5));

    // A full map: the message names the entry that did not fit.
    auto small = adopt<uint64_t, Value16>(make_map(BPF_MAP_TYPE_HASH, 8, 16, 8));
    std::vector<std::pair<uint64_t, Value16>> nine;
    for (uint64_t k = 0; k < 9; ++k) nine.push_back({k, {k, k}});
    const Status full = small.apply({}, nine);
    REQUIRE_FALSE(full.ok());
    CHECK(full.error().describe().find("writing 9 of 9 entries (the map is full") != std::string::npos);
}

TEST_CASE("BpfMap: read_all reads every entry once, by batch (hash) and by walk (LPM trie)") {
    auto hash = adopt<uint64_t, Value16>(make_map(BPF_MAP_TYPE_HASH, 8, 16, 20000));
    auto trie = adopt<TrieKey, Value16>(make_map(BPF_MAP_TYPE_LPM_TRIE, 8, 16, 20000));
    for (uint32_t i = 0; i < 10000; ++i) {
        REQUIRE(hash.update(i, {i, i * 3}).ok());
        REQUIRE(trie.update({32, i}, {i, i * 3}).ok());
    }
    auto hash_entries = hash.read_all();
    REQUIRE(hash_entries.ok());
    auto trie_entries = trie.read_all();
    REQUIRE(trie_entries.ok());
    CHECK(hash_entries->size() == 10000);
    CHECK(trie_entries->size() == 10000);
    std::set<uint64_t> keys;
    for (const auto& [key, value] : *hash_entries) {
        CHECK(value.b == key * 3);
        keys.insert(key);
    }
    for (const auto& [key, value] : *trie_entries) CHECK(value.b == uint64_t{key.addr} * 3);
    CHECK(keys.size() == 10000);
}

TEST_CASE("BpfMap: a per-CPU map gives one value per possible CPU") {
    auto map = adopt<uint32_t, uint64_t>(make_map(BPF_MAP_TYPE_PERCPU_HASH, 4, 8, 16));
    std::vector<uint64_t> per_cpu(map.values_per_entry(), 7);
    REQUIRE(bpf_map_update_elem(map.fd(), std::array<uint32_t, 1>{5}.data(), per_cpu.data(), BPF_ANY) == 0);
    auto all = map.read_all_per_cpu();
    REQUIRE(all.ok());
    REQUIRE(all->size() == 1);
    CHECK(all->front().second == per_cpu);
    auto one = map.lookup_per_cpu(5);
    REQUIRE(one.ok());
    CHECK(*one == per_cpu);
}

TEST_CASE("BpfMap: a walk that restarts because its key was deleted returns each entry once") {
    UniqueFd fd = make_map(BPF_MAP_TYPE_LPM_TRIE, 8, 16, 1000);
    auto trie = adopt<TrieKey, Value16>(UniqueFd(::dup(fd.get())));
    for (uint32_t i = 0; i < 500; ++i) REQUIRE(trie.update({32, i}, {i, i}).ok());
    auto shape = bpf_map_detail::check_shape(trie.fd(), "trie", 8, 16);
    REQUIRE(shape.ok());

    std::vector<uint8_t> keys, values;
    size_t count = 0;
    int deleted = 0;
    size_t steps = 0;  // entries read, the ones read again after a restart included
    // Every 50th entry read is deleted at once: the next get_next_key no
    // longer finds it and starts again from the first key.
    const Status walked =
        bpf_map_detail::walk_raw(trie.fd(), "trie", *shape, 16, keys, values, count, [&](const uint8_t* key) {
            ++steps;
            TrieKey k;
            std::memcpy(&k, key, sizeof(k));
            if (k.addr % 50 == 0 && trie.erase(k).ok()) ++deleted;
        });
    REQUIRE(walked.ok());
    CHECK(deleted == 10);
    // The walk did restart: it read entries again, and kept each once.
    CHECK(steps > 500);
    std::map<uint32_t, int> seen;
    for (size_t i = 0; i < count; ++i) {
        TrieKey k;
        std::memcpy(&k, keys.data() + i * sizeof(TrieKey), sizeof(k));
        ++seen[k.addr];
    }
    CHECK(count == 500);  // each key once, the deleted ones read before they went
    for (const auto& [addr, times] : seen) CHECK_MESSAGE(times == 1, addr);
    CHECK(seen.size() == 500);
}
