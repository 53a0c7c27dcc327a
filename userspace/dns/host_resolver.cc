// HostResolver on c-ares. One worker thread owns the channel and the refresh
// schedule and sleeps in poll() on the channel's sockets and a wake-up
// eventfd until the next query, expiry or c-ares timeout is due; with nothing
// due it sleeps without a timeout, so an idle agent uses no CPU.
#include "dns/host_resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>

#include "common/fd.h"
#include "core/endpoint.h"

namespace egressd {
namespace {

using SteadyClock = std::chrono::steady_clock;
using SystemClock = std::chrono::system_clock;

// Validates "ADDRESS[:PORT]" / "[IPV6]" / "[IPV6]:PORT" and returns it in the
// form c-ares 1.18 parses reliably: always with an explicit port, IPv6 always
// bracketed ("[::1]" without a port is rejected by its CSV parser).
Result<std::string> server_for_cares(std::string_view text) {
    std::string servers;
    for (size_t start = 0; start <= text.size();) {  // a comma-separated list
        const size_t comma = std::min(text.find(',', start), text.size());
        const std::string_view one = text.substr(start, comma - start);
        auto server = parse_endpoint(one, {.default_port = 53, .port_zero = false});
        if (!server) return make_error("dns_server \"" + std::string(one) + "\": " + server.error().message);
        servers += (servers.empty() ? "" : ",") + server->str();
        start = comma + 1;
    }
    return servers;
}

std::string failure_text(int status) {
    switch (status) {
        case ARES_ETIMEOUT: return "timeout";
        // c-ares 1.18 reports REFUSED, SERVFAIL and NOTIMP answers as ECONNREFUSED
        // too (it never sets the specific status), so this cannot be narrower.
        case ARES_ECONNREFUSED: return "refused or server failure";
        case ARES_ESERVFAIL: return "SERVFAIL";
        case ARES_EREFUSED: return "REFUSED";
        default: return ares_strerror(status);
    }
}

Status init_cares_library() {
    // Process-wide and not thread-safe, so done once; never cleaned up
    // because other resolvers may start later.
    static std::once_flag once;
    static int status = ARES_SUCCESS;
    std::call_once(once, [] { status = ares_library_init(ARES_LIB_INIT_ALL); });
    if (status != ARES_SUCCESS) return make_error(std::string("c-ares library init: ") + ares_strerror(status));
    return {};
}

void write_event(int fd) {
    const uint64_t one = 1;
    // EAGAIN only when the counter is saturated: already readable, nothing lost.
    [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

void drain_event(int fd) {
    uint64_t value;
    [[maybe_unused]] ssize_t n = ::read(fd, &value, sizeof value);
}

// Milliseconds for poll(), rounded up so that we never wake just before a
// deadline and spin on zero timeouts.
int poll_timeout_ms(SteadyClock::duration d) {
    if (d <= SteadyClock::duration::zero()) return 0;
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
    return static_cast<int>(std::min<long long>(ms, INT_MAX));
}

struct ChannelDeleter {
    void operator()(ares_channel channel) const { ares_destroy(channel); }
};
using Channel = std::unique_ptr<std::remove_pointer_t<ares_channel>, ChannelDeleter>;

class AresHostResolver final : public HostResolver {
public:
    AresHostResolver(const Options& options, UniqueFd notify, UniqueFd wake)
        : options_(options), notify_(std::move(notify)), wake_(std::move(wake)) {}

    ~AresHostResolver() override {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        write_event(wake_.get());
        if (worker_.joinable()) worker_.join();
        // Pending callbacks run now with ARES_EDESTRUCTION and free their contexts.
        channel_.reset();
    }

    // The channel is created after the resolver, whose address its socket
    // callback needs; the worker starts once it is there.
    void launch(Channel channel) {
        channel_ = std::move(channel);
        worker_ = std::thread([this] {
            ::pthread_setname_np(::pthread_self(), "egressd-dns");  // for top -H, and the idle test
            run();
        });
    }

    static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) {
        auto* self = static_cast<AresHostResolver*>(data);
        if (!readable && !writable)
            self->sockets_.erase(fd);
        else
            self->sockets_[fd] = static_cast<short>((readable ? POLLIN : 0) | (writable ? POLLOUT : 0));
    }

    void set_hosts(const std::vector<std::string>& hosts) override {
        {
            std::lock_guard lock(mutex_);
            std::map<std::string, HostState> next;
            for (const auto& host : hosts) {
                if (host.empty() || next.count(host)) continue;
                auto it = published_.find(host);
                if (it != published_.end()) {
                    next.emplace(host, std::move(it->second));
                } else {
                    next.emplace(host, HostState{});
                    // Also covers a name removed and re-added before the worker
                    // noticed: it starts over, like any new name.
                    restarted_.insert(host);
                }
            }
            published_ = std::move(next);
            hosts_changed_ = true;
        }
        write_event(wake_.get());
    }

    int notify_fd() const override { return notify_.get(); }

    std::map<std::string, HostState> snapshot() override {
        // Copy and clear under the lock that publish() writes under, so a
        // change published after the copy always leaves the fd readable.
        std::lock_guard lock(mutex_);
        drain_event(notify_.get());
        return published_;
    }

private:
    // Worker-only view of one host.
    struct Entry {
        HostState state;
        SteadyClock::time_point next_query{};  // due now when new
        SteadyClock::time_point expiry{};      // steady twin of state.expires_at
        bool in_flight = false;
        uint64_t generation = 0;  // tells answers to an older incarnation of the name apart
    };
    struct Query {
        AresHostResolver* self;
        std::string host;
        uint64_t generation;
    };

    // Returns false when asked to stop.
    bool sync_hosts() {
        std::lock_guard lock(mutex_);
        if (stop_) return false;
        if (!hosts_changed_) return true;
        hosts_changed_ = false;
        std::erase_if(entries_, [&](const auto& kv) { return !published_.count(kv.first); });
        for (const auto& [host, state] : published_) {
            if (restarted_.count(host) || !entries_.count(host)) {
                Entry entry;
                entry.generation = ++generation_;
                entries_[host] = std::move(entry);
            }
        }
        restarted_.clear();
        return true;
    }

    void run() {
        std::vector<pollfd> fds;
        while (sync_hosts()) {
            const auto now = SteadyClock::now();
            std::optional<SteadyClock::time_point> due;
            auto consider = [&](SteadyClock::time_point t) { due = due ? std::min(*due, t) : t; };
            for (auto& [host, entry] : entries_) {
                if (!entry.in_flight && now >= entry.next_query) start_query(host, entry);
                // Expiry waits for a refresh in flight: refresh and expiry fall on
                // the same instant, and dropping first would make a healthy host
                // flap for the duration of every refresh.
                if (!entry.in_flight && !entry.state.addresses.empty() && now >= entry.expiry) {
                    entry.state.addresses.clear();
                    publish(host, entry.state);
                }
                if (entry.in_flight) continue;
                consider(entry.next_query);
                if (!entry.state.addresses.empty()) consider(entry.expiry);
            }

            int timeout = due ? poll_timeout_ms(*due - now) : -1;
            timeval tv;
            if (const timeval* t = ares_timeout(channel_.get(), nullptr, &tv)) {
                const auto ares_ms = static_cast<int>(t->tv_sec * 1000 + (t->tv_usec + 999) / 1000);
                timeout = timeout < 0 ? ares_ms : std::min(timeout, ares_ms);
            }

            fds.clear();
            fds.push_back({wake_.get(), POLLIN, 0});
            for (const auto& [fd, events] : sockets_) fds.push_back({fd, events, 0});
            if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
                // Cannot happen with valid fds; avoid a hot loop if it ever does.
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                continue;
            }
            if (fds[0].revents & POLLIN) drain_event(wake_.get());

            bool processed = false;
            for (size_t i = 1; i < fds.size(); ++i) {
                const short r = fds[i].revents;
                if (!r) continue;
                const ares_socket_t rfd = (r & (POLLIN | POLLERR | POLLHUP)) ? fds[i].fd : ARES_SOCKET_BAD;
                const ares_socket_t wfd = (r & (POLLOUT | POLLERR | POLLHUP)) ? fds[i].fd : ARES_SOCKET_BAD;
                ares_process_fd(channel_.get(), rfd, wfd);
                processed = true;
            }
            // Lets c-ares run its retransmission and timeout handling.
            if (!processed) ares_process_fd(channel_.get(), ARES_SOCKET_BAD, ARES_SOCKET_BAD);
        }
    }

    void start_query(const std::string& host, Entry& entry) {
        // An address written as a host is its own answer (and with the dot
        // below, c-ares would send it to DNS as a name).
        if (auto literal = IpAddress::parse(host)) {
            apply_answer(host, entry, {*literal}, std::nullopt, options_.ttl_ceiling);
            return;
        }
        entry.in_flight = true;  // before the call: the callback may run inside it
        ares_addrinfo_hints hints{};
        hints.ai_family = AF_UNSPEC;
        // We sort ourselves; c-ares's RFC 6724 sort would connect() a UDP
        // socket to every address.
        hints.ai_flags = ARES_AI_NOSORT;
        // Policy hosts are exact names: the trailing dot keeps c-ares from
        // trying resolv.conf search domains (ARES_FLAG_NOSEARCH is ignored by
        // ares_getaddrinfo in 1.18).
        const std::string fqdn = host.ends_with('.') ? host : host + ".";
        auto* query = new Query{this, host, entry.generation};
        ares_getaddrinfo(channel_.get(), fqdn.c_str(), nullptr, &hints, &AresHostResolver::on_result, query);
    }

    static void on_result(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
        std::unique_ptr<Query> query(static_cast<Query*>(arg));
        std::unique_ptr<ares_addrinfo, decltype(&ares_freeaddrinfo)> owned(result, &ares_freeaddrinfo);
        if (status == ARES_EDESTRUCTION) return;
        auto& entries = query->self->entries_;
        auto it = entries.find(query->host);
        if (it == entries.end() || it->second.generation != query->generation) return;  // forgotten since
        it->second.in_flight = false;
        query->self->handle_result(it->first, it->second, status, result);
    }

    void handle_result(const std::string& host, Entry& entry, int status, const ares_addrinfo* result) {
        std::vector<IpAddress> addresses;
        // A TTL with the top bit set arrives as a negative int; RFC 2181 §8 says treat it as 0.
        int min_ttl = INT_MAX;
        if (status == ARES_SUCCESS && result) {
            for (const ares_addrinfo_node* n = result->nodes; n; n = n->ai_next) {
                if (n->ai_family == AF_INET) {
                    const auto* sin = reinterpret_cast<const sockaddr_in*>(n->ai_addr);
                    addresses.push_back(IpAddress::from_v4(ntohl(sin->sin_addr.s_addr)));
                } else if (n->ai_family == AF_INET6) {
                    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(n->ai_addr);
                    std::array<uint8_t, 16> bytes;
                    std::copy(std::begin(sin6->sin6_addr.s6_addr), std::end(sin6->sin6_addr.s6_addr), bytes.begin());
                    addresses.push_back(IpAddress::from_v6(bytes));
                } else {
                    continue;
                }
                min_ttl = std::min(min_ttl, std::max(n->ai_ttl, 0));
            }
            // A CNAME in the chain can expire before the addresses it leads to.
            for (const ares_addrinfo_cname* c = result->cnames; c; c = c->next)
                min_ttl = std::min(min_ttl, std::max(c->ttl, 0));
        }
        std::sort(addresses.begin(), addresses.end());
        addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());

        std::optional<std::string> answer_error;
        std::chrono::seconds ttl = options_.ttl_floor;  // negative answers carry no TTL through ares_getaddrinfo
        switch (status) {
            case ARES_SUCCESS:
                if (addresses.empty())
                    answer_error = "no addresses";
                else
                    ttl = std::clamp(std::chrono::seconds(min_ttl), options_.ttl_floor, options_.ttl_ceiling);
                break;
            case ARES_ENOTFOUND: answer_error = "NXDOMAIN"; break;
            case ARES_ENODATA: answer_error = "no addresses"; break;
            case ARES_EBADNAME:
                // Never becomes valid; no need to ask often.
                answer_error = "invalid host name";
                ttl = options_.ttl_ceiling;
                break;
            default: {
                // Failure: keep what we knew until it expires, and try again soon.
                const auto now = SteadyClock::now();
                entry.state.last_error = failure_text(status);
                if (!entry.state.addresses.empty() && now >= entry.expiry) entry.state.addresses.clear();
                // Retry soon, and be awake at expiry to drop what is no longer valid.
                entry.next_query = now + options_.retry_after_failure;
                if (now < entry.expiry) entry.next_query = std::min(entry.next_query, entry.expiry);
                publish(host, entry.state);
                return;
            }
        }
        apply_answer(host, entry, std::move(addresses), std::move(answer_error), ttl);
    }

    // An answer replaces the addresses, valid for `ttl`. The refresh is due at
    // three quarters of it, so a failing refresh leaves a quarter of the TTL
    // (and retries) during which the last addresses stay in force.
    void apply_answer(const std::string& host, Entry& entry, std::vector<IpAddress> addresses,
                      std::optional<std::string> error, std::chrono::seconds ttl) {
        const auto wall = SystemClock::now();
        const auto steady = SteadyClock::now();
        entry.state.addresses = std::move(addresses);
        entry.state.last_error = std::move(error);
        entry.state.resolved_at = wall;
        entry.state.expires_at = wall + ttl;
        entry.expiry = steady + ttl;
        const std::chrono::milliseconds refresh = std::chrono::milliseconds(ttl) * 3 / 4;
        entry.next_query = steady + std::max<SteadyClock::duration>(refresh, std::chrono::seconds(1));
        publish(host, entry.state);
    }

    void publish(const std::string& host, const HostState& state) {
        std::lock_guard lock(mutex_);
        auto it = published_.find(host);
        // Gone, or restarted and not yet seen by the worker: this state is stale.
        if (it == published_.end() || restarted_.count(host)) return;
        const bool changed = it->second.addresses != state.addresses || it->second.last_error != state.last_error;
        it->second = state;
        if (changed) write_event(notify_.get());
    }

    const Options options_;
    Channel channel_;
    UniqueFd notify_;
    UniqueFd wake_;
    std::thread worker_;

    // Worker thread only (c-ares calls back on it).
    std::map<std::string, Entry> entries_;
    std::map<ares_socket_t, short> sockets_;
    uint64_t generation_ = 0;

    // Shared with the callers, under mutex_.
    std::mutex mutex_;
    std::map<std::string, HostState> published_;  // also the set of tracked names
    std::set<std::string> restarted_;             // names (re)added since the worker last looked
    bool hosts_changed_ = false;
    bool stop_ = false;
};

}  // namespace

Result<std::unique_ptr<HostResolver>> HostResolver::start(const Options& options) {
    using std::chrono::seconds;
    if (options.ttl_floor < seconds(1))
        return make_error("ttl_floor must be at least 1s (a zero TTL would re-query without pause)");
    if (options.ttl_ceiling < options.ttl_floor) return make_error("ttl_ceiling must not be below ttl_floor");
    if (options.retry_after_failure < seconds(1)) return make_error("retry_after_failure must be at least 1s");
    if (options.query_timeout <= std::chrono::milliseconds(0) || options.query_timeout.count() > INT_MAX)
        return make_error("query_timeout must be positive");
    if (options.attempts < 1) return make_error("attempts must be at least 1");

    std::string server;
    if (!options.dns_server.empty()) {
        auto parsed = server_for_cares(options.dns_server);
        if (!parsed) return parsed.error();
        server = std::move(*parsed);
    }
    if (auto s = init_cares_library(); !s) return s.error();

    UniqueFd notify(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!notify.valid()) return system_error("host resolver: eventfd");
    UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake.valid()) return system_error("host resolver: eventfd");

    auto resolver = std::make_unique<AresHostResolver>(options, std::move(notify), std::move(wake));

    ares_options opts{};
    int mask = 0;
    opts.timeout = static_cast<int>(options.query_timeout.count());
    mask |= ARES_OPT_TIMEOUTMS;
    opts.tries = options.attempts;
    mask |= ARES_OPT_TRIES;
    // DNS only: /etc/hosts has no TTLs, and the workloads we enforce for
    // resolve through DNS, not through this node's hosts file.
    char lookups[] = "b";
    opts.lookups = lookups;
    mask |= ARES_OPT_LOOKUPS;
    opts.sock_state_cb = &AresHostResolver::on_socket_state;
    opts.sock_state_cb_data = resolver.get();
    mask |= ARES_OPT_SOCK_STATE_CB;

    ares_channel raw = nullptr;
    if (int rc = ares_init_options(&raw, &opts, mask); rc != ARES_SUCCESS)
        return make_error(std::string("c-ares init: ") + ares_strerror(rc));
    Channel channel(raw);
    if (!server.empty()) {
        if (int rc = ares_set_servers_ports_csv(channel.get(), server.c_str()); rc != ARES_SUCCESS)
            return make_error("dns_server \"" + options.dns_server + "\": " + ares_strerror(rc));
    }
    resolver->launch(std::move(channel));
    return std::unique_ptr<HostResolver>(std::move(resolver));
}

}  // namespace egressd
