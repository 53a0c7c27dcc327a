// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressd cgroup hooks, in the order of enum egressd_hook, then sockops and
 * the DNS answers. Each hook only normalises what it sees (a destination into
 * the one address space, a socket's kind, a packet's header) and calls the
 * one decision (decision.bpf.h) and egressd_enforce() below.
 */
#include "decision.bpf.h"
#include "report.bpf.h"
#include "flows.bpf.h"
#include "dns_learn.bpf.h"
#include "packet.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Counts and reports a decision taken for `hook`, and says whether the call
 * proceeds. Audit mode reports what rows 0 and 8 would deny and lets it
 * pass; a missing generation stays closed. */
static __always_inline int egressd_enforce(struct egressd_decision *d, const struct egressd_addr *dst, __u16 port,
					   __u8 proto, __u32 hook)
{
	if (d->verdict != EGRESSD_VERDICT_ALLOW) {
		__u32 audit = d->mode == EGRESSD_MODE_AUDIT && d->reason != EGRESSD_REASON_NO_CONFIG;

		egressd_count(d->reason, hook);
		egressd_report(d, dst, port, proto, hook, audit ? EGRESSD_EVENT_AUDIT : EGRESSD_EVENT_DENY,
			       egressd_caller_uid(d));
		return audit;
	}
	if (d->reason == EGRESSD_REASON_NONE)
		return 1; /* a socket kind decided later: not counted */
	egressd_count(d->reason, hook);
	if ((d->reason == EGRESSD_REASON_POLICY && (d->flags & EGRESSD_CFG_EVENTS_POLICY)) ||
	    (d->reason == EGRESSD_REASON_PASSTHROUGH && (d->flags & EGRESSD_CFG_EVENTS_PASSTHROUGH)))
		egressd_report(d, dst, port, proto, hook, EGRESSD_EVENT_ALLOW, egressd_caller_uid(d));
	return 1;
}

/* Entry for every sock_addr hook: 1 lets the call proceed, 0 fails it with
 * EPERM before anything leaves the host. It lives here, beside the hooks, and
 * not in a header: it is the one place that joins the decision, its reporting
 * and flow tracking, so each of those headers stays about one concern. */
static __always_inline int egressd_sock_addr(struct bpf_sock_addr *ctx, const struct egressd_addr *dst, __u32 hook)
{
	__u8 proto = egressd_decision_proto(ctx->protocol);
	__u16 port = proto == EGRESSD_PROTO_ICMP ? 0 : bpf_ntohs((__u16)ctx->user_port);
	struct egressd_decision d = {};
	int proceed;

	egressd_decide(&d, dst, port, proto, 0);
	proceed = egressd_enforce(&d, dst, port, proto, hook);
	if (proceed && (hook == EGRESSD_HOOK_CONNECT4 || hook == EGRESSD_HOOK_CONNECT6))
		egressd_track_flow(ctx, &d, dst, port);
	return proceed;
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

/* Sockets no sock_addr hook decides: the kinds left undecided are refused
 * at creation, and raw and ping sockets' packets are decided one by one. */
SEC("cgroup/sock_create")
int egressd_sock_create(struct bpf_sock *sk)
{
	struct egressd_decision d = {};
	struct egressd_addr none = {};
	__u8 proto = (__u8)sk->protocol;

	egressd_decide_socket(&d, sk->type, sk->protocol);
	return egressd_enforce(&d, &none, 0, proto, EGRESSD_HOOK_SOCK_CREATE);
}

/* Every packet leaving an enforced cgroup: DNS queries are recorded for
 * learning (bpf/dns_learn.bpf.h), raw and ping sockets' packets decided
 * (bpf/packet.bpf.h). Raw and ping sockets send in the caller's own
 * sendmsg(), so the current task is the sender; a drop fails it with EPERM.
 * A stream socket's packets (TCP, MPTCP: decided at connect(), and no DNS
 * query learned from) return after one look at the socket: the bulk of the
 * traffic costs no header read. */
SEC("cgroup_skb/egress")
int egressd_packet_out(struct __sk_buff *skb)
{
	struct bpf_sock *sk = egressd_packet_socket(skb);
	struct egressd_decision d = {};
	struct egressd_packet pkt;

	if (sk && sk->type == SOCK_STREAM)
		return 1;
	egressd_dns_query_out(skb);
	if (egressd_packet_of(skb, sk, &pkt))
		return 1;
	d.uid = bpf_get_socket_uid(skb); /* the sending socket's owner */
	d.uid_known = 1;
	egressd_decide(&d, &pkt.dst, pkt.port, pkt.proto, pkt.raw);
	return egressd_enforce(&d, &pkt.dst, pkt.port, pkt.proto, EGRESSD_HOOK_PACKET);
}

SEC("sockops")
int egressd_sockops(struct bpf_sock_ops *skops)
{
	return egressd_sockops_flow(skops);
}

/* DNS answers, for the policies' host names (bpf/dns_learn.bpf.h): learned
 * when they answer a recorded query. Never a drop: this one only observes. */
SEC("cgroup_skb/ingress")
int egressd_dns_in(struct __sk_buff *skb)
{
	egressd_dns_answer_in(skb);
	return 1;
}
