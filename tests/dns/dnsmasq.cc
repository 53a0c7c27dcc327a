#include "dnsmasq.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace egressd::testdns {
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both). Another
// process may take it before dnsmasq does; the caller retries.
uint16_t free_port() {
    for (int attempt = 0; attempt < 20; ++attempt) {
        int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        uint16_t port = 0;
        if (::bind(tcp, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
            ::getsockname(tcp, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
            ::bind(udp, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
            port = ntohs(addr.sin_port);
        ::close(tcp);
        ::close(udp);
        if (port >= 1024) return port;
    }
    throw std::runtime_error("no free port on 127.0.0.1");
}

}  // namespace

std::optional<std::string> dnsmasq_path() {
    for (const char* p : {"/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"})
        if (::access(p, X_OK) == 0) return std::string(p);
    return std::nullopt;
}

bool running_in_ci() {
    const char* ci = std::getenv("CI");
    return ci && (std::string(ci) == "true" || std::string(ci) == "1");
}

Dnsmasq::Dnsmasq(const Config& config) {
    auto binary = dnsmasq_path();
    if (!binary) throw std::runtime_error("dnsmasq is not installed (Debian package dnsmasq-base)");
    char tmpl[] = "/tmp/egressd-dns-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    try {
        write_hosts(config.hosts);
        for (int attempt = 0;; ++attempt) {
            port_ = free_port();
            std::vector<std::string> args = {
                *binary,
                "--conf-file=/dev/null",
                "--no-daemon",
                "--port=" + std::to_string(port_),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",  // no upstream: nothing is ever forwarded
                "--no-hosts",
                "--addn-hosts=" + (dir_ / "hosts").string(),
                "--local=/test.egressd/",  // NXDOMAIN for unknown test names
                "--local-ttl=" + std::to_string(config.local_ttl),
                "--pid-file=" + (dir_ / "dnsmasq.pid").string(),
                "--log-queries",
                "--log-facility=" + (dir_ / "dnsmasq.log").string(),
            };
            args.insert(args.end(), config.extra_args.begin(), config.extra_args.end());
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            const std::string out = (dir_ / "stderr.log").string();

            const pid_t parent = ::getpid();
            pid_ = ::fork();
            if (pid_ < 0) throw std::runtime_error("fork failed");
            if (pid_ == 0) {
                // Only async-signal-safe calls: the parent has threads.
                ::prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (::getppid() != parent) ::_exit(127);
                sigset_t none;
                ::sigemptyset(&none);
                ::sigprocmask(SIG_SETMASK, &none, nullptr);
                int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                    ::dup2(fd, 1);
                    ::dup2(fd, 2);
                }
                ::execv(argv[0], argv.data());
                ::_exit(127);
            }

            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
            bool exited = false;
            while (std::chrono::steady_clock::now() < deadline) {
                int status;
                if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                    exited = true;
                    pid_ = -1;
                    break;
                }
                if (answers()) return;
            }
            const std::string output = log();
            if (exited && output.find("in use") != std::string::npos && attempt < 5) continue;  // lost the port race
            throw std::runtime_error("dnsmasq did not start:\n" + output);
        }
    } catch (...) {
        kill_and_reap();
        std::error_code ec;
        fs::remove_all(dir_, ec);
        throw;
    }
}

Dnsmasq::~Dnsmasq() {
    kill_and_reap();
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

void Dnsmasq::kill_and_reap() noexcept {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);  // works on a stopped process too
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

std::string Dnsmasq::server() const { return "127.0.0.1:" + std::to_string(port_); }

void Dnsmasq::write_hosts(const std::string& contents) {
    // Atomic, so dnsmasq never reads half a file.
    const fs::path tmp = dir_ / "hosts.tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << contents;
        if (!out.flush()) throw std::runtime_error("cannot write " + tmp.string());
    }
    fs::rename(tmp, dir_ / "hosts");
}

void Dnsmasq::rewrite_hosts(const std::string& contents) {
    write_hosts(contents);
    ::kill(pid_, SIGHUP);
}

void Dnsmasq::stop_answering() {
    ::kill(pid_, SIGSTOP);
    stopped_ = true;
}

void Dnsmasq::resume_answering() {
    ::kill(pid_, SIGCONT);
    stopped_ = false;
}

int Dnsmasq::queries(const std::string& name, const std::string& type) const {
    const std::string needle = "query[" + type + "] " + name + " from";
    const std::string text = read_file(dir_ / "dnsmasq.log");
    int n = 0;
    for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
    return n;
}

std::string Dnsmasq::log() const { return read_file(dir_ / "stderr.log") + read_file(dir_ / "dnsmasq.log"); }

// One A query for a test name; any reply (NXDOMAIN included) means ready.
bool Dnsmasq::answers() const {
    std::string packet("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 12);
    for (const char* label : {"ready", "test", "egressd"}) {
        packet += static_cast<char>(std::char_traits<char>::length(label));
        packet += label;
    }
    packet += std::string("\x00\x00\x01\x00\x01", 5);

    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = false;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::send(fd, packet.data(), packet.size(), 0) == static_cast<ssize_t>(packet.size())) {
        pollfd p{fd, POLLIN, 0};
        char buf[512];
        ok = ::poll(&p, 1, 100) == 1 && ::recv(fd, buf, sizeof buf, 0) > 0;
    }
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // e.g. ECONNREFUSED before bind
    ::close(fd);
    return ok;
}

}  // namespace egressd::testdns
