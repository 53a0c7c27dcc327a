// RAII owners of libbpf objects, like UniqueFd for descriptors: nothing of
// libbpf's is freed by hand.
#pragma once

#include <memory>

#include <bpf/libbpf.h>

#include "egressd.skel.h"

namespace egressd {

struct SkeletonDeleter {
    void operator()(egressd_bpf* skeleton) const { egressd_bpf__destroy(skeleton); }
};
using Skeleton = std::unique_ptr<egressd_bpf, SkeletonDeleter>;

// A link egressd keeps pinned: closing our handle never detaches it, so
// enforcement outlives the agent. Detaching is explicit (bpf_link_detach).
struct PinnedLinkDeleter {
    void operator()(bpf_link* link) const {
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
    }
};
using PinnedLink = std::unique_ptr<bpf_link, PinnedLinkDeleter>;

struct RingBufferDeleter {
    void operator()(ring_buffer* ring) const { ring_buffer__free(ring); }
};
using RingBuffer = std::unique_ptr<ring_buffer, RingBufferDeleter>;

}  // namespace egressd
