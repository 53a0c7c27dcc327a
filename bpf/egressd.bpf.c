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

SEC("cgroup/sendmsg6")
int egressd_send6(struct bpf_sock_addr *ctx)
{
	struct egressd_addr dst;

	egressd_addr_from_v6(&dst, ctx);
	return egressd_sock_addr(ctx, &dst, EGRESSD_HOOK_SENDMSG6);
}
