/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow tracking for allowed egress TCP: the connect hooks record a flow,
 * the sockops program follows it to close and adds its bytes to the totals.
 * Nothing here runs while bytes flow (no RTT or data callbacks): an open
 * flow's bytes so far are read from its socket when asked.
 */
#ifndef EGRESSD_BPF_FLOWS_BPF_H
#define EGRESSD_BPF_FLOWS_BPF_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "egressd_abi.h"
#include "maps.bpf.h"
#include "decision.bpf.h"
#include "report.bpf.h"

/* The agent's `flows` setting, fixed when the programs are loaded: with 0,
 * the verifier drops flow tracking from the connect hooks (and the agent
 * does not attach the sockops program; if attached, it returns at once). */
const volatile __u32 egressd_flows_enabled = 1;

/* Records an outgoing TCP socket as a connecting flow, with why it was
 * allowed (see flows_v2 in the ABI). Local and mesh traffic is not egress. */
static __always_inline void egressd_track_flow(struct bpf_sock_addr *ctx, const struct egressd_decision *d,
					       const struct egressd_addr *dst, __u16 port)
{
	struct egressd_flow flow = {};
	__u64 cookie;

	if (!egressd_flows_enabled || ctx->protocol != IPPROTO_TCP || d->reason == EGRESSD_REASON_LOCAL ||
	    d->reason == EGRESSD_REASON_MESH)
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

#define EGRESSD_EEXIST 17 /* errno values, as the kernel returns them negated */

/* Adds a closed flow's bytes to one traffic total (per-CPU, created zeroed
 * on first use; a full map counts the connection as lost, never evicts). */
static __always_inline void egressd_add_traffic(void *map, const void *key, __u64 sent, __u64 received)
{
	struct egressd_traffic *t = bpf_map_lookup_elem(map, key);

	if (!t) {
		struct egressd_traffic zero = {};
		long err = bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);

		/* EEXIST: another CPU created it meanwhile, which is fine. */
		if (err && err != -EGRESSD_EEXIST) {
			egressd_stat(EGRESSD_STAT_TRAFFIC_LOST);
			return;
		}
		t = bpf_map_lookup_elem(map, key);
		if (!t)
			return;
	}
	t->connections += 1; /* this CPU's slot: no other writer */
	t->bytes_sent += sent;
	t->bytes_received += received;
}

/* The sockops program: stamps a recorded flow established, and at close
 * adds its bytes to the totals and removes it. */
static __always_inline int egressd_sockops_flow(struct bpf_sock_ops *skops)
{
	struct egressd_flow *flow;
	__u64 cookie;

	if (!egressd_flows_enabled || !skops->sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* The SYN is about to leave a socket the connect hook recorded:
		 * from now on every state change is reported, so that a
		 * connection that fails is removed as well. */
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		flow = bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie);
		if (!flow)
			return 1; /* not egress egressd tracks */
		flow->started_ns = bpf_ktime_get_boot_ns();
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		flow = bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie);
		if (!flow) {
			/* Only recorded sockets ask for state callbacks: evicted. */
			egressd_stat(EGRESSD_STAT_FLOWS_LOST);
			return 1;
		}
		if (flow->started_ns) {
			struct egressd_traffic_key rule = {.reason = flow->reason, .rule = flow->rule};
			__u32 identity = flow->identity;

			egressd_add_traffic(&EGRESSD_MAP_RULE_TRAFFIC, &rule, skops->bytes_acked,
					    skops->bytes_received);
			egressd_add_traffic(&EGRESSD_MAP_ID_TRAFFIC, &identity, skops->bytes_acked,
					    skops->bytes_received);
		}
		bpf_map_delete_elem(&EGRESSD_MAP_FLOWS, &cookie);
		return 1;
	}
	return 1;
}

#endif /* EGRESSD_BPF_FLOWS_BPF_H */
