// The agent's datapath: the loaded programs, their maps and the links that
// attach them, and the atomic switch from one generation to the next.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "core/agent_config.h"
#include "core/identity.h"
#include "core/image.h"
#include "egressd_abi.h"
#include "kernel/cgroup.h"
#include "kernel/libbpf_owners.h"
#include "kernel/map_set.h"
#include "kernel/pins.h"
#include "kernel/program_barrier.h"

namespace egressd {

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
        bool track_flows = true;  // off: no flow tracking (flows.bpf.h, egressd_flows_enabled)
    };

    // Opens and loads the BPF object, adopting the pinned maps that match
    // this build (map_carry(): the generation maps all or none; with them the
    // kernel keeps its current generation). The maps made fresh replace the
    // pins only after the links use them.
    static Result<std::unique_ptr<Datapath>> load(const Options& options);
    ~Datapath();  // links stay pinned: enforcement outlives the agent by design
    Datapath(const Datapath&) = delete;
    Datapath& operator=(const Datapath&) = delete;

    // The generation maps were adopted (and the numbered ones that matched).
    bool adopted_maps() const { return adopted_maps_; }
    // Why pinned maps were found but not adopted (fresh ones replace them), or "".
    const std::string& not_adopted_why() const { return not_adopted_why_; }
    // The maps this load made fresh, until they are pinned (attach()).
    const std::vector<std::string>& fresh_maps() const { return fresh_maps_; }
    // The highest numbers the numbered maps hold: those kept, and those of
    // another capacity that this load replaced (the old programs read them
    // until the links use the new ones).
    Result<NumbersInUse> numbers_in_use() const;
    // Maps another build pinned, unpinned once this build's were in place.
    const std::vector<std::string>& retired_maps() const { return retired_maps_; }
    // The generation the kernel enforces now (adopted maps), if any.
    std::optional<MapImage> active_image() const;

    // Atomically replaces the enforced generation: writes the inactive slot
    // and flips the active slot. The new generation decides every connect()
    // from then on; programs that started before may still read the old slot,
    // so the old slot is written again only after they are done (see
    // settle()), not here: that wait (an RCU grace period, ~10-20 ms) stays
    // off the path from a file write to the kernel's verdict. `delta`: what
    // the rule cache changed in the policy rules (diff_images).
    Status publish(std::shared_ptr<const MapImage> image, const RulesDelta* delta = nullptr);
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

    // Kubernetes mode: the programs on one workload's cgroup (a pod's), with
    // its own pinned links under links/workloads/<key>/, adopted the same way
    // as attach() does. Nothing is attached to the pods' parent, so other
    // pods and host processes carry no program.
    Result<std::vector<AttachReport>> attach_workload(const std::string& key, const CgroupTarget& cgroup);
    // Detaches and unpins a workload's links (gone already if its cgroup was removed).
    Status detach_workload(const std::string& key);
    // True when every map and every cgroup link of this agent is pinned where
    // it belongs, on a bpf filesystem, and the pods' links directory exists.
    bool pins_intact() const;
    // Pins again what is missing from the pin directory (it was removed, or
    // its bpffs unmounted): the maps and this agent's links, from the
    // agent's own references, which kept enforcing meanwhile.
    Status repin();

    // Pins the maps if they are new (attach() does it): in Kubernetes mode,
    // after the first publish, whether or not a pod is enforced yet.
    Status pin_maps_once();

    // Identity names and registered workload cgroups: not per generation.
    // Names must be written before a generation that uses them is published.
    Status set_identities(const std::map<uint32_t, IdentityName>& names, const std::map<uint64_t, uint32_t>& workloads);
    // Learning from DNS answers: the TTL clamps and per-identity entries, and
    // the resolvers whose answers are trusted. Not per generation.
    Status set_dns_learning(const DnsLearning& learning, const std::vector<IpAddress>& trusted_resolvers);
    const std::map<uint32_t, IdentityName>& identity_names() const { return identity_names_; }
    const std::map<uint64_t, uint32_t>& workload_identities() const { return workload_identities_; }

    const MapSet& maps() const { return maps_; }

private:
    Datapath() = default;
    // After adopting pinned maps: what each slot, the names and the workloads hold.
    Status read_adopted_state();
    // The programs in hook order (kLinkNames).
    std::array<bpf_program*, kLinkNames.size()> programs() const;
    // Attaches one hook's program, or swaps it into the link pinned in
    // `link_dir` on this cgroup; `action` says which.
    Result<PinnedLink> attach_hook(size_t hook, const std::filesystem::path& link_dir, const CgroupTarget& cgroup,
                                   int cgroup_fd, std::string& action);
    // Every hook on one cgroup, links pinned in `link_dir`.
    Result<std::vector<AttachReport>> attach_all(const std::filesystem::path& link_dir, const CgroupTarget& cgroup,
                                                 std::vector<PinnedLink>& links);
    Status pin_fresh_maps();
    Status remove_retired_maps();
    // Waits, once after each flip, until no program can still be reading the
    // slot that was active before it. Every write to the inactive slot calls it.
    Status settle();
    void relearn_slot(uint32_t slot);
    Status know_slot(uint32_t slot);

    Options options_;
    Skeleton skel_;
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
    std::string not_adopted_why_;
    std::vector<std::string> fresh_maps_;
    NumbersInUse replaced_numbers_;
    std::vector<std::string> retired_maps_;
    uint32_t active_slot_ = 0;
    // What each slot holds in the kernel. Images are immutable and shared:
    // after converge() both slots point at the same one.
    std::array<std::shared_ptr<const MapImage>, EGRESSD_SLOTS> slot_images_{std::make_shared<const MapImage>(),
                                                                            std::make_shared<const MapImage>()};
    // A slot whose write failed and could not be read back: slot_images_ is
    // not what it holds until know_slot() reads it.
    std::array<bool, EGRESSD_SLOTS> slot_unknown_{};
    std::vector<PinnedLink> links_;
    std::map<std::string, std::vector<PinnedLink>> workload_links_;  // Kubernetes mode, by workload key
    bool maps_pinned_ = false;
    std::map<uint32_t, IdentityName> identity_names_;
    std::map<uint64_t, uint32_t> workload_identities_;
};

}  // namespace egressd
