#include "core/event.h"

#include <netinet/in.h>
#include <time.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "common/time_text.h"
#include "core/decision.h"

namespace egressd {

namespace {

const char* kind_name(uint8_t kind) {
    switch (kind) {
        case EGRESSD_EVENT_DENY: return "deny";
        case EGRESSD_EVENT_AUDIT: return "audit";
        case EGRESSD_EVENT_ALLOW: return "allow";
        case EGRESSD_EVENT_REVOKED: return "revoked";
        default: return "unknown";
    }
}

}  // namespace

uint64_t boottime_now_ns() {
    timespec boot{};
    ::clock_gettime(CLOCK_BOOTTIME, &boot);
    return uint64_t(boot.tv_sec) * 1'000'000'000ull + uint64_t(boot.tv_nsec);
}

egressd_event revocation_event(const Revocation& revoked, uint64_t generation, uint64_t boottime_ns) {
    egressd_event e{};
    e.timestamp_ns = boottime_ns;
    e.cgroup_id = revoked.socket.cgroup_id;
    e.generation = generation;
    e.uid = revoked.socket.uid;
    e.identity = revoked.identity;
    e.rule = revoked.decision.rule;
    std::memcpy(e.addr, revoked.socket.peer.bytes.data(), sizeof(e.addr));
    e.port = revoked.socket.port;
    e.proto = revoked.socket.proto;
    e.hook = revoked.socket.peer.is_v4() ? EGRESSD_HOOK_CONNECT4 : EGRESSD_HOOK_CONNECT6;
    e.kind = EGRESSD_EVENT_REVOKED;
    e.reason = static_cast<uint8_t>(revoked.decision.reason);
    return e;
}

int64_t boottime_to_unix_offset_ns() {
    timespec real{}, boot{};
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_BOOTTIME, &boot);
    return (real.tv_sec - boot.tv_sec) * 1'000'000'000LL + (real.tv_nsec - boot.tv_nsec);
}

nlohmann::json event_to_json(const egressd_event& e, int64_t boottime_to_unix_ns, const EventNames& names) {
    IpAddress dst;
    std::copy(std::begin(e.addr), std::end(e.addr), dst.bytes.begin());
    const auto reason = reason_from(e.reason);
    const std::string comm(e.comm, strnlen(e.comm, sizeof(e.comm)));

    nlohmann::json identity = nullptr, policy = nullptr;
    if (e.identity != 0 && names.identity) {
        if (auto name = names.identity(e.identity)) identity = name->str();
    }
    if (reason == EGRESSD_REASON_POLICY && names.policy) {
        if (auto ref = names.policy(e.rule)) policy = ref->str();
    }
    nlohmann::json protocol = e.proto == IPPROTO_TCP   ? nlohmann::json("tcp")
                              : e.proto == IPPROTO_UDP ? nlohmann::json("udp")
                              : e.proto == EGRESSD_PROTO_ICMP ? nlohmann::json("icmp")
                                                       : nlohmann::json(e.proto);
    return {
        {"time", rfc3339_ms(static_cast<int64_t>(e.timestamp_ns) + boottime_to_unix_ns)},
        {"verdict", kind_name(e.kind)},
        {"reason", std::string(reason_name(reason))},
        {"row", reason_row(reason)},
        {"identity", identity},
        {"identityNumber", e.identity},
        {"policy", policy},
        {"learned", (e.flags & EGRESSD_EVENT_LEARNED) != 0},  // the address came from a DNS answer
        {"rule", e.rule},
        {"destination", dst.str()},
        {"port", e.port},
        {"protocol", protocol},
        {"hook", std::string(hook_name(hook_from(e.hook)))},
        {"pid", e.pid},
        {"uid", e.uid},
        {"comm", comm},
        {"cgroupId", e.cgroup_id},
        {"generation", e.generation},
    };
}

}  // namespace egressd
