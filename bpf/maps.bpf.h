/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map the BPF programs use. Names, types, sizes and flags come from
 * maps/egressd_abi.h: userspace adopts the pinned maps by name and definition.
 */
#ifndef EGRESSD_BPF_MAPS_BPF_H
#define EGRESSD_BPF_MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "egressd_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egressd_control);
} EGRESSD_MAP_CONTROL SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EGRESSD_SLOTS);
	__type(key, __u32);
	__type(value, struct egressd_config);
} EGRESSD_MAP_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_SLOTS *EGRESSD_DEFAULT_CIDR_CAPACITY);
	__type(key, struct egressd_cidr_key);
	__type(value, struct egressd_cidr_value);
} EGRESSD_MAP_CIDRS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_SLOTS *EGRESSD_DEFAULT_PORT_CAPACITY);
	__type(key, struct egressd_port_key);
	__type(value, struct egressd_port_value);
} EGRESSD_MAP_PORTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EGRESSD_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct egressd_counter);
} EGRESSD_MAP_COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_DEFAULT_WORKLOAD_CAPACITY);
	__type(key, struct egressd_identity_key);
	__type(value, struct egressd_identity_value);
} EGRESSD_MAP_WORKLOAD_IDENTITIES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_DEFAULT_IDENTITY_CAPACITY);
	__type(key, __u32);
	__type(value, struct egressd_identity_name);
} EGRESSD_MAP_IDENTITY_NAMES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_SLOTS *EGRESSD_DEFAULT_POLICY_RULE_CAPACITY);
	__type(key, struct egressd_policy_rule_key);
	__type(value, struct egressd_policy_value);
} EGRESSD_MAP_POLICY_RULES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_SLOTS *EGRESSD_DEFAULT_IDENTITY_CAPACITY);
	__type(key, struct egressd_policy_lengths_key);
	__type(value, struct egressd_policy_lengths);
} EGRESSD_MAP_POLICY_LENGTHS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_SLOTS *EGRESSD_DEFAULT_POLICY_CAPACITY);
	__type(key, struct egressd_policy_name_key);
	__type(value, struct egressd_policy_name);
} EGRESSD_MAP_POLICY_NAMES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EGRESSD_EVENTS_RING_BYTES);
} EGRESSD_MAP_EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGRESSD_EVENT_SOURCES);
	__type(key, __u64);
	__type(value, struct egressd_event_bucket);
} EGRESSD_MAP_EVENT_LIMITS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EGRESSD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} EGRESSD_MAP_EVENT_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGRESSD_FLOW_CAPACITY);
	__type(key, __u64);
	__type(value, struct egressd_flow);
} EGRESSD_MAP_FLOWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_TRAFFIC_RULES);
	__type(key, struct egressd_traffic_key);
	__type(value, struct egressd_traffic);
} EGRESSD_MAP_RULE_TRAFFIC SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_TRAFFIC_IDENTITIES);
	__type(key, __u32);
	__type(value, struct egressd_traffic);
} EGRESSD_MAP_ID_TRAFFIC SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EGRESSD_DNS_SCRATCH_ENTRIES);
	__type(key, __u32);
	__type(value, struct egressd_dns_scratch);
} EGRESSD_MAP_DNS_SCRATCH SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egressd_dns_settings);
} EGRESSD_MAP_DNS_SETTINGS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct egressd_dns_server_key);
	__type(value, __u32);
} EGRESSD_MAP_DNS_SERVERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGRESSD_DNS_QUERY_CAPACITY);
	__type(key, struct egressd_dns_query_key);
	__type(value, struct egressd_dns_query);
} EGRESSD_MAP_DNS_QUERIES SEC(".maps");

/* Resized by the agent from its settings, like the other capacities. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * EGRESSD_DEFAULT_POLICY_RULE_CAPACITY);
	__type(key, struct egressd_dns_host_key);
	__type(value, struct egressd_dns_host);
} EGRESSD_MAP_DNS_HOSTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_DEFAULT_DNS_LEARNED_CAPACITY);
	__type(key, struct egressd_dns_learned_key);
	__type(value, struct egressd_dns_learned);
} EGRESSD_MAP_DNS_LEARNED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EGRESSD_DNS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} EGRESSD_MAP_DNS_STATS SEC(".maps");

#endif /* EGRESSD_BPF_MAPS_BPF_H */
