// Which resolvers' answers the kernel learns from (maps/egressd_abi.h,
// "learning from answers"): those of the dnsServer setting, else the
// system's, the nameserver lines of /etc/resolv.conf. Pure: the caller reads
// the file.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/net.h"

namespace egressd {

// `dns_servers`: ADDRESS[:PORT] as the settings keep them (validated). When
// empty, the "nameserver ADDRESS" lines of `resolv_conf` (an IPv6 scope such
// as "%eth0" dropped; what does not parse is left out). Unique, in order.
std::vector<IpAddress> trusted_resolvers(const std::vector<std::string>& dns_servers, std::string_view resolv_conf);

}  // namespace egressd
