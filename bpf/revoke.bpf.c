// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Revocation (docs/decision.md, "revocation"): socket iterators that list a
 * network namespace's TCP and connected UDP sockets for the agent, which
 * decides them against the new generation with the reference model, and
 * that destroy the ones it names (bpf_sock_destroy, kernel >= 6.5). The
 * listing also gives open TCP connections' byte counts, read when egressctl
 * flows or /metrics asks. A separate object from egressd.bpf.c: iterators
 * are tracing programs, loaded only when revocation is on or bytes are
 * asked for, and no hook depends on them.
 *
 * The kernel's types are declared here with only the fields read, and CO-RE
 * relocates every access against the running kernel's BTF.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "egressd_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__be32 skc_daddr;
	__be16 skc_dport;
	__u16 skc_num;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

typedef struct {
	__u32 val;
} kuid_t;

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	kuid_t sk_uid;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct udp_sock;

struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
} __attribute__((preserve_access_index));
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The sockets the agent names for destruction: socket cookie -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESSD_REVOKE_BATCH);
	__type(key, __u64);
	__type(value, __u8);
} revoke_cookies SEC(".maps");

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10
#define AF_INET 2
#define AF_INET6 10

/* One record per socket a revocation may concern: open TCP connections
 * (established, connecting, or half-closed by the peer), listeners (so the
 * agent can tell accepted connections from its own), and UDP sockets with a
 * peer. Time-wait and request sockets carry no process's traffic. A TCP
 * socket's byte counters are read here, when the agent asks: egressctl
 * flows and /metrics show open connections' bytes from them. */
static __always_inline void egressd_list(struct seq_file *seq, struct sock *sk, struct tcp_sock *tp, __u8 proto,
					 __u8 state)
{
	struct egressd_socket_record r = {};

	r.cookie = bpf_get_socket_cookie(sk);
	r.cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	r.uid = sk->sk_uid.val;
	r.family = (__u8)sk->__sk_common.skc_family;
	r.proto = proto;
	r.state = state;
	r.port = bpf_ntohs(sk->__sk_common.skc_dport);
	r.local_port = sk->__sk_common.skc_num;
	if (tp) {
		r.bytes_sent = tp->bytes_acked;
		r.bytes_received = tp->bytes_received;
	}
	if (r.family == AF_INET) {
		r.addr[10] = 0xff;
		r.addr[11] = 0xff;
		__builtin_memcpy(&r.addr[12], (const void *)&sk->__sk_common.skc_daddr, 4);
	} else {
		BPF_CORE_READ_INTO(&r.addr, sk, __sk_common.skc_v6_daddr);
	}
	bpf_seq_write(seq, &r, sizeof(r));
}

static __always_inline int egressd_tcp_state_listed(__u8 state)
{
	return state == TCP_ESTABLISHED || state == TCP_SYN_SENT || state == TCP_CLOSE_WAIT || state == TCP_LISTEN;
}

SEC("iter/tcp")
int egressd_list_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	__u8 state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (!egressd_tcp_state_listed(state))
		return 0;
	tp = bpf_skc_to_tcp_sock(skc); /* NULL for what is not a full socket: time-wait, request */
	if (!tp)
		return 0;
	egressd_list(ctx->meta->seq, (struct sock *)tp, tp, IPPROTO_TCP, state);
	return 0;
}

SEC("iter/udp")
int egressd_list_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (!sk || !sk->__sk_common.skc_dport)
		return 0; /* unconnected: each datagram is decided at sendmsg() */
	egressd_list(ctx->meta->seq, sk, NULL, (__u8)sk->sk_protocol, TCP_ESTABLISHED);
	return 0;
}

/* Destroys a named socket; writes its cookie when the kernel did. */
static __always_inline void egressd_destroy_named(struct seq_file *seq, struct sock_common *skc)
{
	__u64 cookie = bpf_get_socket_cookie(skc);

	if (!bpf_map_lookup_elem(&revoke_cookies, &cookie))
		return;
	if (bpf_sock_destroy(skc) == 0)
		bpf_seq_write(seq, &cookie, sizeof(cookie));
}

SEC("iter/tcp")
int egressd_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;

	if (!skc || !egressd_tcp_state_listed(skc->skc_state) || skc->skc_state == TCP_LISTEN)
		return 0;
	egressd_destroy_named(ctx->meta->seq, skc);
	return 0;
}

SEC("iter/udp")
int egressd_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (!sk)
		return 0;
	egressd_destroy_named(ctx->meta->seq, &sk->__sk_common);
	return 0;
}
