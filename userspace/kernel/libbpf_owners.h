// RAII owners of libbpf objects, like UniqueFd for descriptors: nothing of
// libbpf's is freed by hand.
#pragma once

#include <unistd.h>

#include <memory>

#include <bpf/libbpf.h>

#include "egressd.skel.h"
#include "revoke.skel.h"

namespace egressd {

struct SkeletonDeleter {
    void operator()(egressd_bpf* skeleton) const { egressd_bpf__destroy(skeleton); }
};
using Skeleton = std::unique_ptr<egressd_bpf, SkeletonDeleter>;

struct RevokeSkeletonDeleter {
    void operator()(revoke_bpf* skeleton) const { revoke_bpf__destroy(skeleton); }
};
using RevokeSkeleton = std::unique_ptr<revoke_bpf, RevokeSkeletonDeleter>;

// A link owned by this process alone (an iterator's): destroying it detaches it.
struct LinkDeleter {
    void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
using OwnedLink = std::unique_ptr<bpf_link, LinkDeleter>;

// A link egressd keeps pinned: closing our handle never detaches it, so
// enforcement outlives the agent. Detaching is explicit (bpf_link_detach).
// bpf_link__destroy() closes the link's fd only through its detach step,
// which a disconnected link skips: the fd is closed here, or every link let
// go (a pod detached) would leak its descriptor and keep the link alive.
struct PinnedLinkDeleter {
    void operator()(bpf_link* link) const {
        const int fd = bpf_link__fd(link);
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
        if (fd >= 0) ::close(fd);
    }
};
using PinnedLink = std::unique_ptr<bpf_link, PinnedLinkDeleter>;

struct RingBufferDeleter {
    void operator()(ring_buffer* ring) const { ring_buffer__free(ring); }
};
using RingBuffer = std::unique_ptr<ring_buffer, RingBufferDeleter>;

}  // namespace egressd
