// "ADDRESS:PORT" and "[IPV6]:PORT": the one parser of endpoints in settings
// (the agent's httpAddress, the DNS server) and of what egressctl connects to.
// The address is an IP literal, never a name: a listening socket binds exactly
// one address, and resolving the resolver's own name would need a resolver.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace egressd {

struct Endpoint {
    int family = 0;    // AF_INET or AF_INET6
    std::string host;  // the IP literal, without brackets
    uint16_t port = 0;

    std::string str() const;  // "HOST:PORT" or "[HOST]:PORT"
};

struct EndpointSyntax {
    // The port when the text has none ("ADDRESS", "[IPV6]"); without one a port is required.
    std::optional<uint16_t> default_port;
    bool port_zero = false;  // 0 allowed: "any free port", for a listening address
};

// The error says what is wrong, without quoting the text ("missing \"]\"",
// "port \"http\" is not a number from 0 to 65535"): callers name the setting.
Result<Endpoint> parse_endpoint(std::string_view text, const EndpointSyntax& syntax = {});

}  // namespace egressd
