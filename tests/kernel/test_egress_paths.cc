// Kernel: every way out of an enforced cgroup is decided (docs/decision.md,
// "every way out"). Each path is attempted as root from inside the enforced
// cgroup, in the client namespace, towards the test network's external
// host: raw sockets (ICMP, IP_HDRINCL, both families), ping sockets
// (connect() and sendto()), UDP-Lite, MPTCP, sendmmsg(), io_uring, and the
// protocols this kernel lacks. Each is denied with EPERM and counted under
// its row and hook; ping is allowed where a policy grants protocol icmp.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/ip_icmp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/decision.h"
#include "core/egress_policy.h"
#include "core/identity.h"
#include "core/image.h"
#include "enforcer.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::testenv;
using namespace egressd::ktest;

namespace {

using Net = TestNetwork;

// A socket address for a textual IPv4 or IPv6 address.
struct PathAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = 0;

    PathAddress(const char* text, uint16_t port) {
        if (auto* v4 = reinterpret_cast<sockaddr_in*>(&storage); inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
            v4->sin_family = family = AF_INET;
            v4->sin_port = htons(port);
            length = sizeof(sockaddr_in);
            return;
        }
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
        REQUIRE(inet_pton(AF_INET6, text, &v6->sin6_addr) == 1);
        v6->sin6_family = family = AF_INET6;
        v6->sin6_port = htons(port);
        length = sizeof(sockaddr_in6);
    }
    const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// What a child reports: 0 for success, else the errno (the exit code).
int result_of(int rc) { return rc >= 0 ? 0 : errno; }

// The echo request of a ping socket or a raw ICMP socket (the kernel fills
// the checksum of ICMPv6, and the identifier of a ping socket).
std::vector<uint8_t> echo_request(int family) {
    std::vector<uint8_t> packet(16, 0x5a);
    packet[0] = family == AF_INET ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
    packet[1] = 0;
    packet[2] = packet[3] = 0;
    if (family == AF_INET) {
        uint32_t sum = 0;
        for (size_t i = 0; i < packet.size(); i += 2) sum += uint32_t(packet[i] << 8 | packet[i + 1]);
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        packet[2] = uint8_t(~sum >> 8);
        packet[3] = uint8_t(~sum);
    }
    return packet;
}

// Ping sockets need the caller's group in ping_group_range, per namespace.
void allow_ping_sockets() {
    std::ofstream("/proc/sys/net/ipv4/ping_group_range") << "0 2147483647\n";
}

int raw_icmp_send(const char* dst) {
    const PathAddress to(dst, 0);
    const int fd = ::socket(to.family, SOCK_RAW, to.family == AF_INET ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6});
    if (fd < 0) return errno;
    const auto packet = echo_request(to.family);
    return result_of(int(::sendto(fd, packet.data(), packet.size(), 0, to.get(), to.length)));
}

// IP_HDRINCL: a UDP datagram to port 53 written header and all, from the
// client's own address (IPPROTO_RAW implies the header is included).
int raw_hdrincl_send(const char* src, const char* dst) {
    const PathAddress to(dst, 0);
    const int fd = ::socket(to.family, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) return errno;
    std::vector<uint8_t> packet;
    udphdr udp{};
    udp.source = htons(40000);
    udp.dest = htons(53);
    udp.len = htons(sizeof(udp) + 4);
    if (to.family == AF_INET) {
        ip header{};
        header.ip_v = 4;
        header.ip_hl = 5;
        header.ip_ttl = 64;
        header.ip_p = IPPROTO_UDP;
        header.ip_len = htons(sizeof(header) + sizeof(udp) + 4);
        inet_pton(AF_INET, src, &header.ip_src);
        inet_pton(AF_INET, dst, &header.ip_dst);
        packet.resize(sizeof(header));
        std::memcpy(packet.data(), &header, sizeof(header));
    } else {
        ip6_hdr header{};
        header.ip6_flow = htonl(6u << 28);
        header.ip6_plen = htons(sizeof(udp) + 4);
        header.ip6_nxt = IPPROTO_UDP;
        header.ip6_hlim = 64;
        inet_pton(AF_INET6, src, &header.ip6_src);
        inet_pton(AF_INET6, dst, &header.ip6_dst);
        packet.resize(sizeof(header));
        std::memcpy(packet.data(), &header, sizeof(header));
    }
    const auto* udp_bytes = reinterpret_cast<const uint8_t*>(&udp);
    packet.insert(packet.end(), udp_bytes, udp_bytes + sizeof(udp));
    packet.insert(packet.end(), {'e', 'g', 'd', '!'});
    return result_of(int(::sendto(fd, packet.data(), packet.size(), 0, to.get(), to.length)));
}

int ping_socket(int family) {
    allow_ping_sockets();
    return ::socket(family, SOCK_DGRAM, family == AF_INET ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6});
}

int ping_connect(const char* dst) {
    const PathAddress to(dst, 0);
    const int fd = ping_socket(to.family);
    if (fd < 0) return errno;
    return result_of(::connect(fd, to.get(), to.length));
}

// sendto() on an unconnected ping socket; with `want_reply`, 0 only once the
// echo reply is back (ETIMEDOUT after 2 s).
int ping_sendto(const char* dst, bool want_reply) {
    const PathAddress to(dst, 0);
    const int fd = ping_socket(to.family);
    if (fd < 0) return 50 + errno;
    const auto packet = echo_request(to.family);
    if (::sendto(fd, packet.data(), packet.size(), 0, to.get(), to.length) < 0) return errno;
    if (!want_reply) return 0;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) != 1) return ETIMEDOUT;
    uint8_t reply[256];
    return result_of(int(::recv(fd, reply, sizeof(reply), 0)));
}

int socket_errno(int family, int type, int protocol) {
    const int fd = ::socket(family, type, protocol);
    return fd < 0 ? errno : 0;
}

int mptcp_connect(const char* dst, uint16_t port) {
    const PathAddress to(dst, port);
    const int fd = ::socket(to.family, SOCK_STREAM, IPPROTO_MPTCP);
    if (fd < 0) return errno;
    return result_of(::connect(fd, to.get(), to.length));
}

// sendmmsg() of one datagram to each destination: 100 + how many were sent,
// or the errno when the first failed (a child's exit code is one byte).
int sendmmsg_to(const std::vector<const char*>& destinations, uint16_t port) {
    std::vector<PathAddress> to;
    for (const char* d : destinations) to.emplace_back(d, port);
    const int fd = ::socket(to.front().family, SOCK_DGRAM, 0);
    char payload[] = "egressd";
    iovec iov{payload, sizeof(payload)};
    std::vector<mmsghdr> messages(to.size());
    for (size_t i = 0; i < to.size(); ++i) {
        messages[i].msg_hdr.msg_name = &to[i].storage;
        messages[i].msg_hdr.msg_namelen = to[i].length;
        messages[i].msg_hdr.msg_iov = &iov;
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    const int sent = ::sendmmsg(fd, messages.data(), unsigned(messages.size()), 0);
    return sent >= 0 ? 100 + sent : errno;
}

// One io_uring operation on a socket: 0 when it completed, else the errno of
// its completion (200 and up: io_uring itself failed, no verdict).
enum class RingOp { sendmsg, send_to, connect };
int ring_result(RingOp op, const char* dst, uint16_t port) {
    io_uring ring;
    if (int err = io_uring_queue_init(4, &ring, 0); err < 0) return 200;  // io_uring unavailable: not a verdict
    const PathAddress to(dst, port);
    const int fd = ::socket(to.family, op == RingOp::connect ? SOCK_STREAM : SOCK_DGRAM, 0);
    char payload[] = "egressd";
    iovec iov{payload, sizeof(payload)};
    msghdr msg{};
    msg.msg_name = const_cast<sockaddr_storage*>(&to.storage);
    msg.msg_namelen = to.length;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    switch (op) {
        case RingOp::sendmsg: io_uring_prep_sendmsg(sqe, fd, &msg, 0); break;
        case RingOp::send_to:
            io_uring_prep_send(sqe, fd, payload, sizeof(payload), 0);
            io_uring_prep_send_set_addr(sqe, to.get(), uint16_t(to.length));
            break;
        case RingOp::connect: io_uring_prep_connect(sqe, fd, to.get(), to.length); break;
    }
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) return 201;
    const int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    io_uring_queue_exit(&ring);
    return res >= 0 ? 0 : -res;
}

uint64_t counter_of(const Enforcer& enforcer, egressd_reason reason, egressd_hook hook) {
    return enforcer.counters().at(counter_index(reason, hook));
}

// Runs fn in a child inside the enforced cgroup and the client namespace.
int in_workload(const EnforcedEnv& env, std::function<int()> fn) { return run_in_cgroup(env.cg, &env.net, std::move(fn)); }

AgentConfig paths_agent(bool allow_raw) {
    AgentConfig agent;
    agent.sidecar_uid.reset();
    agent.allow_raw_sockets = allow_raw;
    return agent;
}

// The private network and cgroup, the programs attached, and a first generation.
struct PathsEnv {
    EnforcedEnv env;
    Enforcer enforcer{env.cg};

    explicit PathsEnv(const MeshConfig& mesh) {
        enforcer.publish(paths_agent(false), mesh);
        enforcer.attach();
    }
};

}  // namespace

TEST_CASE("kernel: paths: raw sockets' packets are dropped, IP_HDRINCL and loopback included, unless allowed") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    MeshConfig mesh;
    mesh.enable_egress = true;  // even passthrough does not let a raw packet out
    PathsEnv paths(mesh);
    const EnforcedEnv& env = paths.env;
    Enforcer& enforcer = paths.enforcer;

    const uint64_t before = counter_of(enforcer, EGRESSD_REASON_RAW_SOCKET, EGRESSD_HOOK_PACKET);
    CHECK(in_workload(env, [] { return raw_icmp_send(Net::kExternal4); }) == EPERM);
    CHECK(in_workload(env, [] { return raw_icmp_send(Net::kExternal6); }) == EPERM);
    CHECK(in_workload(env, [] { return raw_icmp_send("127.0.0.1"); }) == EPERM);
    CHECK(in_workload(env, [] { return raw_hdrincl_send(Net::kClient4, Net::kExternal4); }) == EPERM);
    CHECK(in_workload(env, [] { return raw_hdrincl_send(Net::kClient6, Net::kExternal6); }) == EPERM);
    // A forged DNS answer to the workload itself, from its resolver's address.
    CHECK(in_workload(env, [] { return raw_hdrincl_send(Net::kSink4, "127.0.0.1"); }) == EPERM);
    CHECK(counter_of(enforcer, EGRESSD_REASON_RAW_SOCKET, EGRESSD_HOOK_PACKET) == before + 6);

    // rawSockets: allow hands raw packets to rows 1-8: passthrough lets them out.
    enforcer.publish(paths_agent(true), mesh);
    CHECK(in_workload(env, [] { return raw_icmp_send(Net::kExternal4); }) == 0);
    CHECK(in_workload(env, [] { return raw_hdrincl_send(Net::kClient6, Net::kExternal6); }) == 0);
    CHECK(counter_of(enforcer, EGRESSD_REASON_PASSTHROUGH, EGRESSD_HOOK_PACKET) == 2);
    // ... and with egress off, row 8 denies them.
    mesh.enable_egress = false;
    enforcer.publish(paths_agent(true), mesh);
    CHECK(in_workload(env, [] { return raw_icmp_send(Net::kExternal4); }) == EPERM);
    CHECK(in_workload(env, [] { return raw_hdrincl_send(Net::kClient4, Net::kExternal4); }) == EPERM);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_PACKET) == 2);
}

TEST_CASE("kernel: paths: ping sockets are decided at connect() and at every datagram, as protocol icmp") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    const MeshConfig mesh;  // enableEgress false
    PathsEnv paths(mesh);
    const EnforcedEnv& env = paths.env;
    Enforcer& enforcer = paths.enforcer;

    CHECK(in_workload(env, [] { return ping_connect(Net::kExternal4); }) == EPERM);
    CHECK(in_workload(env, [] { return ping_connect(Net::kExternal6); }) == EPERM);
    CHECK(in_workload(env, [] { return ping_sendto(Net::kExternal4, false); }) == EPERM);
    // ping_v6_sendmsg() does not hand the drop back to the caller: the
    // datagram is dropped and counted, sendto() returns, and no echo comes.
    CHECK(in_workload(env, [] { return ping_sendto(Net::kExternal6, true); }) == ETIMEDOUT);
    CHECK(in_workload(env, [] { return ping_sendto("127.0.0.1", true); }) == 0);  // row 1
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_CONNECT4) == 1);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_CONNECT6) == 1);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_PACKET) == 2);

    // An Egress policy with protocol icmp lets the workload's identity ping
    // the address it lists, and nothing else.
    IdentityRegistry identities;
    PolicyRegistry numbers;
    const uint32_t pinger = identities.number_for({"ops", "pinger"});
    enforcer.set_identities(identities.names(), {{env.cg.id(), pinger}});
    const PolicySet set = parse_policy_documents(
        "apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\nmetadata: {name: ping, namespace: ops}\n"
        "spec:\n  sources: [{kind: ServiceAccount, name: pinger, namespace: ops}]\n"
        "  ipAddresses: [203.0.113.10/32, 2001:db8:1::10/128]\n  ports: [{protocol: icmp}]\n",
        "ping.yaml");
    REQUIRE(set.errors.empty());
    const std::map<std::string, std::vector<IpAddress>> no_hosts;
    MeshConfig policy_mesh;
    policy_mesh.enable_egress_policy = true;
    enforcer.publish(paths_agent(false), policy_mesh,
                     PolicyInputs{&set.policies, &no_hosts, &identities, &numbers, 0});
    CHECK(in_workload(env, [] { return ping_sendto(Net::kExternal4, true); }) == 0);
    CHECK(in_workload(env, [] { return ping_sendto(Net::kExternal6, true); }) == 0);
    CHECK(in_workload(env, [] { return ping_connect(Net::kExternal4); }) == 0);
    CHECK(in_workload(env, [] { return ping_sendto(Net::kExternal4b, false); }) == EPERM);
    // The policy's port is icmp only: UDP to the same address stays denied.
    CHECK(in_workload(env, [] { return sendmmsg_to({Net::kExternal4}, 53); }) == EPERM);
    CHECK(counter_of(enforcer, EGRESSD_REASON_POLICY, EGRESSD_HOOK_PACKET) == 2);
}

TEST_CASE("kernel: paths: kinds no hook decides are refused at socket(); absent protocols are not applicable") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    MeshConfig mesh;
    mesh.enable_egress = true;  // passthrough: whatever is refused here is refused for its kind
    PathsEnv paths(mesh);
    const EnforcedEnv& env = paths.env;
    Enforcer& enforcer = paths.enforcer;

    // UDP-Lite has no connect hook (udplite_prot has no pre_connect): refused.
    CHECK(in_workload(env, [] { return socket_errno(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE); }) == EPERM);
    CHECK(in_workload(env, [] { return socket_errno(AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE); }) == EPERM);
    CHECK(counter_of(enforcer, EGRESSD_REASON_PROTOCOL, EGRESSD_HOOK_SOCK_CREATE) == 2);
    // SCTP and DCCP are not in this kernel: not applicable, and said so.
    struct Absent {
        const char* name;
        int family, type, protocol;
    };
    for (const Absent& kind : {Absent{"sctp stream", AF_INET, SOCK_STREAM, IPPROTO_SCTP},
                               Absent{"sctp seqpacket", AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP},
                               Absent{"dccp", AF_INET, 6 /* SOCK_DCCP */, IPPROTO_DCCP}}) {
        const int err = in_workload(env, [kind] { return socket_errno(kind.family, kind.type, kind.protocol); });
        const std::string outcome = std::string(kind.name) + ": " +
                                    (err == EPERM ? std::string("present in this kernel, refused")
                                                  : std::string("not applicable: ") + strerror(err));
        MESSAGE(outcome);
        CHECK((err == EPROTONOSUPPORT || err == ESOCKTNOSUPPORT || err == EPERM));
    }
    // The kinds that later hooks decide are created as before.
    CHECK(in_workload(env, [] { return socket_errno(AF_INET, SOCK_STREAM, IPPROTO_MPTCP); }) == 0);
    CHECK(in_workload(env, [] { return socket_errno(AF_INET6, SOCK_RAW, IPPROTO_RAW); }) == 0);

    // MPTCP connects pass connect4 like TCP: denied when egress is off.
    mesh.enable_egress = false;
    enforcer.publish(paths_agent(false), mesh);
    CHECK(in_workload(env, [] { return mptcp_connect(Net::kExternal4, 80); }) == EPERM);
    CHECK(in_workload(env, [] { return mptcp_connect(Net::kExternal6, 80); }) == EPERM);
}

TEST_CASE("kernel: paths: every socket kind the kernel creates is refused or not as the reference decision says") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    MeshConfig mesh;
    mesh.enable_egress = true;
    PathsEnv paths(mesh);
    const auto image = paths.enforcer.datapath().active_image();
    REQUIRE(image.has_value());
    // Types and protocols, known and not: the kernel turns most pairs away
    // before any hook runs (EPROTONOSUPPORT, ESOCKTNOSUPPORT, EACCES for ping
    // sockets outside ping_group_range); the others reach egressd_sock_create.
    // (SOCK_PACKET is left out: the kernel makes it an AF_PACKET socket,
    // which no cgroup hook decides; docs/decision.md, "Every way out".)
    const int types[] = {SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, 6 /* SOCK_DCCP */};
    const int protocols[] = {0,           IPPROTO_TCP,  IPPROTO_UDP,  IPPROTO_UDPLITE, IPPROTO_ICMP, IPPROTO_ICMPV6,
                             IPPROTO_RAW, IPPROTO_SCTP, IPPROTO_DCCP, IPPROTO_MPTCP,   IPPROTO_GRE,  253};
    size_t created = 0, refused = 0;
    for (const int family : {AF_INET, AF_INET6})
        for (const int type : types)
            for (const int protocol : protocols) {
                CAPTURE(family);
                CAPTURE(type);
                CAPTURE(protocol);
                const int err = in_workload(paths.env, [=] { return socket_errno(family, type, protocol); });
                if (err != 0 && err != EPERM) continue;  // no such kind here: no hook decided
                const Decision model = decide_socket(&*image, type, protocol);
                CHECK((err == EPERM) == (model.verdict != EGRESSD_VERDICT_ALLOW));
                ++(err == EPERM ? refused : created);
            }
    MESSAGE("socket kinds decided by the kernel: " << created << " created, " << refused << " refused");
    CHECK(created >= 8);  // TCP, MPTCP, UDP, raw in both families at least
    CHECK(refused >= 2);  // UDP-Lite in both families
}

TEST_CASE("kernel: paths: sendmmsg() and io_uring send, sendmsg and connect are decided per datagram") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    const MeshConfig mesh;  // enableEgress false
    PathsEnv paths(mesh);
    const EnforcedEnv& env = paths.env;
    Enforcer& enforcer = paths.enforcer;

    CHECK(in_workload(env, [] { return sendmmsg_to({Net::kExternal4, Net::kExternal4b}, 53); }) == EPERM);
    // The first datagram (loopback) goes, the second is refused: one sent.
    CHECK(in_workload(env, [] { return sendmmsg_to({"127.0.0.1", Net::kExternal4}, 53); }) == 101);
    CHECK(in_workload(env, [] { return sendmmsg_to({Net::kExternal6}, 53); }) == EPERM);

    CHECK(in_workload(env, [] { return ring_result(RingOp::sendmsg, Net::kExternal4, 53); }) == EPERM);
    CHECK(in_workload(env, [] { return ring_result(RingOp::sendmsg, Net::kExternal6, 53); }) == EPERM);
    CHECK(in_workload(env, [] { return ring_result(RingOp::send_to, Net::kExternal4, 53); }) == EPERM);
    CHECK(in_workload(env, [] { return ring_result(RingOp::connect, Net::kExternal4, 80); }) == EPERM);
    CHECK(in_workload(env, [] { return ring_result(RingOp::connect, Net::kExternal6, 80); }) == EPERM);
    // One each: a batch stops at its first refused datagram.
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_SENDMSG4) == 4);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_SENDMSG6) == 2);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_CONNECT4) == 1);
    CHECK(counter_of(enforcer, EGRESSD_REASON_DENY, EGRESSD_HOOK_CONNECT6) == 1);
}
