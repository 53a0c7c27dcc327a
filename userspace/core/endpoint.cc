#include "core/endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

#include <fmt/format.h>

namespace egressd {

std::string Endpoint::str() const {
    return family == AF_INET6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

namespace {

Result<uint16_t> parse_port(std::string_view text, const EndpointSyntax& syntax) {
    const unsigned lowest = syntax.port_zero ? 0 : 1;
    const bool digits = !text.empty() && text.size() <= 5 &&
                        std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    const unsigned long value = digits ? std::stoul(std::string(text)) : 0;
    if (!digits || value > 65535 || value < lowest)
        return make_error(fmt::format("port \"{}\" is not a number from {} to 65535", text, lowest));
    return static_cast<uint16_t>(value);
}

}  // namespace

Result<Endpoint> parse_endpoint(std::string_view text, const EndpointSyntax& syntax) {
    Endpoint endpoint;
    std::optional<std::string_view> port;
    if (text.starts_with('[')) {
        const size_t close = text.find(']');
        if (close == std::string_view::npos) return make_error("missing \"]\"");
        endpoint.host = std::string(text.substr(1, close - 1));
        const std::string_view rest = text.substr(close + 1);
        if (!rest.empty() || !syntax.default_port) {
            if (!rest.starts_with(':')) return make_error("expected \":PORT\" after \"]\"");
            port = rest.substr(1);
        }
        in6_addr bytes{};
        if (::inet_pton(AF_INET6, endpoint.host.c_str(), &bytes) != 1)
            return make_error(fmt::format("\"{}\" is not an IPv6 address", endpoint.host));
        endpoint.family = AF_INET6;
    } else {
        const size_t colon = text.rfind(':');
        if (colon == std::string_view::npos && !syntax.default_port) return make_error("expected HOST:PORT");
        endpoint.host = std::string(text.substr(0, colon));
        if (colon != std::string_view::npos) port = text.substr(colon + 1);
        if (endpoint.host.find(':') != std::string::npos)
            return make_error("an IPv6 address must be in brackets, as in [::1]:9477");
        if (endpoint.host.empty())
            return make_error("missing host (for a listening address, 0.0.0.0 or [::] means every address)");
        in_addr bytes{};
        if (::inet_pton(AF_INET, endpoint.host.c_str(), &bytes) != 1)
            return make_error(fmt::format("\"{}\" is not an IP address", endpoint.host));
        endpoint.family = AF_INET;
    }
    if (!port) {
        endpoint.port = *syntax.default_port;
        return endpoint;
    }
    auto number = parse_port(*port, syntax);
    if (!number) return number.error();
    endpoint.port = *number;
    return endpoint;
}

}  // namespace egressd
