/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * egressd map ABI: the one definition of every map, key, value, enum, limit
 * and pin name shared by the BPF programs (bpf/) and the C++ agent and CLI
 * (userspace/). Nothing here may be duplicated elsewhere.
 *
 * Rules for changing this file:
 *  - Fixed-width types only, explicit padding, no implicit holes.
 *    userspace/kernel/abi_check.h static_asserts every size and offset.
 *  - Changing the layout of a key or value, or the type of a map, means a new
 *    versioned map name (config_v1 -> config_v2). libbpf and the kernel only
 *    reuse a pinned map whose type, key and value sizes match; the agent
 *    installs the new map beside the old one and swaps programs atomically.
 *
 * Address space: every address is 16 bytes. An IPv4 address a.b.c.d is
 * stored and looked up as the IPv4-mapped IPv6 address ::ffff:a.b.c.d, so a
 * rule for 10.0.0.0/8 also decides a connect() to ::ffff:10.1.2.3 from an
 * AF_INET6 socket: one address space for every map and rule.
 *
 * Generations: every policy-carrying map has a slot (0 or 1) in its key.
 * control_v1 names the active slot. The agent writes the inactive slot, then
 * flips control_v1 (one aligned 4-byte store), then waits for programs in
 * flight (an update of an ARRAY_OF_MAPS waits for them: kernel
 * maybe_wait_bpf_programs), and only then may touch the old slot again. A
 * program reads the slot once, so it sees one whole generation, never a mix.
 */
#ifndef EGRESSD_MAPS_EGRESSD_ABI_H
#define EGRESSD_MAPS_EGRESSD_ABI_H

#include <linux/types.h>

#define EGRESSD_ABI_VERSION 1

/* ---- pin names (files under the bpffs pin directory) -------------------- */
#define EGRESSD_PIN_DIR_DEFAULT "/sys/fs/bpf/egressd"
#define EGRESSD_PIN_LINKS_SUBDIR "links"

/* Map names double as pin file names. They carry their own layout version. */
#define EGRESSD_MAP_CONTROL control_v1
#define EGRESSD_MAP_CONFIG config_v2 /* v2: small CIDR tables carried in the config */
#define EGRESSD_MAP_CIDRS cidrs_v1
/* EGRESSD_TEST_MAP_BUMP: a build for the upgrade test only (cmake/upgrade_test.cmake),
 * as if ports_v1 had changed layout. Never in a release. */
#ifdef EGRESSD_TEST_MAP_BUMP
#define EGRESSD_MAP_PORTS ports_v2
#else
#define EGRESSD_MAP_PORTS ports_v1
#endif
#define EGRESSD_MAP_COUNTERS counters_v2 /* v2: the socket-creation and packet hooks */
/* Workload cgroup -> identity number, and identity number -> name. The pin
 * names are older than these macros' and change only with a version bump. */
#define EGRESSD_MAP_WORKLOAD_IDENTITIES identities_v1
#define EGRESSD_MAP_IDENTITY_NAMES id_names_v1
#define EGRESSD_MAP_POLICY_NAMES policy_names_v1
#define EGRESSD_MAP_POLICY_RULES policy_rules_v1     /* row 7: every rule, a hash probed per prefix length */
#define EGRESSD_MAP_POLICY_LENGTHS policy_lengths_v1 /* row 7: the prefix lengths each identity's rules use */
#define EGRESSD_MAP_EVENTS events_v1
#define EGRESSD_MAP_EVENT_LIMITS event_limits_v1 /* per-source token buckets */
#define EGRESSD_MAP_EVENT_STATS event_stats_v1
#define EGRESSD_MAP_FLOWS flows_v2 /* v2: no byte counts (read from the socket when asked) */
/* v2: allocated as totals appear (BPF_F_NO_PREALLOC), not 16k per-CPU values up front */
#define EGRESSD_MAP_RULE_TRAFFIC rule_traffic_v2
#define EGRESSD_MAP_ID_TRAFFIC id_traffic_v2
/* v2: one entry per direction (v1 had one, shared) */
#define EGRESSD_MAP_DNS_SCRATCH dns_scratch_v2 /* per-CPU: a DNS message and what it says */
#define EGRESSD_MAP_DNS_SETTINGS dns_settings_v1
#define EGRESSD_MAP_DNS_SERVERS dns_servers_v1 /* the trusted resolvers */
#define EGRESSD_MAP_DNS_QUERIES dns_queries_v1 /* queries on their way out, awaiting their answer */
#define EGRESSD_MAP_DNS_HOSTS dns_hosts_v1     /* per slot: the policies' host names, by identity */
#define EGRESSD_MAP_DNS_LEARNED dns_learned_v1 /* addresses learned from answers, by identity */
#define EGRESSD_MAP_DNS_STATS dns_stats_v1

#define EGRESSD_STRINGIFY_(x) #x
#define EGRESSD_STRINGIFY(x) EGRESSD_STRINGIFY_(x)

/* ---- limits --------------------------------------------------------------- */
#define EGRESSD_SLOTS 2
/* Default capacities per generation; the agent settings may raise them. The
 * maps hold both slots, so they are created with twice this many entries. */
#define EGRESSD_DEFAULT_CIDR_CAPACITY 16384
#define EGRESSD_DEFAULT_PORT_CAPACITY 1024
#define EGRESSD_DEFAULT_POLICY_RULE_CAPACITY 131072
#define EGRESSD_DEFAULT_POLICY_CAPACITY 4096
/* Identities and their cgroups are not per generation (identity numbers are
 * stable), so these maps are created with exactly this many entries. */
#define EGRESSD_DEFAULT_IDENTITY_CAPACITY 16384
#define EGRESSD_DEFAULT_WORKLOAD_CAPACITY 16384
/* Addresses learned from DNS answers, all identities together. */
#define EGRESSD_DEFAULT_DNS_LEARNED_CAPACITY 65536
/* How many cgroup levels below the enforced cgroup the kernel searches for
 * the nearest registered workload. */
#define EGRESSD_MAX_WORKLOAD_DEPTH 8
#define EGRESSD_NAME_LEN 256 /* Kubernetes object names are at most 253 bytes */
#define EGRESSD_NAMESPACE_LEN 64 /* namespaces are DNS labels, at most 63 bytes */

/* ---- decision ------------------------------------------------------------- */
enum egressd_verdict {
	EGRESSD_VERDICT_DENY = 0,
	EGRESSD_VERDICT_ALLOW = 1,
};

/* Why a decision was taken: one value per row of the decision order
 * (docs/decision.md). Also the index into counters_v2. */
enum egressd_reason {
	EGRESSD_REASON_NONE = 0,
	EGRESSD_REASON_LOCAL = 1,         /* row 1: loopback or unspecified address */
	EGRESSD_REASON_SIDECAR_UID = 2,   /* row 2: the sidecar proxy's own socket */
	EGRESSD_REASON_EXCLUDED_CIDR = 3, /* row 3: outboundIPRangeExclusionList */
	EGRESSD_REASON_EXCLUDED_PORT = 4, /* row 3: outboundPortExclusionList */
	EGRESSD_REASON_NOT_INCLUDED = 5,  /* row 4: outside outboundIPRangeInclusionList */
	EGRESSD_REASON_MESH = 6,          /* row 5: destination in a mesh CIDR */
	EGRESSD_REASON_PASSTHROUGH = 7,   /* row 6: enableEgress true */
	EGRESSD_REASON_POLICY = 8,        /* row 7: an Egress policy allows it */
	EGRESSD_REASON_DENY = 9,          /* row 8: egress disabled */
	EGRESSD_REASON_NO_CONFIG = 10,    /* fail closed: no valid generation */
	EGRESSD_REASON_RAW_SOCKET = 11,   /* a raw socket's packet while rawSockets is deny */
	EGRESSD_REASON_PROTOCOL = 12,     /* a socket kind no hook decides (UDP-Lite, SCTP, DCCP...) */
	EGRESSD_REASON_MAX = 13,
};

/* The hook that asked; part of counters and events. */
enum egressd_hook {
	EGRESSD_HOOK_CONNECT4 = 0,
	EGRESSD_HOOK_CONNECT6 = 1,
	EGRESSD_HOOK_SENDMSG4 = 2,
	EGRESSD_HOOK_SENDMSG6 = 3,
	EGRESSD_HOOK_SOCK_CREATE = 4, /* cgroup/sock_create: socket kinds no later hook decides */
	EGRESSD_HOOK_PACKET = 5,      /* cgroup_skb/egress: packets of raw and ping sockets */
	EGRESSD_HOOK_MAX = 6,
};

/* The protocol under which ICMP echo (ping sockets, and raw ICMP or ICMPv6
 * packets) is decided, with port 0: an Egress port `protocol: icmp`. MPTCP
 * is decided as TCP. */
#define EGRESSD_PROTO_ICMP 1

/* ---- control_v1: ARRAY, 1 entry, key __u32 0 ------------------------------ */
struct egressd_control {
	__u32 active_slot; /* 0 or 1 */
	__u32 abi_version; /* EGRESSD_ABI_VERSION of the agent that wrote it */
};

/* ---- config_v2: ARRAY, EGRESSD_SLOTS entries, key __u32 slot -------------- */
enum egressd_config_flag {
	EGRESSD_CFG_VALID = 1u << 0,          /* slot holds a complete generation */
	EGRESSD_CFG_ENABLE_EGRESS = 1u << 1,  /* spec.traffic.enableEgress */
	EGRESSD_CFG_EGRESS_POLICY = 1u << 2,  /* spec.featureFlags.enableEgressPolicy */
	EGRESSD_CFG_POLICY_ACTIVE = 1u << 3,  /* row 7 applies (derived, FSM or OSM semantics) */
	EGRESSD_CFG_HAS_INCLUSION = 1u << 4,  /* outboundIPRangeInclusionList non-empty */
	EGRESSD_CFG_SIDECAR_UID = 1u << 5,    /* sidecar_uid is set (row 2 active) */
	EGRESSD_CFG_EVENTS_POLICY = 1u << 6,  /* also report allow-by-policy decisions */
	EGRESSD_CFG_EVENTS_PASSTHROUGH = 1u << 7, /* also report passthrough decisions */
	EGRESSD_CFG_POLICY_PREFIXES = 1u << 8,  /* the slot has rules other than single addresses (policy_lengths_v1) */
	EGRESSD_CFG_DNS_HOSTS = 1u << 9,        /* dns_hosts_v1 has entries in this slot: row 7 reads dns_learned_v1 */
	EGRESSD_CFG_RAW_SOCKETS = 1u << 10,     /* rawSockets: allow (raw packets decided by rows 1-8); clear: dropped */
	/* The slot has entries in that table: without, rows 3a, 3b and 5 skip their lookup. */
	EGRESSD_CFG_HAS_EXCLUDED_CIDRS = 1u << 11,
	EGRESSD_CFG_HAS_EXCLUDED_PORTS = 1u << 12,
	EGRESSD_CFG_HAS_MESH_CIDRS = 1u << 13,
};

enum egressd_mode {
	EGRESSD_MODE_ENFORCE = 0,
	EGRESSD_MODE_AUDIT = 1,
};

/* A CIDR table of rows 3a, 4 and 5 with at most EGRESSD_CONFIG_CIDRS
 * entries is also carried in the slot's config and matched there: no trie
 * lookup (a helper call) on the hot path. cidrs_v1 holds every entry either
 * way, for bpftool and egressctl dump. Entries are sorted longest prefix
 * first, so the first match is the one the trie would give. */
#define EGRESSD_CONFIG_CIDRS 8
#define EGRESSD_CONFIG_TABLE_IN_TRIE 0xffffffffu /* count: the table is too big, look it up in cidrs_v1 */
#define EGRESSD_CONFIG_TABLES 3                  /* exclude, include, mesh: tables[table - 1] */

struct egressd_config_cidr {
	__u32 addr[4]; /* masked to the prefix, network byte order */
	__u32 mask[4]; /* network byte order */
	__u32 rule;    /* as in egressd_cidr_value */
	__u32 _pad;
};

struct egressd_config_table {
	__u32 count; /* entries used, or EGRESSD_CONFIG_TABLE_IN_TRIE */
	__u32 _pad;
	struct egressd_config_cidr cidrs[EGRESSD_CONFIG_CIDRS];
};

struct egressd_config {
	__u64 generation;   /* increases with every applied change */
	__u32 flags;        /* enum egressd_config_flag */
	__u32 sidecar_uid;
	__u32 mode;         /* enum egressd_mode */
	__u32 cgroup_level; /* level of the enforced cgroup (root = 0), for the workload search */
	struct egressd_config_table tables[EGRESSD_CONFIG_TABLES];
};

/* ---- cidrs_v1: LPM_TRIE (BPF_F_NO_PREALLOC) -------------------------------
 * Every CIDR list of a generation in one trie. The slot, table and padding
 * bytes lead the key and are always matched in full, so prefixlen is
 * EGRESSD_CIDR_KEY_FIXED_BITS + the address prefix length (IPv4 /n is
 * stored as ::ffff:0:0/96+n). */
enum egressd_cidr_table {
	EGRESSD_TABLE_NONE = 0,
	EGRESSD_TABLE_EXCLUDE = 1, /* outboundIPRangeExclusionList */
	EGRESSD_TABLE_INCLUDE = 2, /* outboundIPRangeInclusionList */
	EGRESSD_TABLE_MESH = 3,    /* agent setting meshCIDRs */
};

#define EGRESSD_CIDR_KEY_FIXED_BITS 32

struct egressd_cidr_key {
	__u32 prefixlen;
	__u8 slot;
	__u8 table; /* enum egressd_cidr_table */
	__u8 _pad[2];
	__u8 addr[16];
};

struct egressd_cidr_value {
	__u32 rule; /* index of the CIDR in its list, as written, for explanations */
	__u32 _pad;
};

/* ---- ports_v1: HASH ------------------------------------------------------- */
enum egressd_port_table {
	EGRESSD_PORTS_NONE = 0,
	EGRESSD_PORTS_EXCLUDE = 1, /* outboundPortExclusionList */
};

struct egressd_port_key {
	__u8 slot;
	__u8 table; /* enum egressd_port_table */
	__u16 port; /* host byte order */
};

struct egressd_port_value {
	__u32 rule; /* index in outboundPortExclusionList */
	__u32 _pad;
};

/* ---- identities_v1: HASH, cgroup id -> identity (not per generation) -----
 * A workload is a cgroup with an identity (namespace, serviceAccount). The
 * kernel looks up the socket owner's cgroup, then its ancestors up to
 * EGRESSD_MAX_WORKLOAD_DEPTH levels below the enforced cgroup: the nearest
 * registered one decides. No entry: identity 0, unknown. */
struct egressd_identity_key {
	__u64 cgroup_id;
};

struct egressd_identity_value {
	__u32 identity; /* > 0 */
	__u32 _pad;
};

/* ---- id_names_v1: HASH, identity -> its names, for people ---------------- */
struct egressd_identity_name {
	char k8s_namespace[EGRESSD_NAMESPACE_LEN];
	char service_account[EGRESSD_NAME_LEN];
};

/* ---- policy_rules_v1: HASH (BPF_F_NO_PREALLOC), value egressd_policy_value -
 * Row 7. One entry per (source identity, protocol, port, destination prefix)
 * of the valid Egress policies, the address masked to its prefix. A policy
 * with neither ipAddresses nor hosts is one ::/0 entry (any destination).
 * Looked up as a longest-prefix match: first the destination itself (prefix
 * 128: every host's resolved address and most ipAddresses), then, when the
 * slot has other prefixes (EGRESSD_CFG_POLICY_PREFIXES), once per prefix
 * length the identity's rules use (policy_lengths_v1), longest first, the
 * destination masked to it; the first entry found is the longest prefix.
 * One hash probe per length an identity uses, instead of a walk down one
 * trie shared by every identity's entries. */
struct egressd_policy_rule_key {
	__u8 slot;
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP or EGRESSD_PROTO_ICMP */
	__u16 port; /* host byte order */
	__u32 identity;
	__u8 prefix; /* 0-128, of the one 16-byte address space */
	__u8 _pad[3];
	__u8 addr[16]; /* masked to prefix */
};

/* ---- policy_lengths_v1: HASH (BPF_F_NO_PREALLOC) --------------------------
 * Per slot and identity with rules other than single addresses: the prefix
 * lengths below 128 those rules use, longest first. */
#define EGRESSD_POLICY_MAX_LENGTHS 128

struct egressd_policy_lengths_key {
	__u8 slot;
	__u8 _pad[3];
	__u32 identity;
};

struct egressd_policy_lengths {
	__u8 count;
	__u8 lengths[EGRESSD_POLICY_MAX_LENGTHS]; /* descending, each < 128 */
	__u8 _pad[3];
};

struct egressd_policy_value {
	__u32 policy; /* the policy's number, stable while it exists (policy_names_v1) */
	__u32 _pad;
};

/* ---- policy_names_v1: HASH, (slot, policy number) -> namespace/name ------- */
struct egressd_policy_name_key {
	__u8 slot;
	__u8 _pad[3];
	__u32 policy;
};

struct egressd_policy_name {
	char k8s_namespace[EGRESSD_NAMESPACE_LEN];
	char name[EGRESSD_NAME_LEN];
};

/* ---- events_v1: RINGBUF of struct egressd_event ---------------------------
 * Denials are always reported; audit-mode "would deny" decisions too; allow
 * by policy and passthrough when config_v2 asks. Per source (identity, or
 * cgroup when unknown) a token bucket in event_limits_v1 bounds the rate, so
 * a workload looping on a denied connect cannot flood the agent; what the
 * bucket suppresses, and what the full ring drops, is counted in
 * event_stats_v1. */
#define EGRESSD_EVENTS_RING_BYTES (1u << 20)
#define EGRESSD_EVENT_RATE_PER_SEC 100  /* sustained events per source */
#define EGRESSD_EVENT_BURST 200         /* events a quiet source may send at once */
#define EGRESSD_EVENT_SOURCES 65536     /* sources tracked by the token buckets (LRU) */

enum egressd_event_kind {
	EGRESSD_EVENT_DENY = 0,  /* the call failed with EPERM */
	EGRESSD_EVENT_AUDIT = 1, /* would be denied; allowed because of audit mode */
	EGRESSD_EVENT_ALLOW = 2, /* allowed (by policy or passthrough), when asked for */
	EGRESSD_EVENT_REVOKED = 3, /* an open connection a new generation denies, torn down (the agent reports it) */
};

struct egressd_event {
	__u64 timestamp_ns; /* CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) */
	__u64 cgroup_id;    /* the calling task's cgroup */
	__u64 generation;   /* the generation that decided */
	__u32 pid;          /* thread group id of the caller */
	__u32 uid;
	__u32 identity;     /* 0 when unknown */
	__u32 rule;         /* as egressd's decision: list index, or policy number */
	__u8 addr[16];      /* destination, IPv4 as ::ffff:a.b.c.d */
	__u16 port;         /* host byte order */
	__u8 proto;         /* IPPROTO_TCP / IPPROTO_UDP / other */
	__u8 hook;          /* enum egressd_hook */
	__u8 kind;          /* enum egressd_event_kind */
	__u8 reason;        /* enum egressd_reason */
	__u8 flags;         /* enum egressd_event_flag */
	__u8 _pad;
	char comm[16];      /* the caller's command name */
};

enum egressd_event_flag {
	EGRESSD_EVENT_LEARNED = 1u << 0, /* row 7 allowed an address learned from a DNS answer */
};

/* ---- event_limits_v1: LRU_HASH, source -> token bucket ------------------- */
struct egressd_event_bucket {
	__u64 refilled_ns; /* when tokens were last topped up */
	__u64 tokens;      /* in thousandths of an event */
};

/* ---- event_stats_v1: PERCPU_ARRAY, key enum egressd_event_stat ----------- */
enum egressd_event_stat {
	EGRESSD_STAT_EVENTS_SENT = 0,
	EGRESSD_STAT_EVENTS_SUPPRESSED = 1, /* rate limit */
	EGRESSD_STAT_EVENTS_LOST = 2,       /* ring buffer full */
	EGRESSD_STAT_FLOWS_LOST = 3,        /* a tracked connection evicted from flows_v2 before it closed */
	EGRESSD_STAT_TRAFFIC_LOST = 4,      /* a closed connection whose total had no room (traffic maps full) */
	EGRESSD_STAT_MAX = 5,
};

/* ---- flows -------------------------------------------------------------------
 * The connect hook records a TCP socket it allowed for a reason other than
 * local or mesh in flows_v2 (LRU by socket cookie), as connecting
 * (started_ns 0). The sockops program asks for state callbacks on it when
 * the SYN goes out, stamps it established, and, when it closes, adds its
 * bytes to the totals per rule (rule_traffic_v2) and per identity
 * (id_traffic_v2) and removes it; a connection that never got established
 * is removed without totals. Nothing runs while bytes flow: an open flow's
 * bytes so far are read from the socket itself when asked (the socket
 * iterators of bpf/revoke.bpf.c). With the agent's `flows: off`, nothing is
 * recorded (egressd_flows_enabled, set at load) and the sockops program is
 * not attached. (An LRU update costs a fraction of creating socket-local
 * storage on every connect.) */
#define EGRESSD_FLOW_CAPACITY 65536
#define EGRESSD_TRAFFIC_RULES 16384
#define EGRESSD_TRAFFIC_IDENTITIES 16384

struct egressd_flow {
	__u64 started_ns; /* CLOCK_BOOTTIME at establishment; 0 while connecting */
	__u64 cgroup_id;  /* of the task that called connect() */
	__u32 identity;
	__u32 rule;
	__u8 addr[16];
	__u16 port;
	__u8 reason;
	__u8 _pad[5];
};

struct egressd_traffic_key {
	__u32 reason; /* enum egressd_reason */
	__u32 rule;   /* list index, or policy number */
};

/* PERCPU_HASH values of rule_traffic_v2 (key egressd_traffic_key) and
 * id_traffic_v2 (key __u32 identity, 0 = unknown). Totals are never evicted;
 * when a map is full, a new key's connection is counted as traffic lost. */
struct egressd_traffic {
	__u64 connections; /* closed connections counted */
	/* The socket's own counters (tcp_sock bytes_acked, bytes_received). They
	 * count sequence space: SYN and FIN add one each to the side that sent them. */
	__u64 bytes_sent;
	__u64 bytes_received;
};

/* ---- revocation (bpf/revoke.bpf.c, not pinned) ----------------------------
 * Socket iterators list a network namespace's sockets as records, one
 * struct egressd_socket_record each, for the agent to decide against a new
 * generation; then destroy the cookies it puts in revoke_cookies (at most
 * EGRESSD_REVOKE_BATCH per pass). */
#define EGRESSD_REVOKE_BATCH 65536

struct egressd_socket_record {
	__u64 cookie;
	__u64 cgroup_id;   /* the socket's cgroup (where it was created) */
	__u8 addr[16];     /* the peer, IPv4 as ::ffff:a.b.c.d */
	__u32 uid;         /* the socket's owner */
	__u16 port;        /* the peer's port, host byte order */
	__u16 local_port;  /* host byte order */
	__u8 family;       /* AF_INET / AF_INET6 */
	__u8 proto;        /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_UDPLITE */
	__u8 state;        /* TCP state; 1 (established) for a UDP socket with a peer */
	__u8 _pad[5];
	/* TCP: the socket's own counters so far (bytes_acked, bytes_received),
	 * counted like egressd_traffic's; 0 for UDP. */
	__u64 bytes_sent;
	__u64 bytes_received;
};

/* ---- counters_v2: PERCPU_ARRAY, key __u32 reason * EGRESSD_HOOK_MAX + hook */
#define EGRESSD_COUNTER_SLOTS ((int)EGRESSD_REASON_MAX * (int)EGRESSD_HOOK_MAX)

struct egressd_counter {
	__u64 decisions;
};

/* ---- DNS answers seen by the workloads -------------------------------------
 * The packet program parses DNS responses into struct egressd_dns_parsed.
 * userspace/core/dns_message.cc is the C++ reference parser: tests run both
 * on the same packets and require the same result, field by field.
 *
 * Names are compared as 64-bit FNV-1a hashes of their labels taken from the
 * right (the top-level domain first), each label as its length byte then
 * its bytes with A-Z folded to a-z. Hashing from the right gives every
 * suffix of a name on the way: for www.example.com, suffix[0] is the hash of
 * "com", suffix[1] of "example.com", suffix[2] of "www.example.com" (the
 * whole name). An exact policy host matches the whole name; a wildcard
 * *.example.com matches any suffix but the whole name. */
#define EGRESSD_DNS_HASH_SEED 0xcbf29ce484222325ULL
#define EGRESSD_DNS_HASH_PRIME 0x100000001b3ULL

#define EGRESSD_DNS_PAYLOAD_MAX 2048 /* a longer response is not learned (a power of 2) */
#define EGRESSD_DNS_MAX_LABELS 16    /* a longer name is not learned */
#define EGRESSD_DNS_MAX_POINTERS 8   /* compression pointers followed in one name */
#define EGRESSD_DNS_MAX_QUESTIONS 4
#define EGRESSD_DNS_MAX_RECORDS 32   /* answer records looked at */
#define EGRESSD_DNS_MAX_CHAIN 8      /* names a question's CNAME chain may pass */
#define EGRESSD_DNS_MAX_ADDRESSES 16 /* addresses learned from one response */

#define EGRESSD_DNS_TYPE_A 1
#define EGRESSD_DNS_TYPE_CNAME 5
#define EGRESSD_DNS_TYPE_AAAA 28
#define EGRESSD_DNS_CLASS_IN 1

enum egressd_dns_status {
	EGRESSD_DNS_OK = 0,        /* parsed; addresses[] may be empty */
	EGRESSD_DNS_NOT_RESPONSE,  /* QR clear, or an opcode other than QUERY */
	EGRESSD_DNS_ERROR_RCODE,   /* a response with rcode other than NOERROR: nothing to learn */
	EGRESSD_DNS_MALFORMED,     /* out of bounds, a bad label, a pointer loop: ignored */
	EGRESSD_DNS_UNSUPPORTED,   /* within limits of the protocol but not of the parser (labels, size) */
	EGRESSD_DNS_STATUS_MAX,
};

/* A name's hashes: suffix[i] covers the last i+1 labels; suffix[labels-1] is
 * the whole name. The root name has no labels. */
struct egressd_dns_name {
	__u64 suffix[EGRESSD_DNS_MAX_LABELS];
	__u32 labels;
	__u32 _pad;
};

struct egressd_dns_address {
	__u32 addr[4];  /* network byte order, IPv4 as ::ffff:a.b.c.d */
	__u32 ttl;      /* seconds: the least TTL on the way from the question (CNAMEs included) */
	__u16 question; /* index in questions[] */
	__u16 _pad;
};

/* What one response says. Only answer records of class IN whose owner is a
 * question or a name the question's CNAME chain reached (records in the order
 * the answer section gives them, as resolvers send them) give addresses. */
struct egressd_dns_parsed {
	__u32 status; /* enum egressd_dns_status */
	__u16 id;
	__u16 flags; /* the header's second 16 bits */
	__u32 questions_count;
	__u32 addresses_count;
	struct egressd_dns_name questions[EGRESSD_DNS_MAX_QUESTIONS];
	struct egressd_dns_address addresses[EGRESSD_DNS_MAX_ADDRESSES];
};

/* The parser's working state. It lives in the map, not on the BPF stack: the
 * verifier then takes each counter as any value within its masks instead
 * of following every value it could have through every loop. */
struct egressd_dns_work {
	struct egressd_dns_name name; /* the hashes of the name being read */
	__u16 label_offset[EGRESSD_DNS_MAX_LABELS];
	__u8 label_length[EGRESSD_DNS_MAX_LABELS];
	__u32 label_count;
	__u32 name_end; /* the offset after the name where it was read (after its first pointer) */
	__u32 pos;      /* the name's next length byte */
	__u32 wire;     /* the name's length so far, as on the wire */
	__u32 pointers;
	__u32 jumped;
	__u32 status;   /* of the name being read */
	__u32 offset;   /* the next question or record */
	__u32 chain_count;
	__u32 _pad;
	__u64 chain_hash[EGRESSD_DNS_MAX_CHAIN]; /* names reached from a question: that name's hash, */
	__u32 chain_ttl[EGRESSD_DNS_MAX_CHAIN];  /* the least TTL on the way, */
	__u16 chain_question[EGRESSD_DNS_MAX_CHAIN]; /* and the question */
	__u64 hash; /* the hash being computed */
};

/* dns_scratch_v2: PERCPU_ARRAY, one entry per direction: the packet
 * programs' working space (a BPF stack is 512 bytes). The packet is copied to
 * `payload`; `parsed` is the result. Nothing in it outlives one program run.
 * A query is parsed in the egress program, which runs with softirqs enabled
 * when the sender is a task; an answer arriving meanwhile is parsed by the
 * ingress program in a softirq on the same CPU, so each has its own entry.
 * Two runs of one direction on one CPU (a preemptible kernel, or softirqs in
 * threads) can still meet in an entry: a query is then not recorded or an
 * answer not learned, and the connect() denied; never anything allowed. */
enum egressd_dns_scratch_entry {
	EGRESSD_DNS_SCRATCH_QUERY = 0,  /* egress: a query, recorded */
	EGRESSD_DNS_SCRATCH_ANSWER = 1, /* ingress: an answer, learned from */
	EGRESSD_DNS_SCRATCH_ENTRIES = 2,
};
struct egressd_dns_scratch {
	__u8 payload[EGRESSD_DNS_PAYLOAD_MAX];
	__u32 payload_len;
	__u32 _pad;
	struct egressd_dns_parsed parsed;
	struct egressd_dns_work work;
};

/* ---- learning from answers ---------------------------------------------------
 * A query leaving a workload for a trusted resolver (dns_servers_v1) is
 * recorded in dns_queries_v1 by its socket and DNS id, with its first
 * question's name. An answer arriving at that socket from a trusted resolver,
 * with that id and that name, is matched against the policy host names of the
 * socket's identity (dns_hosts_v1, per slot): the whole name exactly, or any
 * shorter suffix as a wildcard, the longest first. Its addresses are then
 * learned into dns_learned_v1 for that identity, with the host's number, until
 * the record's TTL (clamped by dns_settings_v1) runs out. Row 7 looks a
 * connect()'s destination up there and, on a live entry, looks the policy up
 * as for a resolved host, under the host's own address
 * (100::N below): the ports and protocols of the policies naming that host. Anything else teaches nothing and is counted (dns_stats_v1). */

/* The address under which policy_rules_v1 holds a host's entries: 100::N,
 * in 100::/64, the discard-only prefix (RFC 6666) that no connect() is
 * meant to reach; N, the host's number, in the last 4 bytes (big endian).
 * The first 4 bytes are 01 00 00 00: this, read as a host-order __u32. */
#define EGRESSD_DNS_HOST_ADDRESS_WORD0 0x01000000u

/* dns_settings_v1: ARRAY, 1 entry (not per generation). */
struct egressd_dns_settings {
	__u32 min_ttl;   /* seconds; a shorter TTL counts as this */
	__u32 max_ttl;   /* seconds; a longer TTL counts as this */
	__u32 sets;      /* per identity: sets of 2 entries (a power of 2; 0 disables learning) */
	__u32 _pad;
};

/* dns_servers_v1: HASH, address (16 bytes, IPv4 mapped) -> __u32 (1). */
struct egressd_dns_server_key {
	__u8 addr[16];
};

/* dns_queries_v1: LRU_HASH. */
#define EGRESSD_DNS_QUERY_CAPACITY 65536
struct egressd_dns_query_key {
	__u64 socket; /* the socket's cookie */
	__u16 id;
	__u16 _pad[3];
};

struct egressd_dns_query {
	__u64 name;     /* the first question's whole-name hash */
	__u64 sent_ns;  /* bpf_ktime_get_boot_ns() */
	__u32 identity; /* of the socket, when it sent */
	__u32 _pad;
};

/* dns_hosts_v1: HASH, per slot. `name` is a suffix hash (ABI: DNS answers). */
struct egressd_dns_host_key {
	__u8 slot;
	__u8 wildcard; /* 0: the whole name; 1: *.<name> (a longer name) */
	__u16 _pad;
	__u32 identity;
	__u64 name;
};

struct egressd_dns_host {
	__u32 host; /* the host's number: policy_rules_v1 holds its ports under 100::host */
	__u32 _pad;
};

/* dns_learned_v1: HASH (BPF_F_NO_PREALLOC). Each identity has `sets` sets of
 * two entries; an address goes to set hash(address) % sets, in the way whose
 * entry is free, expired or expires first. An identity's learning can thus
 * only replace its own entries (counted as evictions). */
struct egressd_dns_learned_key {
	__u32 identity;
	__u32 entry; /* set * 2 + way */
};

struct egressd_dns_learned {
	__u8 addr[16];
	__u64 expires_ns; /* bpf_ktime_get_boot_ns() */
	__u64 learned_ns;
	__u32 host;
	__u32 _pad;
};

/* dns_stats_v1: PERCPU_ARRAY, key enum egressd_dns_stat. */
enum egressd_dns_stat {
	EGRESSD_DNS_STAT_QUERIES = 0,      /* queries to a trusted resolver recorded */
	EGRESSD_DNS_STAT_RESPONSES,        /* responses looked at (UDP from port 53) */
	EGRESSD_DNS_STAT_UNTRUSTED,        /* ignored: not from a trusted resolver */
	EGRESSD_DNS_STAT_UNSOLICITED,      /* ignored: no query of that socket, id and name */
	EGRESSD_DNS_STAT_MALFORMED,        /* ignored: malformed */
	EGRESSD_DNS_STAT_UNSUPPORTED,      /* ignored: past the parser's limits */
	EGRESSD_DNS_STAT_NO_POLICY_HOST,   /* parsed, the name is no policy host of the identity (or no identity) */
	EGRESSD_DNS_STAT_LEARNED,          /* addresses learned (or refreshed) */
	EGRESSD_DNS_STAT_EVICTED,          /* live entries replaced by a new address of the same identity */
	EGRESSD_DNS_STAT_EXPIRED,          /* expired entries replaced by a new address */
	EGRESSD_DNS_STAT_NO_ANSWER,        /* responses with an error rcode, or that are not responses */
	EGRESSD_DNS_STAT_ANSWERS_LEARNED,  /* responses for a policy host: their addresses learned */
	EGRESSD_DNS_STAT_MAX,
};

/* The set of dns_learned_v1 an address goes to; `sets` is a power of 2. The
 * words are as read from memory (network order bytes); every input bit must
 * reach the low bits, since IPv4 addresses differ only in their last word's
 * high bytes on a little-endian machine: a full 32-bit mix (lowbias32). */
static inline __u32 egressd_dns_set_of(const __u32 addr[4], __u32 sets)
{
	__u32 h = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];

	h ^= h >> 16;
	h *= 0x7feb352du;
	h ^= h >> 15;
	h *= 0x846ca68bu;
	h ^= h >> 16;
	return h & (sets - 1);
}

#endif /* EGRESSD_MAPS_EGRESSD_ABI_H */
