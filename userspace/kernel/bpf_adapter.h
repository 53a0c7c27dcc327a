// The kernel edge, all of it: every libbpf call of egressd lives behind the
// classes these headers declare (the pure core never sees libbpf). Prefer
// including the one you use.
#pragma once

#include "kernel/datapath.h"
#include "kernel/event_reader.h"
#include "kernel/map_set.h"
#include "kernel/pins.h"
#include "kernel/program_barrier.h"
