// connect_bench: micro-benchmarks of the socket calls egressd decides on.
//
// Joins a cgroup (writes its own pid to <cgroup>/cgroup.procs) and a network
// namespace (setns) first, then runs one mode and prints one JSON object on
// stdout. Used by scripts/bench; see bench/README.md.
//
//   connect_bench [--cgroup DIR] [--alt-cgroup DIR [--alt-cgroup DIR2]] [--netns PATH] MODE ARGS...
//
// With --alt-cgroup, every repetition of a loop runs twice, first in the
// alternative cgroup and then in --cgroup (the process moves between them;
// sockets are created after the move and belong to the cgroup it is in):
// the two series are interleaved in time, so drift over the run lands in both
// alike. The alternative's figures are "alt_ns_per_op". A second
// --alt-cgroup runs in turn: alt, alt2, --cgroup, repetition by
// repetition; its figures are "alt2_ns_per_op".
//     udp    HOST PORT N REPS   UDP connect() loop on one socket            -> ns/op per rep
//     udpdeny HOST PORT N REPS  the same loop where connect() must fail with EPERM in
//                               --cgroup (and succeed in the alternatives: no enforcer there)
//     tcp    HOST PORT N REPS   socket + non-blocking connect + close         -> ns/op per rep
//     deny   HOST PORT N REPS   socket + connect (must fail EPERM) + close    -> ns/op per rep
//     reject HOST PORT N REPS   socket + blocking connect + recv until EOF/RST + close -> ns/op
//     flip   WANT HOST PORT SRC DST [TIMEOUT_S]
//            rename(SRC, DST), then probe (TCP non-blocking connect) until the
//            verdict is WANT (allowed|denied); prints the ns from the rename
//     listen HOST PORT          accept and close forever (a trivial sink)
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "connect_bench: %s: %s\n", what.c_str(), std::strerror(errno));
    std::exit(2);
}

uint64_t now_ns(clockid_t clock = CLOCK_MONOTONIC) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

struct Addr {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int family = AF_INET;
};

Addr parse_addr(const char* host, const char* port) {
    Addr a;
    const int p = std::atoi(port);
    if (std::strchr(host, ':')) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(uint16_t(p));
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) die(std::string("bad address ") + host);
        a.len = sizeof(*s6);
        a.family = AF_INET6;
    } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&a.ss);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(uint16_t(p));
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) die(std::string("bad address ") + host);
        a.len = sizeof(*s4);
    }
    return a;
}

const sockaddr* sa(const Addr& a) { return reinterpret_cast<const sockaddr*>(&a.ss); }

void join_cgroup(const std::string& dir) {
    const std::string file = dir + "/cgroup.procs";
    const int fd = open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open " + file);
    const std::string pid = std::to_string(getpid());
    if (write(fd, pid.data(), pid.size()) != ssize_t(pid.size())) die("write " + file);
    close(fd);
}

void join_netns(const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open " + path);
    if (setns(fd, CLONE_NEWNET) != 0) die("setns " + path);
    close(fd);
}

// Closes with RST (SO_LINGER 0): over a veth the handshake completes inside
// connect(), and a normal close would leave a TIME_WAIT socket per iteration
// until the ephemeral ports run out.
void close_rst(int s) {
    const linger l{1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(s);
}

// One verdict: "allowed" if the hook let a non-blocking TCP connect through.
bool probe_allowed(const Addr& a, int* err) {
    const int s = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    const int rc = connect(s, sa(a), a.len);
    const int e = rc == 0 ? 0 : errno;
    close_rst(s);
    *err = e;
    return rc == 0 || e == EINPROGRESS;
}

void print_series(const char* name, const std::vector<double>& values) {
    std::printf(",\"%s\":[", name);
    for (size_t i = 0; i < values.size(); ++i) std::printf("%s%.1f", i ? "," : "", values[i]);
    std::printf("]");
}

void print_reps(const char* mode, const std::vector<double>& reps, const std::vector<double>& connect_only,
                const std::vector<double>& alt, const std::vector<double>& alt2, long n, long errors) {
    std::printf("{\"mode\":\"%s\",\"n\":%ld,\"errors\":%ld", mode, n, errors);
    print_series("ns_per_op", reps);
    print_series("connect_ns_per_op", connect_only);
    print_series("alt_ns_per_op", alt);
    if (!alt2.empty()) print_series("alt2_ns_per_op", alt2);
    std::printf("}\n");
}

std::string g_cgroup;
std::vector<std::string> g_alt_cgroups;  // at most two

int run_loop(const std::string& mode, const Addr& a, long n, int reps) {
    std::vector<double> out, connect_only, alt, alt2;
    // Each repetition is `turns` runs: the alternatives in order, then --cgroup.
    const int turns = 1 + int(g_alt_cgroups.size());
    long errors = 0;
    // One warm-up repetition (not reported) so that caches, the neighbour entry
    // and the maps' pages are hot.
    for (int step = -turns; step < turns * reps; ++step) {
        const int turn = (step + turns) % turns;  // 0 .. turns-2: an alternative; turns-1: --cgroup
        const int in_alt = turn < turns - 1 ? turn + 1 : 0;  // 1: alt, 2: alt2, 0: --cgroup
        const int r = step < 0 ? -1 : step / turns;
        if (turns > 1) join_cgroup(in_alt ? g_alt_cgroups[size_t(in_alt - 1)] : g_cgroup);
        long bad = 0;
        uint64_t t0 = 0, t1 = 0, in_connect = 0;
        if (mode == "udp" || mode == "udpdeny") {
            // udpdeny: EPERM expected from the enforcer in --cgroup; the
            // alternatives have none, so there connect() must succeed.
            const bool want_deny = mode == "udpdeny" && !in_alt;
            const int s = socket(a.family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            if (s < 0) die("socket");
            t0 = now_ns();
            for (long i = 0; i < n; ++i) {
                const int rc = connect(s, sa(a), a.len);
                if (want_deny ? !(rc != 0 && errno == EPERM) : rc != 0) ++bad;
            }
            t1 = now_ns();
            close(s);
        } else if (mode == "tcp" || mode == "deny") {
            const bool want_deny = mode == "deny";
            t0 = now_ns();
            for (long i = 0; i < n; ++i) {
                const int s = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                const uint64_t c0 = want_deny ? now_ns() : 0;
                const int rc = connect(s, sa(a), a.len);
                const int e = errno;
                if (want_deny) in_connect += now_ns() - c0;
                const bool denied = rc != 0 && e == EPERM;
                const bool allowed = rc == 0 || e == EINPROGRESS;
                if (want_deny ? !denied : !allowed) ++bad;
                if (want_deny)
                    close(s);
                else
                    close_rst(s);
            }
            t1 = now_ns();
        } else if (mode == "reject") {
            t0 = now_ns();
            for (long i = 0; i < n; ++i) {
                const int s = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
                // The proxy's denial is any end of the connection: EOF or RST
                // after the handshake, or (rarely, under load) a reset that
                // arrives before connect() returns. Other errors are failures.
                if (connect(s, sa(a), a.len) != 0) {
                    if (errno != ECONNRESET && errno != ECONNREFUSED) {
                        std::fprintf(stderr, "connect_bench: reject: connect: %s\n", std::strerror(errno));
                        ++bad;
                    }
                } else {
                    char buf[64];
                    ssize_t got;
                    while ((got = recv(s, buf, sizeof buf, 0)) > 0) {
                    }
                    if (got < 0 && errno != ECONNRESET) {
                        std::fprintf(stderr, "connect_bench: reject: recv: %s\n", std::strerror(errno));
                        ++bad;
                    }
                }
                close(s);
            }
            t1 = now_ns();
        } else {
            std::fprintf(stderr, "connect_bench: unknown mode %s\n", mode.c_str());
            return 2;
        }
        if (r >= 0 && in_alt) {
            (in_alt == 1 ? alt : alt2).push_back(double(t1 - t0) / double(n));
            errors += bad;
        } else if (r >= 0) {
            out.push_back(double(t1 - t0) / double(n));
            if (in_connect) connect_only.push_back(double(in_connect) / double(n));
            errors += bad;
        }
    }
    print_reps(mode.c_str(), out, connect_only, alt, alt2, n, errors);
    return errors == 0 ? 0 : 1;
}

int run_flip(const std::string& want, const Addr& a, const char* src, const char* dst, double timeout_s) {
    const bool want_allowed = want == "allowed";
    int err = 0;
    // The verdict must be the other one before the change.
    const uint64_t settle = now_ns() + 3000000000ull;
    while (probe_allowed(a, &err) == want_allowed) {
        if (now_ns() > settle) {
            std::fprintf(stderr, "connect_bench: verdict already %s before the change\n", want.c_str());
            return 1;
        }
        usleep(1000);
    }
    const uint64_t t0 = now_ns();
    if (rename(src, dst) != 0) die(std::string("rename ") + src);
    const uint64_t deadline = t0 + uint64_t(timeout_s * 1e9);
    long probes = 0;
    while (now_ns() < deadline) {
        ++probes;
        if (probe_allowed(a, &err) == want_allowed) {
            const uint64_t t1 = now_ns();
            std::printf("{\"mode\":\"flip\",\"want\":\"%s\",\"ns\":%llu,\"probes\":%ld}\n", want.c_str(),
                        static_cast<unsigned long long>(t1 - t0), probes);
            return 0;
        }
        // A pause between probes: a probe that never stops would take a core
        // (and the sink's softirq work) from the agent it is timing on a
        // small machine. The resolution stays well under the ms it measures.
        usleep(50);
    }
    std::fprintf(stderr, "connect_bench: never saw %s within %.1f s\n", want.c_str(), timeout_s);
    return 1;
}

int run_listen(const Addr& a) {
    const int s = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    const int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, sa(a), a.len) != 0) die("bind");
    if (listen(s, 4096) != 0) die("listen");
    for (;;) {
        const int c = accept(s, nullptr, nullptr);
        if (c >= 0) close(c);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    size_t i = 0;
    std::string netns;
    while (i + 1 < args.size() && args[i].rfind("--", 0) == 0) {
        if (args[i] == "--cgroup")
            g_cgroup = args[i + 1];
        else if (args[i] == "--alt-cgroup" && g_alt_cgroups.size() < 2)
            g_alt_cgroups.push_back(args[i + 1]);
        else if (args[i] == "--netns")
            netns = args[i + 1];
        else
            break;
        i += 2;
    }
    if (!g_alt_cgroups.empty() && g_cgroup.empty()) {
        std::fprintf(stderr, "connect_bench: --alt-cgroup needs --cgroup\n");
        return 2;
    }
    if (!g_cgroup.empty()) join_cgroup(g_cgroup);
    if (!netns.empty()) join_netns(netns);
    if (i >= args.size()) {
        std::fprintf(stderr, "usage: connect_bench [--cgroup DIR] [--alt-cgroup DIR [--alt-cgroup DIR2]] [--netns PATH] MODE ARGS...\n");
        return 2;
    }
    const std::string mode = args[i++];
    auto need = [&](size_t k) {
        if (args.size() - i < k) {
            std::fprintf(stderr, "connect_bench: %s needs %zu arguments\n", mode.c_str(), k);
            std::exit(2);
        }
    };
    if (mode == "listen") {
        need(2);
        return run_listen(parse_addr(args[i].c_str(), args[i + 1].c_str()));
    }
    if (mode == "flip") {
        need(5);
        const double timeout = args.size() - i > 5 ? std::atof(args[i + 5].c_str()) : 5.0;
        return run_flip(args[i], parse_addr(args[i + 1].c_str(), args[i + 2].c_str()), args[i + 3].c_str(),
                        args[i + 4].c_str(), timeout);
    }
    need(4);
    const Addr a = parse_addr(args[i].c_str(), args[i + 1].c_str());
    const long n = std::atol(args[i + 2].c_str());
    const int reps = std::atoi(args[i + 3].c_str());
    if (n <= 0 || reps <= 0) {
        std::fprintf(stderr, "connect_bench: N and REPS must be positive\n");
        return 2;
    }
    return run_loop(mode, a, n, reps);
}
