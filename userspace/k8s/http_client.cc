#include "k8s/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

#include "common/log.h"
#include "core/files.h"

#ifndef EGRESSD_VERSION
#define EGRESSD_VERSION "dev"
#endif

namespace egressd::k8s {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTokenRereadPeriod = std::chrono::seconds(60);
constexpr size_t kMaxBody = size_t{512} << 20;     // a LIST page of big objects, with room
constexpr size_t kMaxErrorBody = size_t{1} << 20;  // the Status of a failed watch
constexpr size_t kIdleHandles = 8;                 // a few reflectors plus a patch
constexpr milliseconds kConnectTimeout{10000};
constexpr int kPollMs = 1000;  // how soon a `stop` set without interrupt() is seen

std::string trim(std::string_view text) {
    const auto begin = text.find_first_not_of(" \t\r\n");
    if (begin == std::string_view::npos) return "";
    return std::string(text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1));
}

bool starts_with_nocase(std::string_view text, std::string_view prefix) {
    return text.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), text.begin(), [](char a, char b) {
               return std::tolower(uint8_t(a)) == std::tolower(uint8_t(b));
           });
}

// Retry-After is seconds or an HTTP date (RFC 9110 10.2.3).
std::optional<double> parse_retry_after(const std::string& value) {
    double seconds = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
    if (ec == std::errc() && end == value.data() + value.size()) return std::max(0.0, seconds);
    const time_t when = curl_getdate(value.c_str(), nullptr);
    if (when < 0) return std::nullopt;
    return std::max(0.0, double(when - std::time(nullptr)));
}

void global_init() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

// One easy handle in its own multi handle: the multi's poll can be woken
// (interrupt) and it keeps the open connections between requests.
struct Client::Handle {
    CURL* easy = curl_easy_init();
    CURLM* multi = curl_multi_init();
    ~Handle() {
        if (multi) curl_multi_cleanup(multi);
        if (easy) curl_easy_cleanup(easy);
    }
};

struct Client::Request {
    const char* method = "GET";
    std::string path;
    std::string body;
    milliseconds timeout{0};  // the whole request; 0 = none (a watch)
    milliseconds stall{0};    // no byte for this long ends it; 0 = never
    const std::atomic<bool>* stop = nullptr;
    const std::function<bool(std::string_view)>* on_data = nullptr;
    const std::function<void()>* on_open = nullptr;  // stream(): the 200's headers are in

    // Per attempt, for the callbacks.
    CURL* easy = nullptr;
    HttpResponse response;
    std::optional<std::string> retry_after;
    bool ended_by_callback = false;
    bool too_big = false;
    Clock::time_point last_byte{};
    char error[CURL_ERROR_SIZE] = {};

    std::string describe() const { return std::string(method) + " " + path; }

    static size_t on_body(char* data, size_t size, size_t count, void* user) {
        auto& r = *static_cast<Request*>(user);
        const size_t n = size * count;
        r.last_byte = Clock::now();
        long status = 0;
        curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &status);
        if (r.on_data && status == 200) {
            if ((*r.on_data)(std::string_view(data, n))) return n;
            r.ended_by_callback = true;
            return 0;  // CURLE_WRITE_ERROR ends the transfer
        }
        if (r.response.body.size() + n > (r.on_data ? kMaxErrorBody : kMaxBody)) {
            r.too_big = true;
            return 0;
        }
        r.response.body.append(data, n);
        return n;
    }

    static size_t on_header(char* data, size_t size, size_t count, void* user) {
        auto& r = *static_cast<Request*>(user);
        const std::string_view line(data, size * count);
        r.last_byte = Clock::now();
        if (starts_with_nocase(line, "HTTP/")) r.retry_after.reset();  // a new response (after 100 Continue)
        constexpr std::string_view kRetryAfter = "retry-after:";
        if (starts_with_nocase(line, kRetryAfter)) r.retry_after = trim(line.substr(kRetryAfter.size()));
        if (r.on_open && *r.on_open && (line == "\r\n" || line == "\n")) {  // the end of a header block
            long status = 0;
            curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &status);
            if (status == 200) (*r.on_open)();
        }
        return line.size();
    }
};

Result<std::string> TokenSource::token() {
    std::lock_guard lock(mutex_);
    if (file_.empty()) return token_;
    const auto now = Clock::now();
    if (fresh_ && now - read_at_ < kTokenRereadPeriod) return token_;
    auto text = read_file(file_);
    std::string token = text ? trim(*text) : std::string();
    if (token.empty()) {
        Error error = text ? make_error(file_ + " is empty") : text.error();
        if (token_.empty()) return error.with_context("reading the API server token");
        log::error("reading the API server token: {}; using the previous token", error.describe());
    } else {
        token_ = std::move(token);
    }
    read_at_ = now;
    fresh_ = true;
    return token_;
}

void TokenSource::invalidate() {
    std::lock_guard lock(mutex_);
    fresh_ = false;
}

Client::Client(ClusterConfig config) : config_(std::move(config)), tokens_(config_) {}

Client::~Client() = default;

Result<std::shared_ptr<Client>> Client::create(ClusterConfig config) {
    if (config.server.rfind("https://", 0) != 0 && config.server.rfind("http://", 0) != 0)
        return make_error("API server URL \"" + config.server + "\" (" + config.source + ") is not http(s)://");
    global_init();
    std::shared_ptr<Client> client(new Client(std::move(config)));
    if (auto token = client->tokens_.token(); !token) return token.error().with_context(client->config_.source);
    if (client->config_.insecure_skip_tls_verify)
        log::error("{}: insecure-skip-tls-verify: the API server's certificate is not verified",
                   client->config_.source);
    return client;
}

std::unique_ptr<Client::Handle> Client::acquire() {
    {
        std::lock_guard lock(pool_mutex_);
        if (!idle_.empty()) {
            auto handle = std::move(idle_.back());
            idle_.pop_back();
            return handle;
        }
    }
    return std::make_unique<Handle>();
}

void Client::release(std::unique_ptr<Handle> handle) {
    std::lock_guard lock(pool_mutex_);
    if (idle_.size() < kIdleHandles) idle_.push_back(std::move(handle));
}

void Client::configure(Handle& h, Request& r) {
    CURL* e = h.easy;
    curl_easy_reset(e);  // keeps the open connections
    const std::string url = config_.server + r.path;
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r.error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    // One TCP connection per watch: no shared HTTP/2 connection whose GOAWAY
    // or silent death ends every watch at once.
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, long(CURL_HTTP_VERSION_1_1));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(e, CURLOPT_PROXY, "");  // not the workloads' proxy from the environment
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 15L);
    const milliseconds connect = r.timeout.count() > 0 ? std::min(r.timeout, kConnectTimeout) : kConnectTimeout;
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, long(connect.count()));
    if (r.timeout.count() > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, long(r.timeout.count()));
    if (!config_.ca_file.empty() || !config_.ca_data.empty()) {
        curl_easy_setopt(e, CURLOPT_CAPATH, nullptr);  // the cluster's CA only, not the system's as well
        if (!config_.ca_file.empty()) {
            curl_easy_setopt(e, CURLOPT_CAINFO, config_.ca_file.c_str());
        } else {
            curl_blob blob{config_.ca_data.data(), config_.ca_data.size(), CURL_BLOB_COPY};
            curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
        }
    }
#if LIBCURL_VERSION_NUM >= 0x075700
    curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 60L);  // ca.crt is a ConfigMap projection: it changes
#endif
    if (!config_.client_cert_file.empty()) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, config_.client_cert_file.c_str());
        curl_easy_setopt(e, CURLOPT_SSLKEY, config_.client_key_file.c_str());
    } else if (!config_.client_cert_data.empty()) {
        curl_blob cert{config_.client_cert_data.data(), config_.client_cert_data.size(), CURL_BLOB_COPY};
        curl_blob key{config_.client_key_data.data(), config_.client_key_data.size(), CURL_BLOB_COPY};
        curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
        curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
    }
    if (config_.insecure_skip_tls_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (std::string_view(r.method) != "GET") {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.c_str());
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, long(r.body.size()));
    }
    curl_easy_setopt(e, CURLOPT_USERAGENT, "egressd/" EGRESSD_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Request::on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Request::on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &r);
}

namespace {

// The request headers, freed with the object.
class Headers {
public:
    ~Headers() { curl_slist_free_all(list_); }
    void add(const std::string& header) { list_ = curl_slist_append(list_, header.c_str()); }
    curl_slist* get() const { return list_; }

private:
    curl_slist* list_ = nullptr;
};

}  // namespace

Result<HttpResponse> Client::perform(Request& r) {
    auto token = tokens_.token();
    if (!token) return token.error().with_context(r.describe());
    auto handle = acquire();
    if (!handle->easy || !handle->multi) return make_error(r.describe() + ": cannot create a curl handle");
    r.easy = handle->easy;
    r.response = {};
    r.retry_after.reset();
    r.ended_by_callback = r.too_big = false;
    r.error[0] = '\0';
    r.last_byte = Clock::now();
    configure(*handle, r);
    Headers headers;
    headers.add("Accept: application/json");
    headers.add("Expect:");
    if (!token->empty()) headers.add("Authorization: Bearer " + *token);
    if (std::string_view(r.method) == "PATCH") headers.add("Content-Type: application/merge-patch+json");
    curl_easy_setopt(handle->easy, CURLOPT_HTTPHEADER, headers.get());
    auto result = run(*handle, r);
    curl_easy_setopt(handle->easy, CURLOPT_HTTPHEADER, nullptr);
    release(std::move(handle));
    return result;
}

Result<HttpResponse> Client::run(Handle& h, Request& r) {
    curl_multi_add_handle(h.multi, h.easy);
    if (r.stop) {
        std::lock_guard lock(running_mutex_);
        running_.emplace(r.stop, &h);
    }
    std::optional<Error> aborted;
    CURLcode code = CURLE_OK;
    for (bool done = false; !done;) {
        int running = 0;
        if (CURLMcode mc = curl_multi_perform(h.multi, &running); mc != CURLM_OK) {
            aborted = make_error(curl_multi_strerror(mc));
            break;
        }
        int queued = 0;
        while (CURLMsg* message = curl_multi_info_read(h.multi, &queued))
            if (message->msg == CURLMSG_DONE) {
                code = message->data.result;
                done = true;
            }
        if (done) break;
        if (r.stop && r.stop->load()) {
            aborted = system_error("stopped", kStopped);
            break;
        }
        int wait_ms = kPollMs;
        if (r.stall.count() > 0) {
            const auto idle = std::chrono::duration_cast<milliseconds>(Clock::now() - r.last_byte);
            if (idle >= r.stall) {
                aborted = system_error("stalled: no data for " + std::to_string(idle.count()) + " ms", kStalled);
                break;
            }
            wait_ms = std::min<long>(wait_ms, (r.stall - idle).count() + 1);
        }
        curl_multi_poll(h.multi, nullptr, 0, wait_ms, nullptr);
    }
    if (r.stop) {
        std::lock_guard lock(running_mutex_);
        for (auto [it, end] = running_.equal_range(r.stop); it != end; ++it)
            if (it->second == &h) {
                running_.erase(it);
                break;
            }
    }
    curl_multi_remove_handle(h.multi, h.easy);  // mid-transfer: closes the connection
    if (aborted) return aborted->with_context(r.describe());
    curl_easy_getinfo(h.easy, CURLINFO_RESPONSE_CODE, &r.response.status);
    if (r.retry_after) r.response.retry_after_seconds = parse_retry_after(*r.retry_after);
    if (code == CURLE_WRITE_ERROR && r.ended_by_callback) return std::move(r.response);
    if (r.too_big) return make_error(r.describe() + ": response body too large");
    if (code != CURLE_OK)
        return make_error(r.describe() + ": " + (r.error[0] ? std::string(r.error) : curl_easy_strerror(code)));
    return std::move(r.response);
}

void Client::interrupt(const std::atomic<bool>& stop) {
    std::lock_guard lock(running_mutex_);
    for (auto [it, end] = running_.equal_range(&stop); it != end; ++it) curl_multi_wakeup(it->second->multi);
}

Result<HttpResponse> Client::perform_with_auth(Request& r) {
    auto response = perform(r);
    if (!response || response->status != 401 || !tokens_.from_file()) return response;
    // The kubelet rotates bound tokens: read the file again and retry once.
    tokens_.invalidate();
    log::info("{}: 401 Unauthorized from the API server, re-reading {}", r.describe(), config_.token_file);
    return perform(r);
}

Result<HttpResponse> Client::get(const std::string& path_and_query, milliseconds timeout,
                                 const std::atomic<bool>* stop) {
    Request r;
    r.path = path_and_query;
    r.timeout = timeout;
    r.stop = stop;
    return perform_with_auth(r);
}

Result<HttpResponse> Client::merge_patch(const std::string& path, const nlohmann::json& patch, milliseconds timeout,
                                         const std::atomic<bool>* stop) {
    Request r;
    r.method = "PATCH";
    r.path = path;
    r.body = patch.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    r.timeout = timeout;
    r.stop = stop;
    return perform_with_auth(r);
}

Result<HttpResponse> Client::stream(const std::string& path_and_query,
                                    const std::function<bool(std::string_view)>& on_data, milliseconds stall_timeout,
                                    const std::atomic<bool>& stop, const std::function<void()>& on_open) {
    Request r;
    r.on_open = &on_open;
    r.path = path_and_query;
    r.stall = stall_timeout;
    r.stop = &stop;
    r.on_data = &on_data;
    return perform_with_auth(r);
}

}  // namespace egressd::k8s
