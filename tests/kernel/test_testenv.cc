// Self-tests of the kernel-test environment, without any BPF program attached.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "testenv.h"

namespace te = egressd::testenv;
using te::Op;
using te::Probe;
using te::ProbeResult;
using te::Proto;
using te::TestCgroup;
using te::TestNetwork;

namespace {

constexpr long kCgroup2SuperMagic = 0x63677270;

bool exists(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

std::string slurp(const std::string& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// `ip netns list` output (via popen: a read-only listing).
std::string netns_list() {
    std::string out;
    FILE* f = ::popen("ip netns list 2>&1", "r");
    if (!f) return "<popen failed>";
    char buf[512];
    while (std::fgets(buf, sizeof buf, f)) out += buf;
    ::pclose(f);
    return out;
}

const char* errname(int e) {
    const char* n = strerrorname_np(e);
    return n ? n : "?";
}

void check_ok(const std::vector<Probe>& probes, const std::vector<ProbeResult>& results) {
    REQUIRE(results.size() == probes.size());
    for (size_t i = 0; i < probes.size(); ++i) {
        INFO(te::describe(probes[i]) << " -> " << errname(results[i].error) << ": " << results[i].detail);
        CHECK(results[i].error == 0);
    }
}

void check_error(const std::vector<Probe>& probes, const std::vector<ProbeResult>& results, int expected) {
    REQUIRE(results.size() == probes.size());
    for (size_t i = 0; i < probes.size(); ++i) {
        INFO(te::describe(probes[i]) << " -> " << errname(results[i].error) << " (expected " << errname(expected)
                                     << "): " << results[i].detail);
        CHECK(results[i].error == expected);
    }
}

Probe make(const char* a, uint16_t port, Proto proto, Op op) {
    Probe p;
    p.address = a;
    p.port = port;
    p.proto = proto;
    p.op = op;
    return p;
}
Probe tcp(const char* a, uint16_t port) { return make(a, port, Proto::tcp, Op::connect); }
Probe udp_connect(const char* a, uint16_t port) { return make(a, port, Proto::udp, Op::connect); }
Probe udp_sendmsg(const char* a, uint16_t port) { return make(a, port, Proto::udp, Op::sendmsg); }
Probe mapped(Probe p) {
    p.v4_mapped = true;
    return p;
}
Probe as_uid(Probe p, uid_t uid) {
    p.uid = uid;
    return p;
}

}  // namespace

TEST_SUITE("testenv") {
    TEST_CASE("cgroup2_mount finds the cgroup v2 hierarchy in /proc/mounts") {
        EGRESSD_REQUIRE_KERNEL_ENV();
        std::string m = te::cgroup2_mount();
        MESSAGE("cgroup v2 mount: " << m);
        struct statfs sf {};
        REQUIRE(::statfs(m.c_str(), &sf) == 0);
        CHECK(static_cast<long>(sf.f_type) == kCgroup2SuperMagic);
        CHECK(exists(m + "/cgroup.procs"));
    }

    TEST_CASE("TestCgroup: create, id, fd, nested, run_in_cgroup, cleanup") {
        EGRESSD_REQUIRE_KERNEL_ENV();
        std::string path, nested_path, run_dir;
        pid_t lingering = -1;
        {
            TestCgroup cg("basic");
            path = cg.path();
            run_dir = path.substr(0, path.rfind('/'));
            CHECK(path.rfind(TestCgroup::tests_root() + "/", 0) == 0);
            CHECK(run_dir.find("/" + std::to_string(::getpid()) + "-") != std::string::npos);
            REQUIRE(exists(path + "/cgroup.procs"));

            struct stat st;
            REQUIRE(::stat(path.c_str(), &st) == 0);
            CHECK(cg.id() == static_cast<uint64_t>(st.st_ino));
            CHECK(cg.id() != 0);

            int fd = cg.open_fd();
            REQUIRE(fd >= 0);
            struct stat fst;
            REQUIRE(::fstat(fd, &fst) == 0);
            CHECK(fst.st_ino == st.st_ino);
            CHECK(S_ISDIR(fst.st_mode));
            ::close(fd);

            CHECK_THROWS_AS(TestCgroup("basic"), std::runtime_error);  // name in use
            CHECK_THROWS_AS(TestCgroup("a/b"), std::invalid_argument);

            TestCgroup nested = cg.child("inner");
            nested_path = nested.path();
            CHECK(nested_path == path + "/inner");
            CHECK(nested.id() != cg.id());

            // run_in_cgroup: the child is in the cgroup and its exit code comes back.
            const std::string expected = "0::" + path.substr(te::cgroup2_mount().size()) + "\n";
            int rc = te::run_in_cgroup(
                cg, nullptr, [&] { return slurp("/proc/self/cgroup").find(expected) != std::string::npos ? 0 : 1; });
            CHECK(rc == 0);
            CHECK(te::run_in_cgroup(nested, nullptr, [] { return 7; }) == 7);
            CHECK(te::run_in_cgroup(cg, nullptr, []() -> int { throw std::runtime_error("x"); }) == 125);
            CHECK(cg.pids().empty());

            // A process left running inside a nested cgroup: the destructor kills it.
            int ready[2];
            REQUIRE(::pipe(ready) == 0);
            lingering = ::fork();
            REQUIRE(lingering >= 0);
            if (lingering == 0) {
                std::ofstream(nested_path + "/cgroup.procs") << "0" << std::flush;
                (void)!::write(ready[1], "x", 1);
                for (;;) ::pause();
            }
            ::close(ready[1]);
            char c;
            REQUIRE(::read(ready[0], &c, 1) == 1);
            ::close(ready[0]);
            auto pids = nested.pids();
            REQUIRE(pids.size() == 1);
            CHECK(pids[0] == lingering);
            nested = TestCgroup("other");  // move-assign: destroys "inner" (kills and reaps `lingering`)
            CHECK_FALSE(exists(nested_path));
            CHECK(::kill(lingering, 0) == -1);
            // Nested cgroups left alone are removed by the parent's destructor.
            cg.child("left-behind");
        }
        CHECK_FALSE(exists(path));
        CHECK_FALSE(exists(run_dir));  // (<root> itself goes too unless another test run is active)
    }

    TEST_CASE("sweep_stale removes leftovers of dead runs only") {
        EGRESSD_REQUIRE_KERNEL_ENV();
        // A pid that certainly does not exist any more: a reaped child of ours.
        pid_t dead = ::fork();
        REQUIRE(dead >= 0);
        if (dead == 0) ::_exit(0);
        int st;
        REQUIRE(::waitpid(dead, &st, 0) == dead);

        TestCgroup live("live");  // creates <root>/<our run id>/live
        const std::string root = TestCgroup::tests_root();
        const std::string stale = root + "/" + std::to_string(dead) + "-12345";
        REQUIRE(::mkdir(stale.c_str(), 0755) == 0);
        REQUIRE(::mkdir((stale + "/leftover").c_str(), 0755) == 0);
        REQUIRE(::mkdir((stale + "/leftover/deeper").c_str(), 0755) == 0);
        TestCgroup::sweep_stale();
        CHECK_FALSE(exists(stale));
        CHECK(exists(live.path()));

        // A stale namespace of a dead pid.
        const std::string ns = "egt" + std::to_string(dead) + "c";
        REQUIRE(std::system(("ip netns add " + ns).c_str()) == 0);
        CHECK(netns_list().find(ns) != std::string::npos);
        TestNetwork::sweep_stale();
        CHECK(netns_list().find(ns) == std::string::npos);
    }

    TEST_CASE("TestNetwork: every probe kind reaches the sinks") {
        EGRESSD_REQUIRE_KERNEL_ENV();
        TestCgroup cg("probes");
        TestNetwork net;
        CHECK(net.client_ns_name() == "egt" + std::to_string(::getpid()) + "c");
        CHECK(net.sink_ns_name() == "egt" + std::to_string(::getpid()) + "s");
        CHECK(exists(net.client_netns_path()));
        CHECK(exists(net.sink_netns_path()));

        SUBCASE("IPv4 sink hosts, all ports, TCP and UDP") {
            std::vector<Probe> probes;
            for (const char* a : {TestNetwork::kExternal4, TestNetwork::kExternal4b, TestNetwork::kExternal4c,
                                  TestNetwork::kOther4, TestNetwork::kMesh4, TestNetwork::kSink4}) {
                for (uint16_t port : TestNetwork::kTcpPorts) probes.push_back(tcp(a, port));
                for (uint16_t port : TestNetwork::kUdpPorts) {
                    probes.push_back(udp_connect(a, port));
                    probes.push_back(udp_sendmsg(a, port));
                }
            }
            check_ok(probes, te::run_probes(cg, net, probes));
        }
        SUBCASE("IPv6 sink hosts") {
            std::vector<Probe> probes;
            for (const char* a :
                 {TestNetwork::kExternal6, TestNetwork::kExternal6b, TestNetwork::kMesh6, TestNetwork::kSink6}) {
                for (uint16_t port : TestNetwork::kTcpPorts) probes.push_back(tcp(a, port));
                for (uint16_t port : TestNetwork::kUdpPorts) {
                    probes.push_back(udp_connect(a, port));
                    probes.push_back(udp_sendmsg(a, port));
                }
            }
            check_ok(probes, te::run_probes(cg, net, probes));
        }
        SUBCASE("v4-mapped destinations on AF_INET6 sockets") {
            std::vector<Probe> probes = {
                mapped(tcp(TestNetwork::kExternal4, 80)),
                mapped(tcp(TestNetwork::kMesh4, 443)),
                mapped(udp_connect(TestNetwork::kExternal4, 53)),
                mapped(udp_sendmsg(TestNetwork::kExternal4b, 5353)),
                mapped(tcp("127.0.0.1", 80)),
                mapped(udp_sendmsg("127.0.0.1", 53)),
            };
            check_ok(probes, te::run_probes(cg, net, probes));
        }
        SUBCASE("loopback listeners inside the client namespace") {
            std::vector<Probe> probes;
            for (const char* a : {"127.0.0.1", "::1"}) {
                for (uint16_t port : TestNetwork::kTcpPorts) probes.push_back(tcp(a, port));
                for (uint16_t port : TestNetwork::kUdpPorts) {
                    probes.push_back(udp_connect(a, port));
                    probes.push_back(udp_sendmsg(a, port));
                }
            }
            check_ok(probes, te::run_probes(cg, net, probes));
        }
        SUBCASE("probes as uid 1500, mixed with root probes") {
            std::vector<Probe> probes = {
                as_uid(tcp(TestNetwork::kExternal4, 80), 1500),
                tcp(TestNetwork::kExternal4, 443),
                as_uid(udp_sendmsg(TestNetwork::kExternal6, 53), 1500),
                as_uid(udp_connect("127.0.0.1", 5353), 1500),
                as_uid(mapped(tcp(TestNetwork::kExternal4c, 8080)), 1500),
            };
            check_ok(probes, te::run_probes(cg, net, probes));
        }
        SUBCASE("single probe and expect_reply=false") {
            auto r = te::run_probe(cg, net, tcp(TestNetwork::kExternal4, 80));
            CHECK_MESSAGE(r.error == 0, r.detail);
            Probe quiet = udp_sendmsg(TestNetwork::kExternal6b, 9);  // nobody listens, no reply needed
            quiet.expect_reply = false;
            r = te::run_probe(cg, net, quiet);
            CHECK_MESSAGE(r.error == 0, r.detail);
        }
        SUBCASE("no route: ENETUNREACH (nothing leaves the namespace)") {
            std::vector<Probe> probes = {
                tcp(TestNetwork::kUnrouted4, 80),         udp_connect(TestNetwork::kUnrouted4, 53),
                udp_sendmsg(TestNetwork::kUnrouted4, 53), mapped(tcp(TestNetwork::kUnrouted4, 80)),
                tcp(TestNetwork::kUnrouted6, 80),         udp_sendmsg(TestNetwork::kUnrouted6, 53),
            };
            check_error(probes, te::run_probes(cg, net, probes), ENETUNREACH);
        }
        SUBCASE("closed port: ECONNREFUSED") {
            std::vector<Probe> probes = {
                tcp(TestNetwork::kExternal4, TestNetwork::kClosedTcpPort),
                tcp(TestNetwork::kExternal6, TestNetwork::kClosedTcpPort),
                mapped(tcp(TestNetwork::kMesh4, TestNetwork::kClosedTcpPort)),
                tcp("127.0.0.1", TestNetwork::kClosedTcpPort),
                tcp("::1", TestNetwork::kClosedTcpPort),
                udp_connect(TestNetwork::kExternal4, 54),  // ICMP port unreachable on a connected socket
            };
            check_error(probes, te::run_probes(cg, net, probes), ECONNREFUSED);
        }
        SUBCASE("routed but nobody home: ETIMEDOUT after the probe timeouts") {
            // 203.0.113.99 is routed to the sink, which does not own it and does not
            // forward: the packets are dropped inside the sink namespace.
            std::vector<Probe> probes = {tcp("203.0.113.99", 80), udp_sendmsg("203.0.113.99", 53)};
            check_error(probes, te::run_probes(cg, net, probes), ETIMEDOUT);
        }
        SUBCASE("run_in_cgroup kills a child that overruns its timeout") {
            auto t0 = std::chrono::steady_clock::now();
            CHECK_THROWS_AS(te::run_in_cgroup(
                                cg, &net,
                                [] {
                                    ::sleep(30);
                                    return 0;
                                },
                                std::chrono::milliseconds(300)),
                            std::runtime_error);
            CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
        }
        SUBCASE("malformed probes are rejected in the parent") {
            CHECK_THROWS_AS(te::run_probe(cg, net, tcp("not-an-address", 80)), std::invalid_argument);
            CHECK_THROWS_AS(te::run_probe(cg, net, make("203.0.113.10", 80, Proto::tcp, Op::sendmsg)),
                            std::invalid_argument);
            Probe p = tcp(TestNetwork::kExternal6, 80);
            p.v4_mapped = true;
            CHECK_THROWS_AS(te::run_probe(cg, net, p), std::invalid_argument);
            p = tcp(TestNetwork::kExternal4, 80);
            p.family = AF_INET6;
            CHECK_THROWS_AS(te::run_probe(cg, net, p), std::invalid_argument);
        }
        SUBCASE("run_in_cgroup with the client namespace") {
            const std::string client = net.client_netns_path();
            int rc = te::run_in_cgroup(cg, &net, [&] {
                struct stat a, b;
                if (::stat(client.c_str(), &a) != 0 || ::stat("/proc/self/ns/net", &b) != 0) return 2;
                return a.st_ino == b.st_ino && a.st_dev == b.st_dev ? 0 : 1;
            });
            CHECK(rc == 0);
        }
        // Probe children never stay behind in the cgroup.
        CHECK(cg.pids().empty());
    }

    TEST_CASE("TestNetwork and TestCgroup leave nothing behind") {
        EGRESSD_REQUIRE_KERNEL_ENV();
        std::string client, sink, cg_path;
        pid_t server = -1;
        {
            TestCgroup cg("cleanup");
            TestNetwork net;
            CHECK_THROWS_AS(TestNetwork(), std::logic_error);  // one per process
            client = net.client_ns_name();
            sink = net.sink_ns_name();
            cg_path = cg.path();
            server = net.sink_server_pid();
            REQUIRE(server > 0);
            auto r = te::run_probe(cg, net, tcp(TestNetwork::kExternal4, 80));
            CHECK_MESSAGE(r.error == 0, r.detail);
        }
        const std::string list = netns_list();
        INFO("ip netns list: " << list);
        CHECK(list.find(client) == std::string::npos);
        CHECK(list.find(sink) == std::string::npos);
        CHECK_FALSE(exists("/run/netns/" + client));
        CHECK_FALSE(exists("/run/netns/" + sink));
        CHECK_FALSE(exists(cg_path));
        CHECK_FALSE(exists(cg_path.substr(0, cg_path.rfind('/'))));  // the run dir
        CHECK(::kill(server, 0) == -1);
        CHECK(errno == ESRCH);
    }

}  // TEST_SUITE
