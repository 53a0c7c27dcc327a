// Kernel-test environment for egressd: private cgroup v2 directories, a pair
// of private network namespaces with sink servers, and real-socket probes.
//
// Everything created here lives under <cg2>/egressd-tests/ and in network
// namespaces named egt<pid>c / egt<pid>s; all of it is removed by the RAII
// destructors (which never throw) and, after a crash, by sweep_stale().
//
// Nothing in here attaches BPF programs. Traffic only ever goes to loopback or
// to the documentation/benchmark addresses below, inside namespaces created
// here; the client namespace has no default route.
#ifndef EGRESSD_TESTS_KERNEL_TESTENV_H
#define EGRESSD_TESTS_KERNEL_TESTENV_H

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace egressd::testenv {

// The cgroup v2 mount point, from /proc/mounts (e.g. /sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one). Throws
// std::runtime_error if there is none.
std::string cgroup2_mount();

// Why the kernel environment cannot be used (not root, no CAP_SYS_ADMIN /
// CAP_NET_ADMIN, no or read-only cgroup v2 mount, no `ip` binary), or nullopt.
std::optional<std::string> environment_unavailable();

// True if the environment variable CI is "true" (or "1").
bool running_in_ci();

// A private cgroup: <cg2>/egressd-tests/<run-id>/<name>, run-id =
// "<pid>-<process start time>" (shared by all TestCgroups of one process).
// The constructor sweeps stale runs first and throws if <name> is in use.
// The destructor SIGKILLs whatever is still inside (and reaps our children),
// removes nested cgroups and itself, then the run dir and <cg2>/egressd-tests
// if they are empty. Move-only.
class TestCgroup {
public:
    explicit TestCgroup(const std::string& name);
    ~TestCgroup();
    TestCgroup(TestCgroup&& other) noexcept;
    TestCgroup& operator=(TestCgroup&& other) noexcept;
    TestCgroup(const TestCgroup&) = delete;
    TestCgroup& operator=(const TestCgroup&) = delete;

    const std::string& path() const { return path_; }
    // The cgroup id (inode number of the directory), as bpf_get_current_cgroup_id
    // reports it for a task inside this cgroup.
    uint64_t id() const;
    // A new O_RDONLY|O_DIRECTORY|O_CLOEXEC fd on the directory; the caller owns
    // (and must close) it. Throws on failure.
    int open_fd() const;
    // A nested cgroup <path>/<name>. Its destructor removes only itself; the
    // top-level cgroup's destructor removes all nested ones that remain.
    TestCgroup child(const std::string& name) const;
    // Pids currently in this cgroup (not in nested ones).
    std::vector<pid_t> pids() const;

    // Remove <cg2>/egressd-tests/<run-id> directories whose process is gone
    // (killing what is left inside them). Never throws.
    static void sweep_stale() noexcept;
    // <cg2>/egressd-tests
    static std::string tests_root();

private:
    struct NestedTag {};
    TestCgroup(NestedTag, std::string path);
    void destroy() noexcept;

    std::string path_;
    std::string run_dir_;  // empty for nested cgroups
    bool owns_ = false;
};

// Two private network namespaces (client egt<pid>c, sink egt<pid>s) joined by
// a veth pair, with echo servers in the sink namespace and on loopback in the
// client namespace. At most one instance per process at a time.
class TestNetwork {
public:
    // Client veth and sink veth addresses.
    static constexpr const char* kClient4 = "198.18.255.1";
    static constexpr const char* kSink4 = "198.18.255.2";
    static constexpr const char* kClient6 = "2001:db8:ffff::1";
    static constexpr const char* kSink6 = "2001:db8:ffff::2";
    // Sink "hosts" (addresses on the sink's loopback).
    static constexpr const char* kExternal4 = "203.0.113.10";
    static constexpr const char* kExternal4b = "203.0.113.11";
    static constexpr const char* kExternal4c = "203.0.113.12";
    static constexpr const char* kOther4 = "198.19.0.10";
    static constexpr const char* kMesh4 = "198.18.0.10";
    static constexpr const char* kExternal6 = "2001:db8:1::10";
    static constexpr const char* kExternal6b = "2001:db8:1::11";
    static constexpr const char* kMesh6 = "2001:db8:2::10";
    // TEST-NET-1: the client namespace has no route to it (ENETUNREACH).
    static constexpr const char* kUnrouted4 = "192.0.2.1";
    static constexpr const char* kUnrouted6 = "3fff::1";  // 3fff::/20 doc range, not routed
    // Ports served by the sink (in the sink namespace on the wildcard of both
    // families, and on 127.0.0.1/::1 in the client namespace).
    static constexpr uint16_t kTcpPorts[] = {80, 81, 443, 8080};
    static constexpr uint16_t kUdpPorts[] = {53, 5353, 8080};
    static constexpr uint16_t kClosedTcpPort = 82;  // nothing listens here

    TestNetwork();
    ~TestNetwork();
    TestNetwork(const TestNetwork&) = delete;
    TestNetwork& operator=(const TestNetwork&) = delete;

    const std::string& client_ns_name() const { return client_name_; }
    const std::string& sink_ns_name() const { return sink_name_; }
    std::string client_netns_path() const;
    std::string sink_netns_path() const;
    pid_t sink_server_pid() const { return server_pid_; }

    // Remove egt<pid>c / egt<pid>s namespaces whose process is gone. Never throws.
    static void sweep_stale() noexcept;

private:
    void setup();
    void teardown() noexcept;
    void start_servers();

    std::string client_name_;
    std::string sink_name_;
    bool client_created_ = false;
    bool sink_created_ = false;
    pid_t server_pid_ = -1;
};

// What most kernel tests start from: a private network and one cgroup to
// attach the programs to.
struct EnforcedEnv {
    TestNetwork net;
    TestCgroup cg{"enforced"};
};

enum class Proto { tcp, udp };
enum class Op { connect, sendmsg };  // sendmsg = unconnected UDP sendto with a destination

struct Probe {
    std::string address;  // textual; IPv4 or IPv6
    uint16_t port = 0;
    Proto proto = Proto::tcp;
    Op op = Op::connect;
    int family = 0;            // AF_INET or AF_INET6; 0 = natural family of address
    bool v4_mapped = false;    // AF_INET6 socket to ::ffff:a.b.c.d for an IPv4 address
    std::optional<uid_t> uid;  // setresuid in the child before creating the socket
    bool expect_reply = true;  // on success, also require the sink to answer
};

struct ProbeResult {
    // 0 = allowed and (if expect_reply) answered; EPERM = denied by the hook;
    // another errno otherwise (ETIMEDOUT: no answer in time).
    int error = 0;
    std::string detail;
};

// Human-readable one-line description of a probe, e.g. "tcp connect 203.0.113.10:80".
std::string describe(const Probe& p);

// Runs the probe(s) in a forked child that, in this order, joins `cg`, enters
// the client namespace of `net` and (optionally) switches uid, then creates
// the socket(s). run_probes uses one child per distinct uid (one child for all
// probes in the common case) and returns results in the order of `probes`.
// Throws std::invalid_argument for a malformed probe and std::runtime_error if
// the child could not set itself up or hung (killed after 10 s without
// progress). Probe children close every inherited fd except their result
// pipe, and always leave the cgroup (they exit and are reaped) before return.
ProbeResult run_probe(const TestCgroup& cg, const TestNetwork& net, const Probe& p);
std::vector<ProbeResult> run_probes(const TestCgroup& cg, const TestNetwork& net, const std::vector<Probe>& probes);

// Forks a child that joins `cg`, enters the client namespace of `net` (if not
// null), and runs fn; returns its exit code (128+signal if it was killed).
// If fn throws, the exit code is 125. Kills the child and throws
// std::runtime_error after `timeout`, or if the child could not join the
// cgroup / enter the namespace (fn is then never run). The child inherits the
// parent's fds (fn may use them) and ends with _exit(): no destructors or
// atexit handlers of the test process run in it.
int run_in_cgroup(const TestCgroup& cg, const TestNetwork* net, std::function<int()> fn,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace egressd::testenv

// In a doctest TEST_CASE: fail (CI=true) or skip with a message (otherwise)
// when the kernel environment is unavailable.
#define EGRESSD_REQUIRE_KERNEL_ENV()                                                                 \
    do {                                                                                             \
        if (auto egressd_env_reason_ = ::egressd::testenv::environment_unavailable()) {              \
            if (::egressd::testenv::running_in_ci()) {                                               \
                FAIL("kernel test environment unavailable under CI=true: " << *egressd_env_reason_); \
            }                                                                                        \
            MESSAGE("SKIPPED: kernel test environment unavailable: " << *egressd_env_reason_);       \
            return;                                                                                  \
        }                                                                                            \
    } while (0)

#endif  // EGRESSD_TESTS_KERNEL_TESTENV_H
