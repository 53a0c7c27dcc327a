// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd cgroup socket hooks, in the order of enum egressd_hook, then
 * sockops. Each sock_addr hook only normalises the destination into the one
 * address space and calls the shared entry below.
 */
#include "decision.bpf.h"
#include "report.bpf.h"
#include "flows.bpf.h"
#include "dns_learn.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Entry for every sock_addr hook: 1 lets the call proceed, 0 fails it with
 * EPERM before anything leaves the host. It lives here, beside the hooks, and
 * not in a header: it is the one place that joins the decision, its reporting
 * and flow tracking, so each of those headers stays about one concern. */
static __always_inline int egressd_sock_addr(struct bpf_sock_addr *ctx, const struct egressd_addr *dst, __u32 hook)
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

SEC("sockops")
int egressd_sockops(struct bpf_sock_ops *skops)
{
	return egressd_sockops_flow(skops);
}

/* DNS, for the policies' host names (bpf/dns_learn.bpf.h): queries on their
 * way out are recorded, the answers to them learned. Never a drop: these two
 * only observe. */
SEC("cgroup_skb/egress")
int egressd_dns_out(struct __sk_buff *skb)
{
	egressd_dns_query_out(skb);
	return 1;
}

SEC("cgroup_skb/ingress")
int egressd_dns_in(struct __sk_buff *skb)
{
	egressd_dns_answer_in(skb);
	return 1;
}
