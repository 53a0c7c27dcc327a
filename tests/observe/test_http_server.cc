// HttpServer on loopback only: every connection goes to 127.0.0.1 or ::1.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>

#include "common/fd.h"
#include "loopback_http.h"
#include "observe/http_server.h"

using namespace egressd;
using namespace egressd::observe;
using namespace egressd::testhttp;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<HttpServer> must_start(const std::string& address, Routes routes) {
    auto server = HttpServer::start(address, std::move(routes));
    if (!server.ok()) FAIL(server.error().describe());
    return std::move(server).value();
}

Routes simple_routes() {
    return {{"/healthz", [] { return Response{200, "text/plain; charset=utf-8", "ok\n"}; }}};
}

// A plain listening socket on 127.0.0.1 with a free port.
UniqueFd plain_listener(uint16_t& port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd.valid());
    socklen_t length = 0;
    sockaddr_storage address = loopback(AF_INET, 0, length);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), length) == 0);
    REQUIRE(::listen(fd.get(), 1) == 0);
    length = sizeof address;
    REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
    port = ntohs(reinterpret_cast<sockaddr_in&>(address).sin_port);
    return fd;
}

bool ipv6_loopback_available() {
    UniqueFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return false;
    socklen_t length = 0;
    sockaddr_storage address = loopback(AF_INET6, 0, length);
    return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), length) == 0;
}

}  // namespace

TEST_CASE("parse_listen_address") {
    SUBCASE("valid") {
        struct Case {
            const char* text;
            int family;
            const char* host;
            uint16_t port;
        };
        const Case cases[] = {
            {"127.0.0.1:9477", AF_INET, "127.0.0.1", 9477}, {"0.0.0.0:0", AF_INET, "0.0.0.0", 0},
            {"[::1]:9477", AF_INET6, "::1", 9477},          {"[::]:65535", AF_INET6, "::", 65535},
            {"[fd00::1:2]:80", AF_INET6, "fd00::1:2", 80},
        };
        for (const auto& c : cases) {
            CAPTURE(std::string(c.text));
            const auto parsed = parse_listen_address(c.text);
            if (!parsed.ok()) FAIL(parsed.error().describe());
            CHECK(parsed->family == c.family);
            CHECK(parsed->host == c.host);
            CHECK(parsed->port == c.port);
            CHECK(parsed->str() == c.text);
        }
    }
    SUBCASE("invalid, with the reason") {
        struct Case {
            const char* text;
            const char* message;
        };
        const Case cases[] = {
            {"", "invalid listen address \"\": expected HOST:PORT"},
            {"127.0.0.1", "invalid listen address \"127.0.0.1\": expected HOST:PORT"},
            {":9477",
             "invalid listen address \":9477\": missing host (for a listening address, 0.0.0.0 or [::] means every "
             "address)"},
            {"localhost:9477", "invalid listen address \"localhost:9477\": \"localhost\" is not an IP address"},
            {"127.1:9477", "invalid listen address \"127.1:9477\": \"127.1\" is not an IP address"},
            {"::1:9477", "invalid listen address \"::1:9477\": an IPv6 address must be in brackets, as in [::1]:9477"},
            {"[::1]", "invalid listen address \"[::1]\": expected \":PORT\" after \"]\""},
            {"[::1:9477", "invalid listen address \"[::1:9477\": missing \"]\""},
            {"[127.0.0.1]:80", "invalid listen address \"[127.0.0.1]:80\": \"127.0.0.1\" is not an IPv6 address"},
            {"127.0.0.1:", "invalid listen address \"127.0.0.1:\": port \"\" is not a number from 0 to 65535"},
            {"127.0.0.1:65536",
             "invalid listen address \"127.0.0.1:65536\": port \"65536\" is not a number from 0 to 65535"},
            {"127.0.0.1:-1", "invalid listen address \"127.0.0.1:-1\": port \"-1\" is not a number from 0 to 65535"},
            {"127.0.0.1:http",
             "invalid listen address \"127.0.0.1:http\": port \"http\" is not a number from 0 to 65535"},
            {"127.0.0.1:0009477",
             "invalid listen address \"127.0.0.1:0009477\": port \"0009477\" is not a number from 0 to 65535"},
        };
        for (const auto& c : cases) {
            CAPTURE(std::string(c.text));
            const auto parsed = parse_listen_address(c.text);
            REQUIRE_FALSE(parsed.ok());
            CHECK(parsed.error().message == c.message);
        }
    }
}

TEST_CASE("HttpServer: routes, status codes, bodies and content types") {
    std::atomic<bool> ready{false};
    Routes routes{
        {"/healthz",
         [] {
             return Response{200, "text/plain; charset=utf-8", "ok\n"};
         }},
        {"/readyz",
         [&] {
             return ready ? Response{200, "text/plain; charset=utf-8", "ready\n"}
                          : Response{503, "text/plain; charset=utf-8", "programs not attached\n"};
         }},
        {"/metrics",
         [] {
             return Response{200, "text/plain; version=0.0.4; charset=utf-8", "# a metric body\n"};
         }},
        {"/boom", []() -> Response { throw std::runtime_error("boom"); }},
    };
    auto server = must_start("127.0.0.1:0", std::move(routes));
    const uint16_t port = server->port();
    REQUIRE(port != 0);
    CHECK(server->address() == "127.0.0.1:" + std::to_string(port));

    SUBCASE("200 with the handler's body and content type") {
        Reply reply = get(port, "/healthz");
        CHECK(reply.status == 200);
        CHECK(reply.body == "ok\n");
        CHECK(reply.header("content-type") == "text/plain; charset=utf-8");
        CHECK(reply.header("content-length") == "3");
        CHECK(reply.header("connection") == "close");  // one request per connection

        reply = get(port, "/metrics");
        CHECK(reply.status == 200);
        CHECK(reply.body == "# a metric body\n");
        CHECK(reply.header("content-type") == "text/plain; version=0.0.4; charset=utf-8");
    }
    SUBCASE("the handler decides each time: 503 with its reason, then 200") {
        Reply reply = get(port, "/readyz");
        CHECK(reply.status == 503);
        CHECK(reply.body == "programs not attached\n");
        ready = true;
        reply = get(port, "/readyz");
        CHECK(reply.status == 200);
        CHECK(reply.body == "ready\n");
    }
    SUBCASE("unknown paths are 404; paths are exact; the query string is ignored") {
        for (const char* target : {"/", "/nope", "/healthz/", "/HEALTHZ", "/metricsx", "/.*"}) {
            CAPTURE(std::string(target));
            const Reply reply = get(port, target);
            CHECK(reply.status == 404);
            CHECK(reply.body == "not found\n");
        }
        const Reply reply = get(port, "/healthz?verbose=1");
        CHECK(reply.status == 200);
        CHECK(reply.body == "ok\n");
    }
    SUBCASE("HEAD has the headers of GET and no body") {
        const Reply reply = request(port, "HEAD", "/metrics");
        CHECK(reply.status == 200);
        CHECK(reply.body.empty());
        CHECK(reply.header("content-length") == "16");
        CHECK(reply.header("content-type") == "text/plain; version=0.0.4; charset=utf-8");
    }
    SUBCASE("other methods are 405 with Allow") {
        for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
            CAPTURE(std::string(method));
            const Reply reply = request(port, method, "/metrics");
            CHECK(reply.status == 405);
            CHECK(reply.header("allow") == "GET, HEAD");
            CHECK(reply.body == "method not allowed\n");
        }
    }
    SUBCASE("a handler that throws gives 500, and the server goes on") {
        const Reply reply = get(port, "/boom");
        CHECK(reply.status == 500);
        CHECK(reply.body == "internal error: boom\n");
        CHECK(get(port, "/healthz").status == 200);
    }
    SUBCASE("many requests in a row") {
        for (int i = 0; i < 100; ++i) REQUIRE(get(port, "/healthz").status == 200);
    }
}

TEST_CASE("HttpServer: slow clients hold a worker for a bounded time") {
    auto server = must_start("127.0.0.1:0", simple_routes());
    UniqueFd idle = connect_loopback(server->port());  // connected, sends nothing: holds one worker
    REQUIRE(idle.valid());
    UniqueFd partial = connect_loopback(server->port());
    REQUIRE(partial.valid());
    send_all(partial.get(), "GET /healthz HTTP/1.1\r\n");  // never finished: holds the other worker
    std::this_thread::sleep_for(50ms);
    // Both workers are busy; the next request waits for the 2 s bounds on
    // waiting for a request and reading it, not indefinitely.
    const auto start = Clock::now();
    CHECK(get(server->port(), "/healthz").status == 200);
    const auto took = elapsed_ms(start);
    CHECK(took >= 1500);  // it did wait for a worker: the pool is that small
    CHECK(took < 3500);
    // The server gave up on both slow clients.
    CHECK(read_to_eof(idle.get()).empty());
}

TEST_CASE("HttpServer: a request sent in pieces is served") {
    auto server = must_start("127.0.0.1:0", simple_routes());
    UniqueFd fd = connect_loopback(server->port());
    REQUIRE(fd.valid());
    send_all(fd.get(), "GET /healthz HTTP/1.1\r\n");
    std::this_thread::sleep_for(300ms);
    send_all(fd.get(), "Host: localhost\r\n");
    std::this_thread::sleep_for(300ms);
    send_all(fd.get(), "\r\n");
    const Reply reply = parse_reply(read_to_eof(fd.get()));
    CHECK(reply.status == 200);
    CHECK(reply.body == "ok\n");
}

TEST_CASE("HttpServer: a connection is served while another one is idle") {
    auto server = must_start("127.0.0.1:0", simple_routes());
    UniqueFd idle = connect_loopback(server->port());
    REQUIRE(idle.valid());
    std::this_thread::sleep_for(50ms);
    const auto start = Clock::now();
    CHECK(get(server->port(), "/healthz").status == 200);
    CHECK(elapsed_ms(start) < 500);  // the second worker answers at once
}

TEST_CASE("HttpServer: binds only the given address") {
    auto server = must_start("127.0.0.1:0", simple_routes());
    // Were it bound to 0.0.0.0, binding 127.0.0.2 on the same port would fail.
    // (Only bind; nothing connects there.)
    UniqueFd other(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(other.valid());
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(server->port());
    REQUIRE(::inet_pton(AF_INET, "127.0.0.2", &address.sin_addr) == 1);
    const int rc = ::bind(other.get(), reinterpret_cast<sockaddr*>(&address), sizeof address);
    const int err = errno;
    CHECK_MESSAGE(rc == 0, std::strerror(err));
}

TEST_CASE("HttpServer: IPv6 loopback") {
    if (!ipv6_loopback_available()) {
        MESSAGE("::1 is not available here; IPv6 not tested");
        return;
    }
    auto server = must_start("[::1]:0", simple_routes());
    CHECK(server->address() == "[::1]:" + std::to_string(server->port()));
    const Reply reply = request(server->port(), "GET", "/healthz", AF_INET6);
    CHECK(reply.status == 200);
    CHECK(reply.body == "ok\n");
    // ::1 only: IPv4 loopback on that port is refused.
    CHECK_FALSE(connect_loopback(server->port(), AF_INET).valid());
}

TEST_CASE("HttpServer: bind failures are errors with errno and the address") {
    SUBCASE("a port in use by another socket") {
        uint16_t port = 0;
        UniqueFd holder = plain_listener(port);
        const std::string address = "127.0.0.1:" + std::to_string(port);
        const auto server = HttpServer::start(address, simple_routes());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().errnum == EADDRINUSE);
        CHECK(server.error().message == "HTTP server: cannot listen on " + address);
        CHECK(server.error().describe() ==
              "HTTP server: cannot listen on " + address + ": " + std::strerror(EADDRINUSE));
    }
    SUBCASE("a port in use by another HttpServer (no SO_REUSEPORT sharing)") {
        auto first = must_start("127.0.0.1:0", simple_routes());
        const auto second = HttpServer::start(first->address(), simple_routes());
        REQUIRE_FALSE(second.ok());
        CHECK(second.error().errnum == EADDRINUSE);
        // The first one is unaffected.
        CHECK(get(first->port(), "/healthz").status == 200);
    }
    SUBCASE("an address of no local interface") {
        const auto server = HttpServer::start("192.0.2.1:0", simple_routes());  // TEST-NET-1; bind only
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().errnum == EADDRNOTAVAIL);
        CHECK(server.error().message == "HTTP server: cannot listen on 192.0.2.1:0");
    }
    SUBCASE("a malformed address") {
        const auto server = HttpServer::start("localhost:9477", simple_routes());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().errnum == 0);
        CHECK(server.error().message ==
              "invalid listen address \"localhost:9477\": \"localhost\" is not an IP address");
    }
}

TEST_CASE("HttpServer: the port is free again after the server is gone") {
    uint16_t port = 0;
    {
        auto server = must_start("127.0.0.1:0", simple_routes());
        port = server->port();
        CHECK(get(port, "/healthz").status == 200);
    }
    int error = 0;
    CHECK_FALSE(connect_loopback(port, AF_INET, &error).valid());
    CHECK(error == ECONNREFUSED);
    // ... and can be bound again at once (SO_REUSEADDR, despite TIME_WAIT).
    auto again = must_start("127.0.0.1:" + std::to_string(port), simple_routes());
    CHECK(get(port, "/healthz").status == 200);
}

TEST_CASE("HttpServer: stops promptly") {
    SUBCASE("idle") {
        auto server = must_start("127.0.0.1:0", simple_routes());
        CHECK(get(server->port(), "/healthz").status == 200);
        const auto start = Clock::now();
        server.reset();
        CHECK(elapsed_ms(start) < 200);
    }
    SUBCASE("right after start") {
        for (int i = 0; i < 20; ++i) {
            auto server = must_start("127.0.0.1:0", simple_routes());
            const auto start = Clock::now();
            server.reset();
            CHECK(elapsed_ms(start) < 200);
        }
    }
    SUBCASE("with connections in progress: idle, a partial request, and one waiting for a worker") {
        auto server = must_start("127.0.0.1:0", simple_routes());
        const uint16_t port = server->port();
        UniqueFd idle = connect_loopback(port);
        UniqueFd partial = connect_loopback(port);
        UniqueFd queued = connect_loopback(port);
        REQUIRE(idle.valid());
        REQUIRE(partial.valid());
        REQUIRE(queued.valid());
        send_all(partial.get(), "GET /healthz HTTP/1.1\r\nHost: loc");
        std::this_thread::sleep_for(100ms);  // the workers are waiting on them
        const auto start = Clock::now();
        server.reset();
        const auto took = elapsed_ms(start);
        CHECK(took < 200);
        // The connections were closed by the server: each sees the end of the stream.
        for (int fd : {idle.get(), partial.get(), queued.get()}) {
            pollfd p{fd, POLLIN, 0};
            REQUIRE(::poll(&p, 1, 1000) == 1);
            char byte;
            const ssize_t n = ::recv(fd, &byte, 1, 0);
            const int error = errno;
            CHECK((n == 0 || (n < 0 && error == ECONNRESET)));
        }
        CHECK_FALSE(connect_loopback(port).valid());
    }
}

TEST_CASE("http: which client addresses are loopback (for /events)") {
    for (const char* yes : {"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"})
        CHECK_MESSAGE(observe::is_loopback_address(yes), yes);
    for (const char* no : {"10.244.1.7", "198.18.255.1", "::2", "2001:db8::1", "::ffff:10.0.0.1", "", "localhost"})
        CHECK_MESSAGE(!observe::is_loopback_address(no), no);
}
