// A small HTTP server for /metrics, /healthz and /readyz, wrapping
// cpp-httplib (kept out of this header).
//
// - Binds exactly the given address ("HOST:PORT", IPv6 as "[ADDR]:PORT"; HOST
//   is an IP literal, port 0 picks a free port) without SO_REUSEPORT, so a
//   second server on the same address fails instead of sharing the port.
// - Serves on its own threads: one accepting, a fixed pool of two handling
//   connections. One request per connection ("Connection: close"), so an idle
//   client cannot hold a worker between requests.
// - GET and HEAD only (anything else: 405 with "Allow: GET, HEAD"); paths are
//   matched exactly (the query string is not part of the match: a handler
//   taking a Request gets its decoded parameters); an unknown path is 404; a
//   handler that throws gives 500.
// - The destructor stops promptly: it closes the listening socket and shuts
//   down the connections in progress, then joins the threads.
//
// Note: cpp-httplib sets SIGPIPE to SIG_IGN for the whole process when a
// server is created.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "common/result.h"
#include "core/endpoint.h"

namespace egressd::observe {

struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

// What a handler may look at besides the path it was routed by.
// A client address (as the server reports it) on loopback: 127.0.0.0/8, ::1,
// or ::ffff:127.x.y.z.
bool is_loopback_address(const std::string& text);

struct Request {
    std::string path;
    // The query string's parameters, percent-decoded ("+" is a space), in order.
    std::multimap<std::string, std::string> params;
    // The client's address is a loopback one (127.0.0.0/8, ::1, ::ffff:127.x).
    bool from_loopback = false;

    // The first value of parameter `name`, if present.
    std::optional<std::string> param(const std::string& name) const {
        const auto it = params.find(name);
        if (it == params.end()) return std::nullopt;
        return it->second;
    }
};

// Runs on the server's threads, possibly two at once: it must be thread-safe
// and quick (it holds a worker, and the destructor waits for it). Built from
// any callable `Response()` or `Response(const Request&)`.
class Handler {
public:
    Handler() = default;
    template <typename F>
    requires(!std::is_same_v<std::decay_t<F>, Handler> && std::is_invocable_r_v<Response, F&, const Request&>)
        Handler(F f)
        : function_(std::move(f)) {}
    template <typename F>
    requires(!std::is_same_v<std::decay_t<F>, Handler> && !std::is_invocable_r_v<Response, F&, const Request&> &&
             std::is_invocable_r_v<Response, F&>) Handler(F f)
        : function_([f = std::move(f)](const Request&) mutable { return f(); }) {}

    Response operator()(const Request& request) const { return function_(request); }
    explicit operator bool() const { return static_cast<bool>(function_); }

private:
    std::function<Response(const Request&)> function_;
};
using Routes = std::map<std::string, Handler>;  // exact path ("/metrics") -> handler

// A listening address: "HOST:PORT" or "[IPV6]:PORT", port 0 for any free one.
using ListenAddress = Endpoint;

// Parses "HOST:PORT" / "[IPV6]:PORT". HOST must be an IP address (no names:
// the server binds exactly one address).
Result<ListenAddress> parse_listen_address(const std::string& text);

class HttpServer {
public:
    static constexpr int kThreads = 2;  // connection handlers (plus one accepting thread)

    // Binds and starts serving. Errors name the address; a failed bind carries
    // its errno (EADDRINUSE, EADDRNOTAVAIL, EACCES, ...).
    static Result<std::unique_ptr<HttpServer>> start(const std::string& address, Routes routes);

    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // The port actually bound (useful with port 0).
    uint16_t port() const;
    // The address actually bound, "HOST:PORT".
    std::string address() const;

    struct Impl;

private:
    explicit HttpServer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace egressd::observe
