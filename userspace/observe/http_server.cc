#include "observe/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "common/fd.h"
#include "common/log.h"
#include "core/net.h"

namespace egressd::observe {

namespace {

constexpr const char* kTextPlain = "text/plain; charset=utf-8";
// Bounds on how long one connection can occupy a worker. One request per
// connection: keep_alive_timeout bounds the wait for the request to start.
constexpr time_t kKeepAliveTimeoutSeconds = 2;
constexpr time_t kReadTimeoutSeconds = 2;
constexpr time_t kWriteTimeoutSeconds = 2;
constexpr size_t kMaxPayload = 64 * 1024;

bool same_endpoint_or_wildcard(const sockaddr_storage& mine, const sockaddr_storage& other) {
    if (mine.ss_family != other.ss_family) return false;
    if (mine.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(mine);
        const auto& b = reinterpret_cast<const sockaddr_in&>(other);
        return a.sin_port == b.sin_port &&
               (a.sin_addr.s_addr == htonl(INADDR_ANY) || a.sin_addr.s_addr == b.sin_addr.s_addr);
    }
    if (mine.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(mine);
        const auto& b = reinterpret_cast<const sockaddr_in6&>(other);
        return a.sin6_port == b.sin6_port && (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr) ||
                                              std::memcmp(&a.sin6_addr, &b.sin6_addr, sizeof a.sin6_addr) == 0);
    }
    return false;
}

// cpp-httplib 0.11 does not look at stop() while a worker waits for a request,
// reads or writes: it waits for its timeouts. Connections accepted by our
// listening socket are the connected stream sockets of this process whose local
// endpoint is the listening one; shutting them down makes every such wait end
// at once (httplib still closes them).
void shutdown_connections(const sockaddr_storage& listening) {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) return;
    const int own = ::dirfd(dir);
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        const int fd = std::atoi(entry->d_name);
        if (fd == own) continue;
        int value = 0;
        socklen_t length = sizeof value;
        if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) != 0 || value != SOCK_STREAM) continue;
        length = sizeof value;
        if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) != 0 || value != 0) continue;
        sockaddr_storage local{};
        socklen_t local_length = sizeof local;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) continue;
        if (!same_endpoint_or_wildcard(listening, local)) continue;
        sockaddr_storage peer{};
        socklen_t peer_length = sizeof peer;
        if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) continue;
        ::shutdown(fd, SHUT_RDWR);
    }
    ::closedir(dir);
}

// The errno of binding `address` as httplib does (SO_REUSEADDR, no SO_REUSEPORT);
// 0 if that bind succeeds.
int probe_bind_errno(const ListenAddress& address) {
    UniqueFd fd(::socket(address.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return errno;
    int yes = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    sockaddr_storage storage{};
    socklen_t length = 0;
    if (address.family == AF_INET) {
        auto& sin = reinterpret_cast<sockaddr_in&>(storage);
        sin.sin_family = AF_INET;
        sin.sin_port = htons(address.port);
        ::inet_pton(AF_INET, address.host.c_str(), &sin.sin_addr);
        length = sizeof sin;
    } else {
        auto& sin6 = reinterpret_cast<sockaddr_in6&>(storage);
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(address.port);
        ::inet_pton(AF_INET6, address.host.c_str(), &sin6.sin6_addr);
        length = sizeof sin6;
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) != 0) return errno;
    return 0;
}

}  // namespace

bool is_loopback_address(const std::string& text) {
    auto address = IpAddress::parse(text);
    if (!address) return false;
    return Cidr::parse("127.0.0.0/8")->contains(*address) || text == "::1";
}

Result<ListenAddress> parse_listen_address(const std::string& text) {
    auto address = parse_endpoint(text, {.default_port = std::nullopt, .port_zero = true});
    if (!address) return make_error(fmt::format("invalid listen address \"{}\": {}", text, address.error().message));
    return *address;
}

struct HttpServer::Impl {
    httplib::Server server;
    Routes routes;
    ListenAddress address;  // the port is the bound one
    std::atomic<int> listening_fd{-1};
    sockaddr_storage listening{};  // local endpoint of the listening socket

    std::thread thread;
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;  // the accepting thread has returned (its workers joined)
    std::atomic<bool> stopping{false};

    bool wait_done(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex);
        return cv.wait_for(lock, timeout, [this] { return done; });
    }

    // Limits, timeouts, socket options and the one handler of every request.
    void configure() {
        server.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
        // httplib's default sets SO_REUSEPORT, which lets a second server bind the
        // same address and silently share the port. SO_REUSEADDR only allows a
        // restart while old connections are in TIME_WAIT.
        server.set_socket_options([this](socket_t fd) {
            int yes = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
            listening_fd = fd;
        });
        server.set_keep_alive_max_count(1);
        server.set_keep_alive_timeout(kKeepAliveTimeoutSeconds);
        server.set_read_timeout(kReadTimeoutSeconds, 0);
        server.set_write_timeout(kWriteTimeoutSeconds, 0);
        server.set_payload_max_length(kMaxPayload);
        server.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
            handle(request, response);
            return httplib::Server::HandlerResponse::Handled;
        });
    }

    // Binds the address (port 0: any port, then recorded in `address`). On
    // failure the error has the bind's errno, which httplib does not keep.
    Status bind() {
        errno = 0;
        bool bound;
        if (address.port == 0) {
            const int port = server.bind_to_any_port(address.host, AI_NUMERICHOST);
            bound = port > 0;
            if (bound) address.port = static_cast<uint16_t>(port);
        } else {
            bound = server.bind_to_port(address.host, address.port, AI_NUMERICHOST);
        }
        if (!bound) {
            const int httplib_errno = errno;
            int err = probe_bind_errno(address);
            if (err == 0) err = httplib_errno;
            const std::string what = fmt::format("HTTP server: cannot listen on {}", address.str());
            return err != 0 ? system_error(what, err) : make_error(what);
        }
        socklen_t length = sizeof listening;
        if (::getsockname(listening_fd, reinterpret_cast<sockaddr*>(&listening), &length) != 0) {
            const int err = errno;
            ::close(listening_fd);  // httplib::Server does not close a socket it never listened on
            return system_error(fmt::format("HTTP server: getsockname on {}", address.str()), err);
        }
        return {};
    }

    // Accepts connections on a thread of its own, and returns once it runs:
    // stop() only acts on a running accept loop, and the destructor must not
    // miss it.
    void serve_in_background() {
        thread = std::thread([this] {
            const bool clean = server.listen_after_bind();
            if (!clean && !stopping) {
                log::error("HTTP server on {}: accepting connections failed; not serving any more", address.str());
            }
            std::lock_guard lock(mutex);
            done = true;
            cv.notify_all();
        });
        while (!server.is_running()) {
            {
                std::lock_guard lock(mutex);
                if (done) break;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    }

    void handle(const httplib::Request& request, httplib::Response& response) const {
        if (request.method != "GET" && request.method != "HEAD") {
            response.status = 405;
            response.set_header("Allow", "GET, HEAD");
            response.set_content("method not allowed\n", kTextPlain);
            return;
        }
        const auto it = routes.find(request.path);
        if (it == routes.end()) {
            response.status = 404;
            response.set_content("not found\n", kTextPlain);
            return;
        }
        Request handler_request{
            request.path, {request.params.begin(), request.params.end()}, is_loopback_address(request.remote_addr)};
        Response result;
        try {
            result = it->second(handler_request);
        } catch (const std::exception& e) {
            result = Response{500, kTextPlain, fmt::format("internal error: {}\n", e.what())};
        } catch (...) {
            result = Response{500, kTextPlain, "internal error\n"};
        }
        response.status = result.status;
        response.set_content(std::move(result.body), result.content_type.c_str());
    }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::start(const std::string& text, Routes routes) {
    auto parsed = parse_listen_address(text);
    if (!parsed.ok()) return parsed.error();
    auto impl = std::make_unique<Impl>();
    impl->routes = std::move(routes);
    impl->address = *parsed;
    impl->configure();
    if (auto status = impl->bind(); !status) return status.error();
    impl->serve_in_background();
    return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::~HttpServer() {
    impl_->stopping = true;
    impl_->server.stop();  // closes the listening socket: no new connections
    // Workers wait on the connections they hold (see shutdown_connections); end
    // those, again until the accepting thread has joined its workers, in case a
    // connection was accepted just before the listening socket closed.
    while (!impl_->wait_done(std::chrono::milliseconds(0))) {
        shutdown_connections(impl_->listening);
        if (impl_->wait_done(std::chrono::milliseconds(10))) break;
    }
    impl_->thread.join();
}

uint16_t HttpServer::port() const { return impl_->address.port; }

std::string HttpServer::address() const { return impl_->address.str(); }

}  // namespace egressd::observe
