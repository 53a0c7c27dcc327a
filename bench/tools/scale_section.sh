# Sourced by scripts/bench: the decision's rows one by one and flows off (in
# section 1, at the big policy set), and section 9: the all-prefix and the
# 1M-rule configurations, and the agent's idle CPU with the bundled settings'
# layout. Uses the harness's helpers (add, say, fail, note, cbq, loop,
# baseline_now, measure_egressd, bpf_snap, bpf_delta, floor_on/floor_off,
# start_agent_try, stop_agent, cpu_ms, idle_cpu_ms, rss_mb, hwm_mb) and its namespaces and
# cgroups. See bench/README.md.

scale_bundled_pid=
scale_bundled_dir=$work/bundled
scale_bundled_pins=$pins-bundled

scale_cleanup() { # from the harness's cleanup
  if [ -n "$scale_bundled_pid" ]; then
    kill -TERM "$scale_bundled_pid" 2>/dev/null; sleep 0.2; kill -9 "$scale_bundled_pid" 2>/dev/null
    wait "$scale_bundled_pid" 2>/dev/null
  fi
  [ -f "$scale_bundled_dir/egressd.yaml" ] && "$bin/egressd" --cleanup --config "$scale_bundled_dir/egressd.yaml" >/dev/null 2>&1
  rm -rf "$scale_bundled_pins"
  # A run that failed in the middle of the flows-off or 1M configuration.
  [ -f "$work/egressd.yaml.saved" ] && mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
  scale_bundled_pid=
}

wait_allowed_udp() { # the workload's UDP connect to 203.0.113.10:9 is allowed (UDP-only policies)
  for _ in $(seq 1500); do cbq "$wl" udp 203.0.113.10 9 1 1 >/dev/null 2>&1 && return 0; sleep 0.01; done
  fail "the workload never got allowed (UDP): $(tail -3 "$work/agent.log")"
}

# set_mesh true|false WANT: the MeshConfig's enableEgress, renamed in as
# egressctl does, then waited for in the kernel (bench/probe has no policy
# for 203.0.113.12: its verdict follows enableEgress).
set_mesh() {
  cp "$work/mesh-$1.yaml" "$work/stage/meshconfig.yaml"
  cbq "$wl_probe" flip "$2" 203.0.113.12 80 "$work/stage/meshconfig.yaml" "$work/meshconfig.yaml" 5 >/dev/null \
    || fail "enableEgress: $1 not seen"
}

# rows_section CONFIG: UDP connect() from the workload to one destination per
# row of the decision, egressd against the floor (interleaved repetitions),
# and egressd_conn4's run time for that row (bpf_stats, a pass of its own).
# enableEgress is false except for the passthrough row; 203.0.113.13/32 is a
# mesh CIDR (the bench's settings); 203.0.113.12 has no policy (denied).
rows_section() {
  local cfg=$1 row name host mode json e0 e1
  floor_on
  for row in "1 loopback:127.0.0.1:udp" "5 mesh CIDR:203.0.113.13:udp" "7 policy hit:203.0.113.10:udp" \
             "8 deny (EPERM):203.0.113.12:udpdeny" "6 passthrough:203.0.113.12:udp"; do
    IFS=: read -r name host mode <<<"$row"
    [ "$name" != "6 passthrough" ] || set_mesh true allowed
    json=$("$cb" --cgroup "$wl" --alt-cgroup "$floor_cg" --netns "$cnet" "$mode" "$host" 9 "$n_udp" "$reps_udp") \
      || fail "row $name: connect_bench failed: $json"
    echo "$json" | add --section rows --metric "udp connect, row $name ($host)" --config "floor: no-op programs" \
      --unit ns/op --field alt_ns_per_op
    echo "$json" | add --section rows --metric "udp connect, row $name ($host)" --config "egressd $cfg" \
      --unit ns/op --baseline "floor: no-op programs"
    echo "$json" | add --section rows --metric "udp connect, row $name ($host): over the floor" --config "egressd $cfg" \
      --unit ns/op --minus alt_ns_per_op --note "workload minus the floor's cgroup, interleaved repetitions"
    sysctl -qw kernel.bpf_stats_enabled=1
    e0=$(bpf_snap "$enf")
    cbq "$wl" "$mode" "$host" 9 "$n_udp" 1 >/dev/null || fail "row $name: bpf_stats loop failed"
    e1=$(bpf_snap "$enf")
    sysctl -qw kernel.bpf_stats_enabled=0
    bpf_delta "$e0" "$e1"
    [ "${dc[egressd_conn4]:-0}" -gt 0 ] || fail "row $name: egressd_conn4 did not run"
    add --section rows --metric "egressd_conn4 run time, row $name (bpf_stats)" --config "egressd $cfg" --unit ns/run \
      --values "$(per "${dt[egressd_conn4]}" "${dc[egressd_conn4]}")" --note "${dc[egressd_conn4]} runs"
    [ "$name" != "6 passthrough" ] || set_mesh false denied
  done
  floor_off
}

# flows_off_config CONFIG: the agent again on the same policies with
# `flows: off` (no flow recorded at connect(), no sockops program): the BPF
# time per TCP connection beside flows on. An agent that does not know the
# setting yet is noted in the results, not a failure.
flows_off_config() {
  local cfg=$1
  cp "$work/egressd.yaml" "$work/egressd.yaml.saved"
  echo "flows: off" >> "$work/egressd.yaml"
  cp "$work/mesh-false.yaml" "$work/meshconfig.yaml"
  if ! start_agent_try 15; then
    mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
    case $start_error in
      *flows*) note --section bpf --text "flows: off not measured: this agent refuses the setting ($start_error)"; return 0 ;;
      *) fail "$start_error" ;;
    esac
  fi
  wait_allowed
  [ -z "${2:-}" ] || wait_hosts "$2"
  floor_on
  bpf_pass "$cfg, flows off"
  floor_off
  stop_agent
  mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
}

# The agent returns freed memory one second after a change: settle_s before
# RSS figures; --quick only exercises the code, with shorter waits.
scale_settle=$([ $quick -eq 1 ] && echo 0.3 || echo "$settle_s")

# ---- section 9 -----------------------------------------------------------------------------------
if [ $quick -eq 1 ]; then
  pfx_pol=100; pfx_label="all-prefix: 10k /24 entries / 100 identities"
  m_pol=50; m_src=20; m_dst=10; m_label="20k rules / 1k identities, mixed (stand-in for 1M)"; m_adds=1; m_limit=60
else
  pfx_pol=1000; pfx_label="all-prefix: 100k /24 entries / 1k identities"
  m_pol=500; m_src=20; m_dst=50; m_label="1M rules / 10k identities, mixed"; m_adds=5; m_limit=600
fi

# prefix_config: every rule a /24 (UDP 9 only): POLICIES policies of one
# source and 100 /24s each; the workload's identity (bench/sa-0) holds 100 of
# them, 203.0.113.0/24 among them (its destination, 203.0.113.10).
prefix_config() {
  say "9. $pfx_label"
  rm -rf "$work/policies"; mkdir -p "$work/policies"
  python3 "$root/bench/tools/gen_policies.py" --prefixes all --ports udp "$work/policies" "$pfx_pol" 1 100
  cp "$work/mesh-false.yaml" "$work/meshconfig.yaml"
  baseline_now "$pfx_label" udp
  start_agent
  wait_both_slots || fail "$start_error"   # the copy must not overlap the measurements
  wait_allowed_udp
  say "  $pfx_label: agent up in $load_ms ms"
  add --section control --metric "full load (agent start → watching)" --config "$pfx_label" --unit ms --values "$load_ms"
  measure_egressd "$pfx_label" udp
  stop_agent
}

# million_config: 1M rules (half of the destinations /32s, half prefixes of
# four lengths) over 10k identities, with the capacities raised. Its load,
# memory, one policy added, and UDP connect. If the agent cannot load it in
# m_limit seconds, or exits, that is recorded (time, peak RSS, its last log
# lines) and the run goes on.
million_config() {
  local rules=$((m_pol * m_src * 2 * m_dst)) k dst j vals=() cpu
  say "9. $m_label ($rules rules)"
  rm -rf "$work/policies"; mkdir -p "$work/policies"
  python3 "$root/bench/tools/gen_policies.py" --prefixes mixed "$work/policies" "$m_pol" "$m_src" "$m_dst"
  cp "$work/mesh-false.yaml" "$work/meshconfig.yaml"
  cp "$work/egressd.yaml" "$work/egressd.yaml.saved"
  sed -i "s/^capacities: .*/capacities: {policies: 4096, policyRules: $(( rules + rules / 8 + 1024 )), identities: 16384}/" "$work/egressd.yaml"
  baseline_now "$m_label" udp
  if ! start_agent_try "$m_limit"; then
    note --section control --text "$m_label: not loaded: $start_error"
    mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
    return 0
  fi
  if ! wait_both_slots "$m_limit"; then
    note --section control --text "$m_label: $start_error"
    kill -9 "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; agent_pid=
    "$bin/egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1 || true
    mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
    return 0
  fi
  cpu=$(cpu_ms "$agent_pid")
  wait_allowed
  sleep "$scale_settle"
  say "  $m_label: agent up in $load_ms ms, $(rss_mb "$agent_pid") MB"
  add --section control --metric "full load (agent start → watching)" --config "$m_label" --unit ms --values "$load_ms"
  add --section control --metric "full load, both slots written (agent start → second slot)" --config "$m_label" \
    --unit ms --values "$both_ms"
  add --section control --metric "agent CPU while loading" --config "$m_label" --unit "ms CPU" --values "$cpu" \
    --note "until both slots are written"
  add --section control --metric "agent RSS at rest" --config "$m_label" --unit MB --values "$(rss_mb "$agent_pid")" \
    --note "${scale_settle} s after the load"
  add --section control --metric "agent peak RSS while loading (VmHWM)" --config "$m_label" --unit MB \
    --values "$(hwm_mb "$agent_pid")"
  for k in $(seq 1 "$m_adds"); do
    dst=203.0.113.$((20 + k))
    cat > "$work/stage/add-$k.yaml" <<EOF2
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: added-$k, namespace: bench}
spec:
  sources: [{kind: ServiceAccount, name: probe, namespace: bench}]
  ipAddresses: [$dst/32]
  ports: [{number: 80, protocol: tcp}]
EOF2
    j=$(cbq "$wl_probe" flip allowed "$dst" 80 "$work/stage/add-$k.yaml" "$work/policies/add-$k.yaml" 30) \
      || fail "$m_label: added rule $k not seen"
    vals+=("$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ns"]/1e6)')")
    sleep 0.05
  done
  add --section control --metric "one rule added (file write → kernel)" --config "$m_label" --unit ms --values "$(IFS=,; echo "${vals[*]}")"
  sleep "$scale_settle"
  add --section control --metric "agent RSS at rest" --config "$m_label, after $m_adds changes" --unit MB --values "$(rss_mb "$agent_pid")"
  add --section control --metric "agent peak RSS (VmHWM)" --config "$m_label, after $m_adds changes" --unit MB --values "$(hwm_mb "$agent_pid")"
  measure_egressd "$m_label" udp
  stop_agent
  rm -f "$work/policies"/add-*.yaml
  mv "$work/egressd.yaml.saved" "$work/egressd.yaml"
}

# bundled_idle: the agent on settings derived from config/egressd.yaml (the
# same keys and values: meshCIDRs, sidecarUID, policyDir and meshConfig
# copies, the workloads file inside runDir, the HTTP endpoint on) with only
# the shared places made private: cgroup, bpffs, runDir, workloads, and the
# HTTP endpoint on 127.0.0.1 (an ephemeral port). Its CPU over idle_s at rest.
bundled_idle() {
  local d=$scale_bundled_dir c0 c1 t0
  say "9. agent CPU at idle, bundled settings' layout"
  mkdir -p "$d/policies"
  cp "$root/config/meshconfig.yaml" "$d/"
  cp -r "$root/config/policies/." "$d/policies/"
  python3 - "$root/config/egressd.yaml" "$d" "$cgrel/bundled" "$scale_bundled_pins" > "$d/egressd.yaml" <<'EOF2'
import re, sys
src, d, cgroup, pins = sys.argv[1:5]
lines, seen = [], set()
private = {"cgroup": cgroup, "bpffs": pins, "runDir": f"{d}/run", "httpAddress": "127.0.0.1:0"}
for line in open(src):
    m = re.match(r"^([A-Za-z]+):\s*(.*?)\s*$", line)
    key = m.group(1) if m else None
    if key in private:
        line = f"{key}: {private[key]}\n"
    elif key == "workloads":  # in runDir in the bundled settings: keep it there
        line = "workloads: " + m.group(2).replace("/run/egressd", f"{d}/run") + "\n"
    if key:
        seen.add(key)
    lines.append(line)
for key in private:
    if key not in seen:
        lines.append(f"{key}: {private[key]}\n")
text = "".join(lines)
if re.search(r"(?m)^[^#\n]*(/run/egressd|/sys/fs/bpf/egressd|egressd/demo)(?![-\w])", text):
    sys.exit("bundled_idle: a shared path is left in the derived settings")
sys.stdout.write(text)
EOF2
  [ -s "$d/egressd.yaml" ] || fail "cannot derive the bundled settings"
  : > "$d/agent.log"
  t0=${EPOCHREALTIME/./}
  "$bin/egressd" --config "$d/egressd.yaml" >>"$d/agent.log" 2>&1 &
  scale_bundled_pid=$!
  until grep -q "watching" "$d/agent.log"; do
    kill -0 "$scale_bundled_pid" 2>/dev/null || { tail "$d/agent.log" >&2; fail "egressd (bundled layout) exited"; }
    [ $(( ${EPOCHREALTIME/./} - t0 )) -lt 15000000 ] || { tail "$d/agent.log" >&2; fail "egressd (bundled layout) not enforcing after 15 s"; }
    sleep 0.01
  done
  sleep "$scale_settle"
  c0=$(idle_cpu_ms "$scale_bundled_pid"); sleep "$idle_s"; c1=$(idle_cpu_ms "$scale_bundled_pid")
  add --section control --metric "agent CPU at idle (bundled config layout)" --config "config/egressd.yaml layout" --unit "ms CPU" \
    --values "$(python3 -c "print($c1 - $c0)")" \
    --note "over $idle_s s ($(python3 -c "print('%.1f%% of a core' % (($c1 - $c0) / 10 / $idle_s))")), starting ${scale_settle} s after it was enforcing; RSS $(rss_mb "$scale_bundled_pid") MB"
  kill -TERM "$scale_bundled_pid"; wait "$scale_bundled_pid" || true; scale_bundled_pid=
  "$bin/egressd" --cleanup --config "$d/egressd.yaml" >/dev/null || fail "egressd --cleanup (bundled layout) failed"
  rm -rf "$scale_bundled_pins"
}

scale_section() {
  prefix_config
  million_config
  bundled_idle
}
