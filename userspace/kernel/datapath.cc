#include "kernel/datapath.h"

#include <linux/magic.h>
#include <sys/statfs.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>

#include <array>
#include <string_view>

#include <fmt/format.h>
#include <regex>
#include <set>
#include <unistd.h>

#include "kernel/mounts.h"
#include "kernel/pins.h"

namespace egressd {
namespace fs = std::filesystem;

namespace {

// libbpf returns negative errno (libbpf 1.0 semantics) and sets errno.
Error libbpf_error(const std::string& what, long err) { return Error{static_cast<int>(err < 0 ? -err : errno), what}; }

void silence_libbpf_debug() {
    libbpf_set_print([](enum libbpf_print_level level, const char* format, va_list args) -> int {
        if (level == LIBBPF_DEBUG) return 0;
        return vfprintf(stderr, format, args);
    });
}

// Capacities are settings: the slotted maps hold both slots.
Status size_maps(bpf_object* object, const Capacities& capacities) {
    const std::map<std::string, uint32_t> capacity = {
        {EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), EGRESSD_SLOTS * capacities.cidrs},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_PORTS), EGRESSD_SLOTS * capacities.ports},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), EGRESSD_SLOTS * capacities.policy_rules},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_LENGTHS), EGRESSD_SLOTS * capacities.identities},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_HOSTS), EGRESSD_SLOTS * capacities.policy_rules},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_DNS_LEARNED), capacities.dns_learned},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_NAMES), EGRESSD_SLOTS * capacities.policies},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_IDENTITY_NAMES), capacities.identities},
        {EGRESSD_STRINGIFY(EGRESSD_MAP_WORKLOAD_IDENTITIES), capacities.workloads},
    };
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, object) {
        if (auto it = capacity.find(bpf_map__name(map)); it != capacity.end()) {
            if (int err = bpf_map__set_max_entries(map, it->second); err != 0)
                return libbpf_error(std::string("sizing ") + bpf_map__name(map), err);
        }
    }
    return {};
}

// The maps egressd pins and adopts by name: all but the object's internal
// .rodata, which holds load-time settings (egressd_flows_enabled) and
// belongs to this load's programs alone.
std::vector<bpf_map*> shared_maps(const bpf_object* object) {
    std::vector<bpf_map*> maps;
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, object) {
        if (!bpf_map__is_internal(map)) maps.push_back(map);
    }
    return maps;
}

// What reuse_pinned_maps() kept of the pinned maps.
struct Carried {
    bool generation = false;          // the generation maps (and with them the numbered ones that matched)
    std::vector<std::string> fresh;   // made anew by this load: pinned once the programs use them
    std::string why;                  // what was pinned and could not be kept, or ""
    NumbersInUse replaced_numbers;    // what numbered maps made fresh held, with the generation kept
};

// Makes the object use the pinned maps that exist and match its definitions,
// as map_carry() says: the generation maps all or none, so no program ever
// reads one generation across two sets; the numbered ones only along with
// them; the others one by one. A layout change to some maps (a new build)
// thus keeps the rest, learned DNS answers included when the generation
// maps are unchanged. The rest is made fresh, and replaces the pins only
// once the links use it. A numbered map of another capacity is read for the
// numbers it holds (they must not be handed out again while the old programs
// still read it); one whose numbers decide a verdict and cannot be read makes
// the generation maps fresh too.
Result<Carried> reuse_pinned_maps(bpf_object* object, const fs::path& pin_dir) {
    Carried carried;
    std::vector<std::pair<bpf_map*, UniqueFd>> found;  // no descriptor: nothing usable pinned
    std::vector<std::pair<std::string, UniqueFd>> resized;  // numbered maps pinned with another capacity
    bool generation_whole = true, generation_any = false, generation_noted = false;
    auto note = [&carried](const std::string& problem) { carried.why += (carried.why.empty() ? "" : "; ") + problem; };
    for (bpf_map* map : shared_maps(object)) {
        const fs::path path = pin_dir / bpf_map__name(map);
        const bool generation = map_carry(bpf_map__name(map)) == MapCarry::generation;
        auto fd = open_pinned_object(path, false);
        if (!fd) {
            if (errno != ENOENT) {
                note(path.string() + " is not a map");
                generation_noted = generation_noted || generation;
            }
            generation_whole = generation_whole && !generation;
            found.emplace_back(map, UniqueFd());
            continue;
        }
        bpf_map_info info{};
        uint32_t length = sizeof(info);
        // The shape, and the name and BTF the kernel recorded when the map was
        // made: a map of the wrong shape, or crafted without egressd's types,
        // is never used by the programs.
        const bool compatible =
            bpf_obj_get_info_by_fd(fd->get(), &info, &length) == 0 && info.type == bpf_map__type(map) &&
            info.key_size == bpf_map__key_size(map) && info.value_size == bpf_map__value_size(map) &&
            info.max_entries == bpf_map__max_entries(map) && info.map_flags == bpf_map__map_flags(map) &&
            std::string_view(info.name) == std::string_view(bpf_map__name(map)).substr(0, BPF_OBJ_NAME_LEN - 1) &&
            (info.btf_id != 0 || bpf_map__type(map) == BPF_MAP_TYPE_RINGBUF);  // a ring buffer has no key or value type
        if (!compatible && map_carry(bpf_map__name(map)) == MapCarry::numbered && info.type == bpf_map__type(map) &&
            info.key_size == bpf_map__key_size(map) && info.value_size == bpf_map__value_size(map) && info.btf_id != 0)
            resized.emplace_back(bpf_map__name(map), std::move(*fd));
        if (!compatible) {
            note(fmt::format("{} does not match this build (type {} key {} value {} entries {} flags {:#x}{}; "
                             "expected type {} key {} value {} entries {} flags {:#x} with BTF)",
                             path.string(), info.type, info.key_size, info.value_size, info.max_entries,
                             info.map_flags, info.btf_id ? "" : ", no BTF", int(bpf_map__type(map)),
                             bpf_map__key_size(map), bpf_map__value_size(map), bpf_map__max_entries(map),
                             bpf_map__map_flags(map)));
            generation_noted = generation_noted || generation;
            generation_whole = generation_whole && !generation;
            found.emplace_back(map, UniqueFd());
            continue;
        }
        generation_any = generation_any || generation;
        found.emplace_back(map, std::move(*fd));
    }
    carried.generation = generation_whole && generation_any;
    std::set<std::string> numbers_known;
    for (auto& [name, fd] : resized) {
        if (!fd.valid()) continue;
        if (auto read = MapSet::add_numbers_of_pinned(name, std::move(fd), carried.replaced_numbers); read)
            numbers_known.insert(name);
        else
            note(read.error().describe());
    }
    for (const auto& [map, fd] : found) {
        const std::string name = bpf_map__name(map);
        if (carried.generation && !fd.valid() && numbers_decide(name) && !numbers_known.contains(name)) {
            note(fmt::format("{} is not kept and the numbers it held cannot be read, so the generation maps are "
                             "not kept either",
                             (pin_dir / name).string()));
            carried.generation = false;
        }
    }
    if (generation_any && !generation_whole && !generation_noted) {
        for (const auto& [map, fd] : found) {
            if (map_carry(bpf_map__name(map)) == MapCarry::generation && !fd.valid()) {
                note((pin_dir / bpf_map__name(map)).string() + " is missing");
                break;
            }
        }
    }
    for (auto& [map, fd] : found) {
        const MapCarry carry = map_carry(bpf_map__name(map));
        if (!fd.valid() || (carry != MapCarry::own && !carried.generation)) {
            carried.fresh.emplace_back(bpf_map__name(map));
            continue;
        }
        if (int err = bpf_map__reuse_fd(map, fd.get()); err != 0)
            return libbpf_error(std::string("adopting pinned map ") + bpf_map__name(map), err);
    }
    return carried;
}

}  // namespace

Result<std::unique_ptr<Datapath>> Datapath::load(const Options& options) {
    silence_libbpf_debug();
    std::unique_ptr<Datapath> dp(new Datapath());
    dp->options_ = options;

    auto barrier = ProgramBarrier::create();
    if (!barrier) return barrier.error();
    dp->barrier_ = std::move(*barrier);

    dp->skel_.reset(egressd_bpf__open());
    if (!dp->skel_) return system_error("opening the BPF object");
    bpf_object* object = dp->skel_->obj;
    if (auto sized = size_maps(object, options.capacities); !sized) return sized.error();
    dp->skel_->rodata->egressd_flows_enabled = options.track_flows ? 1 : 0;
    auto carried = reuse_pinned_maps(object, options.pin_dir);
    if (!carried) return carried.error();
    dp->adopted_maps_ = carried->generation;
    dp->replaced_numbers_ = carried->replaced_numbers;
    dp->not_adopted_why_ = std::move(carried->why);
    dp->fresh_maps_ = std::move(carried->fresh);

    if (int err = egressd_bpf__load(dp->skel_.get()); err != 0)
        return libbpf_error("loading the BPF programs (is this kernel built with CONFIG_CGROUP_BPF?)", err);

    // The typed handles check every map's key and value size against the ABI header.
    auto maps = MapSet::adopt([&](const char* name) -> Result<UniqueFd> {
        bpf_map* m = bpf_object__find_map_by_name(object, name);
        UniqueFd fd(m ? ::fcntl(bpf_map__fd(m), F_DUPFD_CLOEXEC, 0) : -1);
        if (!fd.valid()) return system_error(std::string("duplicating the descriptor of ") + name);
        return fd;
    });
    if (!maps) return maps.error();
    dp->maps_ = std::move(*maps);
    if (dp->adopted_maps_) {
        if (auto read = dp->read_adopted_state(); !read) return read.error();
    }
    return dp;
}

Status Datapath::read_adopted_state() {
    auto control = maps_.read_control();
    if (!control) return control.error();
    active_slot_ = control->active_slot & 1;
    for (uint32_t slot = 0; slot < EGRESSD_SLOTS; ++slot) {
        auto image = maps_.read_slot(slot);
        if (!image) return image.error().with_context("adopting the pinned generation");
        slot_images_[slot] = std::make_shared<const MapImage>(std::move(*image));
    }
    auto names = maps_.read_identity_names();
    if (!names) return names.error();
    identity_names_ = std::move(*names);
    auto workloads = maps_.read_workload_identities();
    if (!workloads) return workloads.error();
    workload_identities_ = std::move(*workloads);
    return {};
}

Datapath::~Datapath() = default;

Result<NumbersInUse> Datapath::numbers_in_use() const {
    auto in_use = maps_.read_numbers_in_use();
    if (!in_use) return in_use.error();
    in_use->add(replaced_numbers_);
    return in_use;
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

// A write to the inactive slot failed part-way: what it really holds is read
// back, so that the next write starts from the truth. When even that read
// fails, the slot is marked unknown: know_slot() reads it before any write,
// for a diff from a wrong base could leave a withdrawn rule in force.
void Datapath::relearn_slot(uint32_t slot) {
    slot_unknown_[slot] = true;
    (void)know_slot(slot);  // a failed read leaves the slot unknown: the next write reads it first
}

Status Datapath::know_slot(uint32_t slot) {
    if (!slot_unknown_[slot]) return {};
    auto actual = maps_.read_slot(slot);
    if (!actual)
        return actual.error().with_context("reading back slot " + std::to_string(slot) + " after a failed write");
    slot_images_[slot] = std::make_shared<const MapImage>(std::move(*actual));
    slot_unknown_[slot] = false;
    return {};
}

Status Datapath::publish(std::shared_ptr<const MapImage> image, const RulesDelta* delta) {
    const uint32_t next = active_slot_ ^ 1;
    if (auto settled = settle(); !settled) return settled;
    if (auto known = know_slot(next); !known) return known;
    last_diff_.reset();
    LastDiff made{slot_images_[next], image, diff_images(*slot_images_[next], *image, delta)};
    if (auto written = maps_.write_diff(next, made.diff, *image); !written) {
        // Nothing enforced changed: the written slot is not the active one.
        relearn_slot(next);
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
    if (auto known = know_slot(inactive); !known) return known;
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
        relearn_slot(inactive);
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

Status Datapath::set_dns_learning(const DnsLearning& learning, const std::vector<IpAddress>& trusted_resolvers) {
    const egressd_dns_settings settings{learning.min_ttl, learning.max_ttl, learning.per_identity / 2, 0};
    std::set<std::array<uint8_t, 16>> servers;
    for (const IpAddress& address : trusted_resolvers) servers.insert(address.bytes);
    return maps_.write_dns_learning(settings, servers);
}

Result<PinnedLink> Datapath::attach_hook(size_t hook, const fs::path& link_dir, const CgroupTarget& cgroup,
                                         int cgroup_fd, std::string& action) {
    bpf_program* program = programs()[hook];
    const fs::path pin = link_dir / kLinkNames[hook];
    PinnedLink old_link(path_present(pin) ? bpf_link__open(pin.c_str()) : nullptr);
    if (old_link) {
        bpf_link_info info{};
        uint32_t length = sizeof(info);
        const bool same_cgroup = bpf_obj_get_info_by_fd(bpf_link__fd(old_link.get()), &info, &length) == 0 &&
                                 info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id == cgroup.id;
        if (same_cgroup) {
            // Swap the program inside the live link: no instant without one.
            if (int err = bpf_link__update_program(old_link.get(), program); err != 0)
                return libbpf_error("updating the program of pinned link " + pin.string(), err);
            action = "adopted";
            return old_link;
        }
    }
    PinnedLink link(bpf_program__attach_cgroup(program, cgroup_fd));
    if (!link) return Error{errno, std::string("attaching ") + kLinkNames[hook] + " to " + cgroup.path.string()};
    const bool moved = old_link != nullptr;
    if (moved) {
        // The new link enforces on the new cgroup; now drop the old one.
        ::unlink(pin.c_str());
        bpf_link_detach(bpf_link__fd(old_link.get()));
    }
    if (int err = bpf_link__pin(link.get(), pin.c_str()); err != 0) return libbpf_error("pinning " + pin.string(), err);
    action = moved ? "moved" : "attached";
    return link;
}

std::array<bpf_program*, kLinkNames.size()> Datapath::programs() const {
    return {skel_->progs.egressd_conn4,       skel_->progs.egressd_conn6,      skel_->progs.egressd_send4,
            skel_->progs.egressd_send6,       skel_->progs.egressd_sock_create, skel_->progs.egressd_packet_out,
            skel_->progs.egressd_sockops,     skel_->progs.egressd_dns_in};
}

Result<std::vector<AttachReport>> Datapath::attach_all(const fs::path& link_dir, const CgroupTarget& cgroup,
                                                       std::vector<PinnedLink>& links) {
    auto cgroup_fd = open_cgroup_dir(cgroup.path);
    if (!cgroup_fd) return cgroup_fd.error();
    std::error_code ec;
    fs::create_directories(link_dir, ec);
    if (ec) return Error{ec.value(), "creating " + link_dir.string()};
    std::vector<AttachReport> reports;
    for (size_t hook = 0; hook < kLinkNames.size(); ++hook) {
        std::string action;
        if (!link_in_use(hook, options_.track_flows)) {
            // An agent with flows on left it: its program would still run.
            std::vector<std::string> removed;
            const fs::path pin = link_dir / kLinkNames[hook];
            if (path_present(pin)) {
                if (auto status = remove_pinned_link(pin, removed); !status) return status.error();
                reports.push_back(AttachReport{kLinkNames[hook], "removed (flows: off)"});
            }
            links.emplace_back(nullptr);  // links stay indexed by hook
            continue;
        }
        auto link = attach_hook(hook, link_dir, cgroup, cgroup_fd->get(), action);
        if (!link) return link.error();
        links.push_back(std::move(*link));
        reports.push_back(AttachReport{kLinkNames[hook], action});
    }
    // Only now, with every hook of this build in place, an older build's
    // links whose hooks this one replaces go.
    std::vector<std::string> retired;
    if (auto status = remove_retired_links(link_dir, retired); !status) return status.error();
    for (const std::string& path : retired) reports.push_back(AttachReport{fs::path(path).filename().string(), "retired"});
    return reports;
}

Result<std::vector<AttachReport>> Datapath::attach(const CgroupTarget& cgroup) {
    // Again after the cgroup was made anew: the links replace those on the old one.
    std::vector<PinnedLink> links;
    auto reports = attach_all(links_dir(options_.pin_dir), cgroup, links);
    if (!reports) return reports.error();
    links_ = std::move(links);
    if (auto pinned = pin_maps_once(); !pinned) return pinned.error();
    return reports;
}

Status Datapath::pin_maps_once() {
    if (!maps_pinned_) {
        if (auto pinned = pin_fresh_maps(); !pinned) return pinned.error();
    }
    maps_pinned_ = true;
    return remove_retired_maps();
}

// The programs in force use only this build's maps: a versioned map pinned
// by another build (an older layout, or a newer one after a downgrade) is
// unpinned. Only maps named as egressd names them (NAME_vN) are touched.
Status Datapath::remove_retired_maps() {
    std::set<std::string> ours;
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skel_->obj) ours.insert(bpf_map__name(map));
    static const std::regex versioned("[a-z][a-z0-9_]*_v[0-9]+");
    std::error_code ec;
    std::vector<fs::path> retired;
    for (fs::directory_iterator it(options_.pin_dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (it->is_directory(ec) || ours.count(name) || !std::regex_match(name, versioned)) continue;
        auto fd = open_pinned_object(it->path(), true);
        bpf_map_info info{};
        uint32_t length = sizeof(info);
        if (fd && bpf_obj_get_info_by_fd(fd->get(), &info, &length) == 0) retired.push_back(it->path());
    }
    for (const fs::path& path : retired) {
        if (::unlink(path.c_str()) != 0) return system_error("removing " + path.string());
        retired_maps_.push_back(path.filename().string());
    }
    return {};
}

Result<std::vector<AttachReport>> Datapath::attach_workload(const std::string& key, const CgroupTarget& cgroup) {
    std::vector<PinnedLink> links;
    auto reports = attach_all(workload_links_dir(options_.pin_dir, key), cgroup, links);
    if (!reports) return reports.error();
    workload_links_[key] = std::move(links);
    return reports;
}

Status Datapath::detach_workload(const std::string& key) {
    workload_links_.erase(key);
    std::vector<std::string> removed;
    return remove_pinned_links(workload_links_dir(options_.pin_dir, key), removed);
}

namespace {

// Every link of `links` (hook order) pinned in `dir`, or only checked.
Status pin_links(const std::vector<PinnedLink>& links, const fs::path& dir, bool pin) {
    for (size_t hook = 0; hook < links.size() && hook < kLinkNames.size(); ++hook) {
        const fs::path path = dir / kLinkNames[hook];
        if (!links[hook] || path_present(path)) continue;  // not in use (flows: off), or in place
        if (!pin) return make_error(path.string() + " is missing");
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) return Error{ec.value(), "creating " + dir.string()};
        if (bpf_obj_pin(bpf_link__fd(links[hook].get()), path.c_str()) != 0)
            return system_error("pinning " + path.string());
    }
    return {};
}

}  // namespace

bool Datapath::pins_intact() const {
    struct statfs fs_info {};
    if (::statfs(options_.pin_dir.c_str(), &fs_info) != 0 || fs_info.f_type != BPF_FS_MAGIC) return false;
    for (bpf_map* map : shared_maps(skel_->obj)) {
        if (maps_pinned_ && !path_present(options_.pin_dir / bpf_map__name(map))) return false;
    }
    if (!pin_links(links_, links_dir(options_.pin_dir), false)) return false;
    // Pods' links: their directory only. One look per pod per second would
    // be thousands of stats on a full node; a lost bpffs takes it along.
    return workload_links_.empty() || path_present(workload_links_dir(options_.pin_dir));
}

Status Datapath::repin() {
    if (auto ok = ensure_bpffs_dir(options_.pin_dir); !ok) return ok;
    if (maps_pinned_) {
        for (bpf_map* map : shared_maps(skel_->obj)) {
            const fs::path path = options_.pin_dir / bpf_map__name(map);
            if (!path_present(path) && bpf_obj_pin(bpf_map__fd(map), path.c_str()) != 0)
                return system_error("pinning " + path.string());
        }
    }
    if (auto ok = pin_links(links_, links_dir(options_.pin_dir), true); !ok) return ok;
    for (const auto& [key, links] : workload_links_) {
        if (auto ok = pin_links(links, workload_links_dir(options_.pin_dir, key), true); !ok) return ok;
    }
    return {};
}

Status Datapath::pin_fresh_maps() {
    for (const std::string& name : fresh_maps_) {
        bpf_map* map = bpf_object__find_map_by_name(skel_->obj, name.c_str());
        const fs::path path = options_.pin_dir / name;
        // The links use these maps already; an old pin only keeps an unused map alive.
        if (path_present(path) && ::unlink(path.c_str()) != 0) return system_error("replacing " + path.string());
        if (!map) return make_error("pinning " + path.string() + ": no such map in this build");
        if (bpf_obj_pin(bpf_map__fd(map), path.c_str()) != 0) return system_error("pinning " + path.string());
    }
    fresh_maps_.clear();
    return {};
}

}  // namespace egressd
