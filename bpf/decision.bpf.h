/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one egress decision, shared by every hook. It mirrors
 * userspace/core/decision.cc (the C++ reference model); the kernel tests
 * check the two against each other. Order: docs/decision.md.
 */
#ifndef EGRESSD_BPF_DECISION_BPF_H
#define EGRESSD_BPF_DECISION_BPF_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

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
	__uint(max_entries, EGRESSD_SLOTS * EGRESSD_DEFAULT_CIDR_CAPACITY);
	__type(key, struct egressd_cidr_key);
	__type(value, struct egressd_cidr_value);
} EGRESSD_MAP_CIDRS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_SLOTS * EGRESSD_DEFAULT_PORT_CAPACITY);
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
} EGRESSD_MAP_IDENTITIES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_DEFAULT_IDENTITY_CAPACITY);
	__type(key, __u32);
	__type(value, struct egressd_identity_name);
} EGRESSD_MAP_ID_NAMES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_SLOTS * EGRESSD_DEFAULT_POLICY_RULE_CAPACITY);
	__type(key, struct egressd_policy_key);
	__type(value, struct egressd_policy_value);
} EGRESSD_MAP_POLICIES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESSD_SLOTS * EGRESSD_DEFAULT_POLICY_RULE_CAPACITY);
	__type(key, struct egressd_policy_host_key);
	__type(value, struct egressd_policy_value);
} EGRESSD_MAP_POLICY_HOSTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_SLOTS * EGRESSD_DEFAULT_POLICY_CAPACITY);
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
} EGRESSD_MAP_EVENT_BUCKETS SEC(".maps");

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
	__uint(max_entries, EGRESSD_TRAFFIC_RULES);
	__type(key, struct egressd_traffic_key);
	__type(value, struct egressd_traffic);
} EGRESSD_MAP_RULE_TRAFFIC SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, EGRESSD_TRAFFIC_IDENTITIES);
	__type(key, __u32);
	__type(value, struct egressd_traffic);
} EGRESSD_MAP_ID_TRAFFIC SEC(".maps");

/* A destination in the one 16-byte address space, network byte order. */
struct egressd_addr {
	__u32 w[4];
};

struct egressd_decision {
	__u32 verdict;  /* enum egressd_verdict */
	__u32 reason;   /* enum egressd_reason */
	__u32 rule;     /* index in the list that decided, or the policy number */
	/* What reporting needs from the generation that decided (zero without one). */
	__u64 generation;
	__u32 flags;        /* config_v1 flags */
	__u32 mode;         /* enum egressd_mode */
	__u32 cgroup_level;
	__u32 identity;     /* valid when identity_known */
	__u32 identity_known;
};

static __always_inline void egressd_addr_from_v4(struct egressd_addr *a, __u32 ip4_be)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4_be;
}

static __always_inline int egressd_addr_is_v4(const struct egressd_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

/* Row 1: 127.0.0.0/8, ::1, and the unspecified addresses (a connect() to
 * 0.0.0.0 or :: reaches this host). */
static __always_inline int egressd_addr_is_local(const struct egressd_addr *a)
{
	if (egressd_addr_is_v4(a))
		return (bpf_ntohl(a->w[3]) >> 24) == 127 || a->w[3] == 0;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 &&
	       (a->w[3] == 0 || a->w[3] == bpf_htonl(1));
}

static __always_inline const struct egressd_cidr_value *
egressd_cidr_lookup(__u8 slot, __u8 table, const struct egressd_addr *a)
{
	struct egressd_cidr_key key = {
		.prefixlen = EGRESSD_CIDR_KEY_FIXED_BITS + 128,
		.slot = slot,
		.table = table,
	};

	__builtin_memcpy(key.addr, a->w, sizeof(key.addr));
	return bpf_map_lookup_elem(&EGRESSD_MAP_CIDRS, &key);
}

static __always_inline void egressd_verdict(struct egressd_decision *d, __u32 verdict, __u32 reason, __u32 rule)
{
	d->verdict = verdict;
	d->reason = reason;
	d->rule = rule;
}

static __always_inline __u32 egressd_identity_of(__u64 cgroup_id)
{
	struct egressd_identity_key key = { .cgroup_id = cgroup_id };
	const struct egressd_identity_value *v = bpf_map_lookup_elem(&EGRESSD_MAP_IDENTITIES, &key);

	return v ? v->identity : 0;
}

/* The identity of the calling task: its own cgroup if registered, else the
 * nearest registered ancestor below the enforced cgroup, else 0 (unknown).
 * Only computed when row 7 is reached, or for a reported event. */
static __always_inline __u32 egressd_current_identity(__u32 cgroup_level)
{
	__u32 identity = egressd_identity_of(bpf_get_current_cgroup_id());

	if (identity)
		return identity;
#pragma unroll
	for (int depth = EGRESSD_MAX_WORKLOAD_DEPTH; depth >= 1; depth--) {
		/* 0 when the task's cgroup is not that deep. */
		__u64 ancestor = bpf_get_current_ancestor_cgroup_id(cgroup_level + depth);

		if (!ancestor)
			continue;
		identity = egressd_identity_of(ancestor);
		if (identity)
			return identity;
	}
	return 0;
}

/* The policy entry for (identity, proto, port, destination): the exact
 * address in policy_hosts_v1 if there is one (no prefix in the trie is
 * longer), else the longest prefix in policies_v1 when the slot has any. */
static __always_inline const struct egressd_policy_value *
egressd_policy_lookup(__u8 slot, __u32 flags, __u32 identity, __u8 proto, __u16 port, const struct egressd_addr *a)
{
	const struct egressd_policy_value *value;
	struct egressd_policy_host_key host = {
		.slot = slot,
		.proto = proto,
		.port = port,
		.identity = identity,
	};
	struct egressd_policy_key key = {
		.prefixlen = EGRESSD_POLICY_KEY_FIXED_BITS + 128,
		.slot = slot,
		.proto = proto,
		.port = port,
		.identity = identity,
	};

	__builtin_memcpy(host.addr, a->w, sizeof(host.addr));
	value = bpf_map_lookup_elem(&EGRESSD_MAP_POLICY_HOSTS, &host);
	if (value || !(flags & EGRESSD_CFG_POLICY_PREFIXES))
		return value;
	__builtin_memcpy(key.addr, a->w, sizeof(key.addr));
	return bpf_map_lookup_elem(&EGRESSD_MAP_POLICIES, &key);
}

/* The decision, rows 1-8 of docs/decision.md, first match wins. `d` starts zeroed. */
static __always_inline void egressd_decide(struct egressd_decision *d, const struct egressd_addr *dst, __u16 port,
					   __u8 proto, __u32 uid)
{
	const struct egressd_policy_value *policy;
	const struct egressd_cidr_value *cidr;
	const struct egressd_port_value *pv;
	const struct egressd_control *ctl;
	const struct egressd_config *cfg;
	struct egressd_port_key pkey = {};
	__u32 zero = 0, slot;

	if (egressd_addr_is_local(dst))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_LOCAL, 0);

	/* One read of the active slot: everything below is one generation. */
	ctl = bpf_map_lookup_elem(&EGRESSD_MAP_CONTROL, &zero);
	if (!ctl)
		return egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG, 0);
	slot = ctl->active_slot & 1;
	cfg = bpf_map_lookup_elem(&EGRESSD_MAP_CONFIG, &slot);
	if (!cfg || !(cfg->flags & EGRESSD_CFG_VALID))
		return egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG, 0);
	d->generation = cfg->generation;
	d->flags = cfg->flags;
	d->mode = cfg->mode;
	d->cgroup_level = cfg->cgroup_level;

	if ((cfg->flags & EGRESSD_CFG_SIDECAR_UID) && uid == cfg->sidecar_uid)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_SIDECAR_UID, 0);

	cidr = egressd_cidr_lookup(slot, EGRESSD_TABLE_EXCLUDE, dst);
	if (cidr)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_CIDR, cidr->rule);
	pkey.slot = slot;
	pkey.table = EGRESSD_PORTS_EXCLUDE;
	pkey.port = port;
	pv = bpf_map_lookup_elem(&EGRESSD_MAP_PORTS, &pkey);
	if (pv)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_PORT, pv->rule);

	if ((cfg->flags & EGRESSD_CFG_HAS_INCLUSION) &&
	    !egressd_cidr_lookup(slot, EGRESSD_TABLE_INCLUDE, dst))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_NOT_INCLUDED, 0);

	cidr = egressd_cidr_lookup(slot, EGRESSD_TABLE_MESH, dst);
	if (cidr)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_MESH, cidr->rule);

	if (cfg->flags & EGRESSD_CFG_ENABLE_EGRESS)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_PASSTHROUGH, 0);

	if (cfg->flags & EGRESSD_CFG_POLICY_ACTIVE) {
		d->identity = egressd_current_identity(cfg->cgroup_level);
		d->identity_known = 1;
		if (d->identity) {
			policy = egressd_policy_lookup(slot, cfg->flags, d->identity, proto, port, dst);
			if (policy)
				return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_POLICY, policy->policy);
		}
	}

	egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_DENY, 0);
}

static __always_inline void egressd_count(__u32 reason, __u32 hook)
{
	__u32 index = reason * EGRESSD_HOOK_MAX + hook;
	struct egressd_counter *c = bpf_map_lookup_elem(&EGRESSD_MAP_COUNTERS, &index);

	if (c)
		__sync_fetch_and_add(&c->decisions, 1);
}

static __always_inline void egressd_stat(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&EGRESSD_MAP_EVENT_STATS, &stat);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Token bucket per source: EGRESSD_EVENT_RATE_PER_SEC sustained, bursts of
 * EGRESSD_EVENT_BURST. Concurrent callers of one source may race on the
 * bucket; that costs precision, never safety. Returns 1 to report. */
static __always_inline int egressd_event_allowed(__u64 source, __u64 now)
{
	const __u64 unit = 1000, full = EGRESSD_EVENT_BURST * 1000ULL;
	struct egressd_event_bucket *b = bpf_map_lookup_elem(&EGRESSD_MAP_EVENT_BUCKETS, &source);
	__u64 elapsed, tokens;

	if (!b) {
		struct egressd_event_bucket fresh = { .refilled_ns = now, .tokens = full - unit };

		bpf_map_update_elem(&EGRESSD_MAP_EVENT_BUCKETS, &source, &fresh, BPF_ANY);
		return 1;
	}
	elapsed = now > b->refilled_ns ? now - b->refilled_ns : 0;
	/* rate per second, in thousandths of an event per nanosecond: rate / 1e6 */
	tokens = elapsed >= 10000000000ULL ? full : b->tokens + elapsed * EGRESSD_EVENT_RATE_PER_SEC / 1000000;
	if (tokens > full)
		tokens = full;
	b->refilled_ns = now;
	if (tokens < unit) {
		b->tokens = tokens;
		return 0;
	}
	b->tokens = tokens - unit;
	return 1;
}

static __always_inline void egressd_report(const struct egressd_decision *d, const struct egressd_addr *dst,
					   __u16 port, __u8 proto, __u32 hook, __u32 kind, __u32 uid)
{
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 identity = d->identity_known ? d->identity : egressd_current_identity(d->cgroup_level);
	/* Unknown sources are limited per cgroup, so one cannot silence another. */
	__u64 source = identity ? identity : (cgroup_id | (1ULL << 63));
	struct egressd_event *e;

	if (!egressd_event_allowed(source, now)) {
		egressd_stat(EGRESSD_STAT_EVENTS_SUPPRESSED);
		return;
	}
	e = bpf_ringbuf_reserve(&EGRESSD_MAP_EVENTS, sizeof(*e), 0);
	if (!e) {
		egressd_stat(EGRESSD_STAT_EVENTS_LOST);
		return;
	}
	e->timestamp_ns = now;
	e->cgroup_id = cgroup_id;
	e->generation = d->generation;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = uid;
	e->identity = identity;
	e->rule = d->rule;
	__builtin_memcpy(e->addr, dst->w, sizeof(e->addr));
	e->port = port;
	e->proto = proto;
	e->hook = hook;
	e->kind = kind;
	e->reason = d->reason;
	e->_pad[0] = 0;
	e->_pad[1] = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	egressd_stat(EGRESSD_STAT_EVENTS_SENT);
}

/* Records an outgoing TCP socket as a connecting flow, with why it was
 * allowed (see flows_v1 in the ABI). Local and mesh traffic is not egress. */
static __always_inline void egressd_track_flow(struct bpf_sock_addr *ctx, const struct egressd_decision *d,
					       const struct egressd_addr *dst, __u16 port)
{
	struct egressd_flow flow = {};
	__u64 cookie;

	if (ctx->protocol != IPPROTO_TCP || d->reason == EGRESSD_REASON_LOCAL || d->reason == EGRESSD_REASON_MESH)
		return;
	flow.cgroup_id = bpf_get_current_cgroup_id();
	flow.identity = d->identity_known ? d->identity : egressd_current_identity(d->cgroup_level);
	flow.rule = d->rule;
	flow.port = port;
	flow.reason = d->reason;
	__builtin_memcpy(flow.addr, dst->w, sizeof(flow.addr));
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&EGRESSD_MAP_FLOWS, &cookie, &flow, BPF_ANY);
}

/* Entry for every sock_addr hook: 1 lets the call proceed, 0 fails it with
 * EPERM before anything leaves the host. */
static __always_inline int egressd_sock_addr(struct bpf_sock_addr *ctx,
					     const struct egressd_addr *dst, __u32 hook)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u8 proto = (__u8)ctx->protocol;
	struct egressd_decision d = {};
	int allow;

	egressd_decide(&d, dst, port, proto, uid);
	egressd_count(d.reason, hook);
	allow = d.verdict == EGRESSD_VERDICT_ALLOW;
	if (!allow) {
		/* Audit mode reports what row 8 would deny and lets it pass; a
		 * missing generation stays closed. */
		__u32 audit = d.mode == EGRESSD_MODE_AUDIT && d.reason == EGRESSD_REASON_DENY;

		egressd_report(&d, dst, port, proto, hook, audit ? EGRESSD_EVENT_AUDIT : EGRESSD_EVENT_DENY, uid);
		if (audit && (hook == EGRESSD_HOOK_CONNECT4 || hook == EGRESSD_HOOK_CONNECT6))
			egressd_track_flow(ctx, &d, dst, port);
		return audit ? 1 : 0;
	}
	if (hook == EGRESSD_HOOK_CONNECT4 || hook == EGRESSD_HOOK_CONNECT6)
		egressd_track_flow(ctx, &d, dst, port);
	if ((d.reason == EGRESSD_REASON_POLICY && (d.flags & EGRESSD_CFG_EVENTS_POLICY)) ||
	    (d.reason == EGRESSD_REASON_PASSTHROUGH && (d.flags & EGRESSD_CFG_EVENTS_PASSTHROUGH)))
		egressd_report(&d, dst, port, proto, hook, EGRESSD_EVENT_ALLOW, uid);
	return 1;
}

#endif /* EGRESSD_BPF_DECISION_BPF_H */
