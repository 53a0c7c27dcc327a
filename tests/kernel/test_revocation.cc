// Kernel: revocation. A generation that denies what open connections do
// tears exactly those down (socket iterators and bpf_sock_destroy, driven by
// Revoker::revoke as the agent drives it), and sockets connected before
// their cgroup was enforced are decided when enforcement begins.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "enforcer.h"
#include "kernel/mounts.h"
#include "kernel/revoker.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::testenv;
using namespace egressd::ktest;

namespace {

using Net = TestNetwork;

struct Peer {
    const char* address;
    uint16_t port;
    int type;           // SOCK_STREAM or SOCK_DGRAM (connected)
    int count;
    bool to_be_revoked;  // by the tightening generation of the test
};

// A connected socket of `type` to `address`:`port`; -1 on failure.
int connected_socket(const char* address, uint16_t port, int type) {
    sockaddr_storage ss{};
    socklen_t length;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        length = sizeof(*v4);
    } else {
        inet_pton(AF_INET6, address, &v6->sin6_addr);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        length = sizeof(*v6);
    }
    const int fd = ::socket(ss.ss_family, type, 0);
    if (fd < 0) return -1;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), length) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// Torn down: the kernel aborted it (SO_ERROR ECONNABORTED, or a TCP socket
// no longer established).
bool torn_down(int fd, int type) {
    int error = 0;
    socklen_t length = sizeof(error);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error == ECONNABORTED || error == ECONNRESET) return true;
    if (type != SOCK_STREAM) return false;
    tcp_info info{};
    length = sizeof(info);
    ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length);
    return info.tcpi_state != TCP_ESTABLISHED;
}

struct Tally {
    int opened = 0;
    int revoked_as_expected = 0;  // to be revoked, and torn down
    int kept_as_expected = 0;     // to be kept, and still open
};

// In the workload: opens every peer's connections, says so on `ready`, waits
// for a byte on `go`, then writes the tally to `ready`.
int hold_connections(const std::vector<Peer>& peers, int ready, int go) {
    std::vector<std::pair<int, const Peer*>> fds;
    for (const Peer& p : peers)
        for (int i = 0; i < p.count; ++i)
            if (int fd = connected_socket(p.address, p.port, p.type); fd >= 0) fds.push_back({fd, &p});
    Tally tally;
    tally.opened = int(fds.size());
    char byte = 'r';
    if (::write(ready, &byte, 1) != 1 || ::read(go, &byte, 1) != 1) return 3;
    for (const auto& [fd, peer] : fds) {
        const bool down = torn_down(fd, peer->type);
        if (down && peer->to_be_revoked) ++tally.revoked_as_expected;
        if (!down && !peer->to_be_revoked) ++tally.kept_as_expected;
    }
    return ::write(ready, &tally, sizeof(tally)) == sizeof(tally) ? 0 : 4;
}

// The file descriptors 1,000 connections need, here and in the sink server.
void raise_fd_limit() {
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
}

std::filesystem::path cgroup_mount() { return cgroup2_mount(); }

// A workload process holding `peers`' connections (hold_connections) in the
// enforced cgroup, from construction until finish() tallies them.
class HeldConnections {
public:
    HeldConnections(const EnforcedEnv& env, const std::vector<Peer>& peers) {
        REQUIRE(::pipe(ready_) == 0);
        REQUIRE(::pipe(go_) == 0);
        thread_ = std::thread([this, &env, peers] {
            exit_ = run_in_cgroup(env.cg, &env.net, [&] { return hold_connections(peers, ready_[1], go_[0]); },
                                  std::chrono::seconds(60));
        });
        char byte = 0;
        REQUIRE(::read(ready_[0], &byte, 1) == 1);
    }
    ~HeldConnections() {
        if (thread_.joinable()) thread_.join();
        for (int fd : {ready_[0], ready_[1], go_[0], go_[1]}) ::close(fd);
    }
    Tally finish() {
        const char byte = 'g';
        Tally tally;
        REQUIRE(::write(go_[1], &byte, 1) == 1);
        REQUIRE(::read(ready_[0], &tally, sizeof(tally)) == sizeof(tally));
        thread_.join();
        CHECK(exit_ == 0);
        return tally;
    }

private:
    int ready_[2] = {-1, -1}, go_[2] = {-1, -1};
    int exit_ = -1;
    std::thread thread_;
};

}  // namespace

TEST_CASE("kernel: revocation: 1,000 open connections, a change denies half, exactly that half is torn down") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    raise_fd_limit();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    AgentConfig agent;
    agent.mesh_cidrs = {cidr("198.18.0.0/24"), cidr("2001:db8:2::/64")};
    MeshConfig mesh;
    mesh.enable_egress = true;
    mesh.outbound_ip_range_exclusion = {cidr("203.0.113.11/32")};
    const MapImage before = enforcer.publish(agent, mesh);
    enforcer.attach();
    auto revoker = Revoker::load();
    REQUIRE_MESSAGE(revoker.ok(), revoker.error().describe());

    // Half of them are allowed only by passthrough; the other half by an
    // exclusion, the mesh or loopback, which the change leaves in place.
    const std::vector<Peer> peers = {
        {Net::kExternal4, 80, SOCK_STREAM, 250, true},    {Net::kExternal6, 443, SOCK_STREAM, 150, true},
        {Net::kExternal4, 53, SOCK_DGRAM, 100, true},     {Net::kExternal4b, 8080, SOCK_STREAM, 230, false},
        {Net::kMesh4, 80, SOCK_STREAM, 150, false},       {Net::kMesh6, 53, SOCK_DGRAM, 100, false},
        {"127.0.0.1", 80, SOCK_STREAM, 20, false},
    };
    HeldConnections held(env, peers);

    // The flip: egress off. Passthrough's connections are now denied.
    const auto flip = std::chrono::steady_clock::now();
    mesh.enable_egress = false;
    const MapImage after = enforcer.publish(agent, mesh);
    CHECK(may_tighten(before, after));
    auto workloads = enforcer.datapath().maps().read_workload_identities();
    REQUIRE(workloads.ok());
    const Revoker::Pass pass = (*revoker)->revoke(after, {{env.cg.path(), env.cg.id()}}, cgroup_mount(), *workloads, {});
    const double millis = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - flip).count();
    MESSAGE("revocation: " << pass.revoked.size() << " of " << pass.sockets << " sockets torn down in "
                           << pass.namespaces << " namespace(s), " << millis << " ms after the flip");

    const Tally tally = held.finish();
    CHECK(pass.problems.empty());
    CHECK(tally.opened == 1000);
    CHECK(pass.revoked.size() == 500);
    CHECK(tally.revoked_as_expected == 500);
    CHECK(tally.kept_as_expected == 500);
    CHECK(millis < 100);
    for (const Revocation& r : pass.revoked) CHECK(r.decision.reason == EGRESSD_REASON_DENY);
}

TEST_CASE("kernel: revocation: sockets connected before their cgroup was enforced are decided when it begins") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    auto revoker = Revoker::load();
    REQUIRE_MESSAGE(revoker.ok(), revoker.error().describe());
    const std::vector<Peer> peers = {
        {Net::kExternal4, 80, SOCK_STREAM, 3, true},
        {Net::kExternal6, 53, SOCK_DGRAM, 3, true},
        {Net::kMesh4, 80, SOCK_STREAM, 3, false},
    };
    // Nothing is attached yet: the connections open as they would on any host.
    HeldConnections held(env, peers);

    AgentConfig agent;
    agent.mesh_cidrs = {cidr("198.18.0.0/24")};
    const MapImage image = enforcer.publish(agent, MeshConfig{});  // enableEgress false
    enforcer.attach();
    const Revoker::Pass pass = (*revoker)->revoke(image, {{env.cg.path(), env.cg.id()}}, cgroup_mount(), {}, {});

    const Tally tally = held.finish();
    CHECK(tally.opened == 9);
    CHECK(pass.revoked.size() == 6);
    CHECK(tally.revoked_as_expected == 6);
    CHECK(tally.kept_as_expected == 3);
}
