// Reflector against tests/k8s/fake_apiserver.py: list, watch, 410, faults.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <set>

#include "fake_server.h"
#include "k8s/reflector.h"

namespace egressd::k8s {

using k8stest::FakeServer;
using k8stest::pod;
using k8stest::wait_until;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

// One reflector over a fake server, with a notification counter.
class Watched {
public:
    Watched(FakeServer& fake, Reflector::Options options) {
        auto client = Client::create(fake.config());
        REQUIRE_MESSAGE(client.ok(), client.error().describe());
        auto reflector = Reflector::start(*client, std::move(options), [this] { ++notified; });
        REQUIRE_MESSAGE(reflector.ok(), reflector.error().describe());
        reflector_ = std::move(*reflector);
    }
    Reflector& operator*() { return *reflector_; }
    Reflector* operator->() { return reflector_.get(); }
    void stop() { reflector_.reset(); }

    std::set<std::string> keys() const {
        std::set<std::string> out;
        for (const auto& [key, object] : *reflector_->objects()) out.insert(key);
        return out;
    }
    bool has(const std::string& key) const { return reflector_->objects()->count(key) > 0; }
    bool synced() const { return reflector_->stats().synced; }

    std::atomic<int> notified{0};

private:
    std::unique_ptr<Reflector> reflector_;
};

// Pods of node-1, fast retries.
Reflector::Options pods_options() {
    Reflector::Options options;
    options.resource = Resource{.plural = "pods", .field_selector = "spec.nodeName=node-1"};
    options.initial_backoff = milliseconds(100);
    options.max_backoff = milliseconds(1000);
    return options;
}

void seed_pods(FakeServer& fake, int count) {
    for (int i = 0; i < count; ++i) fake.upsert(pod("p" + std::to_string(i)));
}

// The store after a 410 must not hold what was deleted while not watching.
void check_gone_relist(FakeServer& fake, const std::string& mode) {
    fake.control("config", {{"watchExpiredMode", mode}});
    seed_pods(fake, 3);
    Watched w(fake, pods_options());
    REQUIRE(wait_until([&] { return w.synced(); }));
    fake.control("watches/stall", {{"pathPrefix", "/api/v1/pods"}});
    fake.remove("v1", "Pod", "default", "p1");
    fake.upsert(pod("p9"));
    fake.control("compact", nlohmann::json::object());
    fake.control("watches/reset", {{"mode", "rst"}, {"pathPrefix", "/api/v1/pods"}});
    REQUIRE(wait_until([&] { return w->stats().relists == 1; }));
    CHECK(w.keys() == std::set<std::string>{"default/p0", "default/p2", "default/p9"});
    const ReflectorStats stats = w->stats();
    CHECK(stats.gone == 1);
    CHECK(stats.lists == 2);
    fake.upsert(pod("p10"));
    CHECK(wait_until([&] { return w.has("default/p10"); }));
}

}  // namespace

TEST_SUITE("apiserver") {
    TEST_CASE("reflector: paginated LIST with the selector, then the WATCH from its resourceVersion") {
        FakeServer fake;
        seed_pods(fake, 7);
        fake.upsert(pod("elsewhere", "node-2"));
        Reflector::Options options = pods_options();
        options.page_size = 3;
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w.synced(); }));
        CHECK(w->objects()->size() == 7);
        CHECK_FALSE(w.has("default/elsewhere"));
        CHECK(w.notified >= 1);
        const auto lists = fake.requests("list");
        REQUIRE(lists.size() == 3);
        CHECK(lists[0]["query"] == nlohmann::json{{"limit", "3"}, {"fieldSelector", "spec.nodeName=node-1"}});
        CHECK(lists[1]["query"].contains("continue"));
        CHECK(lists[2]["query"].contains("continue"));
        REQUIRE(wait_until([&] { return fake.requests("watch").size() == 1; }));
        const auto watch = fake.requests("watch")[0]["query"];
        CHECK(watch["resourceVersion"] == w->stats().resource_version);
        CHECK(watch["allowWatchBookmarks"] == "true");
        CHECK(watch["fieldSelector"] == "spec.nodeName=node-1");
        const int timeout = std::stoi(watch["timeoutSeconds"].get<std::string>());
        CHECK(timeout >= 300);
        CHECK(timeout < 600);
    }

    TEST_CASE("reflector: watch events change the store; a bookmark only the resourceVersion") {
        FakeServer fake;
        seed_pods(fake, 3);
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        const uint64_t synced_revision = w->revision();
        fake.upsert(pod("new"));
        REQUIRE(wait_until([&] { return w.has("default/new"); }));
        nlohmann::json labelled = pod("p0");
        labelled["metadata"]["labels"] = {{"app", "x"}};
        fake.upsert(labelled);
        REQUIRE(wait_until([&] { return w->objects()->at("default/p0")["metadata"].contains("labels"); }));
        fake.remove("v1", "Pod", "default", "p1");
        REQUIRE(wait_until([&] { return !w.has("default/p1"); }));
        fake.upsert(pod("p2", "node-2"));  // leaves the selection: DELETED
        REQUIRE(wait_until([&] { return !w.has("default/p2"); }));
        CHECK(w.keys() == std::set<std::string>{"default/new", "default/p0"});
        CHECK(w->revision() >= synced_revision + 4);

        const ReflectorStats before = w->stats();
        const uint64_t revision = w->revision();
        fake.upsert({{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "other"}}}});
        REQUIRE(wait_until([&] { return w->stats().resource_version != before.resource_version; }));
        CHECK(w->revision() == revision);
        CHECK(w->stats().lists == 1);
    }

    TEST_CASE("reflector: after a normal end of the watch, watch again from the last resourceVersion") {
        FakeServer fake;
        seed_pods(fake, 2);
        Reflector::Options options = pods_options();
        options.watch_timeout = std::chrono::seconds(1);
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w.synced(); }));
        fake.upsert(pod("during"));
        REQUIRE(wait_until([&] { return w->stats().watch_restarts >= 2; }, milliseconds(15000)));
        CHECK(w.has("default/during"));
        const ReflectorStats stats = w->stats();
        CHECK(stats.lists == 1);
        CHECK(stats.errors == 0);
        const auto watches = fake.requests("watch");
        REQUIRE(watches.size() >= 3);
        CHECK(watches[1]["query"]["resourceVersion"] != watches[0]["query"]["resourceVersion"]);
        CHECK(fake.requests("list").size() == 1);
    }

    TEST_CASE("reflector: 410 as an ERROR event relists, and the relist replaces the store") {
        FakeServer fake;
        check_gone_relist(fake, "event");
    }

    TEST_CASE("reflector: 410 as the HTTP status of the watch relists too") {
        FakeServer fake;
        check_gone_relist(fake, "status");
        bool http_410 = false;
        for (const auto& r : fake.requests("watch")) http_410 |= r["status"] == 410;
        CHECK(http_410);
    }

    TEST_CASE("list: an expired continue token (410) lists again in one request") {
        FakeServer fake;
        seed_pods(fake, 5);
        auto client = Client::create(fake.config());
        REQUIRE(client.ok());
        Resource pods{.plural = "pods"};
        auto listed = list_collection(**client, pods, "v1", 2, milliseconds(5000), nullptr, {}, [&](unsigned pages) {
            if (pages != 1) return;
            fake.remove("v1", "Pod", "default", "p4");
            fake.control("compact", nlohmann::json::object());
        });
        REQUIRE_MESSAGE(listed.ok(), listed.error().describe());
        CHECK_FALSE(listed->failure.has_value());
        CHECK(listed->continue_expired);
        CHECK(listed->items.size() == 4);
        CHECK(listed->items.count("default/p4") == 0);
        const auto lists = fake.requests("list");
        REQUIRE(lists.size() == 3);
        CHECK(lists[1]["status"] == 410);
        CHECK(lists[1]["query"].contains("continue"));
        CHECK(lists[2]["status"] == 200);
        CHECK_FALSE(lists[2]["query"].contains("limit"));
    }

    TEST_CASE("reflector: 429 waits for Retry-After; 5xx on the watch backs off without relisting") {
        FakeServer fake;
        seed_pods(fake, 1);
        fake.control("faults", {{"status", 429}, {"count", 1}, {"verb", "list"}, {"retryAfter", 2}});
        fake.control("faults", {{"status", 503}, {"count", 2}, {"verb", "watch"}});
        const auto started = Clock::now();
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        CHECK(Clock::now() - started >= milliseconds(1900));
        REQUIRE(wait_until([&] { return fake.requests("watch").size() == 3; }));
        fake.upsert(pod("later"));
        REQUIRE(wait_until([&] { return w.has("default/later"); }));
        const ReflectorStats stats = w->stats();
        CHECK(stats.errors == 3);
        CHECK(stats.lists == 1);
        CHECK(stats.last_error == "");
    }

    TEST_CASE("reflector: a connection reset mid-event restarts the watch, without relisting") {
        FakeServer fake;
        seed_pods(fake, 2);
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        fake.control("watches/reset", {{"mode", "rst"}, {"partial", true}, {"pathPrefix", "/api/v1/pods"}});
        fake.upsert(pod("after-reset"));
        REQUIRE(wait_until([&] { return w.has("default/after-reset"); }));
        CHECK(w->stats().watch_restarts >= 1);
        CHECK(w->stats().lists == 1);
        CHECK(w.keys() == std::set<std::string>{"default/after-reset", "default/p0", "default/p1"});
    }

    TEST_CASE("reflector: a reset watch that opens again has recovered before any event") {
        FakeServer fake;
        fake.control("config", {{"bookmarkInterval", 600}});  // nothing but the 200 can clear it
        seed_pods(fake, 1);
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        const size_t watches = fake.requests("watch").size();
        fake.control("watches/reset", {{"mode", "rst"}, {"pathPrefix", "/api/v1/pods"}});
        REQUIRE(wait_until([&] { return w->stats().errors >= 1; }));
        // No event is sent: the new watch's 200 alone clears the failure.
        REQUIRE(wait_until([&] { return fake.requests("watch").size() > watches; }));
        CHECK(wait_until([&] { return w->stats().last_error.empty(); }));
        CHECK(w->stats().failing_since == std::chrono::system_clock::time_point{});
        CHECK(w->stats().lists == 1);
    }

    TEST_CASE("reflector: the transform cuts down listed and watched objects; a change it drops is no change") {
        FakeServer fake;
        seed_pods(fake, 5);
        Reflector::Options options = pods_options();
        options.page_size = 2;
        std::atomic<int> transformed{0};
        options.transform = [&transformed](nlohmann::json&& object) {
            ++transformed;
            nlohmann::json kept = {{"metadata",
                                    {{"name", object["metadata"]["name"]},
                                     {"namespace", object["metadata"]["namespace"]}}}};
            if (object["metadata"].contains("labels")) kept["metadata"]["labels"] = object["metadata"]["labels"];
            return kept;
        };
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w.synced(); }));
        CHECK(transformed == 5);
        CHECK(w.keys().size() == 5);
        for (const auto& [key, object] : *w->objects()) CHECK_FALSE(object.contains("spec"));
        // A change the transform drops (the spec) leaves the store and its revision as they are.
        const uint64_t revision = w->revision();
        nlohmann::json changed = pod("p0");
        changed["spec"]["containers"][0]["image"] = "busybox:2";
        fake.upsert(changed);
        REQUIRE(wait_until([&] { return transformed == 6; }));
        fake.upsert(pod("p9"));
        REQUIRE(wait_until([&] { return w.has("default/p9"); }));
        CHECK(w->revision() == revision + 1);  // p9 only
        // A change it keeps is one.
        nlohmann::json labelled = pod("p1");
        labelled["metadata"]["labels"] = {{"app", "x"}};
        fake.upsert(labelled);
        REQUIRE(wait_until([&] { return w->revision() == revision + 2; }));
        CHECK(w->objects()->at("default/p1")["metadata"]["labels"]["app"] == "x");
    }

    TEST_CASE("reflector: a stalled watch is restarted") {
        FakeServer fake;
        seed_pods(fake, 1);
        Reflector::Options options = pods_options();
        options.stall_timeout = milliseconds(2500);  // bookmarks come every second
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w.synced(); }));
        fake.control("watches/stall", {{"pathPrefix", "/api/v1/pods"}});
        fake.upsert(pod("while-stalled"));
        REQUIRE(wait_until([&] { return w.has("default/while-stalled"); }));
        const ReflectorStats stats = w->stats();
        CHECK(stats.watch_restarts == 1);
        CHECK(stats.lists == 1);
        CHECK(stats.errors == 1);  // the stall; last_error was cleared by the next watch's data
        fake.control("watches/release", nlohmann::json::object());
    }

    TEST_CASE("reflector: a rotated token is re-read on the 401") {
        FakeServer fake;
        seed_pods(fake, 1);
        Reflector::Options options = pods_options();
        options.watch_timeout = std::chrono::seconds(1);
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w.synced(); }));
        fake.rotate_token("token-2");
        fake.upsert(pod("rotated"));
        REQUIRE(wait_until([&] { return w.has("default/rotated"); }));
        REQUIRE(wait_until([&] { return w->stats().watch_restarts >= 2; }));
        bool unauthorized = false;
        for (const auto& r : fake.requests("watch")) unauthorized |= r["status"] == 401;
        CHECK(unauthorized);
        CHECK(w->stats().errors == 0);
    }

    TEST_CASE("reflector: a missing CRD is retried until installed, and missing again when removed") {
        FakeServer fake({"--uninstall-group", "policy.flomesh.io"});
        Reflector::Options options;
        options.resource = Resource{.group = "policy.flomesh.io", .plural = "egresses"};
        options.missing_retry = std::chrono::seconds(1);
        Watched w(fake, options);
        REQUIRE(wait_until([&] { return w->stats().missing; }));
        CHECK_FALSE(w.synced());
        CHECK(w->objects()->empty());
        fake.control("groups", {{"group", "policy.flomesh.io"}, {"installed", true}});
        fake.upsert({{"apiVersion", "policy.flomesh.io/v1alpha1"},
                     {"kind", "Egress"},
                     {"metadata", {{"name", "e1"}, {"namespace", "default"}}},
                     {"spec", {{"sources", nlohmann::json::array()}}}});
        REQUIRE(wait_until([&] { return w.has("default/e1"); }));
        ReflectorStats stats = w->stats();
        CHECK(stats.synced);
        CHECK_FALSE(stats.missing);
        CHECK(stats.served_version == "v1alpha1");
        fake.control("groups", {{"group", "policy.flomesh.io"}, {"installed", false}});
        REQUIRE(wait_until([&] { return w->stats().missing; }));
        CHECK(w->objects()->empty());
    }

    TEST_CASE("reflector: events split at every byte") {
        FakeServer fake;
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        fake.control("watches/split", {{"mode", "bytes"}});
        for (int i = 0; i < 3; ++i) fake.upsert(pod("b" + std::to_string(i)));
        REQUIRE(wait_until([&] { return w->objects()->size() == 3; }));
        CHECK(w->stats().errors == 0);
    }

    TEST_CASE("reflector: destruction aborts a long watch at once") {
        FakeServer fake;
        Watched w(fake, pods_options());
        REQUIRE(wait_until([&] { return w.synced(); }));
        REQUIRE(wait_until([&] { return fake.requests("watch").size() == 1; }));
        const auto started = Clock::now();
        w.stop();
        CHECK(Clock::now() - started < milliseconds(500));
    }
}

}  // namespace egressd::k8s
