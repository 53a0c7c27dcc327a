// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd cgroup socket hooks. Each hook only normalises the destination
 * into the one address space and calls the shared decision.
 */
#include "decision.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline void egressd_addr_from_v6(struct egressd_addr *a, const struct bpf_sock_addr *ctx)
{
	/* bpf_sock_addr only allows 4-byte loads of user_ip6. An IPv4-mapped
	 * address needs no conversion: ::ffff:a.b.c.d is how IPv4 is stored. */
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

SEC("cgroup/connect4")
int egressd_conn4(struct bpf_sock_addr *ctx)
{
	struct egressd_addr dst;

	egressd_addr_from_v4(&dst, ctx->user_ip4);
	return egressd_sock_addr(ctx, &dst, EGRESSD_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int egressd_conn6(struct bpf_sock_addr *ctx)
{
	struct egressd_addr dst;

	egressd_addr_from_v6(&dst, ctx);
	return egressd_sock_addr(ctx, &dst, EGRESSD_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg4")
int egressd_send4(struct bpf_sock_addr *ctx)
{
	struct egressd_addr dst;

	egressd_addr_from_v4(&dst, ctx->user_ip4);
	return egressd_sock_addr(ctx, &dst, EGRESSD_HOOK_SENDMSG4);
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

SEC("sockops")
int egressd_sockops(struct bpf_sock_ops *skops)
{
	struct egressd_flow *flow;
	__u64 cookie;

	if (!skops->sk)
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
		/* RTT samples keep the byte counts current for egressctl flows. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
						 BPF_SOCK_OPS_RTT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
		cookie = bpf_get_socket_cookie(skops);
		flow = bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie);
		if (flow) {
			flow->bytes_sent = skops->bytes_acked;
			flow->bytes_received = skops->bytes_received;
		}
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
			struct egressd_traffic_key rule = { .reason = flow->reason, .rule = flow->rule };
			__u32 identity = flow->identity;

			egressd_add_traffic(&EGRESSD_MAP_RULE_TRAFFIC, &rule, skops->bytes_acked, skops->bytes_received);
			egressd_add_traffic(&EGRESSD_MAP_ID_TRAFFIC, &identity, skops->bytes_acked,
					    skops->bytes_received);
		}
		bpf_map_delete_elem(&EGRESSD_MAP_FLOWS, &cookie);
		return 1;
	}
	return 1;
}

SEC("cgroup/sendmsg6")
int egressd_send6(struct bpf_sock_addr *ctx)
{
	struct egressd_addr dst;

	egressd_addr_from_v6(&dst, ctx);
	return egressd_sock_addr(ctx, &dst, EGRESSD_HOOK_SENDMSG6);
}
