# Sourced by scripts/bench: section 6, hosts learned from DNS answers. The
# end-to-end test's resolver (tests/e2e/dns_server.py) answers in the sink
# namespace at 203.0.113.53 from a pool of addresses (203.0.113.100-199); the
# measuring workload (bench/sa-0) resolves through it. Uses the harness's
# helpers (add, say, fail, in_cg, loop, prog_stats) and its namespaces and
# cgroups. See bench/README.md, "6. Hosts learned from DNS answers".

dns_tool="python3 $root/bench/tools/dns_bench.py"
dw=$work/dns
dns_pins=$pins-dns
dns_resolver=203.0.113.53
dns_server_pid=
dns_agent_pid=
if [ $quick -eq 1 ]; then dns_exchanges=200; dns_fill=1000; else dns_exchanges=2000; dns_fill=100000; fi
dns_fill_label="$([ "$dns_fill" -ge 1000 ] && echo "$((dns_fill / 1000))k" || echo "$dns_fill") learned entries"

dns_cleanup() { # from the harness's cleanup
  [ -n "$dns_agent_pid" ] && kill -TERM "$dns_agent_pid" 2>/dev/null && wait "$dns_agent_pid" 2>/dev/null
  [ -f "$dw/egressd.yaml" ] && "$bin/egressd" --cleanup --config "$dw/egressd.yaml" >/dev/null 2>&1
  rm -rf "$dns_pins"
  [ -n "$dns_server_pid" ] && kill "$dns_server_pid" 2>/dev/null
  dns_agent_pid=; dns_server_pid=
}

dns_section() {
  local port c0 r0 c1 r1 addr names
  say "6. hosts learned from DNS answers: $dns_exchanges exchanges, then connect() with $dns_fill_label"
  mkdir -p "$dw/policies" "$dw/run"
  ip -n "$sink" addr add "$dns_resolver/32" dev lo
  ip -n "$sink" route add local 203.0.113.0/24 dev lo table local 2>/dev/null || true
  port=$((30000 + id % 20000))
  python3 "$root/tests/e2e/dns_server.py" --loopback-port "$port" --netns "/run/netns/$sink" \
    --address "$dns_resolver" --ready "$dw/ready" --log "$dw/sent.log" 2>"$dw/server.log" &
  dns_server_pid=$!
  for _ in $(seq 200); do [ -s "$dw/ready" ] && break; sleep 0.02; done
  [ -s "$dw/ready" ] || { cat "$dw/server.log" >&2; fail "the DNS test server did not start"; }
  cat > "$dw/policies/hosts.yaml" <<EOF
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: hosts, namespace: bench}
spec:
  sources: [{kind: ServiceAccount, name: sa-0, namespace: bench}]
  hosts: [api.test.egressd, www.test.egressd, "*.wild.test.egressd"]
  ports: [{number: 9, protocol: udp}, {number: 8080, protocol: tcp}]
---
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: resolver, namespace: bench}
spec:
  sources: [{kind: ServiceAccount, name: sa-0, namespace: bench}]
  ipAddresses: [$dns_resolver/32]
  ports: [{number: 53, protocol: udp}]
EOF
  cat > "$dw/egressd.yaml" <<EOF
cgroup: $cgrel/enforced
bpffs: $dns_pins
meshConfig: $work/mesh-false.yaml
meshCIDRs: []
sidecarUID: null
runDir: $dw/run
policyDir: policies
workloads: $work/workloads.yaml
dnsServer: [127.0.0.1:$port, $dns_resolver]
dnsLearning: {minTTL: 600, maxTTL: 3600, perIdentity: 1024}
capacities: {dnsLearned: $((dns_fill + 65536))}
httpAddress: null
EOF
  "$bin/egressd" --config "$dw/egressd.yaml" >"$dw/agent.log" 2>&1 &
  dns_agent_pid=$!
  for _ in $(seq 3000); do grep -q "watching" "$dw/agent.log" && break; sleep 0.005; done
  grep -q "watching" "$dw/agent.log" || { tail "$dw/agent.log" >&2; fail "egressd (DNS section) did not start"; }

  say "6a. BPF time per DNS response and query, against the resolver's round trip"
  names=api.test.egressd,www.test.egressd,x.wild.test.egressd
  sysctl -qw kernel.bpf_stats_enabled=1
  local o0 q0 o1 q1
  read -r c0 r0 < <(prog_stats "$(prog_id egressd_dns_in)")
  read -r o0 q0 < <(prog_stats "$(prog_id egressd_packet_out)")
  in_cg "$wl" $dns_tool resolve --resolver "$dns_resolver" --names "$names" --count "$dns_exchanges" > "$dw/client.json" \
    || fail "the DNS exchanges failed"
  read -r c1 r1 < <(prog_stats "$(prog_id egressd_dns_in)")
  read -r o1 q1 < <(prog_stats "$(prog_id egressd_packet_out)")
  sysctl -qw kernel.bpf_stats_enabled=0
  [ "$r1" -gt "$r0" ] || fail "bpf_stats: egressd_dns_in did not run"
  add --section dns --metric "egressd_dns_in run time per packet received (bpf_stats)" --config "$dns_exchanges answers" \
    --unit ns/run --values "$(( (c1 - c0) / (r1 - r0) ))" \
    --note "$((r1 - r0)) runs: the answers (parsed, matched, learned) and one unsolicited answer per 7 queries"
  [ "$q1" -gt "$q0" ] || fail "bpf_stats: egressd_packet_out did not run"
  add --section dns --metric "egressd_packet_out run time per packet sent (bpf_stats)" --config "$dns_exchanges queries" \
    --unit ns/run --values "$(( (o1 - o0) / (q1 - q0) ))" --note "$((q1 - q0)) runs: the queries, recorded"

  $dns_tool learned --map "$dns_pins/dns_learned_v1" > "$dw/learned.json" || fail "reading dns_learned_v1 failed"
  $dns_tool timing --server-log "$dw/sent.log" --client "$dw/client.json" --learned "$dw/learned.json" > "$dw/timing.json"
  add --section dns --metric "resolver round trip, the workload's query → its answer" --config "$dns_exchanges exchanges" \
    --unit µs --scale 0.001 --values "$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["rtt_ns"])))' "$dw/timing.json")" \
    --note "the test's resolver (Python) in the sink namespace, over the veth"
  add --section dns --metric "answer sent by the resolver → address learned in the kernel" --config "$dns_exchanges exchanges" \
    --unit µs --scale 0.001 --values "$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["to_kernel_ns"])))' "$dw/timing.json")" \
    --note "CLOCK_BOOTTIME at the resolver's sendto() and the entry's learned_ns"
  add --section dns --metric "address learned → the application's recv() returns" --config "$dns_exchanges exchanges" \
    --unit µs --scale 0.001 --values "$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["kernel_before_app_ns"])))' "$dw/timing.json")" \
    --note "positive: the kernel had the address before the application had the answer"

  say "6b. connect() to a learned address with $dns_fill_label, against no program"
  addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[-1]["address"])' "$dw/client.json")
  $dns_tool fill --map "$dns_pins/dns_learned_v1" --entries "$dns_fill" --identity-from 1000 >/dev/null \
    || fail "filling dns_learned_v1 failed"
  loop dns "udp connect" "no program" "" "$base" udp "$addr" 9 "$n_udp"
  loop dns "udp connect" "egressd: a learned address (row 7), $dns_fill_label" "no program" "$wl" udp "$addr" 9 "$n_udp"
  sysctl -qw kernel.bpf_stats_enabled=1
  read -r c0 r0 < <(prog_stats "$(prog_id egressd_conn4)")
  cbq "$wl" udp "$addr" 9 "$n_udp" 1 >/dev/null || fail "bpf_stats udp loop (learned) failed"
  read -r c1 r1 < <(prog_stats "$(prog_id egressd_conn4)")
  sysctl -qw kernel.bpf_stats_enabled=0
  add --section dns --metric "egressd_conn4 run time, UDP connect to a learned address (bpf_stats)" \
    --config "$dns_fill_label" --unit ns/run --values "$(( (c1 - c0) / (r1 - r0) ))"
  dns_cleanup
}
