// GET requests to the agent's HTTP endpoint (the setting httpAddress:
// /readyz, /events), with cpp-httplib's client (kept out of this header).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common/result.h"
#include "core/agent_config.h"

namespace httplib {
class Client;
}

namespace egressd::cli {

struct HttpReply {
    int status = 0;
    std::string body;
};

class AgentHttp {
public:
    // The agent of these settings: httpAddress, "HOST:PORT" or "[IPV6]:PORT"
    // with HOST an IP literal. Port 0 (any free port) is the one the running
    // agent bound, from its status file.
    static Result<AgentHttp> open(const AgentConfig& config);

    AgentHttp(AgentHttp&&) noexcept;
    AgentHttp& operator=(AgentHttp&&) noexcept;
    ~AgentHttp();

    // GET `path` with the query parameters `query` (percent-encoded here).
    // Any reply is a value, whatever its status; the error says what failed
    // (connecting, sending, reading) and where.
    Result<HttpReply> get(const std::string& path, const std::multimap<std::string, std::string>& query = {});

private:
    AgentHttp(std::string address, std::unique_ptr<httplib::Client> client);

    std::string address_;  // as in the settings, for messages
    std::unique_ptr<httplib::Client> client_;
};

}  // namespace egressd::cli
