// Kernel-test environment: see testenv.h.
#include "testenv.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <initializer_list>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace egressd::testenv {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---- small utilities --------------------------------------------------------

std::string errstr(int err) {
    const char* name = strerrorname_np(err);
    const char* desc = strerrordesc_np(err);
    std::string s = name ? name : ("errno " + std::to_string(err));
    if (desc) {
        s += " (";
        s += desc;
        s += ")";
    }
    return s;
}

[[noreturn]] void throw_errno(const std::string& what, int err = errno) {
    throw std::runtime_error("testenv: " + what + ": " + errstr(err));
}

void log_warning(const std::string& msg) noexcept {
    try {
        std::fprintf(stderr, "testenv: warning: %s\n", msg.c_str());
    } catch (...) {
    }
}

std::optional<std::string> read_file(const std::string& path) {
    std::ifstream f(path);
    if (!f) return std::nullopt;
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// Returns 0 or errno.
int write_file(const std::string& path, const std::string& data) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ssize_t n = ::write(fd, data.data(), data.size());
    int err = n < 0 ? errno : (static_cast<size_t>(n) != data.size() ? EIO : 0);
    ::close(fd);
    return err;
}

bool path_exists(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
std::optional<uint64_t> process_start_time(pid_t pid) {
    auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return std::nullopt;
    auto rp = stat->rfind(')');
    if (rp == std::string::npos) return std::nullopt;
    std::istringstream is(stat->substr(rp + 2));
    std::string field;
    // After ") " comes field 3 (state); we need field 22.
    for (int i = 3; i <= 22; ++i) {
        if (!(is >> field)) return std::nullopt;
    }
    if (!all_digits(field)) return std::nullopt;
    return std::stoull(field);
}

bool process_exists(pid_t pid) {
    if (pid <= 0) return false;
    if (::kill(pid, 0) == 0) return true;
    return errno != ESRCH;
}

// waitpid with a deadline. Returns the wait status, or nullopt on timeout.
// ECHILD counts as "reaped elsewhere" and returns status 0.
std::optional<int> wait_with_deadline(pid_t pid, Clock::time_point deadline) {
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return 0;
        if (Clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(milliseconds(5));
    }
}

void kill_and_reap(pid_t pid) noexcept {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    for (;;) {
        int status;
        pid_t r = ::waitpid(pid, &status, 0);
        if (r == pid || (r < 0 && errno != EINTR)) break;
    }
}

int exit_code_of(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
}

// In a freshly forked child: closes every fd >= 3 except those in `keep`, so
// that children never hold on to the parent's fds (a BPF link or map fd kept
// alive by a sink server would outlive the test's own close()).
void close_fds_except(std::initializer_list<int> keep) {
    std::vector<int> k;
    for (int fd : keep)
        if (fd >= 3) k.push_back(fd);
    std::sort(k.begin(), k.end());
    unsigned lo = 3;
    for (int fd : k) {
        if (static_cast<unsigned>(fd) > lo) ::close_range(lo, static_cast<unsigned>(fd) - 1, 0);
        lo = static_cast<unsigned>(fd) + 1;
    }
    ::close_range(lo, ~0U, 0);
}

// ---- running commands ---------------------------------------------------------

struct CommandResult {
    int status = 0;  // raw wait status
    std::string out, err;
    bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};

std::optional<std::string> find_ip_binary() {
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
        if (::access(p, X_OK) == 0) return std::string(p);
    }
    if (const char* path = std::getenv("PATH")) {
        std::istringstream is(path);
        std::string dir;
        while (std::getline(is, dir, ':')) {
            if (dir.empty()) continue;
            std::string p = dir + "/ip";
            if (::access(p.c_str(), X_OK) == 0) return p;
        }
    }
    return std::nullopt;
}

std::string join_args(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        if (!s.empty()) s += ' ';
        s += a;
    }
    return s;
}

CommandResult run_command(const std::vector<std::string>& argv, milliseconds timeout = milliseconds(10000)) {
    int outp[2], errp[2];
    if (::pipe2(outp, O_CLOEXEC) != 0) throw_errno("pipe2");
    if (::pipe2(errp, O_CLOEXEC) != 0) {
        int e = errno;
        ::close(outp[0]);
        ::close(outp[1]);
        throw_errno("pipe2", e);
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(outp[1]);
    ::close(errp[1]);
    if (rc != 0) {
        ::close(outp[0]);
        ::close(errp[0]);
        throw_errno("posix_spawn " + join_args(argv), rc);
    }
    CommandResult res;
    auto deadline = Clock::now() + timeout;
    struct pollfd pfd[2] = {{outp[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
    int open_count = 2;
    bool timed_out = false;
    while (open_count > 0) {
        auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int n = ::poll(pfd, 2, static_cast<int>(left));
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            ssize_t r = ::read(pfd[i].fd, buf, sizeof buf);
            if (r > 0) {
                (i == 0 ? res.out : res.err).append(buf, static_cast<size_t>(r));
            } else if (r == 0 || errno != EINTR) {
                ::close(pfd[i].fd);
                pfd[i].fd = -1;
                --open_count;
            }
        }
    }
    for (auto& p : pfd)
        if (p.fd >= 0) ::close(p.fd);
    if (timed_out) {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: command timed out after " + std::to_string(timeout.count()) +
                                 " ms: " + join_args(argv));
    }
    auto st = wait_with_deadline(pid, Clock::now() + timeout);
    if (!st) {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: command did not exit: " + join_args(argv));
    }
    res.status = *st;
    return res;
}

const std::string& ip_binary() {
    static const std::string path = [] {
        auto p = find_ip_binary();
        if (!p) throw std::runtime_error("testenv: iproute2 'ip' binary not found");
        return *p;
    }();
    return path;
}

// Runs `ip <args...>`; throws with the command line and its stderr on failure.
std::string ip(const std::vector<std::string>& args) {
    std::vector<std::string> argv{ip_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult r = run_command(argv);
    if (!r.ok()) {
        std::string err = r.err;
        while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
        throw std::runtime_error("testenv: command failed (" + describe_status(r.status) + "): " + join_args(argv) +
                                 ": " + err);
    }
    return r.out;
}

// Same, but never throws; returns false (and logs) on failure.
bool ip_noexcept(const std::vector<std::string>& args) noexcept {
    try {
        ip(args);
        return true;
    } catch (const std::exception& e) {
        log_warning(e.what());
        return false;
    }
}

// ---- cgroups ------------------------------------------------------------------

// /proc/mounts escapes space, tab, newline and backslash as \ooo (octal).
std::string unescape_mount_field(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() &&
            std::all_of(s.begin() + static_cast<long>(i) + 1, s.begin() + static_cast<long>(i) + 4,
                        [](char c) { return c >= '0' && c <= '7'; })) {
            out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

const std::string& run_id() {
    static pid_t cached_pid = 0;
    static std::string id;
    if (cached_pid != ::getpid()) {
        cached_pid = ::getpid();
        auto st = process_start_time(cached_pid);
        id = std::to_string(cached_pid) + "-" + (st ? std::to_string(*st) : std::string("0"));
    }
    return id;
}

bool under_tests_root(const std::string& path) {
    std::string root = TestCgroup::tests_root() + "/";
    return starts_with(path, root) && path.find("/../") == std::string::npos;
}

// All pids in `dir` and its nested cgroups.
void collect_pids(const std::string& dir, std::vector<pid_t>& out) {
    if (auto procs = read_file(dir + "/cgroup.procs")) {
        std::istringstream is(*procs);
        long pid;
        while (is >> pid) out.push_back(static_cast<pid_t>(pid));
    }
    if (DIR* d = ::opendir(dir.c_str())) {
        while (struct dirent* e = ::readdir(d)) {
            if (e->d_type != DT_DIR) continue;
            std::string n = e->d_name;
            if (n == "." || n == "..") continue;
            collect_pids(dir + "/" + n, out);
        }
        ::closedir(d);
    }
}

bool cgroup_populated(const std::string& dir) {
    auto ev = read_file(dir + "/cgroup.events");
    if (!ev) return false;
    return ev->find("populated 1") != std::string::npos;
}

// SIGKILLs every process in the cgroup subtree `dir` (which must be one of
// ours, under <cg2>/egressd-tests/) and reaps those that are our children.
void kill_cgroup_processes(const std::string& dir) noexcept {
    try {
        if (!under_tests_root(dir)) {
            log_warning("refusing to kill processes outside the test cgroup root: " + dir);
            return;
        }
        auto deadline = Clock::now() + milliseconds(3000);
        while (true) {
            std::vector<pid_t> pids;
            collect_pids(dir, pids);
            const pid_t self = ::getpid();
            bool any = false;
            for (pid_t p : pids) {
                if (p <= 1 || p == self) {
                    if (p == self) log_warning("the test process itself is in " + dir + "; not killing it");
                    continue;
                }
                any = true;
                ::kill(p, SIGKILL);
            }
            // Reap those that are our children (others report ECHILD at once).
            for (pid_t p : pids) {
                if (p <= 1 || p == self) continue;
                wait_with_deadline(p, Clock::now() + milliseconds(1000));
            }
            if (!any && !cgroup_populated(dir)) return;
            if (Clock::now() >= deadline) {
                log_warning("processes remain in " + dir);
                return;
            }
            std::this_thread::sleep_for(milliseconds(5));
        }
    } catch (...) {
    }
}

// rmdir the cgroup `dir` and everything nested below it, depth first.
bool remove_cgroup_tree(const std::string& dir) noexcept {
    try {
        if (!under_tests_root(dir) && dir != TestCgroup::tests_root()) {
            log_warning("refusing to remove a cgroup outside the test root: " + dir);
            return false;
        }
        bool ok = true;
        if (DIR* d = ::opendir(dir.c_str())) {
            std::vector<std::string> subdirs;
            while (struct dirent* e = ::readdir(d)) {
                if (e->d_type != DT_DIR) continue;
                std::string n = e->d_name;
                if (n == "." || n == "..") continue;
                subdirs.push_back(dir + "/" + n);
            }
            ::closedir(d);
            for (const auto& s : subdirs) ok = remove_cgroup_tree(s) && ok;
        }
        auto deadline = Clock::now() + milliseconds(3000);
        for (;;) {
            if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return ok;
            int err = errno;
            // EBUSY: a killed task may still be on its way out of the cgroup.
            if (err != EBUSY || Clock::now() >= deadline) {
                log_warning("rmdir " + dir + ": " + errstr(err));
                return false;
            }
            std::this_thread::sleep_for(milliseconds(10));
        }
    } catch (...) {
        return false;
    }
}

// ---- netns --------------------------------------------------------------------

std::string netns_path(const std::string& name) {
    std::string p = "/run/netns/" + name;
    if (!path_exists(p) && path_exists("/var/run/netns/" + name)) p = "/var/run/netns/" + name;
    return p;
}

bool g_network_live = false;

bool same_netns_as_self(int nsfd) {
    struct stat a, b;
    if (::fstat(nsfd, &a) != 0 || ::stat("/proc/self/ns/net", &b) != 0) return false;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Runs fn in a forked child inside the network namespace at `path`; throws if
// the child could not enter it or fn returned false.
void in_netns_child(const std::string& path, const std::string& what, bool (*fn)()) {
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork");
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        close_fds_except({});
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0 || !same_netns_as_self(fd)) ::_exit(3);
        ::_exit(fn() ? 0 : 4);
    }
    auto st = wait_with_deadline(pid, Clock::now() + milliseconds(10000));
    if (!st) {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: " + what + " in " + path + " timed out");
    }
    if (!(WIFEXITED(*st) && WEXITSTATUS(*st) == 0))
        throw std::runtime_error("testenv: " + what + " in " + path + " failed (" + describe_status(*st) + ")");
}

bool set_netns_sysctls() {
    // Only ever called after setns() into one of our namespaces (verified).
    const char* zero_files[] = {
        "/proc/sys/net/ipv6/conf/all/accept_dad",    "/proc/sys/net/ipv6/conf/default/accept_dad",
        "/proc/sys/net/ipv6/conf/all/disable_ipv6",  "/proc/sys/net/ipv6/conf/default/disable_ipv6",
        "/proc/sys/net/ipv6/conf/default/accept_ra",
    };
    bool ok = true;
    for (const char* f : zero_files) ok = write_file(f, "0") == 0 && ok;
    return ok;
}

// ---- servers (sink namespace and client loopback) -----------------------------

enum class FdKind : uint8_t { none, tcp_listener, udp, tcp_conn };

struct Server {
    int ep = -1;
    std::vector<FdKind> kinds;

    void add(int fd, FdKind kind) {
        if (static_cast<size_t>(fd) >= kinds.size()) kinds.resize(static_cast<size_t>(fd) + 64, FdKind::none);
        kinds[static_cast<size_t>(fd)] = kind;
        struct epoll_event ev {};
        ev.events = EPOLLIN | (kind == FdKind::tcp_conn ? static_cast<uint32_t>(EPOLLRDHUP) : 0u);
        ev.data.fd = fd;
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) ::close(fd);
    }
    void drop(int fd) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        kinds[static_cast<size_t>(fd)] = FdKind::none;
    }
};

// Creates a bound (and for TCP listening) socket; returns fd or -errno.
int make_listener(int family, const char* addr, uint16_t port, bool tcp, std::string& err) {
    int fd = ::socket(family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = std::string("socket: ") + errstr(errno);
        return -1;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage ss {};
    socklen_t len;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        ::inet_pton(AF_INET, addr, &sin->sin_addr);
        len = sizeof *sin;
        if (!tcp) ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        ::inet_pton(AF_INET6, addr, &sin6->sin6_addr);
        len = sizeof *sin6;
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (!tcp) ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        err = std::string("bind ") + addr + ":" + std::to_string(port) + (tcp ? "/tcp: " : "/udp: ") + errstr(errno);
        ::close(fd);
        return -1;
    }
    if (tcp && ::listen(fd, 128) != 0) {
        err = std::string("listen: ") + errstr(errno);
        ::close(fd);
        return -1;
    }
    return fd;
}

bool add_listeners(Server& srv, const char* addr4, const char* addr6, std::string& err) {
    for (uint16_t port : TestNetwork::kTcpPorts) {
        for (auto [fam, a] : {std::pair{AF_INET, addr4}, std::pair{AF_INET6, addr6}}) {
            int fd = make_listener(fam, a, port, true, err);
            if (fd < 0) return false;
            srv.add(fd, FdKind::tcp_listener);
        }
    }
    for (uint16_t port : TestNetwork::kUdpPorts) {
        for (auto [fam, a] : {std::pair{AF_INET, addr4}, std::pair{AF_INET6, addr6}}) {
            int fd = make_listener(fam, a, port, false, err);
            if (fd < 0) return false;
            srv.add(fd, FdKind::udp);
        }
    }
    return true;
}

// Echoes one datagram back, from the address it was sent to (wildcard sockets
// would otherwise answer from the route's preferred source address).
void udp_echo(int fd) {
    for (int i = 0; i < 64; ++i) {
        char buf[2048];
        struct sockaddr_storage peer {};
        alignas(struct cmsghdr) char cbuf[256];
        struct iovec iov {
            buf, sizeof buf
        };
        struct msghdr msg {};
        msg.msg_name = &peer;
        msg.msg_namelen = sizeof peer;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
        if (n < 0) return;
        alignas(struct cmsghdr) char obuf[256];
        std::memset(obuf, 0, sizeof obuf);
        size_t olen = 0;
        for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                struct in_pktinfo in {};
                std::memcpy(&in, CMSG_DATA(c), sizeof in);
                struct in_pktinfo outinfo {};
                outinfo.ipi_spec_dst = in.ipi_addr;
                auto* oc = reinterpret_cast<struct cmsghdr*>(obuf);
                oc->cmsg_level = IPPROTO_IP;
                oc->cmsg_type = IP_PKTINFO;
                oc->cmsg_len = CMSG_LEN(sizeof outinfo);
                std::memcpy(CMSG_DATA(oc), &outinfo, sizeof outinfo);
                olen = CMSG_SPACE(sizeof outinfo);
            } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
                struct in6_pktinfo in6 {};
                std::memcpy(&in6, CMSG_DATA(c), sizeof in6);
                struct in6_pktinfo outinfo {};
                outinfo.ipi6_addr = in6.ipi6_addr;
                auto* oc = reinterpret_cast<struct cmsghdr*>(obuf);
                oc->cmsg_level = IPPROTO_IPV6;
                oc->cmsg_type = IPV6_PKTINFO;
                oc->cmsg_len = CMSG_LEN(sizeof outinfo);
                std::memcpy(CMSG_DATA(oc), &outinfo, sizeof outinfo);
                olen = CMSG_SPACE(sizeof outinfo);
            }
        }
        struct iovec oiov {
            buf, static_cast<size_t>(n)
        };
        struct msghdr out {};
        out.msg_name = &peer;
        out.msg_namelen = msg.msg_namelen;
        out.msg_iov = &oiov;
        out.msg_iovlen = 1;
        out.msg_control = olen ? obuf : nullptr;
        out.msg_controllen = olen;
        ::sendmsg(fd, &out, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
}

[[noreturn]] void server_loop(Server& srv) {
    struct epoll_event evs[64];
    for (;;) {
        int n = ::epoll_wait(srv.ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            ::_exit(1);
        }
        for (int i = 0; i < n; ++i) {
            int fd = evs[i].data.fd;
            switch (srv.kinds[static_cast<size_t>(fd)]) {
                case FdKind::tcp_listener:
                    for (;;) {
                        int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                        if (c < 0) break;
                        srv.add(c, FdKind::tcp_conn);
                    }
                    break;
                case FdKind::udp: udp_echo(fd); break;
                case FdKind::tcp_conn: {
                    char buf[4096];
                    ssize_t r = ::read(fd, buf, sizeof buf);
                    if (r > 0) {
                        ::send(fd, buf, static_cast<size_t>(r), MSG_DONTWAIT | MSG_NOSIGNAL);
                    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                        srv.drop(fd);
                    } else if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                        srv.drop(fd);
                    }
                    break;
                }
                case FdKind::none: break;
            }
        }
    }
}

// ---- probes ---------------------------------------------------------------------

struct PreparedProbe {
    int family = AF_INET;
    bool tcp = true;
    bool sendmsg = false;
    bool expect_reply = true;
    struct sockaddr_storage dest {};
    socklen_t dest_len = 0;
    char desc[160] = {};
};

struct Record {
    int32_t index;  // -1: setup failure of the child
    int32_t error;
    char detail[384];
};
static_assert(sizeof(Record) <= 512);  // <= PIPE_BUF: each write is atomic

PreparedProbe prepare(const Probe& p) {
    PreparedProbe pp;
    in_addr a4{};
    in6_addr a6{};
    bool is4 = ::inet_pton(AF_INET, p.address.c_str(), &a4) == 1;
    bool is6 = !is4 && ::inet_pton(AF_INET6, p.address.c_str(), &a6) == 1;
    if (!is4 && !is6) throw std::invalid_argument("testenv: probe address is not an IP address: '" + p.address + "'");
    if (p.family != 0 && p.family != AF_INET && p.family != AF_INET6)
        throw std::invalid_argument("testenv: probe family must be 0, AF_INET or AF_INET6");
    if (p.proto == Proto::tcp && p.op == Op::sendmsg)
        throw std::invalid_argument("testenv: Op::sendmsg is for UDP only: " + describe(p));
    if (p.v4_mapped) {
        if (!is4) throw std::invalid_argument("testenv: v4_mapped needs an IPv4 address: " + describe(p));
        if (p.family == AF_INET)
            throw std::invalid_argument("testenv: v4_mapped needs an AF_INET6 socket: " + describe(p));
        pp.family = AF_INET6;
        std::memset(&a6, 0, sizeof a6);
        a6.s6_addr[10] = 0xff;
        a6.s6_addr[11] = 0xff;
        std::memcpy(&a6.s6_addr[12], &a4, 4);
    } else if (is4) {
        if (p.family == AF_INET6)
            throw std::invalid_argument("testenv: IPv4 address on an AF_INET6 socket needs v4_mapped: " + describe(p));
        pp.family = AF_INET;
    } else {
        if (p.family == AF_INET)
            throw std::invalid_argument("testenv: IPv6 address on an AF_INET socket: " + describe(p));
        pp.family = AF_INET6;
    }
    if (pp.family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&pp.dest);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(p.port);
        sin->sin_addr = a4;
        pp.dest_len = sizeof *sin;
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&pp.dest);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(p.port);
        sin6->sin6_addr = a6;
        pp.dest_len = sizeof *sin6;
    }
    pp.tcp = p.proto == Proto::tcp;
    pp.sendmsg = p.op == Op::sendmsg;
    pp.expect_reply = p.expect_reply;
    std::snprintf(pp.desc, sizeof pp.desc, "%s", describe(p).c_str());
    return pp;
}

void set_detail(Record& r, const PreparedProbe& p, const char* fmt, const char* a = "", const char* b = "") {
    char msg[200];
    std::snprintf(msg, sizeof msg, fmt, a, b);
    std::snprintf(r.detail, sizeof r.detail, "%s: %s", p.desc, msg);
}

void set_errno_detail(Record& r, const PreparedProbe& p, const char* what, int err) {
    r.error = err;
    const char* name = strerrorname_np(err);
    set_detail(r, p, "%s failed: %s", what, name ? name : "?");
}

bool same_sockaddr(const sockaddr_storage& a, const sockaddr_storage& b) {
    if (a.ss_family != b.ss_family) return false;
    if (a.ss_family == AF_INET) {
        auto& x = reinterpret_cast<const sockaddr_in&>(a);
        auto& y = reinterpret_cast<const sockaddr_in&>(b);
        return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
    }
    auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : static_cast<int>(left);
}

// Waits up to 1 s for the echo of `payload`; for unconnected sockets also
// checks that it came from the probed address.
void wait_echo(int fd, const PreparedProbe& p, const char* payload, size_t plen, Record& r) {
    auto deadline = Clock::now() + milliseconds(1000);
    for (;;) {
        struct pollfd pfd {
            fd, POLLIN, 0
        };
        int n = ::poll(&pfd, 1, remaining_ms(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            r.error = ETIMEDOUT;
            set_detail(r, p, "no UDP echo within 1 s");
            return;
        }
        char buf[2048];
        struct sockaddr_storage from {};
        socklen_t flen = sizeof from;
        ssize_t got = ::recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &flen);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            set_errno_detail(r, p, "recv", errno);
            return;
        }
        if (static_cast<size_t>(got) != plen || std::memcmp(buf, payload, plen) != 0) continue;  // stray
        if (p.sendmsg && !same_sockaddr(from, p.dest)) {
            char host[INET6_ADDRSTRLEN] = "?";
            if (from.ss_family == AF_INET)
                ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in&>(from).sin_addr, host, sizeof host);
            else if (from.ss_family == AF_INET6)
                ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6&>(from).sin6_addr, host, sizeof host);
            r.error = EPROTO;
            set_detail(r, p, "UDP echo came from unexpected source %s", host);
            return;
        }
        r.error = 0;
        set_detail(r, p, "UDP echo received");
        return;
    }
}

Record do_probe(int index, const PreparedProbe& p) {
    Record r{};
    r.index = index;
    r.error = 0;
    int fd = ::socket(p.family, (p.tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_errno_detail(r, p, "socket", errno);
        return r;
    }
    const auto* dest = reinterpret_cast<const sockaddr*>(&p.dest);
    char payload[64];
    int plen = std::snprintf(payload, sizeof payload, "egressd-probe-%d-%d", static_cast<int>(::getpid()), index);
    if (p.tcp) {
        if (::connect(fd, dest, p.dest_len) == 0) {
            set_detail(r, p, "connected");
        } else if (errno != EINPROGRESS) {
            set_errno_detail(r, p, "connect", errno);
        } else if (!p.expect_reply) {
            set_detail(r, p, "connect in progress (reply not required)");
        } else {
            auto deadline = Clock::now() + milliseconds(2000);
            int n;
            struct pollfd pfd {
                fd, POLLOUT, 0
            };
            do {
                n = ::poll(&pfd, 1, remaining_ms(deadline));
            } while (n < 0 && errno == EINTR);
            if (n <= 0) {
                r.error = ETIMEDOUT;
                set_detail(r, p, "TCP connect did not complete within 2 s");
            } else {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr != 0)
                    set_errno_detail(r, p, "connect", soerr);
                else
                    set_detail(r, p, "connected");
            }
        }
        if (r.error == 0) {
            struct linger lg {
                1, 0
            };  // close with RST: no TIME_WAIT left behind
            ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
    } else if (!p.sendmsg) {
        if (::connect(fd, dest, p.dest_len) != 0) {
            set_errno_detail(r, p, "connect", errno);
        } else if (::send(fd, payload, static_cast<size_t>(plen), MSG_NOSIGNAL) < 0) {
            set_errno_detail(r, p, "send", errno);
        } else if (!p.expect_reply) {
            set_detail(r, p, "sent (reply not required)");
        } else {
            wait_echo(fd, p, payload, static_cast<size_t>(plen), r);
        }
    } else {
        if (::sendto(fd, payload, static_cast<size_t>(plen), MSG_NOSIGNAL, dest, p.dest_len) < 0) {
            set_errno_detail(r, p, "sendto", errno);
        } else if (!p.expect_reply) {
            set_detail(r, p, "sent (reply not required)");
        } else {
            wait_echo(fd, p, payload, static_cast<size_t>(plen), r);
        }
    }
    ::close(fd);
    return r;
}

bool write_record(int fd, const Record& r) {
    const char* b = reinterpret_cast<const char*>(&r);
    size_t left = sizeof r;
    while (left > 0) {
        ssize_t n = ::write(fd, b, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        b += n;
        left -= static_cast<size_t>(n);
    }
    return true;
}

// Everything a child needs to enter the test context, prepared before fork.
struct ChildContext {
    std::string procs_path;       // <cg>/cgroup.procs
    std::string expected_cgroup;  // "0::<path relative to the cgroup2 mount>"
    std::string netns_path;       // empty: stay in the current netns
    std::optional<uid_t> uid;
    pid_t parent = 0;
};

ChildContext make_context(const TestCgroup& cg, const TestNetwork* net, std::optional<uid_t> uid) {
    ChildContext c;
    const std::string& path = cg.path();
    if (!under_tests_root(path) || !path_exists(path))
        throw std::runtime_error("testenv: not a live test cgroup: " + path);
    c.procs_path = path + "/cgroup.procs";
    c.expected_cgroup = "0::" + path.substr(cgroup2_mount().size());
    if (net) {
        c.netns_path = net->client_netns_path();
        if (!path_exists(c.netns_path)) throw std::runtime_error("testenv: client netns is gone: " + c.netns_path);
    }
    c.uid = uid;
    c.parent = ::getpid();
    return c;
}

[[noreturn]] void child_fail(int report_fd, const char* what, int err) {
    Record r{};
    r.index = -1;
    r.error = err;
    const char* name = err ? strerrorname_np(err) : "";
    std::snprintf(r.detail, sizeof r.detail, "%s%s%s", what, err ? ": " : "", name ? name : "?");
    write_record(report_fd, r);
    ::_exit(2);
}

// In the child: join the cgroup, enter the netns, switch uid. On any failure,
// reports to report_fd and exits: never runs anything in the wrong context.
void child_enter(const ChildContext& c, int report_fd) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report_fd, "prctl(PR_SET_PDEATHSIG)", errno);
    if (::getppid() != c.parent) ::_exit(2);
    int fd = ::open(c.procs_path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) child_fail(report_fd, "open cgroup.procs", errno);
    if (::write(fd, "0", 1) != 1) child_fail(report_fd, "join cgroup (write cgroup.procs)", errno);
    ::close(fd);
    {
        // Verify membership.
        char buf[4096];
        int cf = ::open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
        if (cf < 0) child_fail(report_fd, "open /proc/self/cgroup", errno);
        ssize_t n = ::read(cf, buf, sizeof buf - 1);
        ::close(cf);
        if (n < 0) child_fail(report_fd, "read /proc/self/cgroup", errno);
        buf[n] = 0;
        std::string needle = c.expected_cgroup + "\n";
        std::string content(buf);
        if (content.find(needle) == std::string::npos) child_fail(report_fd, "cgroup membership check failed", 0);
    }
    if (!c.netns_path.empty()) {
        int nfd = ::open(c.netns_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (nfd < 0) child_fail(report_fd, "open client netns", errno);
        if (::setns(nfd, CLONE_NEWNET) != 0) child_fail(report_fd, "setns(client netns)", errno);
        if (!same_netns_as_self(nfd)) child_fail(report_fd, "netns check after setns failed", 0);
        ::close(nfd);
    }
    if (c.uid) {
        uid_t u = *c.uid;
        gid_t g = static_cast<gid_t>(u);
        if (::setgroups(0, nullptr) != 0) child_fail(report_fd, "setgroups", errno);
        if (::setresgid(g, g, g) != 0) child_fail(report_fd, "setresgid", errno);
        if (::setresuid(u, u, u) != 0) child_fail(report_fd, "setresuid", errno);
        // A credential change clears the parent-death signal; set it again.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != c.parent) ::_exit(2);
    }
}

std::vector<ProbeResult> run_probe_group(const TestCgroup& cg, const TestNetwork& net,
                                         const std::vector<PreparedProbe>& probes, std::optional<uid_t> uid) {
    ChildContext ctx = make_context(cg, &net, uid);
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) throw_errno("pipe2");
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        ::close(pfd[0]);
        ::close(pfd[1]);
        throw_errno("fork", e);
    }
    if (pid == 0) {
        ::close(pfd[0]);
        close_fds_except({pfd[1]});
        ::signal(SIGPIPE, SIG_IGN);
        child_enter(ctx, pfd[1]);
        for (size_t i = 0; i < probes.size(); ++i) {
            if (!write_record(pfd[1], do_probe(static_cast<int>(i), probes[i]))) ::_exit(3);
        }
        ::_exit(0);
    }
    ::close(pfd[1]);
    std::vector<ProbeResult> results(probes.size());
    std::vector<bool> have(probes.size(), false);
    std::string setup_error;
    std::string buf;
    bool timed_out = false;
    const milliseconds kInactivity(10000);
    auto deadline = Clock::now() + kInactivity;
    for (;;) {
        struct pollfd p {
            pfd[0], POLLIN, 0
        };
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            timed_out = true;
            break;
        }
        char tmp[4096];
        ssize_t r = ::read(pfd[0], tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        buf.append(tmp, static_cast<size_t>(r));
        while (buf.size() >= sizeof(Record)) {
            Record rec;
            std::memcpy(&rec, buf.data(), sizeof rec);
            buf.erase(0, sizeof rec);
            rec.detail[sizeof rec.detail - 1] = 0;
            if (rec.index < 0) {
                setup_error = rec.detail;
            } else if (static_cast<size_t>(rec.index) < results.size()) {
                results[static_cast<size_t>(rec.index)] = ProbeResult{rec.error, rec.detail};
                have[static_cast<size_t>(rec.index)] = true;
            }
        }
        deadline = Clock::now() + kInactivity;
    }
    ::close(pfd[0]);
    int status = 0;
    if (timed_out) {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: probe child made no progress for 10 s and was killed (" +
                                 std::string(probes.empty() ? "" : probes[0].desc) + ", ...)");
    }
    if (auto st = wait_with_deadline(pid, Clock::now() + milliseconds(5000))) {
        status = *st;
    } else {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: probe child did not exit");
    }
    if (!setup_error.empty())
        throw std::runtime_error("testenv: probe child could not enter the test context: " + setup_error);
    for (size_t i = 0; i < have.size(); ++i) {
        if (!have[i])
            throw std::runtime_error(std::string("testenv: probe child ") + describe_status(status) +
                                     " without a result for " + probes[i].desc);
    }
    return results;
}

}  // namespace

// ---- public: environment ------------------------------------------------------

std::string cgroup2_mount() {
    std::ifstream f("/proc/mounts");
    if (!f) throw std::runtime_error("testenv: cannot read /proc/mounts");
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream is(line);
        std::string dev, mnt, type;
        if (!(is >> dev >> mnt >> type)) continue;
        if (type == "cgroup2") return unescape_mount_field(mnt);
    }
    throw std::runtime_error("testenv: no cgroup v2 (cgroup2) mount found in /proc/mounts");
}

bool running_in_ci() {
    const char* ci = std::getenv("CI");
    return ci && (std::strcmp(ci, "true") == 0 || std::strcmp(ci, "1") == 0);
}

std::optional<std::string> environment_unavailable() {
    if (::geteuid() != 0) return "not running as root (euid " + std::to_string(::geteuid()) + ")";
    // CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21) in the effective set.
    if (auto status = read_file("/proc/self/status")) {
        auto pos = status->find("\nCapEff:");
        if (pos != std::string::npos) {
            uint64_t caps = std::stoull(status->substr(pos + 8), nullptr, 16);
            if (!(caps & (1ULL << 12)) || !(caps & (1ULL << 21)))
                return std::string("root without CAP_NET_ADMIN/CAP_SYS_ADMIN (unprivileged container?)");
        }
    }
    std::string cg2;
    try {
        cg2 = cgroup2_mount();
    } catch (const std::exception& e) {
        return std::string(e.what());
    }
    if (::access(cg2.c_str(), W_OK) != 0) return "cgroup v2 mount " + cg2 + " is not writable: " + errstr(errno);
    if (!find_ip_binary()) return std::string("iproute2 'ip' binary not found");
    if (!path_exists("/proc/self/ns/net")) return std::string("no network namespace support (/proc/self/ns/net)");
    return std::nullopt;
}

// ---- public: TestCgroup ---------------------------------------------------------

std::string TestCgroup::tests_root() { return cgroup2_mount() + "/egressd-tests"; }

TestCgroup::TestCgroup(const std::string& name) {
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        starts_with(name, "cgroup."))
        throw std::invalid_argument("testenv: bad cgroup name '" + name + "'");
    sweep_stale();
    const std::string root = tests_root();
    run_dir_ = root + "/" + run_id();
    path_ = run_dir_ + "/" + name;
    // Another test process may rmdir an empty <root> between our mkdirs: retry.
    for (int attempt = 0;; ++attempt) {
        if (::mkdir(root.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("mkdir " + root);
        if (::mkdir(run_dir_.c_str(), 0755) != 0 && errno != EEXIST) {
            if (errno == ENOENT && attempt < 10) continue;
            throw_errno("mkdir " + run_dir_);
        }
        if (::mkdir(path_.c_str(), 0755) == 0) break;
        int e = errno;
        if (e == ENOENT && attempt < 10) continue;
        if (e == EEXIST) throw std::runtime_error("testenv: test cgroup already exists (name in use): " + path_);
        throw_errno("mkdir " + path_, e);
    }
    owns_ = true;
}

TestCgroup::TestCgroup(NestedTag, std::string path) : path_(std::move(path)), owns_(true) {}

TestCgroup::~TestCgroup() { destroy(); }

TestCgroup::TestCgroup(TestCgroup&& o) noexcept
    : path_(std::move(o.path_)), run_dir_(std::move(o.run_dir_)), owns_(o.owns_) {
    o.owns_ = false;
    o.path_.clear();
    o.run_dir_.clear();
}

TestCgroup& TestCgroup::operator=(TestCgroup&& o) noexcept {
    if (this != &o) {
        destroy();
        path_ = std::move(o.path_);
        run_dir_ = std::move(o.run_dir_);
        owns_ = o.owns_;
        o.owns_ = false;
        o.path_.clear();
        o.run_dir_.clear();
    }
    return *this;
}

void TestCgroup::destroy() noexcept {
    if (!owns_) return;
    owns_ = false;
    try {
        kill_cgroup_processes(path_);
        remove_cgroup_tree(path_);
        if (!run_dir_.empty()) {
            ::rmdir(run_dir_.c_str());  // fails (harmlessly) while other test cgroups exist
            ::rmdir(tests_root().c_str());
        }
    } catch (...) {
    }
}

uint64_t TestCgroup::id() const {
    // The kernfs node id, as bpf_get_current_cgroup_id() reports it; it is also
    // the directory's inode number on 64-bit kernels.
    struct {
        struct file_handle fh;
        uint64_t id;
    } h{};
    h.fh.handle_bytes = sizeof(uint64_t);
    int mount_id = 0;
    if (::name_to_handle_at(AT_FDCWD, path_.c_str(), &h.fh, &mount_id, 0) == 0 && h.fh.handle_bytes == 8) {
        uint64_t id;
        std::memcpy(&id, h.fh.f_handle, sizeof id);
        return id;
    }
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) throw_errno("stat " + path_);
    return static_cast<uint64_t>(st.st_ino);
}

int TestCgroup::open_fd() const {
    int fd = ::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno("open " + path_);
    return fd;
}

TestCgroup TestCgroup::child(const std::string& name) const {
    if (!owns_) throw std::logic_error("testenv: child() on a moved-from TestCgroup");
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        starts_with(name, "cgroup."))
        throw std::invalid_argument("testenv: bad cgroup name '" + name + "'");
    std::string p = path_ + "/" + name;
    if (::mkdir(p.c_str(), 0755) != 0) throw_errno("mkdir " + p);
    return TestCgroup(NestedTag{}, p);
}

std::vector<pid_t> TestCgroup::pids() const {
    std::vector<pid_t> out;
    auto procs = read_file(path_ + "/cgroup.procs");
    if (!procs) throw std::runtime_error("testenv: cannot read " + path_ + "/cgroup.procs");
    std::istringstream is(*procs);
    long pid;
    while (is >> pid) out.push_back(static_cast<pid_t>(pid));
    return out;
}

void TestCgroup::sweep_stale() noexcept {
    try {
        const std::string root = tests_root();
        DIR* d = ::opendir(root.c_str());
        if (!d) return;
        std::vector<std::string> stale;
        while (struct dirent* e = ::readdir(d)) {
            if (e->d_type != DT_DIR) continue;
            std::string n = e->d_name;
            auto dash = n.find('-');
            if (dash == std::string::npos) continue;
            std::string pid_s = n.substr(0, dash), start_s = n.substr(dash + 1);
            if (!all_digits(pid_s) || !all_digits(start_s) || pid_s.size() > 9) continue;
            pid_t pid = static_cast<pid_t>(std::stol(pid_s));
            auto start = process_start_time(pid);
            bool alive = process_exists(pid) && start && std::to_string(*start) == start_s;
            if (!alive) stale.push_back(root + "/" + n);
        }
        ::closedir(d);
        for (const auto& s : stale) {
            log_warning("removing stale test cgroup " + s);
            kill_cgroup_processes(s);
            remove_cgroup_tree(s);
        }
        ::rmdir(root.c_str());  // only succeeds if empty
    } catch (...) {
    }
}

// ---- public: TestNetwork -------------------------------------------------------

std::string TestNetwork::client_netns_path() const { return netns_path(client_name_); }
std::string TestNetwork::sink_netns_path() const { return netns_path(sink_name_); }

TestNetwork::TestNetwork() {
    if (g_network_live) throw std::logic_error("testenv: only one TestNetwork may exist per process at a time");
    const std::string pid = std::to_string(::getpid());
    client_name_ = "egt" + pid + "c";
    sink_name_ = "egt" + pid + "s";
    sweep_stale();
    g_network_live = true;
    try {
        setup();
    } catch (...) {
        teardown();
        throw;
    }
}

TestNetwork::~TestNetwork() { teardown(); }

void TestNetwork::setup() {
    if (path_exists(netns_path(client_name_)) || path_exists(netns_path(sink_name_)))
        throw std::runtime_error("testenv: network namespace " + client_name_ + " or " + sink_name_ +
                                 " already exists");
    ip({"netns", "add", client_name_});
    client_created_ = true;
    ip({"netns", "add", sink_name_});
    sink_created_ = true;

    // No DAD at all (also not for link-local addresses), IPv6 on, no RAs.
    in_netns_child(client_netns_path(), "setting IPv6 sysctls", set_netns_sysctls);
    in_netns_child(sink_netns_path(), "setting IPv6 sysctls", set_netns_sysctls);

    const std::string& C = client_name_;
    const std::string& S = sink_name_;
    ip({"-n", C, "link", "set", "lo", "up"});
    ip({"-n", S, "link", "set", "lo", "up"});
    // Both ends are created directly inside the namespaces: nothing appears in
    // the namespace of the test process.
    ip({"-n", C, "link", "add", "egt-c", "type", "veth", "peer", "name", "egt-s", "netns", S});
    ip({"-n", C, "addr", "add", std::string(kClient4) + "/24", "dev", "egt-c"});
    ip({"-n", C, "-6", "addr", "add", std::string(kClient6) + "/64", "dev", "egt-c", "nodad"});
    ip({"-n", S, "addr", "add", std::string(kSink4) + "/24", "dev", "egt-s"});
    ip({"-n", S, "-6", "addr", "add", std::string(kSink6) + "/64", "dev", "egt-s", "nodad"});
    for (const char* a : {kExternal4, kExternal4b, kExternal4c, kOther4, kMesh4})
        ip({"-n", S, "addr", "add", std::string(a) + "/32", "dev", "lo"});
    for (const char* a : {kExternal6, kExternal6b, kMesh6})
        ip({"-n", S, "-6", "addr", "add", std::string(a) + "/128", "dev", "lo", "nodad"});
    ip({"-n", C, "link", "set", "egt-c", "up"});
    ip({"-n", S, "link", "set", "egt-s", "up"});
    // Client routes: only these, and no default route.
    ip({"-n", C, "route", "add", "203.0.113.0/24", "via", kSink4, "dev", "egt-c"});
    ip({"-n", C, "route", "add", "198.18.0.0/15", "via", kSink4, "dev", "egt-c"});
    ip({"-n", C, "-6", "route", "add", "2001:db8::/32", "via", kSink6, "dev", "egt-c"});

    // Wait until the veth carrier is up and no IPv6 address is tentative.
    auto deadline = Clock::now() + milliseconds(5000);
    for (;;) {
        bool up = ip({"-n", C, "-o", "link", "show", "dev", "egt-c"}).find("LOWER_UP") != std::string::npos &&
                  ip({"-n", S, "-o", "link", "show", "dev", "egt-s"}).find("LOWER_UP") != std::string::npos;
        bool tentative = !ip({"-n", C, "-6", "-o", "addr", "show", "tentative"}).empty() ||
                         !ip({"-n", S, "-6", "-o", "addr", "show", "tentative"}).empty();
        if (up && !tentative) break;
        if (Clock::now() >= deadline)
            throw std::runtime_error(std::string("testenv: veth not ready after 5 s (") +
                                     (up ? "IPv6 addresses still tentative" : "carrier down") + ")");
        std::this_thread::sleep_for(milliseconds(20));
    }
    // Safety net: the client namespace must have no default route.
    for (const char* fam : {"-4", "-6"}) {
        std::string def = ip({"-n", C, fam, "route", "show", "default"});
        if (!def.empty())
            throw std::runtime_error("testenv: client namespace unexpectedly has a default route: " + def);
    }
    start_servers();
}

void TestNetwork::start_servers() {
    const std::string cpath = client_netns_path(), spath = sink_netns_path();
    int cfd = ::open(cpath.c_str(), O_RDONLY | O_CLOEXEC);
    if (cfd < 0) throw_errno("open " + cpath);
    int sfd = ::open(spath.c_str(), O_RDONLY | O_CLOEXEC);
    if (sfd < 0) {
        int e = errno;
        ::close(cfd);
        throw_errno("open " + spath, e);
    }
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) {
        int e = errno;
        ::close(cfd);
        ::close(sfd);
        throw_errno("pipe2", e);
    }
    const pid_t parent = ::getpid();
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        ::close(cfd);
        ::close(sfd);
        ::close(pfd[0]);
        ::close(pfd[1]);
        throw_errno("fork", e);
    }
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(1);
        ::signal(SIGPIPE, SIG_IGN);
        ::close(pfd[0]);
        int wfd = pfd[1];
        close_fds_except({wfd, cfd, sfd});
        auto fail = [wfd](const std::string& msg) {
            std::string m = "ERR " + msg;
            (void)!::write(wfd, m.data(), m.size());
            ::_exit(1);
        };
        Server srv;
        srv.ep = ::epoll_create1(EPOLL_CLOEXEC);
        if (srv.ep < 0) fail("epoll_create1: " + errstr(errno));
        std::string err;
        // Loopback listeners in the client namespace...
        if (::setns(cfd, CLONE_NEWNET) != 0 || !same_netns_as_self(cfd)) fail("setns(client): " + errstr(errno));
        if (!add_listeners(srv, "127.0.0.1", "::1", err)) fail("client loopback: " + err);
        // ...and wildcard listeners in the sink namespace, where the process stays.
        if (::setns(sfd, CLONE_NEWNET) != 0 || !same_netns_as_self(sfd)) fail("setns(sink): " + errstr(errno));
        if (!add_listeners(srv, "0.0.0.0", "::", err)) fail("sink: " + err);
        ::close(cfd);
        ::close(sfd);
        (void)!::write(wfd, "OK", 2);
        ::close(wfd);
        server_loop(srv);
    }
    ::close(cfd);
    ::close(sfd);
    ::close(pfd[1]);
    server_pid_ = pid;
    std::string msg;
    auto deadline = Clock::now() + milliseconds(5000);
    for (;;) {
        struct pollfd p {
            pfd[0], POLLIN, 0
        };
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        char buf[512];
        ssize_t r = ::read(pfd[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        msg.append(buf, static_cast<size_t>(r));
    }
    ::close(pfd[0]);
    if (msg != "OK") {
        kill_and_reap(server_pid_);
        server_pid_ = -1;
        throw std::runtime_error("testenv: sink servers failed to start: " +
                                 (msg.empty() ? std::string("no answer") : msg));
    }
}

void TestNetwork::teardown() noexcept {
    if (server_pid_ > 0) {
        kill_and_reap(server_pid_);
        server_pid_ = -1;
    }
    if (sink_created_) {
        ip_noexcept({"netns", "delete", sink_name_});
        sink_created_ = false;
    }
    if (client_created_) {
        ip_noexcept({"netns", "delete", client_name_});
        client_created_ = false;
    }
    g_network_live = false;
}

void TestNetwork::sweep_stale() noexcept {
    try {
        for (const char* dir : {"/run/netns", "/var/run/netns"}) {
            DIR* d = ::opendir(dir);
            if (!d) continue;
            std::vector<std::string> stale;
            while (struct dirent* e = ::readdir(d)) {
                std::string n = e->d_name;
                if (n.size() < 5 || !starts_with(n, "egt") || (n.back() != 'c' && n.back() != 's')) continue;
                std::string pid_s = n.substr(3, n.size() - 4);
                if (!all_digits(pid_s) || pid_s.size() > 9) continue;
                pid_t pid = static_cast<pid_t>(std::stol(pid_s));
                bool ours_but_dead = pid == ::getpid() && !g_network_live;
                if (!process_exists(pid) || ours_but_dead) stale.push_back(n);
            }
            ::closedir(d);
            for (const auto& n : stale) {
                log_warning("removing stale network namespace " + n);
                ip_noexcept({"netns", "delete", n});
            }
            if (path_exists("/run/netns") && path_exists("/var/run/netns")) {
                struct stat a, b;
                if (::stat("/run/netns", &a) == 0 && ::stat("/var/run/netns", &b) == 0 && a.st_ino == b.st_ino &&
                    a.st_dev == b.st_dev)
                    break;  // same directory (/var/run -> /run)
            }
        }
    } catch (...) {
    }
}

// ---- public: probes ---------------------------------------------------------------

std::string describe(const Probe& p) {
    std::string s = p.proto == Proto::tcp ? "tcp" : "udp";
    s += p.op == Op::connect ? " connect " : " sendmsg ";
    bool v6 = p.address.find(':') != std::string::npos;
    s += v6 ? "[" + p.address + "]" : p.address;
    s += ":" + std::to_string(p.port);
    if (p.v4_mapped)
        s += " (v4-mapped on AF_INET6)";
    else if (p.family == AF_INET6)
        s += " (AF_INET6)";
    else if (p.family == AF_INET)
        s += " (AF_INET)";
    if (p.uid) s += " as uid " + std::to_string(*p.uid);
    if (!p.expect_reply) s += " (no reply expected)";
    return s;
}

ProbeResult run_probe(const TestCgroup& cg, const TestNetwork& net, const Probe& p) {
    return run_probes(cg, net, {p}).at(0);
}

std::vector<ProbeResult> run_probes(const TestCgroup& cg, const TestNetwork& net, const std::vector<Probe>& probes) {
    std::vector<PreparedProbe> prepared;
    prepared.reserve(probes.size());
    for (const auto& p : probes) prepared.push_back(prepare(p));
    // One child per distinct uid, in order of first appearance.
    std::vector<std::optional<uid_t>> uids;
    for (const auto& p : probes)
        if (std::find(uids.begin(), uids.end(), p.uid) == uids.end()) uids.push_back(p.uid);
    std::vector<ProbeResult> results(probes.size());
    for (const auto& uid : uids) {
        std::vector<PreparedProbe> group;
        std::vector<size_t> where;
        for (size_t i = 0; i < probes.size(); ++i) {
            if (probes[i].uid == uid) {
                group.push_back(prepared[i]);
                where.push_back(i);
            }
        }
        auto r = run_probe_group(cg, net, group, uid);
        for (size_t j = 0; j < where.size(); ++j) results[where[j]] = std::move(r[j]);
    }
    return results;
}

int run_in_cgroup(const TestCgroup& cg, const TestNetwork* net, std::function<int()> fn,
                  std::chrono::milliseconds timeout) {
    ChildContext ctx = make_context(cg, net, std::nullopt);
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) throw_errno("pipe2");
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        ::close(pfd[0]);
        ::close(pfd[1]);
        throw_errno("fork", e);
    }
    if (pid == 0) {
        ::close(pfd[0]);
        child_enter(ctx, pfd[1]);
        ::close(pfd[1]);  // tells the parent that setup succeeded
        int code = 125;
        try {
            code = fn();
        } catch (...) {
            code = 125;
        }
        std::fflush(stdout);
        std::fflush(stderr);
        ::_exit(code & 0xff);
    }
    ::close(pfd[1]);
    auto deadline = Clock::now() + timeout;
    std::string buf;
    for (;;) {
        struct pollfd p {
            pfd[0], POLLIN, 0
        };
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        char tmp[512];
        ssize_t r = ::read(pfd[0], tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        buf.append(tmp, static_cast<size_t>(r));
    }
    ::close(pfd[0]);
    auto st = wait_with_deadline(pid, deadline);
    if (!st) {
        kill_and_reap(pid);
        throw std::runtime_error("testenv: run_in_cgroup child did not finish within " +
                                 std::to_string(timeout.count()) + " ms and was killed");
    }
    if (buf.size() >= sizeof(Record)) {
        Record rec;
        std::memcpy(&rec, buf.data(), sizeof rec);
        rec.detail[sizeof rec.detail - 1] = 0;
        throw std::runtime_error(std::string("testenv: run_in_cgroup child could not enter the test context: ") +
                                 rec.detail);
    }
    return exit_code_of(*st);
}

}  // namespace egressd::testenv
