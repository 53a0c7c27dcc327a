// Learning from DNS answers, with real sockets: a workload in the enforced
// cgroup asks a DNS server of the test's own (in the sink namespace) and
// connects to the address it was told, at once. The address is allowed
// because the kernel learned it from the answer before the application read
// it; the agent never resolved it. Untrusted, unsolicited and other
// identities' answers teach nothing, and a learned address expires.
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "core/dns_hosts.h"
#include "enforcer.h"
#include "kernel/event_reader.h"

using namespace egressd;
using namespace egressd::ktest;
using namespace egressd::testenv;

namespace {

using Datagram = std::vector<uint8_t>;

// The test's resolver: on the sink's 203.0.113.12, port 53 (beside the
// sink's echo server, which listens on the wildcard: the bound address wins).
constexpr const char* kResolver = TestNetwork::kExternal4c;
constexpr const char* kLearnedAddress = TestNetwork::kExternal4b;  // what it answers for the policy's hosts

Datagram wire_name(const std::string& dotted) {
    Datagram out;
    size_t start = 0;
    for (;;) {
        const size_t dot = dotted.find('.', start);
        const std::string label = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        out.push_back(uint8_t(label.size()));
        out.insert(out.end(), label.begin(), label.end());
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    out.push_back(0);
    return out;
}

// A query for `name`, type A (1) or AAAA (28).
Datagram dns_query(uint16_t id, const std::string& name, uint8_t type = 1) {
    Datagram q = {uint8_t(id >> 8), uint8_t(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    const Datagram n = wire_name(name);
    q.insert(q.end(), n.begin(), n.end());
    q.insert(q.end(), {0, type, 0, 1});
    return q;
}

// The answer to `q`: one A or AAAA record (as `address` is IPv4 or IPv6), with `ttl`.
Datagram dns_answer(const Datagram& q, const char* address, uint32_t ttl) {
    Datagram a = q;
    a[2] = 0x81;
    a[3] = 0x80;
    a[7] = 1;  // ANCOUNT
    uint8_t bytes[16] = {};
    const bool v6 = ::inet_pton(AF_INET6, address, bytes) == 1;
    if (!v6) ::inet_pton(AF_INET, address, bytes);
    const uint8_t length = v6 ? 16 : 4;
    a.insert(a.end(), {0xc0, 0x0c, 0, uint8_t(v6 ? 28 : 1), 0, 1, uint8_t(ttl >> 24), uint8_t(ttl >> 16),
                       uint8_t(ttl >> 8), uint8_t(ttl), 0, length});
    a.insert(a.end(), bytes, bytes + length);
    return a;
}

// ADDRESS:port as a socket address of its family.
sockaddr_storage endpoint(const char* address, uint16_t port, socklen_t& len) {
    sockaddr_storage at{};
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&at);
    if (::inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
        return at;
    }
    auto* v4 = reinterpret_cast<sockaddr_in*>(&at);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    ::inet_pton(AF_INET, address, &v4->sin_addr);
    len = sizeof *v4;
    return at;
}

// A forked DNS server in the sink namespace; killed when the test is done.
class Resolver {
public:
    // On `address`:53 in the sink, answering every query with `answer`.
    Resolver(const TestNetwork& net, uint32_t ttl, const char* address = kResolver,
             const char* answer = kLearnedAddress) {
        int ready[2];
        REQUIRE(::pipe(ready) == 0);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::close(ready[0]);
            const int ns = ::open(net.sink_netns_path().c_str(), O_RDONLY | O_CLOEXEC);
            if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) ::_exit(2);
            socklen_t at_len = 0;
            sockaddr_storage at = endpoint(address, 53, at_len);
            const int fd = ::socket(at.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            const int one = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (at.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
            if (::bind(fd, reinterpret_cast<sockaddr*>(&at), at_len) != 0) ::_exit(3);
            (void)!::write(ready[1], "r", 1);
            for (;;) {
                uint8_t buf[512];
                sockaddr_storage peer{};
                socklen_t len = sizeof peer;
                const ssize_t n = ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&peer), &len);
                if (n < 12) continue;
                const Datagram reply = dns_answer(Datagram(buf, buf + n), answer, ttl);
                ::sendto(fd, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&peer), len);
            }
        }
        ::close(ready[1]);
        char c = 0;
        const bool started = ::read(ready[0], &c, 1) == 1;
        ::close(ready[0]);
        REQUIRE_MESSAGE(started, "the test's DNS server did not start");
    }
    ~Resolver() {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
    }
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;

private:
    pid_t pid_ = -1;
};

// Run in the workload: 0 allowed, EPERM denied, another errno otherwise.
int tcp_connect(const char* address, uint16_t port) {
    socklen_t len = 0;
    const sockaddr_storage to = endpoint(address, port, len);
    const int fd = ::socket(to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&to), len);
    const int err = rc == 0 ? 0 : errno;
    ::close(fd);
    return err;
}

// Run in the workload: sends `datagram` to server:53 and waits for the
// reply; 0 when one came.
int dns_exchange(const char* server, const Datagram& datagram) {
    socklen_t len = 0;
    const sockaddr_storage to = endpoint(server, 53, len);
    const int fd = ::socket(to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    timeval wait{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), len) != 0) return errno;
    if (::send(fd, datagram.data(), datagram.size(), 0) < 0) return errno;
    uint8_t buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    const int err = n > 0 ? 0 : (n < 0 ? errno : EIO);
    ::close(fd);
    return err;
}

// Resolve `name` through the test's resolver, then at once connect to the
// answer's address on port 80. Exit code: the connect's errno (0 allowed),
// or 100 + the exchange's errno when the DNS exchange failed.
int resolve_then_connect(const std::string& name, uint16_t id) {
    if (const int err = dns_exchange(kResolver, dns_query(id, name)); err != 0) return 100 + err;
    return tcp_connect(kLearnedAddress, 80);
}

uint64_t stat_total(Enforcer& enforcer, egressd_dns_stat stat) {
    auto per_cpu = enforcer.datapath().maps().dns_stats.lookup_per_cpu(stat);
    REQUIRE(per_cpu.ok());
    uint64_t total = 0;
    for (uint64_t v : *per_cpu) total += v;
    return total;
}

EgressPolicy policy_for(const std::string& name, const std::string& service_account, PolicyPort port,
                        std::vector<std::string> hosts, std::vector<std::string> wildcards,
                        std::vector<Cidr> addresses = {}) {
    EgressPolicy p;
    p.api_version = "policy.flomesh.io/v1alpha1";
    p.namespace_ = "app";
    p.name = name;
    p.sources = {{"app", service_account}};
    p.ports = {port};
    p.hosts = std::move(hosts);
    p.wildcard_hosts = std::move(wildcards);
    p.ip_addresses = std::move(addresses);
    return p;
}

struct LearningEnv {
    EnforcedEnv env;
    TestCgroup other{env.cg.child("other")};
    Enforcer enforcer{env.cg};
    IdentityRegistry identities;
    PolicyRegistry numbers;
    HostRegistry hosts;
    PolicyList policies;
    uint32_t curl = 0, batch = 0;
    MapImage image;

    explicit LearningEnv(uint32_t min_ttl) {
        // curl may reach api.example.com and *.cdn.example on port 80, and its
        // resolver on 53/udp (no implicit allow for DNS); batch only its resolver.
        policies = {
            policy_for("curl-api", "curl", {80, "http", IPPROTO_TCP}, {"api.example.com"}, {"*.cdn.example"}),
            policy_for("dns", "curl", {53, "udp", IPPROTO_UDP}, {}, {}, {cidr("203.0.113.12/32")}),
            policy_for("dns-batch", "batch", {53, "udp", IPPROTO_UDP}, {}, {}, {cidr("203.0.113.12/32")}),
            policy_for("dns6", "curl", {53, "udp", IPPROTO_UDP}, {}, {}, {cidr("2001:db8:1::10/128")}),
        };
        PolicyInputs in{&policies, nullptr, &identities, &numbers};
        in.host_numbers = &hosts;
        image = enforcer.publish(test_agent(env.cg), mesh_with_egress(false), in);
        curl = identities.find({"app", "curl"}).value();
        batch = identities.find({"app", "batch"}).value();
        enforcer.set_identities(identities.names(), {{env.cg.id(), curl}, {other.id(), batch}});
        auto trusted = IpAddress::parse(kResolver);
        auto echo = IpAddress::parse(TestNetwork::kExternal4);  // trusted too: it only ever echoes
        auto trusted6 = IpAddress::parse(TestNetwork::kExternal6);
        REQUIRE(enforcer.datapath()
                    .set_dns_learning(DnsLearning{min_ttl, 3600, 256}, {*trusted, *echo, *trusted6})
                    .ok());
        enforcer.attach();
    }
};

}  // namespace

TEST_CASE("dns learning: resolve and connect at once, 200 times, no false denial; the agent resolved nothing") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);
    Resolver resolver(t.env.net, 30);
    // Before any answer: denied (the agent resolves nothing here).
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return tcp_connect(kLearnedAddress, 80); }) == EPERM);
    const uint64_t learned_before = stat_total(t.enforcer, EGRESSD_DNS_STAT_LEARNED);
    int denied = 0, failed = 0;
    const int loops = 200;
    const int code = run_in_cgroup(t.env.cg, &t.env.net, [&] {
        int local_denied = 0;
        for (int i = 0; i < loops; ++i) {
            const std::string name = (i % 2 == 0) ? "api.example.com" : "e" + std::to_string(i) + ".cdn.example";
            const int rc = resolve_then_connect(name, uint16_t(1000 + i));
            if (rc == EPERM) ++local_denied;
            if (rc != 0 && rc != EPERM) return 200;
        }
        return local_denied > 99 ? 99 : local_denied;
    });
    if (code == 200) ++failed;
    else denied = code;
    CHECK(failed == 0);
    CHECK_MESSAGE(denied == 0, denied << " of " << loops << " connects right after the answer were denied");
    CHECK(stat_total(t.enforcer, EGRESSD_DNS_STAT_LEARNED) - learned_before >= uint64_t(loops));
    // The learned entry names the host, for the identity that asked.
    auto learned = t.enforcer.datapath().maps().dns_learned.read_all();
    REQUIRE(learned.ok());
    uint32_t host = 0;
    for (const auto& [key, entry] : *learned)
        if (key.identity == t.curl && entry.host != 0) host = entry.host;
    REQUIRE(host != 0);
    // The reference model agrees: allowed as learned with the entry, denied without.
    Query q{*IpAddress::parse(kLearnedAddress), 80, IPPROTO_TCP, 0, t.curl, host};
    const Decision with = decide(&t.image, q);
    CHECK(with.verdict == EGRESSD_VERDICT_ALLOW);
    CHECK(with.reason == EGRESSD_REASON_POLICY);
    CHECK(with.learned);
    q.learned_host = 0;
    CHECK(decide(&t.image, q).reason == EGRESSD_REASON_DENY);
    q.learned_host = host;
    q.port = 443;  // the host's policies grant 80 only
    CHECK(decide(&t.image, q).reason == EGRESSD_REASON_DENY);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return tcp_connect(kLearnedAddress, 443); }) == EPERM);
}

TEST_CASE("dns learning: another identity, another name, a wildcard's own domain: nothing learned") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);
    Resolver resolver(t.env.net, 30);
    // batch asks for api.example.com: not a host of its policies.
    const uint64_t no_host = stat_total(t.enforcer, EGRESSD_DNS_STAT_NO_POLICY_HOST);
    CHECK(run_in_cgroup(t.other, &t.env.net, [] { return resolve_then_connect("api.example.com", 7); }) == EPERM);
    CHECK(stat_total(t.enforcer, EGRESSD_DNS_STAT_NO_POLICY_HOST) == no_host + 1);
    // curl asks for names no policy of its names.
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("www.example.com", 8); }) == EPERM);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("cdn.example", 9); }) == EPERM);
    // Case does not matter.
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("API.Example.COM", 10); }) == 0);
}

TEST_CASE("dns learning: untrusted and unsolicited answers teach nothing") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);
    // A forged answer, bounced off the sink's echo service on port 53 (the workload
    // needs a policy to send there, as anywhere).
    const Datagram forged = dns_answer(dns_query(77, "api.example.com"), kLearnedAddress, 300);
    const uint64_t unsolicited = stat_total(t.enforcer, EGRESSD_DNS_STAT_UNSOLICITED);
    // Off the trusted echo (203.0.113.10): a response went out, no query was recorded: unsolicited.
    t.policies.push_back(policy_for("echo", "curl", {53, "udp", IPPROTO_UDP}, {}, {}, {cidr("203.0.113.10/32")}));
    PolicyInputs in{&t.policies, nullptr, &t.identities, &t.numbers};
    in.host_numbers = &t.hosts;
    t.enforcer.publish(test_agent(t.env.cg), mesh_with_egress(false), in);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [&] {
              const int err = dns_exchange(TestNetwork::kExternal4, forged);
              return err != 0 ? 100 + err : tcp_connect(kLearnedAddress, 80);
          }) == EPERM);
    CHECK(stat_total(t.enforcer, EGRESSD_DNS_STAT_UNSOLICITED) > unsolicited);
    // Off the echo at 203.0.113.11, which is no trusted resolver: untrusted.
    const uint64_t untrusted = stat_total(t.enforcer, EGRESSD_DNS_STAT_UNTRUSTED);
    t.policies.push_back(policy_for("echo-b", "curl", {53, "udp", IPPROTO_UDP}, {}, {}, {cidr("203.0.113.11/32")}));
    t.enforcer.publish(test_agent(t.env.cg), mesh_with_egress(false), in);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [&] {
              const int err = dns_exchange(TestNetwork::kExternal4b, forged);
              return err != 0 ? 100 + err : tcp_connect(kLearnedAddress, 80);
          }) == EPERM);
    CHECK(stat_total(t.enforcer, EGRESSD_DNS_STAT_UNTRUSTED) > untrusted);
}

TEST_CASE("dns learning: an allow by a learned address is reported as learned") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);
    Resolver resolver(t.env.net, 30);
    AgentConfig agent = test_agent(t.env.cg);
    agent.report_policy_allows = true;
    PolicyInputs in{&t.policies, nullptr, &t.identities, &t.numbers};
    in.host_numbers = &t.hosts;
    t.enforcer.publish(agent, mesh_with_egress(false), in);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("api.example.com", 21); }) == 0);
    std::vector<egressd_event> events;
    auto reader = EventReader::open(t.enforcer.datapath().maps().events.get(),
                                    [&](const egressd_event& e) { events.push_back(e); });
    REQUIRE(reader.ok());
    REQUIRE((*reader)->drain().ok());
    int learned = 0, other = 0;
    for (const egressd_event& e : events) {
        if (e.kind != EGRESSD_EVENT_ALLOW || e.reason != EGRESSD_REASON_POLICY) continue;
        (e.flags & EGRESSD_EVENT_LEARNED ? learned : other) += 1;
    }
    CHECK(learned == 1);  // the connect to the learned address
    CHECK(other >= 1);    // the query to the resolver, allowed by its ipAddresses
}

TEST_CASE("dns learning: over IPv6, an AAAA answer from an IPv6 resolver") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);
    // The resolver at [2001:db8:1::10]:53 tells of 2001:db8:1::11.
    Resolver resolver(t.env.net, 30, TestNetwork::kExternal6, TestNetwork::kExternal6b);
    const auto resolve6 = [](uint16_t id) {
        if (const int err = dns_exchange(TestNetwork::kExternal6, dns_query(id, "api.example.com", 28)); err != 0)
            return 100 + err;
        return tcp_connect(TestNetwork::kExternal6b, 80);
    };
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return tcp_connect(TestNetwork::kExternal6b, 80); }) == EPERM);
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [&] { return resolve6(31); }) == 0);
}

TEST_CASE("dns learning: a TTL of 0 is clamped to minTTL, so the connect right after is allowed") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(5);                 // minTTL 5 s
    Resolver resolver(t.env.net, 0);  // "do not cache"
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("api.example.com", 41); }) == 0);
    auto learned = t.enforcer.datapath().maps().dns_learned.read_all();
    REQUIRE(learned.ok());
    REQUIRE_FALSE(learned->empty());
    for (const auto& [key, entry] : *learned) CHECK(entry.expires_ns - entry.learned_ns == 5'000'000'000ull);
}

TEST_CASE("dns learning: an address expires with its TTL (minTTL 0), and is denied after") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    LearningEnv t(0);
    Resolver resolver(t.env.net, 1);  // a TTL of 1 s
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("api.example.com", 11); }) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1300));
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return tcp_connect(kLearnedAddress, 80); }) == EPERM);
    // Asked again: allowed again.
    CHECK(run_in_cgroup(t.env.cg, &t.env.net, [] { return resolve_then_connect("api.example.com", 12); }) == 0);
}
