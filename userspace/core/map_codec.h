// Encoding the image's rules, names and configuration to and from the
// kernel's keys and values (maps/egressd_abi.h): the one place C++ values
// become map bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "common/result.h"
#include "core/identity.h"
#include "core/image.h"
#include "egressd_abi.h"

namespace egressd {

egressd_cidr_key encode_cidr_key(uint8_t slot, uint8_t table, const Cidr& cidr);
egressd_cidr_value encode_cidr_value(const CidrRule& rule);
Result<CidrRule> decode_cidr(const egressd_cidr_key& key, const egressd_cidr_value& value);
egressd_port_key encode_port_key(uint8_t slot, const PortRule& rule);
egressd_port_value encode_port_value(const PortRule& rule);
PortRule decode_port(const egressd_port_key& key, const egressd_port_value& value);
// The slot's config, with its small CIDR tables inline (egressd_config_table).
egressd_config encode_config(const MapImage& image);
void decode_config(const egressd_config& config, MapImage& image);
egressd_policy_rule_key encode_policy_rule_key(uint8_t slot, const PolicyRule& rule);
egressd_policy_value encode_policy_value(const PolicyRule& rule);
Result<PolicyRule> decode_policy_rule(const egressd_policy_rule_key& key, const egressd_policy_value& value);
// policy_lengths_v1: the prefix lengths below 128 that `rules` (one
// identity's) use, longest first; nullopt when every rule is a single address.
std::optional<egressd_policy_lengths> encode_policy_lengths(std::span<const PolicyRule> rules);
egressd_dns_host_key encode_dns_host_key(uint8_t slot, const DnsHostRule& rule);
egressd_dns_host encode_dns_host(const DnsHostRule& rule);
DnsHostRule decode_dns_host(const egressd_dns_host_key& key, const egressd_dns_host& value);
egressd_identity_name encode_identity_name(const IdentityName& name);
IdentityName decode_identity_name(const egressd_identity_name& value);
egressd_policy_name encode_policy_name(const PolicyRef& ref);
PolicyRef decode_policy_name(const egressd_policy_name& value);

}  // namespace egressd
