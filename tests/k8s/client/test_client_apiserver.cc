// Client against tests/k8s/fake_apiserver.py: TLS, tokens, GET, PATCH, streams.
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <thread>

#include "fake_server.h"
#include "k8s/http_client.h"

namespace egressd::k8s {

using k8stest::FakeServer;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

std::shared_ptr<Client> make_client(const ClusterConfig& config) {
    auto client = Client::create(config);
    REQUIRE_MESSAGE(client.ok(), client.error().describe());
    return *client;
}

std::string base64(const std::string& data) {
    static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < data.size(); i += 3) {
        uint32_t n = uint8_t(data[i]) << 16;
        if (i + 1 < data.size()) n |= uint8_t(data[i + 1]) << 8;
        if (i + 2 < data.size()) n |= uint8_t(data[i + 2]);
        out += table[(n >> 18) & 63];
        out += table[(n >> 12) & 63];
        out += i + 1 < data.size() ? table[(n >> 6) & 63] : '=';
        out += i + 2 < data.size() ? table[n & 63] : '=';
    }
    return out;
}

}  // namespace

TEST_SUITE("apiserver") {
    TEST_CASE("client: GET and merge PATCH over TLS with a bearer token") {
        FakeServer fake;
        auto client = make_client(fake.config());
        auto version = client->get("/version", milliseconds(5000));
        REQUIRE_MESSAGE(version.ok(), version.error().describe());
        CHECK(version->status == 200);
        CHECK(nlohmann::json::parse(version->body).contains("gitVersion"));
        auto missing = client->get("/api/v1/namespaces/default/pods/absent", milliseconds(5000));
        REQUIRE(missing.ok());
        CHECK(missing->status == 404);
        auto patched = client->merge_patch("/api/v1/namespaces/default",
                                           {{"metadata", {{"labels", {{"egressd.test/x", "y"}}}}}}, milliseconds(5000));
        REQUIRE_MESSAGE(patched.ok(), patched.error().describe());
        CHECK(patched->status == 200);
        auto ns = client->get("/api/v1/namespaces/default", milliseconds(5000));
        REQUIRE(ns.ok());
        CHECK(nlohmann::json::parse(ns->body)["metadata"]["labels"]["egressd.test/x"] == "y");
        const auto patches = fake.requests("patch");
        REQUIRE(patches.size() == 1);
        CHECK(patches[0]["status"] == 200);
    }

    TEST_CASE("client: the server certificate is verified; a wrong token is a 401") {
        FakeServer fake;
        ClusterConfig system_cas = fake.config();
        system_cas.ca_file.clear();
        auto untrusted = make_client(system_cas)->get("/version", milliseconds(5000));
        REQUIRE_FALSE(untrusted.ok());
        CHECK(untrusted.error().message.find("GET /version") == 0);
        ClusterConfig wrong = fake.config();
        wrong.token_file.clear();
        wrong.token = "wrong";
        auto denied = make_client(wrong)->get("/api/v1/pods", milliseconds(5000));
        REQUIRE(denied.ok());
        CHECK(denied->status == 401);
        ClusterConfig absent = fake.config();
        absent.token_file = (fake.dir() / "no-such-token").string();
        CHECK_FALSE(Client::create(absent).ok());
    }

    TEST_CASE("client: a kubeconfig with CA data and a tokenFile works end to end") {
        FakeServer fake;
        const std::string ca = [&] {
            std::ifstream in(fake.dir() / "ca.crt");
            return std::string(std::istreambuf_iterator<char>(in), {});
        }();
        const auto path = fake.dir().write("kube/config",
                                           "current-context: test\n"
                                           "contexts: [{name: test, context: {cluster: fake, user: me}}]\n"
                                           "clusters: [{name: fake, cluster: {server: '" +
                                               fake.url() + "', certificate-authority-data: " + base64(ca) +
                                               "}}]\n"
                                               "users: [{name: me, user: {tokenFile: ../client-token}}]\n");
        auto config = load_kubeconfig(path);
        REQUIRE_MESSAGE(config.ok(), config.error().describe());
        CHECK(config->ca_file.empty());
        auto pods = make_client(*config)->get("/api/v1/pods", milliseconds(5000));
        REQUIRE_MESSAGE(pods.ok(), pods.error().describe());
        CHECK(pods->status == 200);
    }

    TEST_CASE("client: a 401 re-reads the token file and retries once") {
        FakeServer fake;
        auto client = make_client(fake.config());
        REQUIRE(client->get("/api/v1/pods", milliseconds(5000))->status == 200);
        fake.rotate_token("token-2");  // within the 60 s the client keeps its token
        auto pods = client->get("/api/v1/pods", milliseconds(5000));
        REQUIRE(pods.ok());
        CHECK(pods->status == 200);
        const auto lists = fake.requests("list");
        REQUIRE(lists.size() == 3);
        CHECK(lists[1]["status"] == 401);
        CHECK(lists[2]["status"] == 200);
    }

    TEST_CASE("client: 429 carries Retry-After") {
        FakeServer fake;
        fake.control("faults", {{"status", 429}, {"count", 1}, {"verb", "list"}, {"retryAfter", 3}});
        auto client = make_client(fake.config());
        auto response = client->get("/api/v1/pods", milliseconds(5000));
        REQUIRE(response.ok());
        CHECK(response->status == 429);
        REQUIRE(response->retry_after_seconds.has_value());
        CHECK(*response->retry_after_seconds == doctest::Approx(3.0));
        CHECK_FALSE(client->get("/api/v1/pods", milliseconds(5000))->retry_after_seconds.has_value());
    }

    TEST_CASE("client: a stream delivers chunks until on_data returns false") {
        FakeServer fake;
        auto client = make_client(fake.config());
        std::atomic<bool> stop{false};
        std::string received;
        auto response = client->stream(
            "/api/v1/namespaces?watch=1",
            [&](std::string_view chunk) {
                received.append(chunk);
                return received.find("kube-system") == std::string::npos;
            },
            milliseconds(5000), stop);
        REQUIRE_MESSAGE(response.ok(), response.error().describe());
        CHECK(response->status == 200);
        CHECK(received.find("\"ADDED\"") != std::string::npos);
        auto absent = client->stream(
            "/apis/nowhere.example.com/v1/things?watch=1", [](std::string_view) { return true; }, milliseconds(5000),
            stop);
        REQUIRE(absent.ok());
        CHECK(absent->status == 404);
        CHECK(absent->body.find("Status") != std::string::npos);
    }

    TEST_CASE("client: a stream ends on stop at once after interrupt, and when stalled") {
        FakeServer fake;
        auto client = make_client(fake.config());
        std::atomic<bool> stop{false};
        const auto watch = "/api/v1/namespaces?watch=1&allowWatchBookmarks=true";
        std::thread stopper([&] {
            std::this_thread::sleep_for(milliseconds(300));
            stop = true;
            client->interrupt(stop);
        });
        const auto started = Clock::now();
        auto stopped = client->stream(
            watch, [](std::string_view) { return true; }, milliseconds(60000), stop);
        stopper.join();
        CHECK(Clock::now() - started < milliseconds(900));
        REQUIRE_FALSE(stopped.ok());
        CHECK(stopped.error().errnum == kStopped);

        fake.control("watches/stall", {{"pathPrefix", "/api/v1/namespaces"}, {"future", true}});
        std::atomic<bool> running{false};
        auto stalled = client->stream(
            watch, [](std::string_view) { return true; }, milliseconds(700), running);
        REQUIRE_FALSE(stalled.ok());
        CHECK(stalled.error().errnum == kStalled);
        CHECK(stalled.error().message.find("stalled") != std::string::npos);
        fake.control("watches/release", nlohmann::json::object());
    }
}

}  // namespace egressd::k8s
