/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one egress decision (rows 1-8 of docs/decision.md), shared by every
 * sock_addr hook. It mirrors userspace/core/decision.cc (the C++ reference
 * model); the kernel tests check the two against each other.
 */
#ifndef EGRESSD_BPF_DECISION_BPF_H
#define EGRESSD_BPF_DECISION_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <linux/in.h>
#include <linux/in6.h>

#include "egressd_abi.h"
#include "maps.bpf.h"

/* Socket types (include/linux/net.h; no UAPI header a BPF program can use defines them). */
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3

/* A destination in the one 16-byte address space, network byte order. */
struct egressd_addr {
	__u32 w[4];
};

struct egressd_decision {
	__u32 verdict; /* enum egressd_verdict */
	__u32 reason;  /* enum egressd_reason */
	__u32 rule;    /* index in the list that decided, or the policy number */
	/* What reporting needs from the generation that decided (zero without one). */
	__u64 generation;
	__u32 flags; /* config_v2 flags */
	__u32 mode;  /* enum egressd_mode */
	__u32 cgroup_level;
	__u32 identity; /* valid when identity_known */
	__u32 identity_known;
	__u32 learned; /* row 7 allowed a destination learned from a DNS answer */
	/* The caller's uid: set up front where it is the socket's (packets),
	 * else read from the current task when first needed (egressd_caller_uid):
	 * row 2 with a sidecar uid, or an event. Most decisions need neither. */
	__u32 uid;
	__u32 uid_known;
};

static __always_inline __u32 egressd_caller_uid(struct egressd_decision *d)
{
	if (!d->uid_known) {
		d->uid = (__u32)bpf_get_current_uid_gid();
		d->uid_known = 1;
	}
	return d->uid;
}

static __always_inline void egressd_addr_from_v4(struct egressd_addr *a, __u32 ip4_be)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4_be;
}

static __always_inline void egressd_addr_from_v6(struct egressd_addr *a, const struct bpf_sock_addr *ctx)
{
	/* bpf_sock_addr only allows 4-byte loads of user_ip6. An IPv4-mapped
	 * address needs no conversion: ::ffff:a.b.c.d is how IPv4 is stored. */
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline int egressd_words_equal(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int egressd_addr_is_v4(const struct egressd_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

/* Row 1: 127.0.0.0/8, ::1, and the unspecified addresses (a connect() to
 * 0.0.0.0 or :: reaches this host). */
static __always_inline int egressd_addr_is_local(const struct egressd_addr *a)
{
	if (egressd_addr_is_v4(a))
		return (bpf_ntohl(a->w[3]) >> 24) == 127 || a->w[3] == 0;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && (a->w[3] == 0 || a->w[3] == bpf_htonl(1));
}

static __always_inline const struct egressd_cidr_value *egressd_cidr_lookup(__u8 slot, __u8 table,
									    const struct egressd_addr *a)
{
	struct egressd_cidr_key key = {
	    .prefixlen = EGRESSD_CIDR_KEY_FIXED_BITS + 128,
	    .slot = slot,
	    .table = table,
	};

	__builtin_memcpy(key.addr, a->w, sizeof(key.addr));
	return bpf_map_lookup_elem(&EGRESSD_MAP_CIDRS, &key);
}

/* Rows 3a, 4 and 5: whether `a` is in the slot's CIDR table `table`, and the
 * rule that matched (the longest prefix). A small table is matched in the
 * config itself (egressd_config_table: longest first, so the first match is
 * the trie's answer), a big one in the trie. */
static __always_inline int egressd_table_lookup(const struct egressd_config *cfg, __u8 slot, __u8 table,
						const struct egressd_addr *a, __u32 *rule)
{
	const struct egressd_config_table *t = &cfg->tables[table - 1];
	const struct egressd_cidr_value *value;

	if (t->count != EGRESSD_CONFIG_TABLE_IN_TRIE) {
		for (__u32 i = 0; i < EGRESSD_CONFIG_CIDRS && i < t->count; i++) {
			const struct egressd_config_cidr *c = &t->cidrs[i];

			if ((((a->w[0] & c->mask[0]) ^ c->addr[0]) | ((a->w[1] & c->mask[1]) ^ c->addr[1]) |
			     ((a->w[2] & c->mask[2]) ^ c->addr[2]) | ((a->w[3] & c->mask[3]) ^ c->addr[3])) == 0) {
				*rule = c->rule;
				return 1;
			}
		}
		return 0;
	}
	value = egressd_cidr_lookup(slot, table, a);
	if (!value)
		return 0;
	*rule = value->rule;
	return 1;
}

/* The active slot's generation, or NULL when there is none (fail closed). */
static __always_inline const struct egressd_config *egressd_active_config(__u32 *slot)
{
	const struct egressd_control *ctl;
	const struct egressd_config *cfg;
	__u32 zero = 0;

	ctl = bpf_map_lookup_elem(&EGRESSD_MAP_CONTROL, &zero);
	if (!ctl)
		return NULL;
	*slot = ctl->active_slot & 1;
	cfg = bpf_map_lookup_elem(&EGRESSD_MAP_CONFIG, slot);
	return cfg && (cfg->flags & EGRESSD_CFG_VALID) ? cfg : NULL;
}

static __always_inline void egressd_verdict(struct egressd_decision *d, __u32 verdict, __u32 reason, __u32 rule)
{
	d->verdict = verdict;
	d->reason = reason;
	d->rule = rule;
}

static __always_inline __u32 egressd_identity_of(__u64 cgroup_id)
{
	struct egressd_identity_key key = {.cgroup_id = cgroup_id};
	const struct egressd_identity_value *v = bpf_map_lookup_elem(&EGRESSD_MAP_WORKLOAD_IDENTITIES, &key);

	return v ? v->identity : 0;
}

/* The identity of the calling task: its own cgroup if registered, else the
 * nearest registered ancestor below the enforced cgroup, else 0 (unknown).
 * Only computed when row 7 is reached, or for a reported event. */
static __always_inline __u32 egressd_current_identity(__u32 cgroup_level)
{
	__u32 identity = egressd_identity_of(bpf_get_current_cgroup_id());

	if (identity)
		return identity;
#pragma unroll
	for (int depth = EGRESSD_MAX_WORKLOAD_DEPTH; depth >= 1; depth--) {
		/* 0 when the task's cgroup is not that deep. */
		__u64 ancestor = bpf_get_current_ancestor_cgroup_id(cgroup_level + depth);

		if (!ancestor)
			continue;
		identity = egressd_identity_of(ancestor);
		if (identity)
			return identity;
	}
	return 0;
}

/* The first `len` bits' share of 32-bit word `word`, as a mask (host
 * order). Without a branch: BPF has no conditional move, and a branch per
 * word would multiply the verifier's paths by every probe length. */
static __always_inline __u32 egressd_word_mask(__u32 len, __u32 word)
{
	__s64 bits = (__s64)len - 32 * (__s64)word; /* < 0 or > 32 too */

	bits &= ~(bits >> 63);                            /* max(bits, 0) */
	bits = 32 + ((bits - 32) & ((bits - 32) >> 63)); /* min(bits, 32) */
	return (__u32)(0xffffffff00000000ULL >> bits);
}

/* `a` masked to its first `len` bits (network byte order). */
static __always_inline void egressd_addr_masked(struct egressd_addr *out, const struct egressd_addr *a, __u32 len)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		out->w[i] = a->w[i] & bpf_htonl(egressd_word_mask(len, i));
}

/* The rule for exactly this address (prefix 128), or NULL. */
static __always_inline const struct egressd_policy_value *egressd_policy_exact(__u8 slot, __u32 identity, __u8 proto,
									      __u16 port,
									      const struct egressd_addr *a)
{
	struct egressd_policy_rule_key key = {
	    .slot = slot,
	    .proto = proto,
	    .port = port,
	    .identity = identity,
	    .prefix = 128,
	};

	__builtin_memcpy(key.addr, a->w, sizeof(key.addr));
	return bpf_map_lookup_elem(&EGRESSD_MAP_POLICY_RULES, &key);
}

/* One bpf_loop() step of egressd_policy_lookup(): the destination masked to
 * the index-th length the identity uses. A callback, verified once, where a
 * loop of 128 probes would be walked probe by probe by the verifier. */
struct egressd_prefix_probe {
	const struct egressd_policy_lengths *lengths;
	const struct egressd_addr *dst;
	const struct egressd_policy_value *found;
	struct egressd_policy_rule_key key;
};

static long egressd_probe_length(__u64 index, void *ctx)
{
	struct egressd_prefix_probe *probe = ctx;
	struct egressd_addr masked;
	__u32 len;

	if (index >= EGRESSD_POLICY_MAX_LENGTHS || index >= probe->lengths->count)
		return 1;
	len = probe->lengths->lengths[index];
	egressd_addr_masked(&masked, probe->dst, len);
	probe->key.prefix = (__u8)len;
	__builtin_memcpy(probe->key.addr, masked.w, sizeof(probe->key.addr));
	probe->found = bpf_map_lookup_elem(&EGRESSD_MAP_POLICY_RULES, &probe->key);
	return probe->found ? 1 : 0; /* the longest first: the first found wins */
}

/* The policy entry for (identity, proto, port, destination): the longest
 * prefix of policy_rules_v1 that holds the destination. The address itself
 * first; then, when the slot has other prefixes, each length the identity's
 * rules use, longest first (policy_lengths_v1). */
static __always_inline const struct egressd_policy_value *
egressd_policy_lookup(__u8 slot, __u32 flags, __u32 identity, __u8 proto, __u16 port, const struct egressd_addr *a)
{
	struct egressd_policy_lengths_key lengths_key = {.slot = slot, .identity = identity};
	struct egressd_prefix_probe probe = {
	    .dst = a,
	    .key = {.slot = slot, .proto = proto, .port = port, .identity = identity},
	};
	const struct egressd_policy_value *value;

	value = egressd_policy_exact(slot, identity, proto, port, a);
	if (value || !(flags & EGRESSD_CFG_POLICY_PREFIXES))
		return value;
	probe.lengths = bpf_map_lookup_elem(&EGRESSD_MAP_POLICY_LENGTHS, &lengths_key);
	if (!probe.lengths)
		return NULL;
	bpf_loop(probe.lengths->count, egressd_probe_length, &probe, 0);
	return probe.found;
}

/* Row 7 for a destination learned from a DNS answer (ABI: learning from
 * answers): the identity's live entry for the address gives the host's
 * number, and the policy is looked up under the host's own address 100::N. */
static __always_inline const struct egressd_policy_value *
egressd_learned_policy(__u8 slot, __u32 flags, __u32 identity, __u8 proto, __u16 port, const struct egressd_addr *a)
{
	const struct egressd_dns_settings *settings;
	const struct egressd_dns_learned *entry;
	struct egressd_dns_learned_key key = {.identity = identity};
	struct egressd_addr host = {};
	__u32 zero = 0, set;

	settings = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_SETTINGS, &zero);
	if (!settings || !settings->sets)
		return NULL;
	set = egressd_dns_set_of(a->w, settings->sets);
	for (__u32 way = 0; way < 2; way++) {
		key.entry = set * 2 + way;
		entry = bpf_map_lookup_elem(&EGRESSD_MAP_DNS_LEARNED, &key);
		if (!entry || !egressd_words_equal((const __u32 *)entry->addr, a->w))
			continue;
		if (entry->expires_ns <= bpf_ktime_get_boot_ns())
			return NULL; /* expired: the next answer learns it again */
		host.w[0] = bpf_htonl(EGRESSD_DNS_HOST_ADDRESS_WORD0);
		host.w[3] = bpf_htonl(entry->host);
		return egressd_policy_exact(slot, identity, proto, port, &host); /* 100::N is a /128 rule */
	}
	return NULL;
}

/* The protocol a socket's calls are decided under: ICMP echo of either
 * family as EGRESSD_PROTO_ICMP (with port 0), MPTCP as TCP. */
static __always_inline __u8 egressd_decision_proto(__u32 protocol)
{
	if (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6)
		return EGRESSD_PROTO_ICMP;
	if (protocol == IPPROTO_MPTCP)
		return IPPROTO_TCP;
	return (__u8)protocol;
}

/* The active generation's fields reporting needs; 0 when there is none. */
static __always_inline const struct egressd_config *egressd_decision_config(struct egressd_decision *d, __u32 *slot)
{
	const struct egressd_config *cfg = egressd_active_config(slot);

	if (!cfg)
		return NULL;
	d->generation = cfg->generation;
	d->flags = cfg->flags;
	d->mode = cfg->mode;
	d->cgroup_level = cfg->cgroup_level;
	return cfg;
}

/* Row 0 (socket creation, docs/decision.md): the socket kinds a later hook
 * decides are let through here, with no counting: TCP and MPTCP (connect),
 * UDP (connect, sendmsg), ping (connect, and each packet), raw (each packet).
 * Any other kind (UDP-Lite, whose connected sends no hook sees; SCTP; DCCP)
 * is refused. */
static __always_inline void egressd_decide_socket(struct egressd_decision *d, __u32 type, __u32 protocol)
{
	__u32 slot;

	if ((type == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP)) ||
	    (type == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP ||
				    protocol == IPPROTO_ICMPV6)) ||
	    type == SOCK_RAW)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_NONE, 0);
	if (!egressd_decision_config(d, &slot))
		return egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG, 0);
	egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_PROTOCOL, 0);
}

/* The decision, rows 0-8 of docs/decision.md, first match wins. `d` starts
 * zeroed (but for the caller's uid, when already known). `raw`: a packet of a
 * raw socket, refused outright (loopback too: a forged DNS answer would come
 * that way) unless rawSockets is allow. */
static __always_inline void egressd_decide(struct egressd_decision *d, const struct egressd_addr *dst, __u16 port,
					   __u8 proto, __u32 raw)
{
	const struct egressd_policy_value *policy;
	const struct egressd_port_value *pv;
	const struct egressd_config *cfg = NULL;
	struct egressd_port_key pkey = {};
	__u32 slot, rule;

	if (!raw && egressd_addr_is_local(dst))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_LOCAL, 0);
	/* One read of the active slot: everything below is one generation. */
	cfg = egressd_decision_config(d, &slot);
	if (!cfg)
		return egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_NO_CONFIG, 0);
	if (raw) {
		if (!(cfg->flags & EGRESSD_CFG_RAW_SOCKETS))
			return egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_RAW_SOCKET, 0);
		if (egressd_addr_is_local(dst))
			return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_LOCAL, 0);
	}

	if ((cfg->flags & EGRESSD_CFG_SIDECAR_UID) && egressd_caller_uid(d) == cfg->sidecar_uid)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_SIDECAR_UID, 0);

	if ((cfg->flags & EGRESSD_CFG_HAS_EXCLUDED_CIDRS) &&
	    egressd_table_lookup(cfg, slot, EGRESSD_TABLE_EXCLUDE, dst, &rule))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_CIDR, rule);
	if (cfg->flags & EGRESSD_CFG_HAS_EXCLUDED_PORTS) {
		pkey.slot = slot;
		pkey.table = EGRESSD_PORTS_EXCLUDE;
		pkey.port = port;
		pv = bpf_map_lookup_elem(&EGRESSD_MAP_PORTS, &pkey);
		if (pv)
			return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_EXCLUDED_PORT, pv->rule);
	}

	if ((cfg->flags & EGRESSD_CFG_HAS_INCLUSION) && !egressd_table_lookup(cfg, slot, EGRESSD_TABLE_INCLUDE, dst, &rule))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_NOT_INCLUDED, 0);

	if ((cfg->flags & EGRESSD_CFG_HAS_MESH_CIDRS) && egressd_table_lookup(cfg, slot, EGRESSD_TABLE_MESH, dst, &rule))
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_MESH, rule);

	if (cfg->flags & EGRESSD_CFG_ENABLE_EGRESS)
		return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_PASSTHROUGH, 0);

	if (cfg->flags & EGRESSD_CFG_POLICY_ACTIVE) {
		d->identity = egressd_current_identity(cfg->cgroup_level);
		d->identity_known = 1;
		if (d->identity) {
			policy = egressd_policy_lookup(slot, cfg->flags, d->identity, proto, port, dst);
			if (!policy && (cfg->flags & EGRESSD_CFG_DNS_HOSTS)) {
				policy = egressd_learned_policy(slot, cfg->flags, d->identity, proto, port, dst);
				d->learned = policy != NULL;
			}
			if (policy)
				return egressd_verdict(d, EGRESSD_VERDICT_ALLOW, EGRESSD_REASON_POLICY, policy->policy);
		}
	}

	egressd_verdict(d, EGRESSD_VERDICT_DENY, EGRESSD_REASON_DENY, 0);
}

#endif /* EGRESSD_BPF_DECISION_BPF_H */
