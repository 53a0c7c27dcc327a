// Telemetry over HTTP on 127.0.0.1 only: /healthz, /readyz, /metrics (checked
// with the strict Prometheus parser), /events and the event log.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "agent/telemetry.h"
#include "loopback_http.h"
#include "common/fd.h"
#include "observe/http_server.h"
#include "observe/metrics.h"
#include "prometheus_parser.h"

using namespace egressd;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

using testhttp::Clock;
using testhttp::get;
using testhttp::Reply;

// A fresh directory under the temporary directory, removed at the end of the test.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = std::filesystem::temp_directory_path() /
               ("egressd-telemetry-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

Telemetry::Options options_in(const TempDir& dir, size_t event_buffer = 1000) {
    Telemetry::Options options;
    options.http_address = "127.0.0.1:0";
    options.event_buffer = event_buffer;
    options.event_log = dir.path / "log" / "events.jsonl";
    return options;
}

std::unique_ptr<Telemetry> must_start(const Telemetry::Options& options, const MapSet* maps = nullptr) {
    auto telemetry = Telemetry::start(options, maps);
    if (!telemetry.ok()) FAIL(telemetry.error().describe());
    return std::move(telemetry).value();
}

prom::Exposition scrape(uint16_t port) {
    const Reply reply = get(port, "/metrics");
    REQUIRE(reply.status == 200);
    CHECK(reply.headers.at("content-type") == "text/plain; version=0.0.4; charset=utf-8");
    auto parsed = prom::parse_exposition(reply.body);
    REQUIRE_MESSAGE(parsed.ok(), (parsed.ok() ? "" : parsed.error().describe()) << "\n" << reply.body);
    return std::move(parsed).value();
}

double value_of(const prom::Exposition& exposition, const std::string& name,
                const std::vector<prom::Label>& labels = {}) {
    const auto value = exposition.value(name, labels);
    REQUIRE_MESSAGE(value.has_value(), "no sample " << name);
    return *value;
}

json event(const std::string& verdict, const std::optional<std::string>& identity, int port) {
    json e = {{"verdict", verdict},
              {"reason", verdict == "allow" ? "policy" : "deny"},
              {"port", port},
              {"dst", "192.0.2.1"},
              {"hook", "connect4"}};
    e["identity"] = identity ? json(*identity) : json(nullptr);
    return e;
}

json get_events(uint16_t port, const std::string& query = "") {
    const Reply reply = get(port, "/events" + query);
    REQUIRE_MESSAGE(reply.status == 200, reply.body);
    CHECK(reply.headers.at("content-type") == "application/json");
    const json body = json::parse(reply.body);
    REQUIRE(body.is_array());
    return body;
}

std::vector<uint64_t> seqs(const json& events) {
    std::vector<uint64_t> out;
    for (const auto& e : events) out.push_back(e.at("seq").get<uint64_t>());
    return out;
}

std::vector<std::string> read_lines(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

}  // namespace

TEST_CASE("Telemetry: /healthz and /readyz") {
    TempDir dir;
    auto telemetry = must_start(options_in(dir));
    const uint16_t port = telemetry->http_port();
    REQUIRE(port != 0);

    Reply reply = get(port, "/healthz");
    CHECK(reply.status == 200);
    CHECK(reply.body == "ok\n");
    CHECK(reply.headers.at("content-type") == "text/plain; charset=utf-8");

    reply = get(port, "/readyz");
    CHECK(reply.status == 503);
    CHECK(reply.body == "starting\n");
    CHECK(value_of(scrape(port), "egressd_ready") == 0);

    telemetry->set_ready(false, "programs not attached");
    reply = get(port, "/readyz");
    CHECK(reply.status == 503);
    CHECK(reply.body == "programs not attached\n");

    telemetry->set_ready(true, "");
    reply = get(port, "/readyz");
    CHECK(reply.status == 200);
    CHECK(reply.body == "ready\n");
    CHECK(value_of(scrape(port), "egressd_ready") == 1);

    telemetry->set_ready(false, "configuration invalid");
    reply = get(port, "/readyz");
    CHECK(reply.status == 503);
    CHECK(reply.body == "configuration invalid\n");

    CHECK(get(port, "/nope").status == 404);
}

TEST_CASE("Telemetry: without an HTTP address there is no server") {
    TempDir dir;
    Telemetry::Options options = options_in(dir);
    options.http_address = "";
    auto telemetry = must_start(options);
    CHECK(telemetry->http_port() == 0);
    telemetry->record_event(event("deny", "shop/web", 443));  // still logged
    CHECK(read_lines(options.event_log).size() == 1);
}

TEST_CASE("Telemetry: start fails on a bad address or an unwritable event log") {
    TempDir dir;
    Telemetry::Options options = options_in(dir);
    options.http_address = "localhost:0";
    CHECK_FALSE(Telemetry::start(options, nullptr).ok());

    options = options_in(dir);
    std::ofstream(dir.path / "file") << "x";
    options.event_log = dir.path / "file" / "events.jsonl";  // parent is a file
    CHECK_FALSE(Telemetry::start(options, nullptr).ok());
}

TEST_CASE("Telemetry: /metrics parses strictly and counters move by what was recorded") {
    TempDir dir;
    Telemetry::Options options = options_in(dir);
    options.capacities.cidrs = 111;
    options.capacities.ports = 222;
    options.capacities.policy_rules = 333;
    options.capacities.policies = 444;
    options.capacities.identities = 555;
    options.capacities.workloads = 666;
    auto telemetry = must_start(options);
    const uint16_t port = telemetry->http_port();

    prom::Exposition before = scrape(port);
    // No maps: the kernel families are left out, and that is no read error.
    CHECK(before.family("egressd_decisions_total") == nullptr);
    CHECK(before.family("egressd_denied_connections_total") == nullptr);
    CHECK(before.family("egressd_events_sent_total") == nullptr);
    CHECK(before.family("egressd_events_suppressed_total") == nullptr);
    CHECK(before.family("egressd_events_lost_total") == nullptr);
    CHECK(value_of(before, "egressd_kernel_read_errors_total") == 0);

    const std::map<std::string, double> capacities = {{"cidrs_v1", 111},    {"ports_v1", 222},
                                                      {"policy_rules_v1", 333}, {"policy_names_v1", 444},
                                                      {"id_names_v1", 555}, {"identities_v1", 666}};
    for (const auto& [map, capacity] : capacities) {
        CAPTURE(map);
        CHECK(value_of(before, "egressd_map_capacity", {{"map", map}}) == capacity);
    }
    CHECK(before.family("egressd_map_capacity")->type == "gauge");
    CHECK(before.family("egressd_apply_duration_seconds")->type == "histogram");
    CHECK(before.family("egressd_events_total")->type == "counter");
    CHECK(value_of(before, "egressd_config_errors_total") == 0);
    CHECK(value_of(before, "egressd_audit_events_total") == 0);
    CHECK(value_of(before, "egressd_apply_duration_seconds_count") == 0);
    // Families sorted by name, as the registry renders them.
    for (size_t i = 1; i < before.families.size(); ++i) {
        CHECK(before.families[i - 1].name < before.families[i].name);
    }

    telemetry->record_event(event("deny", "shop/web", 443));
    telemetry->record_event(event("deny", std::nullopt, 80));
    telemetry->record_event(event("audit", "shop/web", 443));
    telemetry->record_event(event("allow", "shop/api", 443));
    telemetry->record_apply(7, 12.5);
    telemetry->record_apply(8, 0.5);
    telemetry->record_config_error();
    telemetry->record_resolution_failure("api.example.com");
    telemetry->record_resolution_failure("api.example.com");
    telemetry->record_resolution_failure("db.example.com");
    telemetry->set_map_entries("policy_rules_v1", 1234);
    telemetry->set_map_entries("cidrs_v1", 5);
    telemetry->set_state("audit", 12, 1);

    prom::Exposition after = scrape(port);
    CHECK(value_of(after, "egressd_events_total", {{"verdict", "deny"}}) == 2);
    CHECK(value_of(after, "egressd_events_total", {{"verdict", "audit"}}) == 1);
    CHECK(value_of(after, "egressd_events_total", {{"verdict", "allow"}}) == 1);
    CHECK(value_of(after, "egressd_audit_events_total") == 1);
    CHECK(value_of(after, "egressd_generation") == 8);
    CHECK(value_of(after, "egressd_apply_duration_seconds_count") == 2);
    CHECK(value_of(after, "egressd_apply_duration_seconds_sum") == doctest::Approx(0.013));
    CHECK(value_of(after, "egressd_apply_duration_seconds_bucket", {{"le", "0.001"}}) == 1);
    CHECK(value_of(after, "egressd_apply_duration_seconds_bucket", {{"le", "0.01"}}) == 1);
    CHECK(value_of(after, "egressd_apply_duration_seconds_bucket", {{"le", "0.025"}}) == 2);
    CHECK(value_of(after, "egressd_apply_duration_seconds_bucket", {{"le", "5"}}) == 2);
    CHECK(value_of(after, "egressd_apply_duration_seconds_bucket", {{"le", "+Inf"}}) == 2);
    CHECK(value_of(after, "egressd_config_errors_total") == 1);
    CHECK(value_of(after, "egressd_host_resolution_failures_total", {{"host", "api.example.com"}}) == 2);
    CHECK(value_of(after, "egressd_host_resolution_failures_total", {{"host", "db.example.com"}}) == 1);
    CHECK(value_of(after, "egressd_map_entries", {{"map", "policy_rules_v1"}}) == 1234);
    CHECK(value_of(after, "egressd_map_entries", {{"map", "cidrs_v1"}}) == 5);
    CHECK(value_of(after, "egressd_policies") == 12);
    CHECK(value_of(after, "egressd_policy_errors") == 1);
    CHECK(value_of(after, "egressd_mode", {{"mode", "audit"}}) == 1);

    telemetry->set_state("enforce", 13, 0);
    telemetry->record_config_error();
    telemetry->record_event(event("deny", "shop/web", 443));
    prom::Exposition third = scrape(port);
    CHECK(value_of(third, "egressd_mode", {{"mode", "audit"}}) == 0);
    CHECK(value_of(third, "egressd_mode", {{"mode", "enforce"}}) == 1);
    CHECK(value_of(third, "egressd_policies") == 13);
    CHECK(value_of(third, "egressd_policy_errors") == 0);
    CHECK(value_of(third, "egressd_config_errors_total") == 2);
    CHECK(value_of(third, "egressd_events_total", {{"verdict", "deny"}}) == 3);
}

TEST_CASE("Telemetry: host labels are bounded") {
    TempDir dir;
    auto telemetry = must_start(options_in(dir));
    for (int i = 0; i < 1100; ++i) telemetry->record_resolution_failure("host" + std::to_string(i) + ".example.com");
    const prom::Exposition metrics = scrape(telemetry->http_port());
    const auto* family = metrics.family("egressd_host_resolution_failures_total");
    REQUIRE(family != nullptr);
    CHECK(family->samples.size() <= observe::kDefaultMaxLabelSets + 1);
    CHECK(value_of(metrics, "egressd_host_resolution_failures_total", {{"host", "other"}}) > 0);
}

TEST_CASE("Telemetry: failing kernel reads leave the kernel families out and count errors") {
    TempDir dir;
    const MapSet closed;  // every descriptor invalid: every read fails
    auto telemetry = must_start(options_in(dir), &closed);
    const uint16_t port = telemetry->http_port();
    const prom::Exposition first = scrape(port);
    CHECK(first.family("egressd_decisions_total") == nullptr);
    CHECK(first.family("egressd_denied_connections_total") == nullptr);
    CHECK(first.family("egressd_events_sent_total") == nullptr);
    CHECK(first.family("egressd_events_suppressed_total") == nullptr);
    CHECK(first.family("egressd_events_lost_total") == nullptr);
    CHECK(first.family("egressd_egress_bytes_total") == nullptr);
    CHECK(first.family("egressd_dns_responses_total") == nullptr);
    CHECK(first.family("egressd_open_egress_bytes") == nullptr);
    const double errors = value_of(first, "egressd_kernel_read_errors_total");
    CHECK(errors == 5);  // decision counters, event statistics, DNS statistics, traffic totals, open flows
    const prom::Exposition second = scrape(port);
    CHECK(value_of(second, "egressd_kernel_read_errors_total") == errors + 5);
    CHECK(value_of(second, "egressd_ready") == 0);  // the rest is still there
}

TEST_CASE("Telemetry: /events filters by since, verdict, identity and limit") {
    TempDir dir;
    auto telemetry = must_start(options_in(dir));
    const uint16_t port = telemetry->http_port();

    CHECK(get_events(port).empty());

    telemetry->record_event(event("deny", "shop/web", 1));    // 1
    telemetry->record_event(event("audit", "shop/web", 2));   // 2
    telemetry->record_event(event("deny", std::nullopt, 3));  // 3
    telemetry->record_event(event("allow", "shop/api", 4));   // 4
    telemetry->record_event(event("deny", "shop/api", 5));    // 5
    telemetry->record_event(event("deny", "shop/web", 6));    // 6

    const json all = get_events(port);
    CHECK(seqs(all) == std::vector<uint64_t>{1, 2, 3, 4, 5, 6});
    CHECK(all[0].at("port") == 1);
    CHECK(all[0].at("verdict") == "deny");
    CHECK(all[0].at("identity") == "shop/web");
    CHECK(all[2].at("identity").is_null());
    CHECK(all[5].at("port") == 6);

    CHECK(seqs(get_events(port, "?since=0")) == std::vector<uint64_t>{1, 2, 3, 4, 5, 6});
    CHECK(seqs(get_events(port, "?since=4")) == std::vector<uint64_t>{5, 6});
    CHECK(get_events(port, "?since=6").empty());
    CHECK(get_events(port, "?since=1000").empty());
    CHECK(seqs(get_events(port, "?verdict=deny")) == std::vector<uint64_t>{1, 3, 5, 6});
    CHECK(seqs(get_events(port, "?verdict=audit")) == std::vector<uint64_t>{2});
    CHECK(seqs(get_events(port, "?verdict=allow")) == std::vector<uint64_t>{4});
    CHECK(seqs(get_events(port, "?identity=shop/web")) == std::vector<uint64_t>{1, 2, 6});
    CHECK(seqs(get_events(port, "?identity=shop%2Fapi")) == std::vector<uint64_t>{4, 5});  // percent-decoded
    CHECK(get_events(port, "?identity=other/sa").empty());
    CHECK(seqs(get_events(port, "?limit=2")) == std::vector<uint64_t>{5, 6});  // the newest, oldest first
    CHECK(get_events(port, "?limit=0").empty());
    CHECK(seqs(get_events(port, "?limit=100")) == std::vector<uint64_t>{1, 2, 3, 4, 5, 6});
    CHECK(seqs(get_events(port, "?verdict=deny&identity=shop/web")) == std::vector<uint64_t>{1, 6});
    CHECK(seqs(get_events(port, "?verdict=deny&limit=2")) == std::vector<uint64_t>{5, 6});  // limit after filtering
    CHECK(seqs(get_events(port, "?since=1&verdict=deny&identity=shop/web&limit=5")) == std::vector<uint64_t>{6});

    // Invalid queries are refused, naming the problem.
    for (const std::string bad :
         {"?since=x", "?since=-1", "?limit=1.5", "?verdict=maybe", "?colour=red", "?limit=1&limit=2"}) {
        CAPTURE(bad);
        const Reply reply = get(port, "/events" + bad);
        CHECK(reply.status == 400);
        CHECK_FALSE(reply.body.empty());
    }

    // since= lets a client follow: only what is new.
    telemetry->record_event(event("deny", "shop/web", 7));
    CHECK(seqs(get_events(port, "?since=6")) == std::vector<uint64_t>{7});
}

TEST_CASE("Telemetry: the buffer keeps the last event_buffer events; the log keeps every one") {
    TempDir dir;
    const Telemetry::Options options = options_in(dir, 5);
    auto telemetry = must_start(options);
    const uint16_t port = telemetry->http_port();
    REQUIRE(std::filesystem::is_directory(options.event_log.parent_path()));  // created

    std::vector<json> recorded;
    for (int i = 1; i <= 12; ++i) {
        recorded.push_back(event(i % 3 == 0 ? "audit" : "deny", "ns" + std::to_string(i % 2) + "/sa", 1000 + i));
        telemetry->record_event(recorded.back());
    }
    const json kept = get_events(port);
    CHECK(seqs(kept) == std::vector<uint64_t>{8, 9, 10, 11, 12});
    CHECK(kept[0].at("port") == 1008);
    CHECK(seqs(get_events(port, "?since=2")) == std::vector<uint64_t>{8, 9, 10, 11, 12});
    CHECK(seqs(get_events(port, "?since=10")) == std::vector<uint64_t>{11, 12});

    const std::vector<std::string> lines = read_lines(options.event_log);
    REQUIRE(lines.size() == recorded.size());
    for (size_t i = 0; i < lines.size(); ++i) {
        CAPTURE(i);
        CHECK(lines[i] == recorded[i].dump());  // exactly the event, one JSON document per line
        CHECK(json::parse(lines[i]) == recorded[i]);
    }

    // A restarted agent appends to the same log.
    telemetry.reset();
    auto again = must_start(options);
    again->record_event(event("deny", "ns/sa", 1));
    CHECK(read_lines(options.event_log).size() == recorded.size() + 1);
    CHECK(seqs(get_events(again->http_port())) == std::vector<uint64_t>{1});
}

TEST_CASE("Telemetry: an event buffer of 0 keeps nothing but still counts and logs") {
    TempDir dir;
    const Telemetry::Options options = options_in(dir, 0);
    auto telemetry = must_start(options);
    telemetry->record_event(event("deny", "ns/sa", 1));
    CHECK(get_events(telemetry->http_port()).empty());
    CHECK(value_of(scrape(telemetry->http_port()), "egressd_events_total", {{"verdict", "deny"}}) == 1);
    CHECK(read_lines(options.event_log).size() == 1);
}

TEST_CASE("Telemetry: /metrics answers fast while 100k events are recorded") {
    TempDir dir;
    const Telemetry::Options options = options_in(dir);
    auto telemetry = must_start(options);
    const uint16_t port = telemetry->http_port();
    constexpr int kEvents = 100000;

    std::atomic<bool> started{false}, done{false};
    std::thread recorder([&] {
        started = true;
        for (int i = 0; i < kEvents; ++i) {
            telemetry->record_event(event(i % 10 == 0 ? "audit" : "deny", "ns" + std::to_string(i % 7) + "/sa", i));
        }
        done = true;
    });
    while (!started) std::this_thread::yield();

    int scrapes = 0, during = 0;
    long long slowest_us = 0;
    while (!done || scrapes < 5) {
        const bool recording = !done;
        const auto start = Clock::now();
        const Reply reply = get(port, "/metrics");
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
        REQUIRE(reply.status == 200);
        slowest_us = std::max(slowest_us, static_cast<long long>(us));
        ++scrapes;
        if (recording && !done) ++during;
        const auto events_start = Clock::now();
        CHECK(get(port, "/events?limit=10").status == 200);
        CHECK(Clock::now() - events_start < 100ms);
    }
    recorder.join();
    MESSAGE("scrapes: " << scrapes << " (" << during << " while recording), slowest " << slowest_us << " us");
    CHECK(during > 0);
    CHECK(slowest_us < 100000);

    const prom::Exposition metrics = scrape(port);
    CHECK(value_of(metrics, "egressd_events_total", {{"verdict", "deny"}}) == kEvents - kEvents / 10);
    CHECK(value_of(metrics, "egressd_events_total", {{"verdict", "audit"}}) == kEvents / 10);
    CHECK(value_of(metrics, "egressd_audit_events_total") == kEvents / 10);
    const json kept = get_events(port);
    REQUIRE(kept.size() == 1000);
    CHECK(kept.front().at("seq") == kEvents - 999);
    CHECK(kept.back().at("seq") == kEvents);
    CHECK(kept.back().at("port") == kEvents - 1);
    CHECK(read_lines(options.event_log).size() == kEvents);
}

TEST_CASE("HttpServer: a handler taking a Request gets the decoded query parameters") {
    observe::Routes routes{
        {"/echo",
         [](const observe::Request& request) {
             std::string body = request.path + "\n";
             for (const auto& [name, value] : request.params) body += name + "=" + value + "\n";
             return observe::Response{200, "text/plain; charset=utf-8", body};
         }},
        {"/plain",
         [] {
             return observe::Response{200, "text/plain; charset=utf-8", "plain\n"};
         }},
    };
    auto server = observe::HttpServer::start("127.0.0.1:0", std::move(routes));
    REQUIRE(server.ok());
    const uint16_t port = (*server)->port();
    CHECK(get(port, "/echo").body == "/echo\n");
    CHECK(get(port, "/echo?b=2&a=x%2Fy&a=3&c=hello+world").body == "/echo\na=x/y\na=3\nb=2\nc=hello world\n");
    CHECK(get(port, "/plain?ignored=1").body == "plain\n");
    CHECK(get(port, "/echo/x?a=1").status == 404);
}

TEST_CASE("Telemetry: names with invalid UTF-8 reach /events, the event log and /metrics as U+FFFD") {
    TempDir dir;
    const Telemetry::Options options = options_in(dir);
    auto telemetry = must_start(options);
    const uint16_t port = telemetry->http_port();
    json broken = event("deny",
                        std::string("shop/w\xF7"
                                    "b"),
                        1);
    broken["policy"] = std::string("shop/p\xE6\x97");
    broken["comm"] = std::string("\xFF\xFE");
    telemetry->record_event(broken);
    telemetry->record_event(event("deny", "shop/web", 2));  // and the agent goes on

    const json events = get_events(port);
    REQUIRE(events.size() == 2);
    CHECK(events[0].at("identity") ==
          "shop/w\xEF\xBF\xBD"
          "b");
    CHECK(events[0].at("policy") == "shop/p\xEF\xBF\xBD");
    const auto lines = read_lines(options.event_log);
    REQUIRE(lines.size() == 2);
    CHECK(json::parse(lines[0]).at("identity") ==
          "shop/w\xEF\xBF\xBD"
          "b");
    CHECK(value_of(scrape(port), "egressd_identity_decisions_total",
                   {{"identity",
                     "shop/w\xEF\xBF\xBD"
                     "b"},
                    {"verdict", "deny"}}) == 1);
}
