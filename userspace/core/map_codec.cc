#include "core/map_codec.h"

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>

namespace egressd {

namespace {

// Copies a name into a fixed, zero-padded kernel field (names longer than
// the field were refused by the parsers; this only guards the copy).
template <size_t N>
void copy_name(char (&field)[N], const std::string& text) {
    std::fill(std::begin(field), std::end(field), '\0');
    std::copy_n(text.data(), std::min(text.size(), N - 1), field);
}

template <size_t N>
std::string read_name(const char (&field)[N]) {
    return std::string(field, strnlen(field, N));
}

}  // namespace

egressd_cidr_key encode_cidr_key(uint8_t slot, uint8_t table, const Cidr& cidr) {
    egressd_cidr_key key{};
    key.prefixlen = EGRESSD_CIDR_KEY_FIXED_BITS + cidr.prefix;
    key.slot = slot;
    key.table = table;
    std::copy(cidr.addr.bytes.begin(), cidr.addr.bytes.end(), key.addr);
    return key;
}

egressd_cidr_value encode_cidr_value(const CidrRule& rule) {
    egressd_cidr_value value{};
    value.rule = rule.rule;
    return value;
}

Result<CidrRule> decode_cidr(const egressd_cidr_key& key, const egressd_cidr_value& value) {
    constexpr uint32_t kMaxPrefixLen = EGRESSD_CIDR_KEY_FIXED_BITS + 128;
    if (key.prefixlen < EGRESSD_CIDR_KEY_FIXED_BITS || key.prefixlen > kMaxPrefixLen)
        return make_error(fmt::format("{} key has prefix length {}, expected {}-{}",
                                      EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), key.prefixlen, EGRESSD_CIDR_KEY_FIXED_BITS,
                                      kMaxPrefixLen));
    if (key.table != EGRESSD_TABLE_EXCLUDE && key.table != EGRESSD_TABLE_INCLUDE && key.table != EGRESSD_TABLE_MESH)
        return make_error(fmt::format("{} key has unknown table {}", EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), key.table));
    // Lookups carry zero padding: an entry with other padding never matches.
    if (key._pad[0] != 0 || key._pad[1] != 0)
        return make_error(fmt::format("{} key has non-zero padding", EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS)));

    CidrRule rule{key.table, Cidr{}, value.rule};
    std::copy(std::begin(key.addr), std::end(key.addr), rule.cidr.addr.bytes.begin());
    rule.cidr.prefix = static_cast<uint8_t>(key.prefixlen - EGRESSD_CIDR_KEY_FIXED_BITS);
    // Cidr::parse clears host bits; a key with some set was not written by egressd.
    if (!rule.cidr.contains(rule.cidr.addr))
        return make_error(
            fmt::format("{} key {} has host bits set", EGRESSD_STRINGIFY(EGRESSD_MAP_CIDRS), rule.cidr.str()));
    return rule;
}

egressd_port_key encode_port_key(uint8_t slot, const PortRule& rule) {
    egressd_port_key key{};
    key.slot = slot;
    key.table = rule.table;
    key.port = rule.port;
    return key;
}

egressd_port_value encode_port_value(const PortRule& rule) {
    egressd_port_value value{};
    value.rule = rule.rule;
    return value;
}

PortRule decode_port(const egressd_port_key& key, const egressd_port_value& value) {
    return PortRule{key.table, key.port, value.rule};
}

namespace {

// One table of the config (egressd_config_table): its entries longest
// prefix first when there are few enough, else "in the trie".
void encode_config_table(const std::vector<CidrRule>& cidrs, uint8_t table, egressd_config_table& out) {
    std::vector<const CidrRule*> entries;
    for (const CidrRule& rule : cidrs)
        if (rule.table == table) entries.push_back(&rule);
    if (entries.size() > EGRESSD_CONFIG_CIDRS) {
        out.count = EGRESSD_CONFIG_TABLE_IN_TRIE;
        return;
    }
    std::stable_sort(entries.begin(), entries.end(),
                     [](const CidrRule* a, const CidrRule* b) { return a->cidr.prefix > b->cidr.prefix; });
    out.count = static_cast<uint32_t>(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
        egressd_config_cidr& c = out.cidrs[i];
        // Byte for byte (network order), as the kernel loads the address's words.
        std::memcpy(c.addr, entries[i]->cidr.addr.bytes.data(), sizeof(c.addr));
        std::memcpy(c.mask, entries[i]->cidr.mask().bytes.data(), sizeof(c.mask));
        c.rule = entries[i]->rule;
    }
}

}  // namespace

egressd_config encode_config(const MapImage& image) {
    egressd_config config{};
    config.generation = image.generation;
    config.flags = image.flags;
    config.sidecar_uid = image.sidecar_uid;
    config.mode = image.mode;
    config.cgroup_level = image.cgroup_level;
    for (uint8_t table = EGRESSD_TABLE_EXCLUDE; table <= EGRESSD_TABLE_MESH; ++table)
        encode_config_table(image.cidrs, table, config.tables[table - 1]);
    return config;
}

void decode_config(const egressd_config& config, MapImage& image) {
    image.generation = config.generation;
    image.flags = config.flags;
    image.sidecar_uid = config.sidecar_uid;
    image.mode = config.mode;
    image.cgroup_level = config.cgroup_level;
}

egressd_policy_rule_key encode_policy_rule_key(uint8_t slot, const PolicyRule& rule) {
    egressd_policy_rule_key key{};
    key.slot = slot;
    key.proto = rule.proto;
    key.port = rule.port;
    key.identity = rule.identity;
    key.prefix = rule.cidr.prefix;
    std::copy(rule.cidr.addr.bytes.begin(), rule.cidr.addr.bytes.end(), key.addr);
    return key;
}

Result<PolicyRule> decode_policy_rule(const egressd_policy_rule_key& key, const egressd_policy_value& value) {
    if (key.prefix > 128)
        return make_error(
            fmt::format("{} key has prefix length {}", EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), key.prefix));
    PolicyRule rule{key.identity, key.proto, key.port, Cidr{}, value.policy};
    std::copy(std::begin(key.addr), std::end(key.addr), rule.cidr.addr.bytes.begin());
    rule.cidr.prefix = key.prefix;
    if (!rule.cidr.contains(rule.cidr.addr))
        return make_error(
            fmt::format("{} key {} has host bits set", EGRESSD_STRINGIFY(EGRESSD_MAP_POLICY_RULES), rule.cidr.str()));
    return rule;
}

std::optional<egressd_policy_lengths> encode_policy_lengths(std::span<const PolicyRule> rules) {
    std::array<bool, EGRESSD_POLICY_MAX_LENGTHS> used{};
    for (const PolicyRule& rule : rules)
        if (rule.cidr.prefix < EGRESSD_POLICY_MAX_LENGTHS) used[rule.cidr.prefix] = true;
    egressd_policy_lengths value{};
    for (int length = EGRESSD_POLICY_MAX_LENGTHS - 1; length >= 0; --length)
        if (used[static_cast<size_t>(length)]) value.lengths[value.count++] = static_cast<uint8_t>(length);
    if (value.count == 0) return std::nullopt;
    return value;
}

egressd_dns_host_key encode_dns_host_key(uint8_t slot, const DnsHostRule& rule) {
    egressd_dns_host_key key{};
    key.slot = slot;
    key.wildcard = rule.host.wildcard ? 1 : 0;
    key.identity = rule.identity;
    key.name = rule.host.name;
    return key;
}

egressd_dns_host encode_dns_host(const DnsHostRule& rule) { return egressd_dns_host{rule.number, 0}; }

DnsHostRule decode_dns_host(const egressd_dns_host_key& key, const egressd_dns_host& value) {
    return DnsHostRule{key.identity, DnsHostName{key.wildcard != 0, key.name}, value.host};
}

egressd_policy_value encode_policy_value(const PolicyRule& rule) {
    egressd_policy_value value{};
    value.policy = rule.policy;
    return value;
}

egressd_identity_name encode_identity_name(const IdentityName& name) {
    egressd_identity_name value{};
    copy_name(value.k8s_namespace, name.namespace_);
    copy_name(value.service_account, name.service_account);
    return value;
}

IdentityName decode_identity_name(const egressd_identity_name& value) {
    return IdentityName{read_name(value.k8s_namespace), read_name(value.service_account)};
}

egressd_policy_name encode_policy_name(const PolicyRef& ref) {
    egressd_policy_name value{};
    copy_name(value.k8s_namespace, ref.namespace_);
    copy_name(value.name, ref.name);
    return value;
}

PolicyRef decode_policy_name(const egressd_policy_name& value) {
    return PolicyRef{read_name(value.k8s_namespace), read_name(value.name)};
}

}  // namespace egressd
