// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor for scripts/bench: programs of every attach type egressd uses,
 * each doing nothing but allow (return 1). Attached (with bpftool) to the
 * benchmark's own cgroup `floor`, they measure what the kernel's cgroup-BPF
 * dispatch and a program call cost before egressd does any work: egressd's
 * added cost over this floor is its own. See bench/README.md. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/connect4")
int floor_conn4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/connect6")
int floor_conn6(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sendmsg4")
int floor_send4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sendmsg6")
int floor_send6(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sock_create")
int floor_sock_create(struct bpf_sock *sk) { return 1; }

SEC("cgroup_skb/egress")
int floor_packet_out(struct __sk_buff *skb) { return 1; }

SEC("cgroup_skb/ingress")
int floor_packet_in(struct __sk_buff *skb) { return 1; }

SEC("sockops")
int floor_sockops(struct bpf_sock_ops *skops) { return 1; }
