// HostResolver against a real DNS server: a private dnsmasq on 127.0.0.1
// (tests/dns/dnsmasq.h). Names are under test.egressd, addresses in
// 203.0.113.0/24 and 2001:db8::/32; nothing is ever sent to another server.
#include <doctest/doctest.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "dns/host_resolver.h"
#include "dnsmasq.h"

using namespace std::chrono_literals;
using egressd::HostResolver;
using egressd::HostState;
using egressd::IpAddress;
using egressd::testdns::Dnsmasq;
using Snapshot = std::map<std::string, HostState>;
using SteadyClock = std::chrono::steady_clock;
using SystemClock = std::chrono::system_clock;

namespace {

// False (after a message) when the test cannot run; a failure under CI=true.
bool have_dnsmasq() {
    if (egressd::testdns::dnsmasq_path()) return true;
    if (egressd::testdns::running_in_ci())
        FAIL("dnsmasq is not installed (Debian package dnsmasq-base); under CI=true the DNS tests must run");
    MESSAGE("skipped: dnsmasq is not installed (Debian package dnsmasq-base)");
    return false;
}

std::vector<IpAddress> ips(std::initializer_list<const char*> texts) {
    std::vector<IpAddress> out;
    for (const char* t : texts) {
        auto a = IpAddress::parse(t);
        REQUIRE(a.ok());
        out.push_back(*a);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::string show(const std::vector<IpAddress>& addresses) {
    std::string s = "[";
    for (const auto& a : addresses) s += (s.size() > 1 ? " " : "") + a.str();
    return s + "]";
}

HostResolver::Options options_for(const Dnsmasq& dns) {
    HostResolver::Options o;
    o.dns_server = dns.server();
    o.ttl_floor = 1s;
    o.ttl_ceiling = 60s;
    o.query_timeout = 300ms;
    o.attempts = 1;
    o.retry_after_failure = 1s;
    return o;
}

std::unique_ptr<HostResolver> start(const HostResolver::Options& options) {
    auto r = HostResolver::start(options);
    if (!r) FAIL("HostResolver::start: " << r.error().describe());
    return std::move(*r);
}

bool readable(int fd, std::chrono::milliseconds wait = 0ms) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(wait.count())) == 1 && (p.revents & POLLIN);
}

// Polls snapshots until `done` holds; returns the last one. Polling here is the
// test's business: refreshes that change nothing do not notify.
Snapshot wait_for(HostResolver& r, const std::function<bool(const Snapshot&)>& done,
                  std::chrono::milliseconds timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
        Snapshot s = r.snapshot();
        if (done(s) || SteadyClock::now() >= deadline) return s;
        std::this_thread::sleep_for(10ms);
    }
}

bool answered(const Snapshot& s, const std::string& host) {
    auto it = s.find(host);
    return it != s.end() && it->second.resolved_at != SystemClock::time_point{};
}

bool all_answered(const Snapshot& s) {
    return std::all_of(s.begin(), s.end(), [&](const auto& kv) { return answered(s, kv.first); });
}

// Voluntary + involuntary context switches of the resolver threads (named
// "egressd-dns"), i.e. how often they woke up.
long resolver_wakeups() {
    long total = 0;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::string comm;
        std::getline(std::ifstream(task.path() / "comm"), comm);
        if (comm != "egressd-dns") continue;
        std::ifstream in(task.path() / "status");
        for (std::string line; std::getline(in, line);) {
            if (line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:"))
                total += std::stol(line.substr(line.find(':') + 1));
        }
    }
    return total;
}

}  // namespace

TEST_CASE("A and AAAA answers: sorted, unique, TTL clamped to floor and ceiling") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n"
                          "2001:db8::10 api.test.egressd\n"
                          "203.0.113.9 api.test.egressd\n"
                          // the same address again, as an IPv4-mapped AAAA record
                          "::ffff:203.0.113.9 api.test.egressd\n"
                          "203.0.113.11 v4only.test.egressd\n"
                          "2001:db8::11 v6only.test.egressd\n",
                 .local_ttl = 7,
                 .extra_args = {"--host-record=long.test.egressd,203.0.113.20,1000",
                                "--host-record=zero.test.egressd,203.0.113.30,0",
                                "--cname=alias.test.egressd,api.test.egressd,3"}});
    auto options = options_for(dns);
    options.ttl_floor = 2s;
    options.ttl_ceiling = 60s;
    auto r = start(options);

    const auto before = SystemClock::now();
    r->set_hosts({"api.test.egressd", "v4only.test.egressd", "v6only.test.egressd", "long.test.egressd",
                  "zero.test.egressd", "alias.test.egressd"});
    Snapshot s = wait_for(*r, all_answered, 3s);
    const auto after = SystemClock::now();
    INFO(dns.log());
    REQUIRE(s.size() == 6);
    REQUIRE(all_answered(s));

    const auto& api = s["api.test.egressd"];
    CHECK_MESSAGE(api.addresses == ips({"203.0.113.9", "203.0.113.10", "2001:db8::10"}), show(api.addresses));
    CHECK(api.addresses.front().is_v4());  // IPv4 held as ::ffff:a.b.c.d
    CHECK_FALSE(api.last_error.has_value());
    CHECK(api.resolved_at >= before);
    CHECK(api.resolved_at <= after);
    CHECK(api.expires_at - api.resolved_at == 7s);  // the record's TTL, inside [floor, ceiling]

    CHECK(s["v4only.test.egressd"].addresses == ips({"203.0.113.11"}));
    CHECK_FALSE(s["v4only.test.egressd"].last_error.has_value());  // A without AAAA is an answer
    CHECK(s["v6only.test.egressd"].addresses == ips({"2001:db8::11"}));

    CHECK(s["long.test.egressd"].addresses == ips({"203.0.113.20"}));
    CHECK(s["long.test.egressd"].expires_at - s["long.test.egressd"].resolved_at == 60s);  // ceiling
    CHECK(s["zero.test.egressd"].expires_at - s["zero.test.egressd"].resolved_at == 2s);   // floor

    // The CNAME's TTL (3) is shorter than its target's (7): the chain expires with it.
    CHECK(s["alias.test.egressd"].addresses == api.addresses);
    CHECK(s["alias.test.egressd"].expires_at - s["alias.test.egressd"].resolved_at == 3s);

    // One query per name and type so far: no retries, no search-domain variants.
    CHECK(dns.queries("api.test.egressd", "A") == 1);
    CHECK(dns.queries("api.test.egressd", "AAAA") == 1);
}

TEST_CASE("refresh follows the TTL; an unchanged answer does not notify") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n2001:db8::10 api.test.egressd\n", .local_ttl = 2});
    auto r = start(options_for(dns));
    r->set_hosts({"api.test.egressd"});

    REQUIRE(readable(r->notify_fd(), 3000ms));
    const HostState first = r->snapshot()["api.test.egressd"];
    CHECK_FALSE(readable(r->notify_fd()));  // snapshot() cleared it
    REQUIRE(first.addresses == ips({"203.0.113.10", "2001:db8::10"}));
    CHECK(first.expires_at - first.resolved_at == 2s);

    // Wait on dnsmasq's log, not on snapshot(), which would clear the notification.
    const auto deadline = SteadyClock::now() + 4s;
    while (dns.queries("api.test.egressd", "AAAA") < 2 && SteadyClock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    std::this_thread::sleep_for(100ms);  // for the answer to be handled
    INFO(dns.log());
    CHECK(dns.queries("api.test.egressd", "A") == 2);
    CHECK(dns.queries("api.test.egressd", "AAAA") == 2);
    CHECK_FALSE(readable(r->notify_fd()));  // same addresses, same (no) error

    const HostState second = r->snapshot()["api.test.egressd"];
    const auto interval = second.resolved_at - first.resolved_at;
    INFO("refresh after " << std::chrono::duration_cast<std::chrono::milliseconds>(interval).count() << " ms");
    CHECK(interval >= 1450ms);  // at three quarters of the TTL...
    CHECK(interval <= 1950ms);  // ...before the addresses expire
    CHECK(second.addresses == first.addresses);
    CHECK(second.expires_at - second.resolved_at == 2s);
}

TEST_CASE("changed answers are picked up at the next refresh, addresses added and removed") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n203.0.113.11 api.test.egressd\n"
                          "2001:db8::10 api.test.egressd\n",
                 .local_ttl = 1});
    auto r = start(options_for(dns));
    r->set_hosts({"api.test.egressd"});
    REQUIRE(readable(r->notify_fd(), 3000ms));
    CHECK(r->snapshot()["api.test.egressd"].addresses == ips({"203.0.113.10", "203.0.113.11", "2001:db8::10"}));

    dns.rewrite_hosts("203.0.113.11 api.test.egressd\n203.0.113.12 api.test.egressd\n2001:db8::12 api.test.egressd\n");
    REQUIRE(readable(r->notify_fd(), 4000ms));
    HostState s = r->snapshot()["api.test.egressd"];
    CHECK_MESSAGE(s.addresses == ips({"203.0.113.11", "203.0.113.12", "2001:db8::12"}), show(s.addresses));
    CHECK_FALSE(s.last_error.has_value());

    dns.rewrite_hosts("203.0.113.12 api.test.egressd\n");
    REQUIRE(readable(r->notify_fd(), 4000ms));
    s = r->snapshot()["api.test.egressd"];
    CHECK_MESSAGE(s.addresses == ips({"203.0.113.12"}), show(s.addresses));

    // The name disappears: NXDOMAIN is an answer, the addresses go with it.
    dns.rewrite_hosts("203.0.113.13 other.test.egressd\n");
    REQUIRE(readable(r->notify_fd(), 4000ms));
    s = r->snapshot()["api.test.egressd"];
    CHECK(s.addresses.empty());
    CHECK(s.last_error == "NXDOMAIN");
}

TEST_CASE("NXDOMAIN and empty answers are answers; REFUSED is a failure") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n",
                 .local_ttl = 30,
                 .extra_args = {"--txt-record=txt.test.egressd,no addresses here"}});
    auto r = start(options_for(dns));
    // outside.invalid is outside dnsmasq's local zone and it has no upstream: REFUSED.
    // (Forwarding is off, so the name never leaves dnsmasq.)
    const std::string too_long = std::string(64, 'x') + ".test.egressd";  // labels are at most 63 octets
    r->set_hosts({"missing.test.egressd", "txt.test.egressd", "outside.invalid", "api.test.egressd", too_long,
                  "203.0.113.77", "2001:db8::77"});
    Snapshot s = wait_for(
        *r,
        [](const Snapshot& seen) {
            return answered(seen, "missing.test.egressd") && answered(seen, "txt.test.egressd") &&
                   answered(seen, "api.test.egressd") && seen.at("outside.invalid").last_error.has_value();
        },
        3000ms);
    INFO(dns.log());

    CHECK(s[too_long].addresses.empty());
    CHECK(s[too_long].last_error == "invalid host name");
    CHECK(dns.queries(too_long) == 0);
    // Addresses written as hosts stand for themselves; they are not sent to DNS.
    CHECK(s["203.0.113.77"].addresses == ips({"203.0.113.77"}));
    CHECK(s["2001:db8::77"].addresses == ips({"2001:db8::77"}));
    CHECK_FALSE(s["2001:db8::77"].last_error.has_value());
    CHECK(dns.log().find("203.0.113.77") == std::string::npos);

    const auto& missing = s["missing.test.egressd"];
    CHECK(missing.addresses.empty());
    CHECK(missing.last_error == "NXDOMAIN");
    CHECK(missing.resolved_at != SystemClock::time_point{});
    CHECK(missing.expires_at - missing.resolved_at == 1s);  // no TTL to go by: the floor

    CHECK(s["txt.test.egressd"].addresses.empty());
    CHECK(s["txt.test.egressd"].last_error == "no addresses");

    CHECK(s["outside.invalid"].addresses.empty());
    // c-ares 1.18 cannot tell REFUSED from SERVFAIL or a closed port; later versions can.
    const std::string refused = s["outside.invalid"].last_error.value_or("-");
    CHECK_MESSAGE((refused == "refused or server failure" || refused == "REFUSED"), refused);
    CHECK(s["outside.invalid"].resolved_at == SystemClock::time_point{});  // never answered

    CHECK(s["api.test.egressd"].addresses == ips({"203.0.113.10"}));  // the others do not disturb it
    CHECK_FALSE(s["api.test.egressd"].last_error.has_value());
}

TEST_CASE("a server that stops answering: addresses kept until expiry, then dropped; back when it answers") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n2001:db8::10 api.test.egressd\n", .local_ttl = 2});
    auto r = start(options_for(dns));  // query timeout 300 ms, 1 attempt, retry after 1 s
    r->set_hosts({"api.test.egressd"});
    REQUIRE(readable(r->notify_fd(), 3000ms));
    const HostState known = r->snapshot()["api.test.egressd"];
    REQUIRE(known.addresses == ips({"203.0.113.10", "2001:db8::10"}));

    dns.stop_answering();
    // Watch until the addresses go, noting the last moment they were still
    // there and whether they stayed while a refresh had already failed.
    SystemClock::time_point last_seen = SystemClock::now(), dropped{};
    bool kept_after_failure = false;
    HostState after;
    const auto deadline = SteadyClock::now() + 5s;
    while (SteadyClock::now() < deadline) {
        const auto now = SystemClock::now();
        after = r->snapshot()["api.test.egressd"];
        if (after.addresses.empty()) {
            dropped = now;
            break;
        }
        CHECK(after.addresses == known.addresses);
        kept_after_failure |= after.last_error == "timeout";
        last_seen = now;
        std::this_thread::sleep_for(10ms);
    }
    REQUIRE(dropped != SystemClock::time_point{});
    auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
    INFO("kept until expiry" << (last_seen >= known.expires_at ? "+" : "") << ms(last_seen - known.expires_at)
                             << " ms, dropped at expiry+" << ms(dropped - known.expires_at) << " ms");
    CHECK(last_seen >= known.expires_at - 50ms);  // kept until expiry (a 10 ms poll apart)
    CHECK(dropped >= known.expires_at);
    CHECK(dropped <= known.expires_at + 300ms + 500ms);  // the refresh's timeout, plus slack
    CHECK(after.last_error == "timeout");
    CHECK(kept_after_failure);  // the refresh at 3/4 of the TTL failed; the addresses stayed until expiry
    CHECK(after.resolved_at == known.resolved_at);  // no new answer

    dns.resume_answering();
    Snapshot s = wait_for(
        *r, [](const Snapshot& seen) { return !seen.at("api.test.egressd").addresses.empty(); }, 3000ms);
    const HostState back = s["api.test.egressd"];
    CHECK(back.addresses == known.addresses);
    CHECK_FALSE(back.last_error.has_value());
    CHECK(back.resolved_at > known.resolved_at);
}

TEST_CASE("set_hosts replaces the set: new names resolved at once, old ones forgotten") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.1 a.test.egressd\n203.0.113.2 b.test.egressd\n203.0.113.3 c.test.egressd\n",
                 .local_ttl = 1});
    auto r = start(options_for(dns));
    CHECK(r->snapshot().empty());

    r->set_hosts({"a.test.egressd", "b.test.egressd"});
    Snapshot s = wait_for(*r, all_answered, 3000ms);
    REQUIRE(s.size() == 2);
    REQUIRE(all_answered(s));
    const HostState b = s["b.test.egressd"];

    // Duplicates and empty names are ignored.
    r->set_hosts({"b.test.egressd", "c.test.egressd", "c.test.egressd", ""});
    s = r->snapshot();
    CHECK(s.size() == 2);
    CHECK(s.count("a.test.egressd") == 0);
    CHECK(s.count("b.test.egressd") == 1);
    CHECK(s.count("c.test.egressd") == 1);
    CHECK(s["b.test.egressd"].addresses == b.addresses);  // kept, not re-resolved from scratch

    s = wait_for(*r, all_answered, 3000ms);
    CHECK(s["c.test.egressd"].addresses == ips({"203.0.113.3"}));
    const int a_queries = dns.queries("a.test.egressd");
    const int b_queries = dns.queries("b.test.egressd");
    std::this_thread::sleep_for(1500ms);                // longer than the 1 s TTL
    CHECK(dns.queries("a.test.egressd") == a_queries);  // forgotten: not refreshed any more
    CHECK(dns.queries("b.test.egressd") > b_queries);   // still tracked: refreshed

    // Removed and re-added before the worker looks: starts over like a new name.
    r->set_hosts({"b.test.egressd"});
    r->set_hosts({"b.test.egressd", "a.test.egressd"});
    s = wait_for(*r, all_answered, 3000ms);
    CHECK(s["a.test.egressd"].addresses == ips({"203.0.113.1"}));

    r->set_hosts({});
    CHECK(r->snapshot().empty());
}

TEST_CASE("notify_fd: readable after a change until snapshot(), not otherwise") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n", .local_ttl = 1});
    auto r = start(options_for(dns));
    const int fd = r->notify_fd();
    CHECK(fd >= 0);
    CHECK_FALSE(readable(fd, 100ms));  // nothing tracked, nothing changed

    r->set_hosts({"api.test.egressd"});
    REQUIRE(readable(fd, 3000ms));
    CHECK(readable(fd));  // level-triggered: stays readable until snapshot()
    CHECK(r->snapshot()["api.test.egressd"].addresses == ips({"203.0.113.10"}));
    CHECK_FALSE(readable(fd));

    // Two refreshes (TTL 1 s) with the same answer: no notification.
    const int queries = dns.queries("api.test.egressd");
    CHECK_FALSE(readable(fd, 2200ms));
    CHECK(dns.queries("api.test.egressd") >= queries + 2);

    dns.rewrite_hosts("203.0.113.10 api.test.egressd\n203.0.113.14 api.test.egressd\n");
    REQUIRE(readable(fd, 3000ms));
    CHECK(r->snapshot()["api.test.egressd"].addresses == ips({"203.0.113.10", "203.0.113.14"}));
    CHECK_FALSE(readable(fd));
}

TEST_CASE("idle: no wake-ups and no queries when nothing is due") {
    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n", .local_ttl = 30});
    auto r = start(options_for(dns));
    r->set_hosts({"api.test.egressd"});
    REQUIRE(readable(r->notify_fd(), 3000ms));
    (void)r->snapshot();

    const long wakeups = resolver_wakeups();
    REQUIRE(wakeups > 0);  // the thread is there and was seen working
    const int queries = dns.queries("api.test.egressd");
    std::this_thread::sleep_for(1000ms);
    // A loop polling even every 100 ms would show ~10 here.
    CHECK(resolver_wakeups() - wakeups <= 1);
    CHECK(dns.queries("api.test.egressd") == queries);
}

TEST_CASE("malformed dns_server and options are errors") {
    for (const char* bad :
         {"dnsmasq",      "localhost:53",    "1.2.3",           "256.1.1.1",  "1.2.3.4:",
          "1.2.3.4:0",    "1.2.3.4:65536",   "1.2.3.4:53x",     "1.2.3.4:-1", "1.2.3.4:99999999999999999999",
          "[::1",         "[::1]53",         "[::1]:",          "::1",        "2001:db8::1:53",
          "[1.2.3.4]:53", "[fe80::1%lo]:53", "1.2.3.4,5.6.7.x", " 1.2.3.4",   "1.2.3.4:53 ",
          "[]:53",        "1.2.3.4,"}) {
        HostResolver::Options o;
        o.dns_server = bad;
        auto r = HostResolver::start(o);
        CHECK_MESSAGE(!r.ok(), bad);
        if (!r.ok()) {
            INFO(r.error().describe());
            // The message quotes the entry that is wrong (the whole text when it is one).
            const std::string text = bad, last = text.substr(text.rfind(',') == std::string::npos ? 0 : text.rfind(',') + 1);
            CHECK(r.error().describe().find("\"" + last + "\"") != std::string::npos);
        }
    }
    // Well-formed ones start (nothing is queried: no hosts are set).
    for (const char* good :
         {"127.0.0.1", "127.0.0.1:5353", "[::1]", "[::1]:5353", "[2001:db8::53]:53", "", "127.0.0.1,[::1]:5353"}) {
        HostResolver::Options o;
        o.dns_server = good;
        auto r = HostResolver::start(o);
        CHECK_MESSAGE(r.ok(), good << ": " << (r.ok() ? "" : r.error().describe()));
    }

    auto with = [](auto change) {
        HostResolver::Options o;
        o.dns_server = "127.0.0.1";
        change(o);
        return HostResolver::start(o).ok();
    };
    CHECK_FALSE(with([](auto& o) { o.ttl_floor = 0s; }));
    CHECK_FALSE(with([](auto& o) {
        o.ttl_ceiling = 1s;
        o.ttl_floor = 2s;
    }));
    CHECK_FALSE(with([](auto& o) { o.attempts = 0; }));
    CHECK_FALSE(with([](auto& o) { o.query_timeout = 0ms; }));
    CHECK_FALSE(with([](auto& o) { o.retry_after_failure = 0s; }));
}

TEST_CASE("destruction is prompt, even with queries in flight") {
    auto timed_reset = [](std::unique_ptr<HostResolver>& r) {
        const auto t0 = SteadyClock::now();
        r.reset();
        return std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - t0);
    };
    {
        HostResolver::Options o;
        o.dns_server = "127.0.0.1:53";
        auto r = start(o);  // destroyed before its thread even got going
        CHECK(timed_reset(r) < 100ms);
        r = start(o);
        std::this_thread::sleep_for(50ms);  // asleep in poll() with no timeout
        CHECK(timed_reset(r) < 100ms);
    }

    if (!have_dnsmasq()) return;
    Dnsmasq dns({.hosts = "203.0.113.10 api.test.egressd\n", .local_ttl = 30});
    dns.stop_answering();
    auto options = options_for(dns);
    options.query_timeout = 5000ms;
    options.attempts = 3;
    auto r = start(options);
    r->set_hosts({"api.test.egressd", "b.test.egressd", "c.test.egressd"});
    std::this_thread::sleep_for(100ms);  // the queries are out, waiting for 5 s timeouts
    CHECK(r->snapshot()["api.test.egressd"].resolved_at == SystemClock::time_point{});
    CHECK(timed_reset(r) < 100ms);
}
