/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The DNS response parser of the packet program: a copy of the UDP payload
 * (in dns_scratch_v2) into struct egressd_dns_parsed. Every read is bounds
 * checked against the copy, every loop is a bpf_loop() bounded by a limit of
 * maps/egressd_abi.h, and a compression pointer must point before itself, so
 * no packet can make it read out of bounds or loop: the verifier proves the
 * first two, the third keeps every name finite.
 *
 * The working state is in the map value (struct egressd_dns_work), reached
 * through the one pointer each callback gets: see the ABI for why.
 *
 * userspace/core/dns_message.cc is the reference: the kernel tests parse the
 * same packets with both and require the same result.
 */
#ifndef EGRESSD_BPF_DNS_BPF_H
#define EGRESSD_BPF_DNS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "egressd_abi.h"
#include "maps.bpf.h"

#define EGRESSD_DNS_OFFSET_MASK (EGRESSD_DNS_PAYLOAD_MAX - 1)
#define EGRESSD_DNS_HEADER_LEN 12
#define EGRESSD_DNS_MAX_NAME_LEN 255 /* wire length, the root's 0 included */
#define EGRESSD_DNS_LABEL(i) ((i) & (EGRESSD_DNS_MAX_LABELS - 1))
#define EGRESSD_DNS_LINK(i) ((i) & (EGRESSD_DNS_MAX_CHAIN - 1))

/* bpf_loop()'s context: the callbacks' state is all in the map value. */
struct egressd_dns_ctx {
	struct egressd_dns_scratch *s;
};

static __always_inline int egressd_dns_byte(const struct egressd_dns_scratch *s, __u32 offset, __u8 *out)
{
	__u64 index = offset;

	if (offset >= s->payload_len)
		return -1;
	/* The check above is what matters; the mask is for the verifier, which
	 * does not know payload_len <= EGRESSD_DNS_PAYLOAD_MAX. In asm, so that
	 * the compiler cannot drop it. */
	asm volatile("%0 &= %1" : "+r"(index) : "i"(EGRESSD_DNS_OFFSET_MASK));
	*out = s->payload[index];
	return 0;
}

static __always_inline int egressd_dns_u16(const struct egressd_dns_scratch *s, __u32 offset, __u16 *out)
{
	__u8 hi, lo;

	if (egressd_dns_byte(s, offset, &hi) || egressd_dns_byte(s, offset + 1, &lo))
		return -1;
	*out = (__u16)((__u16)hi << 8 | lo);
	return 0;
}

static __always_inline int egressd_dns_u32(const struct egressd_dns_scratch *s, __u32 offset, __u32 *out)
{
	__u16 hi, lo;

	if (egressd_dns_u16(s, offset, &hi) || egressd_dns_u16(s, offset + 2, &lo))
		return -1;
	*out = (__u32)hi << 16 | lo;
	return 0;
}

/* One length byte of a name: a label, a pointer or the end. 1 stops. */
static long egressd_dns_step(__u32 index, void *ctx)
{
	struct egressd_dns_scratch *s = ((struct egressd_dns_ctx *)ctx)->s;
	struct egressd_dns_work *w = &s->work;
	__u8 len, low;
	__u32 target, n;

	if (egressd_dns_byte(s, w->pos, &len))
		goto malformed;
	if (len == 0) {
		if (!w->jumped)
			w->name_end = w->pos + 1;
		w->status = EGRESSD_DNS_OK;
		return 1;
	}
	if ((len & 0xc0) == 0xc0) {
		if (egressd_dns_byte(s, w->pos + 1, &low))
			goto malformed;
		target = (__u32)(len & 0x3f) << 8 | low;
		if (target >= w->pos)
			goto malformed; /* only backwards: no loop */
		if (!w->jumped)
			w->name_end = w->pos + 2;
		w->jumped = 1;
		if (++w->pointers > EGRESSD_DNS_MAX_POINTERS) {
			w->status = EGRESSD_DNS_UNSUPPORTED;
			return 1;
		}
		w->pos = target;
		return 0;
	}
	if (len & 0xc0)
		goto malformed; /* 0x40 and 0x80: no such label types */
	w->wire += len + 1;
	if (w->wire > EGRESSD_DNS_MAX_NAME_LEN || w->pos + len >= s->payload_len)
		goto malformed; /* too long, or no room for the label and a next length byte */
	n = w->label_count;
	if (n >= EGRESSD_DNS_MAX_LABELS) {
		w->status = EGRESSD_DNS_UNSUPPORTED;
		return 1;
	}
	w->label_offset[EGRESSD_DNS_LABEL(n)] = (__u16)(w->pos + 1);
	w->label_length[EGRESSD_DNS_LABEL(n)] = len;
	w->label_count = n + 1;
	w->pos += len + 1;
	return 0;
malformed:
	w->status = EGRESSD_DNS_MALFORMED;
	return 1;
}

/* Follows the name at `offset` through its pointers into work.label_*.
 * Returns an enum egressd_dns_status: MALFORMED for what the protocol
 * forbids (out of bounds, a label type other than 0 or pointer, a pointer
 * not pointing before itself, a name over 255 bytes), UNSUPPORTED for what
 * it allows but the parser does not take (more labels or pointers than its
 * limits). */
static __always_inline __u32 egressd_dns_walk_name(struct egressd_dns_ctx *ctx, __u32 offset)
{
	struct egressd_dns_work *w = &ctx->s->work;

	w->label_count = 0;
	w->name_end = 0;
	w->pos = offset;
	w->wire = 1;
	w->pointers = 0;
	w->jumped = 0;
	w->status = EGRESSD_DNS_UNSUPPORTED; /* every step taken: one of the two limits */
	bpf_loop(EGRESSD_DNS_MAX_LABELS + EGRESSD_DNS_MAX_POINTERS + 1, egressd_dns_step, ctx, 0);
	return w->status;
}

/* Hashing one label: its byte `index` (offset in work.pos). */
static long egressd_dns_hash_byte(__u32 index, void *ctx)
{
	struct egressd_dns_scratch *s = ((struct egressd_dns_ctx *)ctx)->s;
	__u8 c = 0;

	egressd_dns_byte(s, s->work.pos + index, &c); /* in bounds: checked by the walk */
	if (c >= 'A' && c <= 'Z')
		c += 'a' - 'A';
	s->work.hash = (s->work.hash ^ c) * EGRESSD_DNS_HASH_PRIME;
	return 0;
}

/* Hashing the `k`-th label from the right: its length byte, then its bytes. */
static long egressd_dns_hash_label(__u32 k, void *ctx)
{
	struct egressd_dns_scratch *s = ((struct egressd_dns_ctx *)ctx)->s;
	struct egressd_dns_work *w = &s->work;
	__u32 i = EGRESSD_DNS_LABEL(w->label_count - 1 - k);
	__u8 len = w->label_length[i];

	w->pos = w->label_offset[i];
	w->hash = (w->hash ^ len) * EGRESSD_DNS_HASH_PRIME;
	bpf_loop(len, egressd_dns_hash_byte, ctx, 0);
	w->name.suffix[EGRESSD_DNS_LABEL(k)] = w->hash;
	return 0;
}

/* The hashes of every suffix of the name just walked, from its rightmost
 * label (ABI: DNS answers), into work.name; returns the whole name's (the
 * root's is the seed). */
static __always_inline __u64 egressd_dns_hash_name(struct egressd_dns_ctx *ctx)
{
	struct egressd_dns_work *w = &ctx->s->work;

	w->name.labels = w->label_count;
	w->hash = EGRESSD_DNS_HASH_SEED;
	bpf_loop(w->label_count, egressd_dns_hash_label, ctx, 0);
	return w->hash;
}

/* The chain entry whose name has `hash`, or EGRESSD_DNS_MAX_CHAIN. */
static __always_inline __u32 egressd_dns_chain_find(const struct egressd_dns_work *w, __u64 hash)
{
	for (__u32 j = 0; j < EGRESSD_DNS_MAX_CHAIN; j++)
		if (j < w->chain_count && w->chain_hash[j] == hash)
			return j;
	return EGRESSD_DNS_MAX_CHAIN;
}

static __always_inline void egressd_dns_chain_add(struct egressd_dns_work *w, __u64 hash, __u32 ttl, __u16 question)
{
	__u32 n = w->chain_count;

	if (n >= EGRESSD_DNS_MAX_CHAIN)
		return; /* a longer chain: what lies beyond is not learned */
	w->chain_hash[EGRESSD_DNS_LINK(n)] = hash;
	w->chain_ttl[EGRESSD_DNS_LINK(n)] = ttl;
	w->chain_question[EGRESSD_DNS_LINK(n)] = question;
	w->chain_count = n + 1;
}

/* An A (4 bytes) or AAAA (16 bytes) record's address into parsed.addresses. */
static __always_inline void egressd_dns_learn(struct egressd_dns_scratch *s, __u32 link, __u32 ttl, __u32 rdata,
					      __u16 rdlength)
{
	struct egressd_dns_parsed *p = &s->parsed;
	struct egressd_dns_address *a;
	__u32 n = p->addresses_count, word[4] = {0, 0, 0, 0};
	__u32 first = 0;
	__u8 b;

	if (n >= EGRESSD_DNS_MAX_ADDRESSES)
		return;
	if (rdlength == 4) {
		word[2] = 0xffff; /* ::ffff:a.b.c.d */
		first = 3;
	}
	for (__u32 i = 0; i < 16; i++) {
		if (i >= rdlength)
			break;
		if (egressd_dns_byte(s, rdata + i, &b))
			return;
		word[(first + i / 4) & 3] = word[(first + i / 4) & 3] << 8 | b;
	}
	a = &p->addresses[n & (EGRESSD_DNS_MAX_ADDRESSES - 1)];
	for (int i = 0; i < 4; i++)
		a->addr[i] = bpf_htonl(word[i]);
	a->ttl = ttl;
	a->question = s->work.chain_question[EGRESSD_DNS_LINK(link)];
	a->_pad = 0;
	p->addresses_count = n + 1;
}

/* One answer record: 0 goes on, 1 stops (work.status says why). */
static long egressd_dns_record(__u32 index, void *ctx)
{
	struct egressd_dns_scratch *s = ((struct egressd_dns_ctx *)ctx)->s;
	struct egressd_dns_work *w = &s->work;
	__u16 type, class, rdlength;
	__u32 ttl, rdata, end, link;
	__u64 hash;

	if (egressd_dns_walk_name(ctx, w->offset) != EGRESSD_DNS_OK)
		return 1;
	hash = egressd_dns_hash_name(ctx);
	end = w->name_end;
	if (egressd_dns_u16(s, end, &type) || egressd_dns_u16(s, end + 2, &class) || egressd_dns_u32(s, end + 4, &ttl) ||
	    egressd_dns_u16(s, end + 8, &rdlength) || end + 10 + rdlength > s->payload_len) {
		w->status = EGRESSD_DNS_MALFORMED;
		return 1;
	}
	rdata = end + 10;
	w->offset = rdata + rdlength;
	if (ttl > 0x7fffffff)
		ttl = 0; /* RFC 2181 8: a TTL with the top bit set is zero */
	link = egressd_dns_chain_find(w, hash);
	if (link >= EGRESSD_DNS_MAX_CHAIN || class != EGRESSD_DNS_CLASS_IN)
		return 0;
	if (w->chain_ttl[EGRESSD_DNS_LINK(link)] < ttl)
		ttl = w->chain_ttl[EGRESSD_DNS_LINK(link)];
	if ((type == EGRESSD_DNS_TYPE_A && rdlength == 4) || (type == EGRESSD_DNS_TYPE_AAAA && rdlength == 16)) {
		egressd_dns_learn(s, link, ttl, rdata, rdlength);
		return 0;
	}
	if (type != EGRESSD_DNS_TYPE_CNAME)
		return 0;
	if (egressd_dns_walk_name(ctx, rdata) != EGRESSD_DNS_OK)
		return 1;
	if (w->name_end > rdata + rdlength) {
		w->status = EGRESSD_DNS_MALFORMED; /* the target overruns its record */
		return 1;
	}
	hash = egressd_dns_hash_name(ctx);
	if (egressd_dns_chain_find(w, hash) < EGRESSD_DNS_MAX_CHAIN)
		return 0; /* known already: a loop or a repeat */
	egressd_dns_chain_add(w, hash, ttl, w->chain_question[EGRESSD_DNS_LINK(link)]);
	return 0;
}

/* One question: its name's hashes into parsed.questions[index]. */
static long egressd_dns_question(__u32 index, void *ctx)
{
	struct egressd_dns_scratch *s = ((struct egressd_dns_ctx *)ctx)->s;
	struct egressd_dns_work *w = &s->work;
	__u32 q = index & (EGRESSD_DNS_MAX_QUESTIONS - 1);
	__u64 hash;

	if (egressd_dns_walk_name(ctx, w->offset) != EGRESSD_DNS_OK)
		return 1;
	if (w->name_end + 4 > s->payload_len) {
		w->status = EGRESSD_DNS_MALFORMED;
		return 1;
	}
	w->offset = w->name_end + 4; /* QTYPE, QCLASS */
	hash = egressd_dns_hash_name(ctx);
	s->parsed.questions[q] = w->name;
	egressd_dns_chain_add(w, hash, 0xffffffff, (__u16)q);
	s->parsed.questions_count = q + 1;
	return 0;
}

/* Parses s->payload[0, s->payload_len) into s->parsed. */
static __always_inline void egressd_dns_parse(struct egressd_dns_scratch *s)
{
	struct egressd_dns_parsed *p = &s->parsed;
	struct egressd_dns_ctx ctx = {.s = s};
	__u16 qdcount, ancount;

	p->questions_count = 0;
	p->addresses_count = 0;
	if (egressd_dns_u16(s, 0, &p->id) || egressd_dns_u16(s, 2, &p->flags) || egressd_dns_u16(s, 4, &qdcount) ||
	    egressd_dns_u16(s, 6, &ancount) || s->payload_len < EGRESSD_DNS_HEADER_LEN) {
		p->status = EGRESSD_DNS_MALFORMED;
		return;
	}
	if (!(p->flags & 0x8000) || ((p->flags >> 11) & 0xf) != 0) {
		p->status = EGRESSD_DNS_NOT_RESPONSE;
		return;
	}
	if ((p->flags & 0xf) != 0) {
		p->status = EGRESSD_DNS_ERROR_RCODE;
		return;
	}
	if (qdcount > EGRESSD_DNS_MAX_QUESTIONS) {
		p->status = EGRESSD_DNS_UNSUPPORTED;
		return;
	}
	s->work.offset = EGRESSD_DNS_HEADER_LEN;
	s->work.status = EGRESSD_DNS_OK;
	s->work.chain_count = 0;
	bpf_loop(qdcount, egressd_dns_question, &ctx, 0);
	if (s->work.status == EGRESSD_DNS_OK)
		bpf_loop(ancount < EGRESSD_DNS_MAX_RECORDS ? ancount : EGRESSD_DNS_MAX_RECORDS, egressd_dns_record, &ctx,
			 0);
	p->status = s->work.status;
	if (p->status != EGRESSD_DNS_OK)
		p->addresses_count = 0; /* a response that is not whole teaches nothing */
}

/* Copies the UDP payload at `offset` (`length` bytes) into the scratch;
 * MALFORMED or UNSUPPORTED (too long to look at) when it cannot. */
static __always_inline __u32 egressd_dns_copy(struct __sk_buff *skb, __u32 offset, __u32 length,
					      struct egressd_dns_scratch *s)
{
	s->parsed.questions_count = 0;
	s->parsed.addresses_count = 0;
	__u64 n = length - 1;

	if (length > EGRESSD_DNS_PAYLOAD_MAX)
		return s->parsed.status = EGRESSD_DNS_UNSUPPORTED;
	if (length == 0)
		return s->parsed.status = EGRESSD_DNS_MALFORMED;
	/* 1..EGRESSD_DNS_PAYLOAD_MAX, in a way the verifier can follow. */
	asm volatile("%0 &= %1" : "+r"(n) : "i"(EGRESSD_DNS_OFFSET_MASK));
	n += 1;
	if (bpf_skb_load_bytes(skb, offset, s->payload, n))
		return s->parsed.status = EGRESSD_DNS_MALFORMED;
	s->payload_len = length;
	return s->parsed.status = EGRESSD_DNS_OK;
}

#endif /* EGRESSD_BPF_DNS_BPF_H */
