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
	struct egressd_flow_mark *mark;
	struct egressd_flow *flow;
	struct bpf_sock *sk = skops->sk;
	__u64 cookie;

	if (!sk)
		return 1;
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		mark = bpf_sk_storage_get(&EGRESSD_MAP_FLOW_MARKS, sk, 0, 0);
		if (!mark)
			return 1; /* not egress egressd tracks */
		struct egressd_flow fresh = {
			.started_ns = bpf_ktime_get_boot_ns(),
			.cgroup_id = bpf_get_current_cgroup_id(),
			.identity = mark->identity,
			.rule = mark->rule,
			.port = (__u16)bpf_ntohl(skops->remote_port),
			.reason = mark->reason,
		};
		if (skops->family == 2 /* AF_INET */) {
			struct egressd_addr a;

			egressd_addr_from_v4(&a, skops->remote_ip4);
			__builtin_memcpy(fresh.addr, a.w, sizeof(fresh.addr));
		} else {
			__u32 w[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
				       skops->remote_ip6[3] };

			__builtin_memcpy(fresh.addr, w, sizeof(fresh.addr));
		}
		cookie = bpf_get_socket_cookie(skops);
		bpf_map_update_elem(&EGRESSD_MAP_FLOWS, &cookie, &fresh, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
						 BPF_SOCK_OPS_RTT_CB_FLAG);
		return 1;
	}
	if (skops->op == BPF_SOCK_OPS_RTT_CB) {
		/* Only flows set this callback: keep their byte counts current for egressctl flows. */
		cookie = bpf_get_socket_cookie(skops);
		flow = bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie);
		if (flow) {
			flow->bytes_sent = skops->bytes_acked;
			flow->bytes_received = skops->bytes_received;
		}
		return 1;
	}
	if (skops->op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == BPF_TCP_CLOSE) {
		cookie = bpf_get_socket_cookie(skops);
		flow = bpf_map_lookup_elem(&EGRESSD_MAP_FLOWS, &cookie);
		if (!flow) {
			egressd_stat(EGRESSD_STAT_FLOWS_LOST);
			return 1;
		}
		struct egressd_traffic_key rule = { .reason = flow->reason, .rule = flow->rule };
		__u32 identity = flow->identity;

		egressd_add_traffic(&EGRESSD_MAP_RULE_TRAFFIC, &rule, skops->bytes_acked, skops->bytes_received);
		egressd_add_traffic(&EGRESSD_MAP_ID_TRAFFIC, &identity, skops->bytes_acked, skops->bytes_received);
		bpf_map_delete_elem(&EGRESSD_MAP_FLOWS, &cookie);
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
