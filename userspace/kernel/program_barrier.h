// Waiting until no BPF program can still be reading what a map held before
// an update (the old slot after a flip).
#pragma once

#include "common/fd.h"
#include "common/result.h"

namespace egressd {

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

}  // namespace egressd
