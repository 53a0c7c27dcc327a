#include "kernel/bpf_adapter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "egressd.skel.h"
#include "kernel/abi_check.h"

namespace egressd {
namespace fs = std::filesystem;

namespace {

const char* const kControlName = EGRESSD_STRINGIFY(EGRESSD_MAP_CONTROL);
const char* const kConfigName = EGRESSD_STRINGIFY(EGRESSD_MAP_CONFIG);
const char* const kCidrsName = EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS);
const char* const kPortsName = EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS);
const char* const kCountersName = EGRESSD_STRINGIFY(EGRESSD_MAP_COUNTERS);
const char* const kIdentitiesName = EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITIES);
const char* const kIdNamesName = EGRESSD_STRINGIFY(EGRESSD_MAP_ID_NAMES);
const char* const kPoliciesName = EGRESSD_STRINGIFY(EGRESSD_MAP_POLICIES);
const char* const kPolicyNamesName = EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES);
const char* const kPolicyHostsName = EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_HOSTS);
const char* const kEventsName = EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS);
const char* const kEventLimitsName = EGRESSD_STRINGIFY(EGRESSD_MAP_EVENT_BUCKETS);
const char* const kEventStatsName = EGRESSD_STRINGIFY(EGRESSD_MAP_EVENT_STATS);
const char* const kFlowsName = EGRESSD_STRINGIFY(EGRESSD_MAP_FLOWS);
const char* const kRuleTrafficName = EGRESSD_STRINGIFY(EGRESSD_MAP_RULE_TRAFFIC);
const char* const kIdTrafficName = EGRESSD_STRINGIFY(EGRESSD_MAP_ID_TRAFFIC);
const char* const kAllMapNames[] = {kControlName,     kConfigName,    kCidrsName,       kPortsName,
                                    kCountersName,    kIdentitiesName, kIdNamesName,     kPoliciesName,
                                    kPolicyNamesName, kEventsName,    kEventLimitsName, kEventStatsName,
                                    kFlowsName,       kRuleTrafficName, kIdTrafficName, kPolicyHostsName};
// Maps earlier versions pinned and this one no longer has: unpinned once the
// new set is pinned, and by --cleanup.
const char* const kRetiredMapNames[] = {"flow_marks_v1"};

// libbpf returns negative errno (libbpf 1.0 semantics) and sets errno.
Error libbpf_error(const std::string& what, long err) { return Error{static_cast<int>(err < 0 ? -err : errno), what}; }

fs::path links_dir(const fs::path& pin_dir) { return pin_dir / EGRESSD_PIN_LINKS_SUBDIR; }

Result<bpf_map_info> map_info(int fd) {
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return system_error("reading map info");
    return info;
}

Result<bpf_link_info> link_info(int fd) {
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return system_error("reading link info");
    return info;
}

std::string prog_name_of(uint32_t prog_id) {
    UniqueFd fd(bpf_prog_get_fd_by_id(prog_id));
    if (!fd.valid()) return "";
    bpf_prog_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) return "";
    return info.name;
}

Result<UniqueFd> open_pinned_object(const fs::path& path, bool read_only) {
    LIBBPF_OPTS(bpf_obj_get_opts, opts, .file_flags = static_cast<__u32>(read_only ? BPF_F_RDONLY : 0));
    UniqueFd fd(bpf_obj_get_opts(path.c_str(), &opts));
    if (!fd.valid()) return system_error("opening pinned " + path.string());
    return fd;
}

bool path_present(const fs::path& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
}

// Calls fn(key, value) for every entry of a hash or LPM map. Entries deleted
// while walking are skipped.
template <typename Key, typename Value, typename Fn>
void for_each_entry(int fd, Fn fn) {
    Key key{}, next{};
    const void* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        key = next;
        prev = &key;
        Value value{};
        if (bpf_map_lookup_elem(fd, &key, &value) == 0) fn(key, value);
    }
}

// Writes the entries of `to` that differ from `from` and deletes what `to`
// lacks: the unslotted maps change entry by entry.
template <typename K, typename V, typename EncodeKey, typename EncodeValue>
Status sync_entries(int fd, const char* map, const std::map<K, V>& from, const std::map<K, V>& to, EncodeKey encode_key,
                    EncodeValue encode_value) {
    for (const auto& [k, v] : to) {
        auto old = from.find(k);
        if (old != from.end() && old->second == v) continue;
        const auto key = encode_key(k);
        const auto value = encode_value(v);
        if (bpf_map_update_elem(fd, &key, &value, BPF_ANY) != 0) return system_error(std::string("writing ") + map);
    }
    for (const auto& [k, v] : from) {
        if (to.contains(k)) continue;
        const auto key = encode_key(k);
        if (bpf_map_delete_elem(fd, &key) != 0 && errno != ENOENT) return system_error(std::string("deleting from ") + map);
    }
    return {};
}

void silence_libbpf_debug() {
    libbpf_set_print([](enum libbpf_print_level level, const char* format, va_list args) -> int {
        if (level == LIBBPF_DEBUG) return 0;
        return vfprintf(stderr, format, args);
    });
}

}  // namespace

// ---- MapSet -----------------------------------------------------------------

Result<MapSet> MapSet::open_pinned(const fs::path& pin_dir, bool read_only) {
    MapSet set;
    const std::pair<const char*, UniqueFd*> maps[] = {
        {kControlName, &set.control},       {kConfigName, &set.config},     {kCidrsName, &set.cidrs},
        {kPortsName, &set.ports},           {kCountersName, &set.counters}, {kIdentitiesName, &set.identities},
        {kIdNamesName, &set.id_names},      {kPoliciesName, &set.policies}, {kPolicyNamesName, &set.policy_names},
        {kEventsName, &set.events},         {kEventLimitsName, &set.event_limits}, {kEventStatsName, &set.event_stats},
        {kFlowsName, &set.flows}, {kPolicyHostsName, &set.policy_hosts},       {kRuleTrafficName, &set.rule_traffic},
        {kIdTrafficName, &set.id_traffic}};
    for (const auto& [name, fd] : maps) {
        auto opened = open_pinned_object(pin_dir / name, read_only);
        if (!opened) return opened.error();
        *fd = std::move(*opened);
    }
    return set;
}

Result<egressd_control> MapSet::read_control() const {
    uint32_t zero = 0;
    egressd_control control{};
    if (bpf_map_lookup_elem(this->control.get(), &zero, &control) != 0)
        return system_error(std::string("reading ") + kControlName);
    return control;
}

Result<MapImage> MapSet::read_slot(uint32_t slot) const {
    MapImage image;
    egressd_config cfg{};
    if (bpf_map_lookup_elem(config.get(), &slot, &cfg) != 0) return system_error(std::string("reading ") + kConfigName);
    decode_config(cfg, image);

    std::optional<Error> bad;
    for_each_entry<egressd_cidr_key, egressd_cidr_value>(cidrs.get(), [&](const auto& key, const auto& value) {
        if (key.slot != slot) return;
        auto rule = decode_cidr(key, value);
        if (rule) image.cidrs.push_back(*rule);
        else bad = rule.error().with_context(std::string("decoding ") + kCidrsName);
    });
    for_each_entry<egressd_port_key, egressd_port_value>(ports.get(), [&](const auto& key, const auto& value) {
        if (key.slot == slot) image.ports.push_back(decode_port(key, value));
    });
    for_each_entry<egressd_policy_key, egressd_policy_value>(policies.get(), [&](const auto& key, const auto& value) {
        if (key.slot != slot) return;
        auto rule = decode_policy(key, value);
        if (rule) image.policy_rules.push_back(*rule);
        else bad = rule.error().with_context(std::string("decoding ") + kPoliciesName);
    });
    for_each_entry<egressd_policy_host_key, egressd_policy_value>(
        policy_hosts.get(), [&](const auto& key, const auto& value) {
            if (key.slot == slot) image.policy_rules.push_back(decode_policy_host(key, value));
        });
    for_each_entry<egressd_policy_name_key, egressd_policy_name>(policy_names.get(),
                                                                [&](const auto& key, const auto& value) {
        if (key.slot == slot) image.policies[key.policy] = decode_policy_name(value);
    });
    if (bad) return *bad;
    std::sort(image.cidrs.begin(), image.cidrs.end());
    std::sort(image.ports.begin(), image.ports.end());
    std::sort(image.policy_rules.begin(), image.policy_rules.end());
    return image;
}

Result<std::vector<uint64_t>> MapSet::read_counters() const {
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return libbpf_error("counting possible CPUs", cpus);
    std::vector<egressd_counter> per_cpu(static_cast<size_t>(cpus));
    std::vector<uint64_t> totals(EGRESSD_COUNTER_SLOTS, 0);
    for (uint32_t i = 0; i < EGRESSD_COUNTER_SLOTS; ++i) {
        if (bpf_map_lookup_elem(counters.get(), &i, per_cpu.data()) != 0)
            return system_error(std::string("reading ") + kCountersName);
        for (const auto& c : per_cpu) totals[i] += c.decisions;
    }
    return totals;
}

Result<std::array<uint64_t, EGRESSD_STAT_MAX>> MapSet::read_event_stats() const {
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return libbpf_error("counting possible CPUs", cpus);
    std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
    std::array<uint64_t, EGRESSD_STAT_MAX> totals{};
    for (uint32_t i = 0; i < EGRESSD_STAT_MAX; ++i) {
        if (bpf_map_lookup_elem(event_stats.get(), &i, per_cpu.data()) != 0)
            return system_error(std::string("reading ") + kEventStatsName);
        for (uint64_t v : per_cpu) totals[i] += v;
    }
    return totals;
}

namespace {

// Walks a per-CPU hash of egressd_traffic, summing each key's CPUs.
template <typename Key, typename Out, typename MakeKey>
Status read_traffic(int fd, const char* name, Out& out, MakeKey make_key) {
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return libbpf_error("counting possible CPUs", cpus);
    std::vector<egressd_traffic> per_cpu(static_cast<size_t>(cpus));
    Key key{}, next{};
    const void* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        key = next;
        prev = &key;
        if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) != 0) continue;
        Traffic& t = out[make_key(key)];
        for (const auto& c : per_cpu) {
            t.connections += c.connections;
            t.bytes_sent += c.bytes_sent;
            t.bytes_received += c.bytes_received;
        }
    }
    if (errno != ENOENT) return system_error(std::string("reading ") + name);  // the walk ends with ENOENT
    return {};
}

}  // namespace

Result<std::vector<std::pair<uint64_t, egressd_flow>>> MapSet::read_flows() const {
    std::vector<std::pair<uint64_t, egressd_flow>> out;
    // Connecting sockets (no SYN-ACK yet) are not connections yet.
    for_each_entry<uint64_t, egressd_flow>(flows.get(), [&](const auto& cookie, const auto& flow) {
        if (flow.started_ns != 0) out.emplace_back(cookie, flow);
    });
    return out;
}

Result<std::map<std::pair<uint32_t, uint32_t>, Traffic>> MapSet::read_rule_traffic() const {
    std::map<std::pair<uint32_t, uint32_t>, Traffic> out;
    auto read = read_traffic<egressd_traffic_key>(rule_traffic.get(), kRuleTrafficName, out,
                                                  [](const egressd_traffic_key& k) { return std::pair{k.reason, k.rule}; });
    if (!read) return read.error();
    return out;
}

Result<std::map<uint32_t, Traffic>> MapSet::read_identity_traffic() const {
    std::map<uint32_t, Traffic> out;
    auto read = read_traffic<uint32_t>(id_traffic.get(), kIdTrafficName, out, [](uint32_t k) { return k; });
    if (!read) return read.error();
    return out;
}

Result<std::unique_ptr<EventReader>> EventReader::open(int events_map_fd, Callback callback) {
    std::unique_ptr<EventReader> reader(new EventReader());
    reader->callback_ = std::move(callback);
    auto on_sample = [](void* self, void* data, size_t size) -> int {
        if (size < sizeof(egressd_event)) return 0;  // not ours: skip
        egressd_event event;
        std::memcpy(&event, data, sizeof(event));
        static_cast<EventReader*>(self)->callback_(event);
        return 0;
    };
    reader->ring_ = ring_buffer__new(events_map_fd, on_sample, reader.get(), nullptr);
    if (!reader->ring_) return system_error(std::string("opening the ring buffer ") + kEventsName);
    return reader;
}

EventReader::~EventReader() {
    if (ring_) ring_buffer__free(ring_);
}

int EventReader::epoll_fd() const { return ring_buffer__epoll_fd(ring_); }

Result<int> EventReader::drain() {
    const int n = ring_buffer__consume(ring_);
    if (n < 0) return libbpf_error(std::string("reading ") + kEventsName, n);
    return n;
}

Result<std::map<uint64_t, uint32_t>> MapSet::read_workload_identities() const {
    std::map<uint64_t, uint32_t> out;
    for_each_entry<egressd_identity_key, egressd_identity_value>(
        identities.get(), [&](const auto& key, const auto& value) { out[key.cgroup_id] = value.identity; });
    return out;
}

Result<std::map<uint32_t, IdentityName>> MapSet::read_identity_names() const {
    std::map<uint32_t, IdentityName> out;
    for_each_entry<uint32_t, egressd_identity_name>(
        id_names.get(), [&](const auto& key, const auto& value) { out[key] = decode_identity_name(value); });
    return out;
}

Status MapSet::write_workload_identities(const std::map<uint64_t, uint32_t>& from,
                                         const std::map<uint64_t, uint32_t>& to) const {
    return sync_entries(
        identities.get(), kIdentitiesName, from, to, [](uint64_t id) { return egressd_identity_key{id}; },
        [](uint32_t identity) { return egressd_identity_value{identity, 0}; });
}

Status MapSet::write_identity_names(const std::map<uint32_t, IdentityName>& from,
                                    const std::map<uint32_t, IdentityName>& to) const {
    return sync_entries(
        id_names.get(), kIdNamesName, from, to, [](uint32_t id) { return id; }, encode_identity_name);
}

Status MapSet::write_diff(uint32_t slot, const ImageDiff& diff, const MapImage& to) const {
    const auto fail = [&](const char* map, const std::string& what) {
        const int err = errno;
        std::string message = std::string(map) + ": " + what;
        if (err == ENOSPC || err == E2BIG) message += " (the map is full: raise capacities in the agent settings)";
        return system_error(message, err);
    };
    for (const auto& rule : diff.cidr_deletes) {
        const auto key = encode_cidr_key(static_cast<uint8_t>(slot), rule.table, rule.cidr);
        if (bpf_map_delete_elem(cidrs.get(), &key) != 0 && errno != ENOENT)
            return fail(kCidrsName, "deleting " + rule.cidr.str());
    }
    for (const auto& rule : diff.port_deletes) {
        const auto key = encode_port_key(static_cast<uint8_t>(slot), rule);
        if (bpf_map_delete_elem(ports.get(), &key) != 0 && errno != ENOENT)
            return fail(kPortsName, "deleting port " + std::to_string(rule.port));
    }
    for (const auto& rule : diff.cidr_upserts) {
        const auto key = encode_cidr_key(static_cast<uint8_t>(slot), rule.table, rule.cidr);
        const auto value = encode_cidr_value(rule);
        if (bpf_map_update_elem(cidrs.get(), &key, &value, BPF_ANY) != 0)
            return fail(kCidrsName, "writing " + rule.cidr.str());
    }
    for (const auto& rule : diff.port_upserts) {
        const auto key = encode_port_key(static_cast<uint8_t>(slot), rule);
        const auto value = encode_port_value(rule);
        if (bpf_map_update_elem(ports.get(), &key, &value, BPF_ANY) != 0)
            return fail(kPortsName, "writing port " + std::to_string(rule.port));
    }
    for (const auto& rule : diff.policy_deletes) {
        if (is_host_rule(rule)) {
            const auto key = encode_policy_host_key(static_cast<uint8_t>(slot), rule);
            if (bpf_map_delete_elem(policy_hosts.get(), &key) != 0 && errno != ENOENT)
                return fail(kPolicyHostsName, "deleting " + rule.cidr.str());
            continue;
        }
        const auto key = encode_policy_key(static_cast<uint8_t>(slot), rule);
        if (bpf_map_delete_elem(policies.get(), &key) != 0 && errno != ENOENT)
            return fail(kPoliciesName, "deleting " + rule.cidr.str());
    }
    for (const auto& rule : diff.policy_upserts) {
        const auto value = encode_policy_value(rule);
        if (is_host_rule(rule)) {
            const auto key = encode_policy_host_key(static_cast<uint8_t>(slot), rule);
            if (bpf_map_update_elem(policy_hosts.get(), &key, &value, BPF_ANY) != 0)
                return fail(kPolicyHostsName, "writing " + rule.cidr.str());
            continue;
        }
        const auto key = encode_policy_key(static_cast<uint8_t>(slot), rule);
        if (bpf_map_update_elem(policies.get(), &key, &value, BPF_ANY) != 0)
            return fail(kPoliciesName, "writing " + rule.cidr.str());
    }
    for (uint32_t index : diff.policy_name_deletes) {
        const egressd_policy_name_key key{static_cast<uint8_t>(slot), {}, index};
        if (bpf_map_delete_elem(policy_names.get(), &key) != 0 && errno != ENOENT)
            return fail(kPolicyNamesName, "deleting a name");
    }
    for (uint32_t index : diff.policy_name_upserts) {
        const egressd_policy_name_key key{static_cast<uint8_t>(slot), {}, index};
        const auto value = encode_policy_name(to.policies.at(index));
        if (bpf_map_update_elem(policy_names.get(), &key, &value, BPF_ANY) != 0)
            return fail(kPolicyNamesName, "writing a name");
    }
    const egressd_config cfg = encode_config(to);
    if (bpf_map_update_elem(config.get(), &slot, &cfg, BPF_ANY) != 0) return fail(kConfigName, "writing slot");
    return {};
}

Status MapSet::set_active_slot(uint32_t slot) const {
    uint32_t zero = 0;
    const egressd_control value{slot, EGRESSD_ABI_VERSION};
    if (bpf_map_update_elem(control.get(), &zero, &value, BPF_ANY) != 0)
        return system_error(std::string("switching ") + kControlName + " to slot " + std::to_string(slot));
    return {};
}

// ---- ProgramBarrier ---------------------------------------------------------

Result<ProgramBarrier> ProgramBarrier::create() {
    ProgramBarrier barrier;
    barrier.inner_.reset(bpf_map_create(BPF_MAP_TYPE_ARRAY, "egressd_barr_in", 4, 4, 1, nullptr));
    if (!barrier.inner_.valid()) return system_error("creating the program barrier's inner map");
    LIBBPF_OPTS(bpf_map_create_opts, opts, .inner_map_fd = static_cast<__u32>(barrier.inner_.get()));
    barrier.outer_.reset(bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "egressd_barrier", 4, 4, 1, &opts));
    if (!barrier.outer_.valid()) return system_error("creating the program barrier");
    return barrier;
}

Status ProgramBarrier::wait() const {
    uint32_t zero = 0;
    uint32_t inner = static_cast<uint32_t>(inner_.get());
    if (bpf_map_update_elem(outer_.get(), &zero, &inner, BPF_ANY) != 0)
        return system_error("waiting for BPF programs in flight");
    return {};
}

// ---- links ------------------------------------------------------------------

std::vector<LinkInfo> read_pinned_links(const fs::path& pin_dir) {
    std::vector<LinkInfo> links;
    for (const char* hook : kLinkNames) {
        LinkInfo li;
        li.hook = hook;
        // Links cannot be opened read-only (the kernel refuses BPF_F_RDONLY for them).
        auto fd = open_pinned_object(links_dir(pin_dir) / hook, false);
        if (fd) {
            li.pinned = true;
            if (auto info = link_info(fd->get())) {
                li.link_id = info->id;
                li.prog_id = info->prog_id;
                if (info->type == BPF_LINK_TYPE_CGROUP) {
                    li.cgroup_id = info->cgroup.cgroup_id;
                    li.attach_type = info->cgroup.attach_type;
                }
                li.prog_name = prog_name_of(info->prog_id);
            }
        }
        links.push_back(std::move(li));
    }
    return links;
}

Status cleanup_pins(const fs::path& pin_dir, std::vector<std::string>& removed) {
    std::error_code ec;
    if (!fs::exists(pin_dir, ec)) return {};
    // Links first: detaching them ends enforcement before the maps go.
    for (const char* hook : kLinkNames) {
        const fs::path path = links_dir(pin_dir) / hook;
        if (!path_present(path)) continue;
        if (auto fd = open_pinned_object(path, false)) {
            if (bpf_link_detach(fd->get()) != 0 && errno != EINVAL)
                return system_error("detaching link " + path.string());
        }
        if (::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
        removed.push_back(path.string());
    }
    ::rmdir(links_dir(pin_dir).c_str());
    std::vector<const char*> names(std::begin(kAllMapNames), std::end(kAllMapNames));
    names.insert(names.end(), std::begin(kRetiredMapNames), std::end(kRetiredMapNames));
    for (const char* name : names) {
        const fs::path path = pin_dir / name;
        if (!path_present(path)) continue;
        if (::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
        removed.push_back(path.string());
    }
    if (::rmdir(pin_dir.c_str()) != 0 && errno != ENOENT) {
        if (errno == ENOTEMPTY)
            return make_error("left " + pin_dir.string() + " in place: it holds objects egressd did not pin");
        return system_error("removing " + pin_dir.string());
    }
    return {};
}

// ---- Datapath ---------------------------------------------------------------

Result<std::unique_ptr<Datapath>> Datapath::load(const Options& options) {
    silence_libbpf_debug();
    std::unique_ptr<Datapath> dp(new Datapath());
    dp->options_ = options;

    auto barrier = ProgramBarrier::create();
    if (!barrier) return barrier.error();
    dp->barrier_ = std::move(*barrier);

    dp->skel_ = egressd_bpf__open();
    if (!dp->skel_) return system_error("opening the BPF object");
    bpf_object* obj = dp->skel_->obj;

    // Capacities are settings: each map holds both slots.
    const std::map<std::string, uint32_t> capacity = {
        {kCidrsName, EGRESSD_SLOTS * options.capacities.cidrs},
        {kPortsName, EGRESSD_SLOTS * options.capacities.ports},
        {kPoliciesName, EGRESSD_SLOTS * options.capacities.policy_rules},
        {kPolicyHostsName, EGRESSD_SLOTS * options.capacities.policy_rules},
        {kPolicyNamesName, EGRESSD_SLOTS * options.capacities.policies},
        {kIdNamesName, options.capacities.identities},
        {kIdentitiesName, options.capacities.workloads},
    };
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, obj) {
        if (auto it = capacity.find(bpf_map__name(map)); it != capacity.end()) {
            if (int err = bpf_map__set_max_entries(map, it->second); err != 0)
                return libbpf_error(std::string("sizing ") + bpf_map__name(map), err);
        }
    }

    // Adopt the pinned maps only if all of them exist and match this object's
    // definitions; a partial or incompatible set is replaced as a whole, so no
    // program ever pairs a new map with an old one.
    std::vector<std::pair<bpf_map*, UniqueFd>> reusable;
    bool all_compatible = true;
    bpf_object__for_each_map(map, obj) {
        auto fd = open_pinned_object(options.pin_dir / bpf_map__name(map), false);
        if (!fd) {
            all_compatible = false;
            continue;
        }
        auto info = map_info(fd->get());
        const bool compatible = info && info->type == bpf_map__type(map) && info->key_size == bpf_map__key_size(map) &&
                                info->value_size == bpf_map__value_size(map) &&
                                info->max_entries == bpf_map__max_entries(map) &&
                                info->map_flags == bpf_map__map_flags(map);
        if (!compatible) all_compatible = false;
        reusable.emplace_back(map, std::move(*fd));
    }
    if (all_compatible) {
        for (auto& [m, fd] : reusable) {
            if (int err = bpf_map__reuse_fd(m, fd.get()); err != 0)
                return libbpf_error(std::string("adopting pinned map ") + bpf_map__name(m), err);
        }
        dp->adopted_maps_ = true;
    }

    if (int err = egressd_bpf__load(dp->skel_); err != 0)
        return libbpf_error("loading the BPF programs (is this kernel built with CONFIG_CGROUP_BPF?)", err);

    const std::pair<const char*, UniqueFd*> fds[] = {
        {kControlName, &dp->maps_.control},       {kConfigName, &dp->maps_.config},
        {kCidrsName, &dp->maps_.cidrs},           {kPortsName, &dp->maps_.ports},
        {kCountersName, &dp->maps_.counters},     {kIdentitiesName, &dp->maps_.identities},
        {kIdNamesName, &dp->maps_.id_names},      {kPoliciesName, &dp->maps_.policies},
        {kPolicyNamesName, &dp->maps_.policy_names}, {kEventsName, &dp->maps_.events},
        {kEventLimitsName, &dp->maps_.event_limits}, {kEventStatsName, &dp->maps_.event_stats},
        {kFlowsName, &dp->maps_.flows}, {kPolicyHostsName, &dp->maps_.policy_hosts},
        {kRuleTrafficName, &dp->maps_.rule_traffic}, {kIdTrafficName, &dp->maps_.id_traffic}};
    for (const auto& [name, fd] : fds) {
        bpf_map* m = bpf_object__find_map_by_name(obj, name);
        fd->reset(m ? ::fcntl(bpf_map__fd(m), F_DUPFD_CLOEXEC, 0) : -1);
        if (!fd->valid()) return system_error(std::string("duplicating the descriptor of ") + name);
    }

    if (dp->adopted_maps_) {
        auto control = dp->maps_.read_control();
        if (!control) return control.error();
        dp->active_slot_ = control->active_slot & 1;
        for (uint32_t slot = 0; slot < EGRESSD_SLOTS; ++slot) {
            auto image = dp->maps_.read_slot(slot);
            if (!image) return image.error().with_context("adopting the pinned generation");
            dp->slot_images_[slot] = std::make_shared<const MapImage>(std::move(*image));
        }
        auto names = dp->maps_.read_identity_names();
        if (!names) return names.error();
        dp->identity_names_ = std::move(*names);
        auto workloads = dp->maps_.read_workload_identities();
        if (!workloads) return workloads.error();
        dp->workload_identities_ = std::move(*workloads);
    }
    return dp;
}

Datapath::~Datapath() {
    // Links stay pinned: enforcement outlives the agent by design.
    for (bpf_link* link : links_) {
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
    }
    if (skel_) egressd_bpf__destroy(skel_);
}

std::optional<MapImage> Datapath::active_image() const {
    const MapImage& active = *slot_images_[active_slot_];
    if (!(active.flags & EGRESSD_CFG_VALID)) return std::nullopt;
    return active;
}

Status Datapath::settle() {
    if (!flipped_since_settle_) return {};
    if (auto waited = barrier_.wait(); !waited) return waited;
    flipped_since_settle_ = false;
    return {};
}

Status Datapath::publish(std::shared_ptr<const MapImage> image) {
    const uint32_t next = active_slot_ ^ 1;
    if (auto settled = settle(); !settled) return settled;
    last_diff_.reset();
    LastDiff made{slot_images_[next], image, diff_images(*slot_images_[next], *image)};
    if (auto written = maps_.write_diff(next, made.diff, *image); !written) {
        // The inactive slot is now partly written: learn what it really holds
        // so the next attempt starts from the truth. Nothing enforced changed.
        if (auto actual = maps_.read_slot(next)) slot_images_[next] = std::make_shared<const MapImage>(std::move(*actual));
        return written.error().with_context("writing generation " + std::to_string(image->generation));
    }
    slot_images_[next] = std::move(image);
    last_diff_ = std::move(made);
    if (auto flipped = maps_.set_active_slot(next); !flipped) return flipped;
    active_slot_ = next;
    flipped_since_settle_ = true;
    return {};
}

Status Datapath::converge() {
    const uint32_t inactive = active_slot_ ^ 1;
    const std::shared_ptr<const MapImage>& active = slot_images_[active_slot_];
    if (slot_images_[inactive] == active) return {};
    if (*slot_images_[inactive] == *active) {
        slot_images_[inactive] = active;
        return {};
    }
    if (auto settled = settle(); !settled) return settled;
    const bool same_change = last_diff_ && last_diff_->from == slot_images_[inactive] && last_diff_->to == active;
    const Status written = same_change ? maps_.write_diff(inactive, last_diff_->diff, *active)
                                       : maps_.write_slot(inactive, *slot_images_[inactive], *active);
    last_diff_.reset();
    if (!written) {
        if (auto actual = maps_.read_slot(inactive))
            slot_images_[inactive] = std::make_shared<const MapImage>(std::move(*actual));
        return written.error().with_context("bringing the inactive slot up to date");
    }
    slot_images_[inactive] = active;
    return {};
}

Status Datapath::set_identities(const std::map<uint32_t, IdentityName>& names,
                                const std::map<uint64_t, uint32_t>& workloads) {
    if (auto written = maps_.write_identity_names(identity_names_, names); !written) {
        if (auto actual = maps_.read_identity_names()) identity_names_ = std::move(*actual);
        return written;
    }
    identity_names_ = names;
    if (auto written = maps_.write_workload_identities(workload_identities_, workloads); !written) {
        if (auto actual = maps_.read_workload_identities()) workload_identities_ = std::move(*actual);
        return written;
    }
    workload_identities_ = workloads;
    return {};
}

Result<std::vector<AttachReport>> Datapath::attach(const CgroupTarget& cgroup) {
    auto cgroup_fd = open_cgroup_dir(cgroup.path);
    if (!cgroup_fd) return cgroup_fd.error();
    std::error_code ec;
    fs::create_directories(links_dir(options_.pin_dir), ec);
    if (ec) return Error{ec.value(), "creating " + links_dir(options_.pin_dir).string()};

    bpf_program* programs[kLinkNames.size()] = {skel_->progs.egressd_conn4, skel_->progs.egressd_conn6,
                                                skel_->progs.egressd_send4, skel_->progs.egressd_send6,
                                                skel_->progs.egressd_sockops};
    std::vector<AttachReport> reports;
    for (size_t hook = 0; hook < kLinkNames.size(); ++hook) {
        const fs::path pin = links_dir(options_.pin_dir) / kLinkNames[hook];
        bpf_link* old_link = path_present(pin) ? bpf_link__open(pin.c_str()) : nullptr;
        if (old_link) {
            auto info = link_info(bpf_link__fd(old_link));
            const bool same_cgroup = info && info->type == BPF_LINK_TYPE_CGROUP && info->cgroup.cgroup_id == cgroup.id;
            if (same_cgroup) {
                // Swap the program inside the live link: no instant without one.
                if (int err = bpf_link__update_program(old_link, programs[hook]); err != 0) {
                    bpf_link__destroy(old_link);
                    return libbpf_error("updating the program of pinned link " + pin.string(), err);
                }
                links_.push_back(old_link);
                reports.push_back({kLinkNames[hook], "adopted"});
                continue;
            }
        }
        bpf_link* link = bpf_program__attach_cgroup(programs[hook], cgroup_fd->get());
        if (!link) {
            const int err = errno;
            if (old_link) bpf_link__destroy(old_link);
            return Error{err, std::string("attaching ") + kLinkNames[hook] + " to " + cgroup.path.string()};
        }
        links_.push_back(link);
        if (old_link) {
            // The new link enforces on the new cgroup; now drop the old one.
            ::unlink(pin.c_str());
            bpf_link_detach(bpf_link__fd(old_link));
            bpf_link__destroy(old_link);
        }
        if (int err = bpf_link__pin(link, pin.c_str()); err != 0) return libbpf_error("pinning " + pin.string(), err);
        reports.push_back({kLinkNames[hook], old_link ? "moved" : "attached"});
    }
    if (!adopted_maps_) {
        if (auto pinned = pin_maps(); !pinned) return pinned.error();
    }
    // The programs in force no longer use what earlier versions pinned.
    for (const char* name : kRetiredMapNames) {
        const fs::path path = options_.pin_dir / name;
        if (path_present(path) && ::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
    }
    return reports;
}

Status Datapath::pin_maps() {
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skel_->obj) {
        const fs::path path = options_.pin_dir / bpf_map__name(map);
        // The links use these maps already; an old pin only keeps an unused map alive.
        if (path_present(path) && ::unlink(path.c_str()) != 0) return system_error("replacing " + path.string());
        if (bpf_obj_pin(bpf_map__fd(map), path.c_str()) != 0) return system_error("pinning " + path.string());
    }
    adopted_maps_ = true;
    return {};
}

}  // namespace egressd
