// Kernel: decision events (events_v1). A denial is reported exactly once with
// the right fields; audit mode lets row 8 pass and reports it; allowed
// decisions are reported only when asked; the per-source rate limit bounds a
// flood and counts what it suppresses.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <thread>
#include <vector>

#include "core/decision.h"
#include "enforcer.h"
#include "agent/kernel_metrics.h"
#include "kernel/datapath.h"
#include "kernel/event_reader.h"
#include "kernel/pins.h"
#include "kernel/revoker.h"
#include "testenv.h"

using namespace egressd;
using namespace egressd::ktest;
using namespace egressd::testenv;

namespace {

using Net = TestNetwork;

// Collects every event waiting in the ring.
std::vector<egressd_event> drain(Enforcer& enforcer) {
    std::vector<egressd_event> events;
    auto reader = EventReader::open(enforcer.datapath().maps().events.get(),
                                    [&](const egressd_event& e) { events.push_back(e); });
    REQUIRE(reader.ok());
    REQUIRE((*reader)->drain().ok());
    return events;
}

// In a child: `attempts` connects of a fresh socket of `type` to the external
// test host's `port`; 0 when every one failed with `expected_errno`.
int failing_connects(int type, uint16_t port, int attempts, int expected_errno) {
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    inet_pton(AF_INET, Net::kExternal4, &dst.sin_addr);
    int count = 0;
    for (int i = 0; i < attempts; ++i) {
        const int fd = ::socket(AF_INET, type, 0);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0 && errno == expected_errno) ++count;
        ::close(fd);
    }
    return count == attempts ? 0 : 1;
}

// What closed connections allowed by passthrough carried so far (zero before the first).
Traffic passthrough_traffic(const MapSet& maps) {
    auto rules = maps.read_rule_traffic();
    REQUIRE(rules.ok());
    const auto key = std::pair<uint32_t, uint32_t>{EGRESSD_REASON_PASSTHROUGH, 0};
    return rules->count(key) ? rules->at(key) : Traffic{};
}

std::array<uint64_t, EGRESSD_STAT_MAX> stats(Enforcer& enforcer) {
    auto s = enforcer.datapath().maps().read_event_stats();
    REQUIRE(s.ok());
    return *s;
}

IpAddress address_of(const egressd_event& e) {
    IpAddress a;
    std::copy(std::begin(e.addr), std::end(e.addr), a.bytes.begin());
    return a;
}


// A TCP connection to the sink's external address on port 80: its descriptor,
// or -1 when connect() fails.
int connect_external_tcp() {
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(80);
    inet_pton(AF_INET, Net::kExternal4, &dst.sin_addr);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) return fd;
    ::close(fd);
    return -1;
}

// A child process in the cgroup opens a connection with `open` (its socket,
// or minus an exit code) and holds it open until release(), so that the test
// can look at the flow meanwhile.
class HeldConnection {
public:
    HeldConnection(const EnforcedEnv& env, std::function<int()> open) {
        REQUIRE(::pipe(ready_) == 0);
        REQUIRE(::pipe(release_) == 0);
        child_ = std::thread([this, &env, open = std::move(open)] {
            const int rc = run_in_cgroup(env.cg, &env.net, [&] {
                const int fd = open();
                if (fd < 0) return -fd;
                char c = 'r';
                if (::write(ready_[1], &c, 1) != 1 || ::read(release_[0], &c, 1) != 1) return 100;
                ::close(fd);
                return 0;
            });
            CHECK(rc == 0);
            ::close(ready_[1]);  // a child that failed wakes wait_open()
        });
    }
    HeldConnection(const HeldConnection&) = delete;
    HeldConnection& operator=(const HeldConnection&) = delete;
    ~HeldConnection() { release(); }

    // True once the connection is open (false: the child failed).
    bool wait_open() {
        char c;
        return ::read(ready_[0], &c, 1) == 1;
    }
    void release() {
        if (!child_.joinable()) return;
        char c = 'x';
        CHECK(::write(release_[1], &c, 1) == 1);
        child_.join();
        for (int fd : {ready_[0], release_[0], release_[1]}) ::close(fd);
    }

private:
    int ready_[2] = {-1, -1}, release_[2] = {-1, -1};
    std::thread child_;
};

}  // namespace

TEST_CASE("kernel: events: a denied connect is reported exactly once, with its fields") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    const MapImage image = enforcer.publish(test_agent(env.cg), mesh_with_egress(false));
    enforcer.attach();
    (void)drain(enforcer);  // nothing from before

    const auto before = stats(enforcer);
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
    CHECK(run_probe(env.cg, env.net, {.address = Net::kMesh4, .port = 80}).error == 0);  // allowed: not reported
    const auto events = drain(enforcer);
    REQUIRE(events.size() == 1);
    const egressd_event& e = events[0];
    CHECK(e.kind == EGRESSD_EVENT_DENY);
    CHECK(e.reason == EGRESSD_REASON_DENY);
    CHECK(address_of(e) == IpAddress::parse(Net::kExternal4).value());
    CHECK(e.port == 80);
    CHECK(e.proto == IPPROTO_TCP);
    CHECK(e.hook == EGRESSD_HOOK_CONNECT4);
    CHECK(e.generation == image.generation);
    CHECK(e.cgroup_id == env.cg.id());
    CHECK(e.identity == 0);
    CHECK(e.uid == 0);
    CHECK(e.pid != 0);
    CHECK(e.pid != static_cast<uint32_t>(::getpid()));  // the probe child, not us
    CHECK(std::string(e.comm).size() > 0);
    CHECK(stats(enforcer)[EGRESSD_STAT_EVENTS_SENT] - before[EGRESSD_STAT_EVENTS_SENT] == 1);

    SUBCASE("UDP sendmsg over IPv6 names its hook and protocol") {
        CHECK(
            run_probe(env.cg, env.net, {.address = Net::kExternal6, .port = 53, .proto = Proto::udp, .op = Op::sendmsg})
                .error == EPERM);
        const auto udp = drain(enforcer);
        REQUIRE(udp.size() == 1);
        CHECK(udp[0].hook == EGRESSD_HOOK_SENDMSG6);
        CHECK(udp[0].proto == IPPROTO_UDP);
        CHECK(udp[0].port == 53);
        CHECK(address_of(udp[0]) == IpAddress::parse(Net::kExternal6).value());
    }
}

TEST_CASE("kernel: events: audit mode allows what row 8 would deny and reports it as audit") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    AgentConfig agent = test_agent(env.cg);
    agent.audit = true;
    enforcer.publish(agent, mesh_with_egress(false));
    enforcer.attach();
    (void)drain(enforcer);

    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == 0);  // a real connection
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal6, .port = 53, .proto = Proto::udp}).error == 0);
    const auto events = drain(enforcer);
    REQUIRE(events.size() == 2);
    for (const auto& e : events) {
        CHECK(e.kind == EGRESSD_EVENT_AUDIT);
        CHECK(e.reason == EGRESSD_REASON_DENY);
    }
    // Audit never opens a datapath without a generation: fail closed stays closed.
    SUBCASE("no generation: still denied") {
        TestCgroup other("unconfigured");
        Enforcer empty(other);
        empty.attach();
        CHECK(run_probe(other, env.net, {.address = Net::kExternal4, .port = 80}).error == EPERM);
    }
}

TEST_CASE("kernel: events: allowed decisions are reported only when asked") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    AgentConfig agent = test_agent(env.cg);
    enforcer.publish(agent, mesh_with_egress(true));
    enforcer.attach();
    (void)drain(enforcer);
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == 0);
    CHECK(drain(enforcer).empty());

    agent.report_passthrough = true;
    enforcer.publish(agent, mesh_with_egress(true));
    CHECK(run_probe(env.cg, env.net, {.address = Net::kExternal4, .port = 80}).error == 0);
    const auto events = drain(enforcer);
    REQUIRE(events.size() == 1);
    CHECK(events[0].kind == EGRESSD_EVENT_ALLOW);
    CHECK(events[0].reason == EGRESSD_REASON_PASSTHROUGH);
}

TEST_CASE("kernel: events: a workload looping on a denied connect is rate limited, and the rest counted") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    enforcer.publish(test_agent(env.cg), mesh_with_egress(false));
    enforcer.attach();
    (void)drain(enforcer);
    const auto before = stats(enforcer);

    constexpr int kAttempts = 20000;
    const auto started = std::chrono::steady_clock::now();
    const int denied =
        run_in_cgroup(env.cg, &env.net, [] { return failing_connects(SOCK_DGRAM, 80, kAttempts, EPERM); });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    CHECK(denied == 0);  // every attempt was denied

    const auto after = stats(enforcer);
    const uint64_t sent = after[EGRESSD_STAT_EVENTS_SENT] - before[EGRESSD_STAT_EVENTS_SENT];
    const uint64_t suppressed = after[EGRESSD_STAT_EVENTS_SUPPRESSED] - before[EGRESSD_STAT_EVENTS_SUPPRESSED];
    const uint64_t lost = after[EGRESSD_STAT_EVENTS_LOST] - before[EGRESSD_STAT_EVENTS_LOST];
    const auto events = drain(enforcer);
    MESSAGE(kAttempts << " denied connects in " << seconds << " s: " << sent << " events sent, " << suppressed
                      << " suppressed, " << lost << " lost");
    CHECK(sent + suppressed + lost == kAttempts);  // every denial accounted for
    CHECK(events.size() == sent);
    // A burst, then the sustained rate (plus a little slack for bucket races across CPUs).
    const double allowed = EGRESSD_EVENT_BURST + EGRESSD_EVENT_RATE_PER_SEC * seconds + 20;
    CHECK(static_cast<double>(sent) <= allowed);
    CHECK(sent >= EGRESSD_EVENT_BURST / 2);
    CHECK(suppressed > 0);
}

TEST_CASE("kernel: flows: an egress connection is a flow while open; its bytes reach the totals when closed") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    enforcer.publish(test_agent(env.cg), mesh_with_egress(true));  // passthrough
    enforcer.attach();
    const MapSet& maps = enforcer.datapath().maps();
    const Traffic before = passthrough_traffic(maps);

    // The child connects, exchanges 3000 bytes with the echoing sink, tells
    // us, and closes only when we say so.
    HeldConnection held(env, [] {
        const int fd = connect_external_tcp();
        if (fd < 0) return -2;
        // A mesh connection is not egress: it must not become a flow.
        sockaddr_in mesh{};
        mesh.sin_family = AF_INET;
        mesh.sin_port = htons(80);
        inet_pton(AF_INET, Net::kMesh4, &mesh.sin_addr);
        const int mesh_fd = ::socket(AF_INET, SOCK_STREAM, 0);
        if (::connect(mesh_fd, reinterpret_cast<sockaddr*>(&mesh), sizeof(mesh)) != 0) return -3;
        char buf[3000] = {};
        if (::send(fd, buf, sizeof(buf), 0) != static_cast<ssize_t>(sizeof(buf))) return -4;
        size_t got = 0;
        while (got < sizeof(buf)) {
            const ssize_t n = ::recv(fd, buf, sizeof(buf) - got, 0);
            if (n <= 0) return -5;
            got += static_cast<size_t>(n);
        }
        return fd;  // the mesh socket closes when the child exits
    });
    REQUIRE(held.wait_open());
    auto flows = maps.read_flows();
    REQUIRE(flows.ok());
    std::vector<egressd_flow> ours;
    uint64_t our_cookie = 0;
    for (const auto& [cookie, flow] : *flows) {
        if (flow.cgroup_id != env.cg.id()) continue;
        ours.push_back(flow);
        our_cookie = cookie;
    }
    REQUIRE(ours.size() == 1);  // the egress connection, not the mesh one
    IpAddress flow_dst;
    std::copy(std::begin(ours[0].addr), std::end(ours[0].addr), flow_dst.bytes.begin());
    CHECK(flow_dst == IpAddress::parse(Net::kExternal4).value());
    CHECK(ours[0].port == 80);
    CHECK(ours[0].reason == EGRESSD_REASON_PASSTHROUGH);
    // While open, nothing in the kernel counts its bytes: they are read from
    // the socket when asked, as egressctl flows does. Our 3000 bytes and the
    // SYN are acknowledged (the echo came back), the echo received.
    auto iterators = Revoker::load();
    REQUIRE(iterators.ok());
    const Revoker::OpenBytes open = (*iterators)->open_bytes({{env.cg.path(), env.cg.id()}}, cgroup2_mount());
    CHECK(open.problems.empty());
    const auto ours_open = open.by_cookie.find(our_cookie);
    REQUIRE(ours_open != open.by_cookie.end());
    CHECK(ours_open->second.sent == 3000 + 1);
    CHECK(ours_open->second.received == 3000);

    // /metrics shows them, and reads the sockets at most once a second
    // however often it is scraped.
    observe::Registry registry;
    auto metrics = KernelMetrics::create(registry, &maps);
    REQUIRE(metrics.ok());
    int reads = 0;
    (*metrics)->read_open_sockets([&]() -> Result<std::map<uint64_t, SocketBytes>> {
        ++reads;
        return open.by_cookie;
    });
    std::string scraped;
    const auto first_scrape = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) {
        std::vector<RenderedFamily> families;
        (*metrics)->scrape(families);
        for (const auto& [name, text] : families) scraped += text;
    }
    // One read per second begun (one, unless the machine stalled the scrapes).
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - first_scrape);
    CHECK(reads >= 1);
    CHECK(reads <= 1 + seconds.count());
    CHECK(scraped.find("egressd_open_egress_bytes{reason=\"passthrough\",rule=\"0\",direction=\"received\"} 3000") !=
          std::string::npos);

    held.release();

    // The close is seen by the sockops program when the socket reaches
    // TCP_CLOSE; give the FIN exchange a moment.
    Traffic after{};
    for (int i = 0; i < 100; ++i) {
        after = passthrough_traffic(maps);
        if (after.connections > before.connections) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // The socket's own counters count TCP sequence space: bytes_acked has our
    // SYN and FIN on top of the payload, bytes_received the peer's FIN.
    CHECK(after.connections == before.connections + 1);
    CHECK(after.bytes_sent - before.bytes_sent == 3000 + 2);
    CHECK(after.bytes_received - before.bytes_received == 3000 + 1);
    auto remaining = maps.read_flows();
    REQUIRE(remaining.ok());
    for (const auto& [cookie, flow] : *remaining) CHECK(flow.cgroup_id != env.cg.id());
    auto identities = maps.read_identity_traffic();
    REQUIRE(identities.ok());
    CHECK(identities->count(0) == 1);  // unknown identity: the enforced cgroup is not a workload
}

// The rule a CIDR row names is the longest prefix that holds the destination,
// whether the table is carried in the config (sorted longest first) or looked
// up in the trie: a flow records it.
TEST_CASE("kernel: flows: an excluded CIDR's flow names the longest matching entry, in the config or the trie") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    for (const size_t padding : {size_t{0}, size_t{EGRESSD_CONFIG_CIDRS}}) {
        CAPTURE(padding);
        EnforcedEnv env;
        Enforcer enforcer(env.cg);
        MeshConfig mesh = mesh_with_egress(false);
        // kExternal4 (203.0.113.10) is in all three; the /32 is entry 1.
        mesh.outbound_ip_range_exclusion =
            padded({cidr("203.0.113.0/24"), cidr("203.0.113.10/32"), cidr("203.0.113.0/25")}, padding);
        const MapImage image = enforcer.publish(test_agent(env.cg), mesh);
        enforcer.attach();
        const Decision model =
            decide(&image, Query{.dst = IpAddress::parse(Net::kExternal4).value(), .port = 80, .proto = IPPROTO_TCP});
        CHECK(model.reason == EGRESSD_REASON_EXCLUDED_CIDR);
        CHECK(model.rule == 1);

        HeldConnection held(env, [] {
            const int fd = connect_external_tcp();
            return fd < 0 ? -2 : fd;
        });
        REQUIRE(held.wait_open());
        auto flows = enforcer.datapath().maps().read_flows();
        held.release();
        REQUIRE(flows.ok());
        std::vector<egressd_flow> ours;
        for (const auto& [cookie, flow] : *flows)
            if (flow.cgroup_id == env.cg.id()) ours.push_back(flow);
        REQUIRE(ours.size() == 1);
        CHECK(ours[0].reason == EGRESSD_REASON_EXCLUDED_CIDR);
        CHECK(ours[0].rule == model.rule);
    }
}

TEST_CASE("kernel: flows: off: connections are decided and counted, leave no flow and no totals, no sockops") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg, Capacities{}, /*track_flows=*/false);
    enforcer.publish(test_agent(env.cg), mesh_with_egress(true));  // passthrough
    enforcer.attach();
    const MapSet& maps = enforcer.datapath().maps();
    const Traffic before = passthrough_traffic(maps);
    const uint64_t decided_before =
        enforcer.counters()[EGRESSD_REASON_PASSTHROUGH * EGRESSD_HOOK_MAX + EGRESSD_HOOK_CONNECT4];

    const int rc = run_in_cgroup(env.cg, &env.net, [] {
        const int fd = connect_external_tcp();
        if (fd < 0) return 2;
        char buf[100] = {};
        if (::send(fd, buf, sizeof(buf), 0) != static_cast<ssize_t>(sizeof(buf))) return 3;
        ::close(fd);
        return 0;
    });
    CHECK(rc == 0);
    CHECK(enforcer.counters()[EGRESSD_REASON_PASSTHROUGH * EGRESSD_HOOK_MAX + EGRESSD_HOOK_CONNECT4] ==
          decided_before + 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // what a close would have counted
    int ours = 0;
    uint64_t cookie = 0, next = 0;
    for (bool first = true; bpf_map_get_next_key(maps.flows.fd(), first ? nullptr : &cookie, &next) == 0;
         first = false) {
        cookie = next;
        egressd_flow flow{};
        if (bpf_map_lookup_elem(maps.flows.fd(), &cookie, &flow) == 0 && flow.cgroup_id == env.cg.id()) ++ours;
    }
    CHECK(ours == 0);
    CHECK(passthrough_traffic(maps).connections == before.connections);
    // The sockops program, with nothing to do, is not attached at all.
    const auto in_use = read_pinned_links(enforcer.pin_dir(), false);
    CHECK(in_use.size() == kLinkNames.size() - 1);
    for (const LinkInfo& link : in_use) CHECK_MESSAGE(link.pinned, link.hook);
    CHECK_FALSE(path_present(links_dir(enforcer.pin_dir()) / "sockops"));

    // The setting is the programs' own (.rodata): an agent started with flows
    // on adopts the maps pinned by one with flows off, and the other way.
    auto restarted = Datapath::load({enforcer.pin_dir(), Capacities{}, true});
    REQUIRE(restarted.ok());
    CHECK((*restarted)->adopted_maps());
}

TEST_CASE("kernel: flows: a connection that is refused leaves no flow, no totals and no loss behind") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    EnforcedEnv env;
    Enforcer enforcer(env.cg);
    enforcer.publish(test_agent(env.cg), mesh_with_egress(true));  // passthrough
    enforcer.attach();
    const MapSet& maps = enforcer.datapath().maps();
    const Traffic before = passthrough_traffic(maps);
    const auto stats_before = stats(enforcer);

    // The connect hook records each attempt as connecting; the RST ends it.
    constexpr int kAttempts = 50;
    const int refused = run_in_cgroup(
        env.cg, &env.net, [] { return failing_connects(SOCK_STREAM, Net::kClosedTcpPort, kAttempts, ECONNREFUSED); });
    CHECK(refused == 0);

    // Every entry of flows_v1, connecting ones included (read_flows hides them).
    int ours = 0;
    uint64_t cookie = 0, next = 0;
    bool first = true;
    while (bpf_map_get_next_key(maps.flows.fd(), first ? nullptr : &cookie, &next) == 0) {
        first = false;
        cookie = next;
        egressd_flow flow{};
        if (bpf_map_lookup_elem(maps.flows.fd(), &cookie, &flow) == 0 && flow.cgroup_id == env.cg.id()) ++ours;
    }
    CHECK(ours == 0);
    CHECK(passthrough_traffic(maps).connections == before.connections);
    CHECK(stats(enforcer)[EGRESSD_STAT_FLOWS_LOST] == stats_before[EGRESSD_STAT_FLOWS_LOST]);
}
