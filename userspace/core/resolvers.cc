#include "core/resolvers.h"

#include <algorithm>
#include <sstream>

#include "core/endpoint.h"

namespace egressd {

std::vector<IpAddress> trusted_resolvers(const std::vector<std::string>& dns_servers, std::string_view resolv_conf) {
    std::vector<IpAddress> out;
    const auto add = [&out](std::string_view text) {
        auto address = IpAddress::parse(text);
        if (address && std::find(out.begin(), out.end(), *address) == out.end()) out.push_back(*address);
    };
    for (const std::string& server : dns_servers)
        if (auto endpoint = parse_endpoint(server, {.default_port = 53, .port_zero = false})) add(endpoint->host);
    if (!dns_servers.empty()) return out;
    std::istringstream lines{std::string(resolv_conf)};
    for (std::string line; std::getline(lines, line);) {
        std::istringstream words(line);
        std::string keyword, address;
        if (!(words >> keyword >> address) || keyword != "nameserver") continue;
        add(std::string_view(address).substr(0, address.find('%')));
    }
    return out;
}

}  // namespace egressd
