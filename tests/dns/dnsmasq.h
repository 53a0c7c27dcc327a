// A private dnsmasq for the DNS tests: listens only on 127.0.0.1 on a free
// high port, answers only for test names from a hosts file and command-line
// records, forwards nothing. Killed and its temp dir removed by the destructor
// (and killed by the kernel if the test binary dies: PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace egressd::testdns {

// Path of the dnsmasq binary, or nullopt when it is not installed.
std::optional<std::string> dnsmasq_path();

// True if the environment variable CI is "true" (or "1").
bool running_in_ci();

class Dnsmasq {
public:
    struct Config {
        std::string hosts;                    // initial contents of the --addn-hosts file
        int local_ttl = 0;                    // TTL of the hosts-file answers (--local-ttl)
        std::vector<std::string> extra_args;  // e.g. "--host-record=...", "--cname=..."
    };

    // Starts dnsmasq and waits until it answers. Throws std::runtime_error
    // (with dnsmasq's own output) on failure.
    explicit Dnsmasq(const Config& config);
    ~Dnsmasq();
    Dnsmasq(const Dnsmasq&) = delete;
    Dnsmasq& operator=(const Dnsmasq&) = delete;

    // "127.0.0.1:PORT", for HostResolver::Options::dns_server.
    std::string server() const;
    uint16_t port() const { return port_; }

    // Replaces the hosts file and makes dnsmasq re-read it (SIGHUP).
    void rewrite_hosts(const std::string& contents);
    void stop_answering();    // SIGSTOP
    void resume_answering();  // SIGCONT

    // How many queries of `type` ("A", "AAAA") for `name` dnsmasq has logged.
    int queries(const std::string& name, const std::string& type = "A") const;
    // dnsmasq's log, for failure messages.
    std::string log() const;

private:
    void write_hosts(const std::string& contents);
    bool answers() const;
    void kill_and_reap() noexcept;

    std::filesystem::path dir_;
    pid_t pid_ = -1;
    uint16_t port_ = 0;
    bool stopped_ = false;
};

}  // namespace egressd::testdns
