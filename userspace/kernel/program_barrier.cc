#include "kernel/program_barrier.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

namespace egressd {

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

}  // namespace egressd
