// The kernel edge: every libbpf call of egressd lives behind these classes
// (the pure core never sees libbpf). See docs/architecture.md.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "core/agent_config.h"
#include "core/identity.h"
#include "core/image.h"
#include "egressd_abi.h"
#include "kernel/cgroup.h"

struct egressd_bpf;
struct bpf_link;
struct ring_buffer;

namespace egressd {

// The programs egressd attaches to the cgroup, as named by their pinned links:
// the four decision hooks (in egressd_hook order), then flow accounting.
inline constexpr std::array<const char*, EGRESSD_HOOK_MAX + 1> kLinkNames = {"connect4", "connect6", "sendmsg4",
                                                                              "sendmsg6", "sockops"};

struct Traffic {
    uint64_t connections = 0, bytes_sent = 0, bytes_received = 0;
};

// Open file descriptors of the egressd maps, from a loaded object or from
// the pins. Reads and writes whole slots (maps/egressd_abi.h).
class MapSet {
public:
    // Opens the pinned maps of `pin_dir`; fails naming the first one missing.
    static Result<MapSet> open_pinned(const std::filesystem::path& pin_dir, bool read_only);

    Result<egressd_control> read_control() const;
    // Config, CIDRs and ports of one slot. The image's flags say whether the
    // slot holds a valid generation.
    Result<MapImage> read_slot(uint32_t slot) const;
    // Decisions per counter index (reason * EGRESSD_HOOK_MAX + hook), summed over CPUs.
    Result<std::vector<uint64_t>> read_counters() const;

    // Events sent, suppressed by the rate limit and lost to a full ring
    // (enum egressd_event_stat), summed over CPUs.
    Result<std::array<uint64_t, EGRESSD_STAT_MAX>> read_event_stats() const;

    // Open egress TCP connections (socket cookie -> flow), and what closed
    // ones carried per (reason, rule) and per identity, summed over CPUs.
    // Established connections only (see flows_v1 in the ABI).
    Result<std::vector<std::pair<uint64_t, egressd_flow>>> read_flows() const;
    Result<std::map<std::pair<uint32_t, uint32_t>, Traffic>> read_rule_traffic() const;
    Result<std::map<uint32_t, Traffic>> read_identity_traffic() const;

    // Not per generation: registered workload cgroups and identity names.
    Result<std::map<uint64_t, uint32_t>> read_workload_identities() const;
    Result<std::map<uint32_t, IdentityName>> read_identity_names() const;
    Status write_workload_identities(const std::map<uint64_t, uint32_t>& from,
                                     const std::map<uint64_t, uint32_t>& to) const;
    Status write_identity_names(const std::map<uint32_t, IdentityName>& from,
                                const std::map<uint32_t, IdentityName>& to) const;

    // Turns slot `slot`, holding `from`, into `to`. Only for the inactive slot.
    Status write_slot(uint32_t slot, const MapImage& from, const MapImage& to) const {
        return write_diff(slot, diff_images(from, to), to);
    }
    // Writes a diff computed before (diff_images(what the slot holds, to)).
    Status write_diff(uint32_t slot, const ImageDiff& diff, const MapImage& to) const;
    Status set_active_slot(uint32_t slot) const;

    UniqueFd control, config, cidrs, ports, counters, identities, id_names, policies, policy_names, events,
        event_limits, event_stats, flows, rule_traffic, id_traffic, policy_hosts;
};

// Reads decision events from events_v1 as they arrive. Only the agent reads
// the ring (a ring buffer has one consumer position).
class EventReader {
public:
    using Callback = std::function<void(const egressd_event&)>;
    static Result<std::unique_ptr<EventReader>> open(int events_map_fd, Callback callback);
    ~EventReader();
    int epoll_fd() const;  // readable when events are waiting
    // Hands every waiting event to the callback; returns how many.
    Result<int> drain();

private:
    EventReader() = default;
    struct ring_buffer* ring_ = nullptr;
    Callback callback_;
};

struct LinkInfo {
    std::string hook;
    bool pinned = false;
    uint32_t link_id = 0;
    uint32_t prog_id = 0;
    uint64_t cgroup_id = 0;
    uint32_t attach_type = 0;
    std::string prog_name;
};

// What is pinned under pin_dir/links, for status and clean-up.
std::vector<LinkInfo> read_pinned_links(const std::filesystem::path& pin_dir);

// Detaches every link and removes every pin under pin_dir (and the directory).
// Reports each removed object in `removed`.
Status cleanup_pins(const std::filesystem::path& pin_dir, std::vector<std::string>& removed);

// Waits until every BPF program that might have read the previous value of a
// map has finished: an update of an ARRAY_OF_MAPS returns only after the
// kernel's synchronize_rcu() (kernel/bpf/syscall.c, maybe_wait_bpf_programs),
// and sock_addr programs run inside an RCU read-side section.
class ProgramBarrier {
public:
    static Result<ProgramBarrier> create();
    Status wait() const;

private:
    UniqueFd inner_, outer_;
};

struct AttachReport {
    std::string hook;
    std::string action;  // "attached", "adopted", "moved"
};

// The agent's datapath: the loaded programs, their maps and the links.
class Datapath {
public:
    struct Options {
        std::filesystem::path pin_dir;
        Capacities capacities;
    };

    // Opens and loads the BPF object. When every pinned map is compatible the
    // maps are adopted (the kernel keeps its current generation); otherwise a
    // fresh set is created and replaces the pins only after the links use it.
    static Result<std::unique_ptr<Datapath>> load(const Options& options);
    ~Datapath();
    Datapath(const Datapath&) = delete;
    Datapath& operator=(const Datapath&) = delete;

    bool adopted_maps() const { return adopted_maps_; }
    // The generation the kernel enforces now (adopted maps), if any.
    std::optional<MapImage> active_image() const;

    // Atomically replaces the enforced generation: writes the inactive slot
    // and flips the active slot. The new generation decides every connect()
    // from then on; programs that started before may still read the old slot,
    // so the old slot is written again only after they are done (see
    // settle()), not here: that wait (an RCU grace period, ~10-20 ms) stays
    // off the path from a file write to the kernel's verdict.
    Status publish(std::shared_ptr<const MapImage> image);
    Status publish(const MapImage& image) { return publish(std::make_shared<const MapImage>(image)); }

    // Makes the inactive slot equal to the active one, so the next publish()
    // writes only what changes. Off the critical path: call it after a
    // publish() has taken effect. Failing leaves enforcement as it is.
    Status converge();

    // Attaches the programs to the cgroup with bpf_link and pins the links,
    // or adopts pinned links (their program is replaced atomically with
    // bpf_link_update, so enforcement never stops). A link on another cgroup
    // is replaced after the new one is attached. Then pins the maps if they
    // are new. Call after the first publish().
    Result<std::vector<AttachReport>> attach(const CgroupTarget& cgroup);

    // Identity names and registered workload cgroups: not per generation.
    // Names must be written before a generation that uses them is published.
    Status set_identities(const std::map<uint32_t, IdentityName>& names, const std::map<uint64_t, uint32_t>& workloads);
    const std::map<uint32_t, IdentityName>& identity_names() const { return identity_names_; }
    const std::map<uint64_t, uint32_t>& workload_identities() const { return workload_identities_; }

    const MapSet& maps() const { return maps_; }

private:
    Datapath() = default;
    Status pin_maps();
    // Waits, once after each flip, until no program can still be reading the
    // slot that was active before it. Every write to the inactive slot calls it.
    Status settle();

    Options options_;
    egressd_bpf* skel_ = nullptr;
    MapSet maps_;
    ProgramBarrier barrier_;
    bool flipped_since_settle_ = false;
    // The diff the last publish() wrote, between the images it names: after
    // a converge() both slots held `from`, so bringing the old slot up to
    // date is the very same diff and need not be computed again.
    struct LastDiff {
        std::shared_ptr<const MapImage> from, to;
        ImageDiff diff;
    };
    std::optional<LastDiff> last_diff_;
    bool adopted_maps_ = false;
    uint32_t active_slot_ = 0;
    // What each slot holds in the kernel. Images are immutable and shared:
    // after converge() both slots point at the same one.
    std::array<std::shared_ptr<const MapImage>, EGRESSD_SLOTS> slot_images_{
        std::make_shared<const MapImage>(), std::make_shared<const MapImage>()};
    std::vector<bpf_link*> links_;
    std::map<uint32_t, IdentityName> identity_names_;
    std::map<uint64_t, uint32_t> workload_identities_;
};

}  // namespace egressd
