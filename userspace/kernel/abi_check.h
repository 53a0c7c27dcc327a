// Compile-time checks that the C++ view of maps/egressd_abi.h has exactly the
// layout the BPF side (clang -target bpf) uses: no implicit padding, sizes
// and offsets as written. A failure here means the header changed without
// explicit padding or a new map version.
#pragma once

#include <cstddef>
#include <type_traits>

#include "egressd_abi.h"

namespace egressd::abi {

static_assert(sizeof(egressd_control) == 8);
static_assert(offsetof(egressd_control, active_slot) == 0);
static_assert(offsetof(egressd_control, abi_version) == 4);

static_assert(sizeof(egressd_config_cidr) == 40);
static_assert(sizeof(egressd_config_table) == 8 + EGRESSD_CONFIG_CIDRS * 40);
static_assert(sizeof(egressd_config) == 24 + EGRESSD_CONFIG_TABLES * sizeof(egressd_config_table));
static_assert(offsetof(egressd_config, tables) == 24);
static_assert(EGRESSD_CONFIG_TABLES == EGRESSD_TABLE_MESH && EGRESSD_TABLE_EXCLUDE == 1);
static_assert(offsetof(egressd_config, generation) == 0);
static_assert(offsetof(egressd_config, flags) == 8);
static_assert(offsetof(egressd_config, sidecar_uid) == 12);
static_assert(offsetof(egressd_config, mode) == 16);

static_assert(sizeof(egressd_cidr_key) == 4 + 4 + 16);
static_assert(offsetof(egressd_cidr_key, prefixlen) == 0);
static_assert(offsetof(egressd_cidr_key, slot) == 4);
static_assert(offsetof(egressd_cidr_key, table) == 5);
static_assert(offsetof(egressd_cidr_key, addr) == 8);
// The LPM trie's fixed part is everything between prefixlen and addr.
static_assert((offsetof(egressd_cidr_key, addr) - offsetof(egressd_cidr_key, slot)) * 8 == EGRESSD_CIDR_KEY_FIXED_BITS);
static_assert(sizeof(egressd_cidr_value) == 8);

static_assert(sizeof(egressd_port_key) == 4);
static_assert(offsetof(egressd_port_key, slot) == 0);
static_assert(offsetof(egressd_port_key, table) == 1);
static_assert(offsetof(egressd_port_key, port) == 2);
static_assert(sizeof(egressd_port_value) == 8);

static_assert(offsetof(egressd_config, cgroup_level) == 20);

static_assert(sizeof(egressd_identity_key) == 8);
static_assert(sizeof(egressd_identity_value) == 8);
static_assert(sizeof(egressd_identity_name) == EGRESSD_NAMESPACE_LEN + EGRESSD_NAME_LEN);
static_assert(offsetof(egressd_identity_name, service_account) == EGRESSD_NAMESPACE_LEN);

static_assert(sizeof(egressd_policy_rule_key) == 12 + 16);
static_assert(offsetof(egressd_policy_rule_key, port) == 2);
static_assert(offsetof(egressd_policy_rule_key, identity) == 4);
static_assert(offsetof(egressd_policy_rule_key, prefix) == 8);
static_assert(offsetof(egressd_policy_rule_key, addr) == 12);
static_assert(sizeof(egressd_policy_lengths_key) == 8);
static_assert(offsetof(egressd_policy_lengths_key, identity) == 4);
static_assert(sizeof(egressd_policy_lengths) == 1 + EGRESSD_POLICY_MAX_LENGTHS + 3);
static_assert(EGRESSD_POLICY_MAX_LENGTHS <= 255);  // count is a __u8
static_assert(sizeof(egressd_policy_value) == 8);
static_assert(sizeof(egressd_policy_name_key) == 8);
static_assert(offsetof(egressd_policy_name_key, policy) == 4);
static_assert(sizeof(egressd_policy_name) == EGRESSD_NAMESPACE_LEN + EGRESSD_NAME_LEN);

static_assert(sizeof(egressd_event) == 80);
// Written by bpf/revoke.bpf.c with bpf_seq_write, read back whole by kernel/revoker.cc.
static_assert(sizeof(egressd_socket_record) == 64);
static_assert(offsetof(egressd_socket_record, addr) == 16);
static_assert(offsetof(egressd_socket_record, uid) == 32);
static_assert(offsetof(egressd_socket_record, port) == 36);
static_assert(offsetof(egressd_socket_record, family) == 40);
static_assert(offsetof(egressd_socket_record, bytes_sent) == 48);
static_assert(offsetof(egressd_event, cgroup_id) == 8);
static_assert(offsetof(egressd_event, generation) == 16);
static_assert(offsetof(egressd_event, pid) == 24);
static_assert(offsetof(egressd_event, identity) == 32);
static_assert(offsetof(egressd_event, addr) == 40);
static_assert(offsetof(egressd_event, port) == 56);
static_assert(offsetof(egressd_event, kind) == 60);
static_assert(offsetof(egressd_event, comm) == 64);
static_assert(offsetof(egressd_event, flags) == 62);
static_assert(sizeof(egressd_event_bucket) == 16);
static_assert(sizeof(egressd_flow) == 48);
static_assert(offsetof(egressd_flow, addr) == 24);
static_assert(offsetof(egressd_flow, port) == 40);
static_assert(sizeof(egressd_traffic_key) == 8);
static_assert(sizeof(egressd_traffic) == 24);

static_assert(sizeof(egressd_counter) == 8);
static_assert(EGRESSD_COUNTER_SLOTS == int{EGRESSD_REASON_MAX} * int{EGRESSD_HOOK_MAX});

static_assert(sizeof(egressd_dns_name) == EGRESSD_DNS_MAX_LABELS * 8 + 8);
static_assert(sizeof(egressd_dns_address) == 24);
static_assert(offsetof(egressd_dns_address, ttl) == 16);
static_assert(offsetof(egressd_dns_address, question) == 20);
static_assert(offsetof(egressd_dns_parsed, questions) == 16);
static_assert(sizeof(egressd_dns_parsed) ==
              16 + EGRESSD_DNS_MAX_QUESTIONS * sizeof(egressd_dns_name) + EGRESSD_DNS_MAX_ADDRESSES * 24);
static_assert(offsetof(egressd_dns_work, label_count) == 184);
static_assert(offsetof(egressd_dns_work, chain_hash) == 224);
static_assert(sizeof(egressd_dns_work) == 344);
static_assert(offsetof(egressd_dns_scratch, payload_len) == EGRESSD_DNS_PAYLOAD_MAX);
static_assert(offsetof(egressd_dns_scratch, parsed) == EGRESSD_DNS_PAYLOAD_MAX + 8);
static_assert(sizeof(egressd_dns_scratch) == EGRESSD_DNS_PAYLOAD_MAX + 8 + sizeof(egressd_dns_parsed) + 344);
static_assert(sizeof(egressd_dns_settings) == 16);
static_assert(sizeof(egressd_dns_server_key) == 16);
static_assert(sizeof(egressd_dns_query_key) == 16);
static_assert(sizeof(egressd_dns_query) == 24);
static_assert(offsetof(egressd_dns_query, identity) == 16);
static_assert(sizeof(egressd_dns_host_key) == 16);
static_assert(offsetof(egressd_dns_host_key, identity) == 4);
static_assert(offsetof(egressd_dns_host_key, name) == 8);
static_assert(sizeof(egressd_dns_host) == 8);
static_assert(sizeof(egressd_dns_learned_key) == 8);
static_assert(sizeof(egressd_dns_learned) == 40);
static_assert(offsetof(egressd_dns_learned, expires_ns) == 16);
static_assert(offsetof(egressd_dns_learned, host) == 32);
static_assert((EGRESSD_DNS_PAYLOAD_MAX & (EGRESSD_DNS_PAYLOAD_MAX - 1)) == 0);
static_assert((EGRESSD_DNS_MAX_LABELS & (EGRESSD_DNS_MAX_LABELS - 1)) == 0);
static_assert((EGRESSD_DNS_MAX_CHAIN & (EGRESSD_DNS_MAX_CHAIN - 1)) == 0);
static_assert((EGRESSD_DNS_MAX_QUESTIONS & (EGRESSD_DNS_MAX_QUESTIONS - 1)) == 0);
static_assert((EGRESSD_DNS_MAX_ADDRESSES & (EGRESSD_DNS_MAX_ADDRESSES - 1)) == 0);

static_assert(std::is_trivially_copyable_v<egressd_cidr_key> && std::is_trivially_copyable_v<egressd_config>);

}  // namespace egressd::abi
