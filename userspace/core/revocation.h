// Revocation, the pure part: which open sockets of enforced workloads a
// generation denies, and whether a change of generation can deny anything
// that the one before allowed. The kernel edge (kernel/revoker.h) lists the
// sockets and destroys the ones named here; docs/decision.md, "Revocation".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "core/decision.h"
#include "core/image.h"
#include "core/net.h"

namespace egressd {

// One socket as a socket iterator saw it.
struct OpenSocket {
    uint64_t cookie = 0;
    uint64_t cgroup_id = 0;  // where the socket was created
    IpAddress peer;          // IPv4 as ::ffff:a.b.c.d
    uint16_t port = 0;       // the peer's
    uint16_t local_port = 0;
    uint8_t proto = 0;  // IPPROTO_TCP / IPPROTO_UDP / IPPROTO_UDPLITE
    uint32_t uid = 0;
    bool listening = false;  // a TCP listener: its port marks accepted connections
    uint64_t bytes_sent = 0, bytes_received = 0;  // TCP: the socket's counters when listed
};

// An open TCP socket's counters so far, as its socket says (no map counts
// them while it is open): what egressctl flows and /metrics show.
struct SocketBytes {
    uint64_t sent = 0, received = 0;
    bool operator==(const SocketBytes&) const = default;
};

// Enforced cgroups by id: their parent (0 for an enforced root) and level
// below the cgroup2 mount.
struct CgroupAncestry {
    std::map<uint64_t, uint64_t> parent;
    std::map<uint64_t, uint32_t> level;
};

// The identity a process in `cgroup` has for the kernel (egressd_current_
// identity() in bpf/decision.bpf.h): its cgroup's registration, else the
// nearest registered ancestor at most EGRESSD_MAX_WORKLOAD_DEPTH levels below
// the enforced level, else 0. nullopt when the cgroup is not enforced.
std::optional<uint32_t> derived_identity(uint64_t cgroup, const CgroupAncestry& ancestry,
                                         const std::map<uint64_t, uint32_t>& workloads, uint32_t enforced_level);

struct RevocationContext {
    const MapImage* image = nullptr;
    // The identity of a socket's cgroup as the kernel derives it (0: none);
    // nullopt when the cgroup is not enforced.
    std::function<std::optional<uint32_t>(uint64_t cgroup_id)> identity_of;
    // The host number of an address learned for the identity, expired or
    // not (an expiry is not a tightening); 0 when none.
    std::function<uint32_t(uint32_t identity, const IpAddress& peer)> learned_host;
};

struct Revocation {
    OpenSocket socket;
    uint32_t identity = 0;
    Decision decision;
};

// The sockets of enforced workloads that the image denies: connections they
// made (an accepted connection, on a port a listener of the same namespace
// holds, is not egress), decided as their connect() would be now. None in
// audit mode.
std::vector<Revocation> sockets_to_revoke(const std::vector<OpenSocket>& sockets, const RevocationContext& context);

// False only when `after` denies nothing that `before` allowed, whatever the
// socket: no entry that allows (an exclusion, a mesh CIDR, a policy rule)
// removed, the inclusion list unchanged, passthrough, policies, raw sockets
// and the sidecar UID not withdrawn, and audit mode not left.
bool may_tighten(const MapImage& before, const MapImage& after);

}  // namespace egressd
