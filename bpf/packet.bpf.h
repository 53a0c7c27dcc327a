/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The packet backstop (docs/decision.md, "every way out"): packets of the
 * sockets no sock_addr hook decides, ping sockets' datagrams sent without
 * connect() and raw sockets' packets, normalised here into the decision's
 * inputs. Every other socket's packets return after one look at the socket.
 */
#ifndef EGRESSD_BPF_PACKET_BPF_H
#define EGRESSD_BPF_PACKET_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "egressd_abi.h"
#include "decision.bpf.h"

/* What the decision needs of one packet. */
struct egressd_packet {
	struct egressd_addr dst;
	__u16 port; /* TCP or UDP destination port of a raw packet; 0 otherwise */
	__u8 proto; /* egressd_decision_proto() of the IP protocol */
	__u8 raw;   /* sent by a raw socket (else by a ping socket) */
};

/* The full socket a packet leaves from, or NULL (none, or a request or
 * time-wait socket's reply). */
static __always_inline struct bpf_sock *egressd_packet_socket(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	return sk ? bpf_sk_fullsock(sk) : NULL;
}

/* 0 and `pkt` filled for a packet of `sk` the backstop decides; -1 for every
 * other packet (TCP, UDP and non-IP sockets: decided at connect()/sendmsg()). */
static __always_inline int egressd_packet_of(struct __sk_buff *skb, const struct bpf_sock *sk,
					     struct egressd_packet *pkt)
{
	__u32 l4 = 0, protocol;
	__u16 ports[2];

	if (!sk)
		return -1;
	pkt->raw = sk->type == SOCK_RAW;
	if (!pkt->raw && !(sk->type == SOCK_DGRAM && (sk->protocol == IPPROTO_ICMP || sk->protocol == IPPROTO_ICMPV6)))
		return -1;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		egressd_addr_from_v4(&pkt->dst, ip.daddr);
		protocol = ip.protocol;
		/* Ports only from a first fragment. */
		if (!(ip.frag_off & bpf_htons(0x1fff)))
			l4 = (__u32)ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(pkt->dst.w, &ip6.daddr, sizeof(pkt->dst.w));
		protocol = ip6.nexthdr; /* an extension header is decided as its own protocol, port 0 */
		l4 = sizeof(ip6);
	} else {
		return -1; /* not reached: the hook runs on the IP output paths only */
	}
	pkt->proto = egressd_decision_proto(protocol);
	pkt->port = 0;
	if (l4 && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) && !bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
		pkt->port = bpf_ntohs(ports[1]);
	return 0;
}

#endif /* EGRESSD_BPF_PACKET_BPF_H */
