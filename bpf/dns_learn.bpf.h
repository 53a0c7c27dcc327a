/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Learning from the DNS answers the workloads receive (maps/egressd_abi.h,
 * "learning from answers"): queries recorded on their way out, answers
 * trusted only from the configured resolvers and only for a query of the
 * same socket, id and name, their addresses learned for the socket's
 * identity when the name is one of its policy hosts. The packet programs
 * only observe: they never drop.
 */
#ifndef EGRESSD_BPF_DNS_LEARN_BPF_H
#define EGRESSD_BPF_DNS_LEARN_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "egressd_abi.h"
#include "maps.bpf.h"
#include "decision.bpf.h"
#include "dns.bpf.h"

#define EGRESSD_DNS_PORT 53

static __always_inline void egressd_dns_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_STATS, &stat);

	if (n)
		*n += 1; /* per CPU */
}

/* A UDP datagram to or from port 53, from the IP header on. */
struct egressd_dns_datagram {
	struct egressd_addr peer; /* the resolver: the source of an answer, the destination of a query */
	__u32 payload;            /* offset of the DNS message */
	__u32 length;             /* its length, from the UDP header */
};

/* 0 when the packet is UDP whose source (answers, `answer` set) or
 * destination port is 53. IPv6 extension headers and IPv4 fragments are not
 * followed: such a packet is not looked at. */
static __always_inline int egressd_dns_datagram(struct __sk_buff *skb, int answer, struct egressd_dns_datagram *out)
{
	struct udphdr udp;
	__u32 l4;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != IPPROTO_UDP ||
		    (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		egressd_addr_from_v4(&out->peer, answer ? ip.saddr : ip.daddr);
		l4 = (__u32)ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_UDP)
			return -1;
		__builtin_memcpy(out->peer.w, answer ? &ip6.saddr : &ip6.daddr, sizeof(out->peer.w));
		l4 = sizeof(ip6);
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)) ||
	    (answer ? udp.source : udp.dest) != bpf_htons(EGRESSD_DNS_PORT))
		return -1;
	out->payload = l4 + sizeof(udp);
	out->length = bpf_ntohs(udp.len);
	if (out->length < sizeof(udp) || l4 + out->length > skb->len)
		out->length = 0xffffffff; /* the UDP length does not fit the packet: malformed */
	else
		out->length -= sizeof(udp);
	return 0;
}

static __always_inline int egressd_dns_trusted(const struct egressd_addr *resolver)
{
	struct egressd_dns_server_key key;

	__builtin_memcpy(key.addr, resolver->w, sizeof(key.addr));
	return bpf_map_lookup_elem(&EGRESSD_MAP_DNS_SERVERS, &key) != NULL;
}

/* The identity of the packet's socket: its cgroup's, else the nearest
 * registered ancestor's below the enforced cgroup (as for a connect()). */
static __always_inline __u32 egressd_socket_identity(struct __sk_buff *skb, __u32 cgroup_level)
{
	__u32 identity = egressd_identity_of(bpf_skb_cgroup_id(skb));

	if (identity)
		return identity;
#pragma unroll
	for (int depth = EGRESSD_MAX_WORKLOAD_DEPTH; depth >= 1; depth--) {
		__u64 ancestor = bpf_skb_ancestor_cgroup_id(skb, cgroup_level + depth);

		if (!ancestor)
			continue;
		identity = egressd_identity_of(ancestor);
		if (identity)
			return identity;
	}
	return 0;
}

/* A query to a trusted resolver: recorded by socket and id, with its first
 * question's name, for the answer to be matched against. */
static __always_inline void egressd_dns_query_out(struct __sk_buff *skb)
{
	struct egressd_dns_datagram dgram;
	struct egressd_dns_query_key key = {};
	struct egressd_dns_query query = {};
	struct egressd_dns_ctx ctx;
	const struct egressd_config *cfg;
	struct egressd_dns_scratch *s;
	__u32 entry = EGRESSD_DNS_SCRATCH_QUERY, slot;
	__u16 flags, qdcount;

	if (egressd_dns_datagram(skb, 0, &dgram) || !egressd_dns_trusted(&dgram.peer))
		return;
	s = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_SCRATCH, &entry);
	cfg = egressd_active_config(&slot);
	if (!s || !cfg || egressd_dns_copy(skb, dgram.payload, dgram.length, s) != EGRESSD_DNS_OK)
		return;
	if (egressd_dns_u16(s, 0, &key.id) || egressd_dns_u16(s, 2, &flags) || egressd_dns_u16(s, 4, &qdcount) ||
	    (flags & 0x8000) || qdcount == 0)
		return; /* not a query: nothing to wait for */
	ctx.s = s;
	if (egressd_dns_walk_name(&ctx, EGRESSD_DNS_HEADER_LEN) != EGRESSD_DNS_OK)
		return;
	query.name = egressd_dns_hash_name(&ctx);
	query.sent_ns = bpf_ktime_get_boot_ns();
	query.identity = egressd_socket_identity(skb, cfg->cgroup_level);
	key.socket = bpf_get_socket_cookie(skb);
	bpf_map_update_elem(&EGRESSD_MAP_DNS_QUERIES, &key, &query, BPF_ANY);
	egressd_dns_count(EGRESSD_DNS_STAT_QUERIES);
}

/* The policy host the question names for `identity`: the whole name, else
 * the longest suffix a wildcard covers. 0 when there is none. */
static __always_inline __u32 egressd_dns_policy_host(__u32 slot, __u32 identity, const struct egressd_dns_name *q)
{
	struct egressd_dns_host_key key = {.slot = (__u8)slot, .identity = identity};
	const struct egressd_dns_host *host;
	__u32 labels = q->labels;

	if (labels == 0 || labels > EGRESSD_DNS_MAX_LABELS)
		return 0;
	key.name = q->suffix[(labels - 1) & (EGRESSD_DNS_MAX_LABELS - 1)];
	host = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_HOSTS, &key);
	if (host)
		return host->host;
	key.wildcard = 1;
	for (__u32 k = 1; k < EGRESSD_DNS_MAX_LABELS; k++) {
		if (k >= labels)
			break;
		key.name = q->suffix[(labels - 1 - k) & (EGRESSD_DNS_MAX_LABELS - 1)];
		host = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_HOSTS, &key);
		if (host)
			return host->host;
	}
	return 0;
}

/* Learning one address (bpf_loop context of egressd_dns_learn_one). */
struct egressd_dns_learning {
	struct egressd_dns_scratch *s;
	__u64 now;
	__u32 identity;
	__u32 host;
	__u32 sets;
	__u32 min_ttl;
	__u32 max_ttl;
	__u32 _pad;
};

static long egressd_dns_learn_one(__u32 index, void *ctx)
{
	struct egressd_dns_learning *l = ctx;
	const struct egressd_dns_address *a = &l->s->parsed.addresses[index & (EGRESSD_DNS_MAX_ADDRESSES - 1)];
	struct egressd_dns_learned_key keys[2] = {{.identity = l->identity}, {.identity = l->identity}};
	struct egressd_dns_learned *ways[2], entry = {};
	__u32 set, ttl = a->ttl, victim = 0;

	if (a->question != 0)
		return 0; /* only the question that the query asked */
	if (ttl < l->min_ttl)
		ttl = l->min_ttl;
	if (ttl > l->max_ttl)
		ttl = l->max_ttl;
	__builtin_memcpy(entry.addr, a->addr, sizeof(entry.addr));
	entry.expires_ns = l->now + (__u64)ttl * 1000000000ull;
	entry.learned_ns = l->now;
	entry.host = l->host;
	set = egressd_dns_set_of(a->addr, l->sets);
	for (__u32 way = 0; way < 2; way++) {
		keys[way].entry = set * 2 + way;
		ways[way] = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_LEARNED, &keys[way]);
		if (ways[way] && egressd_words_equal((const __u32 *)ways[way]->addr, a->addr)) {
			/* Known: an answer may lengthen its life, never shorten it. */
			if (ways[way]->expires_ns > entry.expires_ns)
				entry.expires_ns = ways[way]->expires_ns;
			bpf_map_update_elem(&EGRESSD_MAP_DNS_LEARNED, &keys[way], &entry, BPF_ANY);
			egressd_dns_count(EGRESSD_DNS_STAT_LEARNED);
			return 0;
		}
	}
	if (!ways[0])
		victim = 0;
	else if (!ways[1])
		victim = 1;
	else {
		/* Both taken: an expired one, else the one that expires first. */
		victim = ways[1]->expires_ns < ways[0]->expires_ns;
		egressd_dns_count(ways[victim]->expires_ns <= l->now ? EGRESSD_DNS_STAT_EXPIRED : EGRESSD_DNS_STAT_EVICTED);
	}
	bpf_map_update_elem(&EGRESSD_MAP_DNS_LEARNED, &keys[victim & 1], &entry, BPF_ANY);
	egressd_dns_count(EGRESSD_DNS_STAT_LEARNED);
	return 0;
}

static __always_inline __u32 egressd_dns_stat_of(__u32 status)
{
	switch (status) {
	case EGRESSD_DNS_MALFORMED:
		return EGRESSD_DNS_STAT_MALFORMED;
	case EGRESSD_DNS_UNSUPPORTED:
		return EGRESSD_DNS_STAT_UNSUPPORTED;
	default:
		return EGRESSD_DNS_STAT_NO_ANSWER;
	}
}

/* An answer arriving at a workload's socket. */
static __always_inline void egressd_dns_answer_in(struct __sk_buff *skb)
{
	struct egressd_dns_datagram dgram;
	struct egressd_dns_query_key key = {};
	const struct egressd_dns_settings *settings;
	const struct egressd_dns_query *query;
	const struct egressd_config *cfg;
	struct egressd_dns_learning learning = {};
	struct egressd_dns_scratch *s;
	__u32 entry = EGRESSD_DNS_SCRATCH_ANSWER, zero = 0, slot, status;

	if (egressd_dns_datagram(skb, 1, &dgram))
		return;
	egressd_dns_count(EGRESSD_DNS_STAT_RESPONSES);
	if (!egressd_dns_trusted(&dgram.peer)) {
		egressd_dns_count(EGRESSD_DNS_STAT_UNTRUSTED);
		return;
	}
	s = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_SCRATCH, &entry);
	if (!s)
		return;
	status = egressd_dns_copy(skb, dgram.payload, dgram.length, s);
	if (status == EGRESSD_DNS_OK) {
		egressd_dns_parse(s);
		status = s->parsed.status;
	}
	if (status != EGRESSD_DNS_OK) {
		egressd_dns_count(egressd_dns_stat_of(status));
		return;
	}
	key.socket = bpf_get_socket_cookie(skb);
	key.id = s->parsed.id;
	query = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_QUERIES, &key);
	cfg = egressd_active_config(&slot);
	settings = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_SETTINGS, &zero);
	if (!query || s->parsed.questions_count == 0 || s->parsed.questions[0].labels == 0 ||
	    query->name != s->parsed.questions[0].suffix[(s->parsed.questions[0].labels - 1) &
							      (EGRESSD_DNS_MAX_LABELS - 1)]) {
		egressd_dns_count(EGRESSD_DNS_STAT_UNSOLICITED);
		return;
	}
	learning.identity = query->identity;
	bpf_map_delete_elem(&EGRESSD_MAP_DNS_QUERIES, &key); /* one answer per query */
	if (cfg && settings && settings->sets && learning.identity)
		learning.host = egressd_dns_policy_host(slot, learning.identity, &s->parsed.questions[0]);
	if (!learning.host) {
		egressd_dns_count(EGRESSD_DNS_STAT_NO_POLICY_HOST);
		return;
	}
	egressd_dns_count(EGRESSD_DNS_STAT_ANSWERS_LEARNED);
	learning.s = s;
	learning.now = bpf_ktime_get_boot_ns();
	learning.sets = settings->sets;
	learning.min_ttl = settings->min_ttl;
	learning.max_ttl = settings->max_ttl;
	bpf_loop(s->parsed.addresses_count, egressd_dns_learn_one, &learning, 0);
}

#endif /* EGRESSD_BPF_DNS_LEARN_BPF_H */
