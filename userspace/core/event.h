// Decision events from the kernel (events_v1), decoded and named for people:
// the JSON lines of the event log, /events and egressctl events.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/identity.h"
#include "core/image.h"
#include "core/revocation.h"
#include "egressd_abi.h"

namespace egressd {

struct EventNames {
    // Name lookups for numbers in the event; return nullopt when unknown.
    std::function<std::optional<IdentityName>(uint32_t)> identity;
    std::function<std::optional<PolicyRef>(uint32_t)> policy;
};

// `boottime_to_unix_ns` = CLOCK_REALTIME - CLOCK_BOOTTIME now, in ns.
// Fields: time (RFC 3339, UTC, ms), verdict (deny|audit|allow|revoked), reason, row,
// identity ("NS/SA" or null), identityNumber, policy ("NS/NAME" or null, for
// reason policy), rule, destination, port, protocol (tcp|udp|icmp|<number>), hook,
// pid, uid, comm, cgroupId, generation.
nlohmann::json event_to_json(const egressd_event& event, int64_t boottime_to_unix_ns, const EventNames& names);

// CLOCK_REALTIME - CLOCK_BOOTTIME, now.
int64_t boottime_to_unix_offset_ns();
// CLOCK_BOOTTIME now, the clock of the kernel's events.
uint64_t boottime_now_ns();

// The event of a connection torn down by revocation (verdict revoked), as
// the kernel reports a decision: the socket's cgroup, owner and peer, the
// row that denies it now, the generation.
egressd_event revocation_event(const Revocation& revoked, uint64_t generation, uint64_t boottime_ns);

}  // namespace egressd
