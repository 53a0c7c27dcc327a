#include "cli/agent_http.h"

#include <httplib.h>

#include <cerrno>
#include <chrono>

#include <fmt/format.h>

#include "agent/agent_state.h"
#include "core/endpoint.h"

namespace egressd::cli {

namespace {

// The agent answers from memory: a slow answer means something is wrong.
constexpr std::chrono::seconds kTimeout{2};

}  // namespace

Result<AgentHttp> AgentHttp::open(const AgentConfig& config) {
    const std::string& http_address = config.http_address;
    auto endpoint = parse_endpoint(http_address, {.default_port = std::nullopt, .port_zero = true});
    if (!endpoint) return make_error(fmt::format("httpAddress \"{}\": {}", http_address, endpoint.error().message));
    if (endpoint->port == 0) {
        auto status = read_status_file(config.run_dir);
        const int bound = status && status->contains("httpPort") && (*status)["httpPort"].is_number_unsigned()
                              ? (*status)["httpPort"].get<int>()
                              : 0;
        if (bound <= 0 || bound > 65535)
            return make_error(
                fmt::format("httpAddress \"{}\": the agent's port is not known (is it running?)", http_address));
        endpoint->port = static_cast<uint16_t>(bound);
    }
    auto client = std::make_unique<httplib::Client>(endpoint->host, endpoint->port);
    client->set_connection_timeout(kTimeout);
    client->set_read_timeout(kTimeout);
    client->set_write_timeout(kTimeout);
    return AgentHttp(http_address, std::move(client));
}

AgentHttp::AgentHttp(std::string address, std::unique_ptr<httplib::Client> client)
    : address_(std::move(address)), client_(std::move(client)) {}
AgentHttp::AgentHttp(AgentHttp&&) noexcept = default;
AgentHttp& AgentHttp::operator=(AgentHttp&&) noexcept = default;
AgentHttp::~AgentHttp() = default;

Result<HttpReply> AgentHttp::get(const std::string& path, const std::multimap<std::string, std::string>& query) {
    const httplib::Result result = client_->Get(path, query, httplib::Headers{});
    if (result) return HttpReply{result->status, result->body};
    // cpp-httplib keeps no errno: the kind of failure is all there is to say.
    switch (result.error()) {
        case httplib::Error::Connection:
            return make_error("connecting to egressd at " + address_ + " (is it running?)");
        case httplib::Error::ConnectionTimeout:
            return system_error("connecting to egressd at " + address_ + " (is it running?)", ETIMEDOUT);
        case httplib::Error::Write: return make_error("sending to egressd at " + address_);
        case httplib::Error::Read: return make_error("egressd at " + address_ + " sent no HTTP response");
        default:
            return make_error(fmt::format("asking egressd at {}: {}", address_, httplib::to_string(result.error())));
    }
}

}  // namespace egressd::cli
