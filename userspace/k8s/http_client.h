// HTTPS requests to the Kubernetes API server (libcurl, HTTP/1.1): GET,
// merge PATCH and streamed GETs for watches, with bearer tokens that rotate.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "k8s/cluster_config.h"

namespace egressd::k8s {

struct HttpResponse {
    long status = 0;
    std::string body;  // for stream(): only when status is not 200
    std::optional<double> retry_after_seconds;
};

// errnum of stream()'s error when no byte arrived for stall_timeout, and of
// any request ended because its `stop` became true.
inline constexpr int kStalled = ETIMEDOUT;
inline constexpr int kStopped = ECANCELED;

// The bearer token: static, or a file re-read at most every 60 s and at once
// after invalidate() (a 401: the kubelet rotated it).
class TokenSource {
public:
    explicit TokenSource(const ClusterConfig& config) : file_(config.token_file), token_(config.token) {}
    Result<std::string> token();
    void invalidate();
    bool from_file() const { return !file_.empty(); }

private:
    std::string file_;
    std::mutex mutex_;
    std::string token_;
    std::chrono::steady_clock::time_point read_at_{};
    bool fresh_ = false;
};

class Client {
public:
    static Result<std::shared_ptr<Client>> create(ClusterConfig config);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // A request also ends, with an error of errnum kStopped, when `stop`
    // becomes true: at once after interrupt(*stop), else within a second.
    Result<HttpResponse> get(const std::string& path_and_query, std::chrono::milliseconds timeout,
                             const std::atomic<bool>* stop = nullptr);
    // application/merge-patch+json (RFC 7386).
    Result<HttpResponse> merge_patch(const std::string& path, const nlohmann::json& patch,
                                     std::chrono::milliseconds timeout, const std::atomic<bool>* stop = nullptr);
    // Streams a GET (a watch): on_data gets every received chunk (split
    // anywhere) until the server ends the response, on_data returns false,
    // `stop` becomes true, or no byte arrived for `stall_timeout` (an error
    // of errnum kStalled, saying "stalled"). Returns the HTTP status, and the
    // body when it is not 200. `on_open` runs when a 200's headers are in:
    // the server took the request, before any event.
    Result<HttpResponse> stream(const std::string& path_and_query, const std::function<bool(std::string_view)>& on_data,
                                std::chrono::milliseconds stall_timeout, const std::atomic<bool>& stop,
                                const std::function<void()>& on_open = {});
    // Wakes the requests running with this `stop` flag, which the caller has
    // set, so that they end now rather than within a second.
    void interrupt(const std::atomic<bool>& stop);

    const ClusterConfig& config() const { return config_; }

private:
    struct Handle;
    struct Request;
    explicit Client(ClusterConfig config);

    Result<HttpResponse> perform_with_auth(Request& request);
    Result<HttpResponse> perform(Request& request);
    void configure(Handle& handle, Request& request);
    Result<HttpResponse> run(Handle& handle, Request& request);
    std::unique_ptr<Handle> acquire();
    void release(std::unique_ptr<Handle> handle);

    ClusterConfig config_;
    TokenSource tokens_;
    std::mutex pool_mutex_;
    std::vector<std::unique_ptr<Handle>> idle_;  // kept for their open connections
    std::mutex running_mutex_;
    std::multimap<const std::atomic<bool>*, Handle*> running_;
};

}  // namespace egressd::k8s
