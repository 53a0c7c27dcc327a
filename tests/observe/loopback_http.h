// A tiny HTTP client for the observe tests: connections to loopback only.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "common/fd.h"

namespace egressd::testhttp {

using Clock = std::chrono::steady_clock;

long long elapsed_ms(Clock::time_point since);
// 127.0.0.1 or ::1 with `port`; `length` gets the address's size.
sockaddr_storage loopback(int family, uint16_t port, socklen_t& length);
// Connects to loopback; on failure returns an invalid fd and sets *error (or REQUIREs when error is null).
UniqueFd connect_loopback(uint16_t port, int family = AF_INET, int* error = nullptr);
void send_all(int fd, const std::string& data);
std::string read_to_eof(int fd);

struct Reply {
    int status = 0;
    std::map<std::string, std::string> headers;  // names in lower case
    std::string body;

    std::string header(const std::string& name) const {
        const auto it = headers.find(name);
        return it == headers.end() ? "<absent>" : it->second;
    }
};

Reply parse_reply(const std::string& raw);
// One request (HTTP/1.1, Connection: close) to loopback:port.
Reply request(uint16_t port, const std::string& method, const std::string& target, int family = AF_INET);
Reply get(uint16_t port, const std::string& target);

}  // namespace egressd::testhttp
