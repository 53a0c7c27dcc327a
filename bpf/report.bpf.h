/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What a decision leaves behind: the decision and event counters, and the
 * events in events_v1, rate-limited by a token bucket per source.
 */
#ifndef EGRESSD_BPF_REPORT_BPF_H
#define EGRESSD_BPF_REPORT_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "egressd_abi.h"
#include "maps.bpf.h"
#include "decision.bpf.h"

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
	struct egressd_event_bucket *b = bpf_map_lookup_elem(&EGRESSD_MAP_EVENT_LIMITS, &source);
	__u64 elapsed, tokens;

	if (!b) {
		struct egressd_event_bucket fresh = {.refilled_ns = now, .tokens = full - unit};

		bpf_map_update_elem(&EGRESSD_MAP_EVENT_LIMITS, &source, &fresh, BPF_ANY);
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

static __always_inline void egressd_report(const struct egressd_decision *d, const struct egressd_addr *dst, __u16 port,
					   __u8 proto, __u32 hook, __u32 kind, __u32 uid)
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
	e->flags = d->learned ? EGRESSD_EVENT_LEARNED : 0;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	egressd_stat(EGRESSD_STAT_EVENTS_SENT);
}

#endif /* EGRESSD_BPF_REPORT_BPF_H */
