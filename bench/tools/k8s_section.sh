# Sourced by scripts/bench: section 5, egressd in Kubernetes mode, fed by the
# fake API server (tests/k8s/fake_apiserver.py, started as tests/e2e/kubernetes.sh
# starts it) on a simulated node whose kubepods tree (systemd layout) lives in
# the benchmark's own cgroup, $cgtop/k8s. Uses the harness's helpers (add,
# fail, say, in_cg, rss_mb, hwm_mb) and sets k8s_* globals that its cleanup
# reads. See bench/README.md, "5. Kubernetes mode".

k8s_tool="python3 $root/bench/tools/k8s_bench.py"
k8s_probe=$root/tests/e2e/probe.py
kw=$work/k8s                               # the fake's certificates, kubeconfig, seed, the agent's runDir
k8s_node=$cgtop/k8s                        # the simulated node's cgroup root
k8s_pods_root=$k8s_node/kubepods.slice
k8s_pins=$pins-k8s
if [ $quick -eq 1 ]; then
  k8s_toggles=3; k8s_toggles_big=2; k8s_pods=50; k8s_egresses=100; k8s_events=200; k8s_syncs=1
else
  k8s_toggles=30; k8s_toggles_big=10; k8s_pods=1000; k8s_egresses=2000; k8s_events=10000; k8s_syncs=3
fi
# Churn: 10 events per request, one request every 20 ms (500 events/s),
# adds and deletes taking turns; a pod is deleted 5 add-requests after its
# own (it lives ~200 ms).
k8s_batch=10; k8s_interval=0.02; k8s_window=5
k8s_big="$k8s_pods pods / $k8s_egresses Egress"
k8s_one="1 meshed pod"

kc() { kubectl --kubeconfig "$kw/kubeconfig" --cache-dir "$kw/kube-cache" "$@"; }
k8s_post() { # k8s_post FILE: a POST /_fake/objects body; every object must be written
  curl -sk --fail -X POST "https://127.0.0.1:$k8s_port/_fake/objects" -H 'Content-Type: application/json' \
    --data-binary "@$1" | python3 -c '
import json,sys; r=json.load(sys.stdin)["results"]; bad=[x for x in r if x["code"] not in (200, 201)]
sys.exit("bench: the fake refused %d of %d objects: %s" % (len(bad), len(r), bad[:1]) if bad else 0)'
}
# k8s_start_agent [--probe-only]: a fresh agent (nothing pinned); waits for the
# first sync of every seeded pod (or only bench-0/curl) and leaves its figures
# in $kw/sync.json.
k8s_start_agent() {
  local t0 sync_pid
  : > "$kw/agent.log"
  rm -f "$kw/run/status.json" "$kw/sync.ready" "$kw/sync.start"
  # The watcher first (a Python start takes 0.1-0.2 s here), then the agent.
  $k8s_tool sync --status "$kw/run/status.json" --uids "$kw/uids.json" --ready "$kw/sync.ready" --start "$kw/sync.start" \
    --log "$kw/agent.log" --timeout 60 "$@" > "$kw/sync.json" &
  sync_pid=$!
  for _ in $(seq 2000); do [ -e "$kw/sync.ready" ] || ! kill -0 "$sync_pid" 2>/dev/null && break; sleep 0.005; done
  [ -e "$kw/sync.ready" ] || fail "k8s_bench sync did not start"
  t0=${EPOCHREALTIME/./}
  "$bin/egressd" --config "$kw/egressd.yaml" >>"$kw/agent.log" 2>&1 &
  agent_pid=$!
  echo "$t0 $agent_pid" > "$kw/sync.start"
  wait "$sync_pid" || { tail -20 "$kw/agent.log" >&2; fail "egressd (Kubernetes mode): no first sync"; }
}
k8s_stop_agent() {
  [ -n "$agent_pid" ] || return 0
  kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=
  "$bin/egressd" --cleanup --config "$kw/egressd.yaml" >/dev/null || fail "egressd --cleanup (Kubernetes mode) failed"
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# k8s_toggles CONFIG N CLIENT: N patches of enableEgress, with CLIENT:
#   kubectl: `kubectl patch`, timed from just before kubectl starts to the
#     moment the probe in the meshed pod bench-0/curl (no Egress selects it)
#     sees the new verdict; kubectl's own run time and the agent's apply time
#     (its log line) alongside;
#   curl: the same PATCH with curl, timed from the moment curl sends the
#     request (its time_pretransfer): the API server, the watch, the agent
#     and the kernel, without a client's start-up.
k8s_toggles() {
  local config=$1 n=$2 how=$3 state next want probe_pid t0 t1 seen applied ms pre total body
  local e2e=() own=() agent=()
  local pod_cg
  pod_cg=$k8s_pods_root/kubepods-burstable.slice/kubepods-burstable-pod$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["probe"].replace("-", "_"))' "$kw/uids.json").slice
  state=$(kc get meshconfig fsm-mesh-config -n fsm-system -o jsonpath='{.spec.traffic.enableEgress}') || fail "kubectl get meshconfig failed"
  for _ in $(seq "$n"); do
    if [ "$state" = true ]; then next=false; want=denied; else next=true; want=allowed; fi
    body="{\"spec\":{\"traffic\":{\"enableEgress\":$next}}}"
    rm -f "$kw/ready" "$kw/seen"
    in_cg "$pod_cg" python3 "$k8s_probe" until "$want" 203.0.113.10 80 --ready "$kw/ready" --out "$kw/seen" --timeout 10 &
    probe_pid=$!
    for _ in $(seq 1000); do [ -s "$kw/ready" ] && break; sleep 0.005; done
    [ -s "$kw/ready" ] || fail "the probe in the meshed pod did not start"
    [ "$(cat "$kw/ready")" != "$want" ] || fail "the meshed pod was $want before the patch enableEgress=$next"
    applied=$(grep -c "applied generation" "$kw/agent.log" || true)
    t0=${EPOCHREALTIME/./}
    if [ "$how" = kubectl ]; then
      kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p "$body" >/dev/null || fail "kubectl patch failed"
    else
      read -r pre total < <(curl -s --cacert "$kw/ca.crt" --fail -o /dev/null -w '%{time_pretransfer} %{time_total}\n' -X PATCH -H "Authorization: Bearer $(<"$kw/token")" \
        -H 'Content-Type: application/merge-patch+json' -d "$body" \
        "https://127.0.0.1:$k8s_port/apis/config.flomesh.io/v1alpha3/namespaces/fsm-system/meshconfigs/fsm-mesh-config")
      [ -n "${total:-}" ] || fail "curl PATCH failed"
    fi
    t1=${EPOCHREALTIME/./}
    wait "$probe_pid" || fail "patch enableEgress=$next ($how): the pod's verdict did not become $want within 10 s"
    seen=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seen_ns"] // 1000)' "$kw/seen")
    # The agent's own time for the change: its log line "applied generation N in X ms".
    for _ in $(seq 400); do [ "$(grep -c "applied generation" "$kw/agent.log")" -gt "$applied" ] && break; sleep 0.005; done
    ms=$(grep "applied generation" "$kw/agent.log" | tail -1 | sed -n 's/.*applied generation [0-9]* in \([0-9.]*\) ms.*/\1/p')
    [ -n "$ms" ] && [ "$(grep -c "applied generation" "$kw/agent.log")" -gt "$applied" ] || fail "no \"applied generation\" log line after the patch"
    if [ "$how" = kubectl ]; then
      e2e+=("$(( seen - t0 ))"); own+=("$(( t1 - t0 ))")
    else
      e2e+=("$(python3 -c "print($seen - $t0 - $pre * 1e6)")"); own+=("$(python3 -c "print(($total - $pre) * 1e6)")")
    fi
    agent+=("$ms")
    state=$next
    sleep 0.05
  done
  if [ "$how" = kubectl ]; then
    add --section k8s --metric "kubectl patch enableEgress → kernel verdict" --config "$config" --unit ms --scale 0.001 \
      --values "$(IFS=,; echo "${e2e[*]}")" --note "kubectl start to the pod's probe seeing the new verdict"
    add --section k8s --metric "  …kubectl's own run time" --config "$config" --unit ms --scale 0.001 \
      --values "$(IFS=,; echo "${own[*]}")" --note "fork/exec to exit, discovery cached; the verdict changes before kubectl exits"
  else
    add --section k8s --metric "PATCH sent (curl) → kernel verdict" --config "$config" --unit ms --scale 0.001 \
      --values "$(IFS=,; echo "${e2e[*]}")" --note "fake API server + watch + agent + kernel, no client start-up"
    add --section k8s --metric "  …the fake's answer to the PATCH (sent → response)" --config "$config" --unit ms --scale 0.001 \
      --values "$(IFS=,; echo "${own[*]}")" --note "the fake (Python) commits before it answers"
  fi
  add --section k8s --metric "  …the agent's apply (its log line, $how patches)" --config "$config" --unit ms \
    --values "$(IFS=,; echo "${agent[*]}")" --note "\"applied generation N in X ms\": inputs re-read to maps written"
}

k8s_section() {
  local info seed_note sync_vals=() log_vals=() list_vals=() rss_vals=() hwm_vals=() maps_mb r j
  say "5. Kubernetes mode: the fake API server, a simulated node in $k8s_node"
  mkdir -p "$kw/run" "$k8s_pods_root"
  info=$($k8s_tool seed "$kw" --pods-root "$k8s_pods_root" --pods "$k8s_pods" --egresses "$k8s_egresses" \
    --churn $((k8s_events / 2))) || fail "k8s_bench seed failed"
  seed_note=$(echo "$info" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("pods of %d bytes of JSON each (FSM-injected shape) in %d namespaces, %d identities; Egress: 1 source, 2 ipAddresses, 2 ports each" % (d["pod_bytes"], d["namespaces"], d["identities"]))')
  . "$root/tests/k8s/fake/start.sh"
  start_fake_apiserver "$kw" "$kw/seed.json" || { tail "$kw/fake.log" >&2; fail "the fake API server did not start"; }
  k8s_fake_pid=$fake_pid; k8s_port=$fake_port
  cat > "$kw/egressd.yaml" <<EOF
cgroup: $cgrel/k8s/kubepods.slice
cgroupMount: $cg2
bpffs: $k8s_pins
runDir: $kw/run
httpAddress: "127.0.0.1:0"
kubernetes:
  kubeconfig: $kw/kubeconfig
  nodeName: node-1
  mesh: fsm
EOF

  say "5a. kubectl patch → kernel, $k8s_one ($k8s_toggles times)"
  k8s_start_agent --probe-only
  kc get meshconfig -n fsm-system >/dev/null || fail "kubectl against the fake failed"  # fills kubectl's discovery cache
  k8s_toggles "$k8s_one" "$k8s_toggles" kubectl
  k8s_toggles "$k8s_one" "$k8s_toggles" curl
  k8s_stop_agent

  say "5b. initial sync of $k8s_big ($k8s_syncs times)"
  [ "$(kc get meshconfig fsm-mesh-config -n fsm-system -o jsonpath='{.spec.traffic.enableEgress}')" = false ] ||
    kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":false}}}' >/dev/null
  k8s_post "$kw/big.json"
  # What serving the lists costs the fake (Python), once: part of every sync below.
  local list_ms
  list_ms=$(curl -sk --fail -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $(cat "$kw/token")" \
    "https://127.0.0.1:$k8s_port/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=500") || fail "listing pods from the fake failed"
  add --section k8s --metric "the fake's time to serve one page of 500 pods (curl)" --config "$k8s_big" --unit ms \
    --values "$(python3 -c "print($list_ms * 1000)")" --note "context: the fake is Python; the agent lists pods in pages of 500"
  for r in $(seq "$k8s_syncs"); do
    k8s_start_agent
    sync_vals+=("$(json_field "$kw/sync.json" sync_ms)"); log_vals+=("$(json_field "$kw/sync.json" log_ms)")
    list_vals+=("$(json_field "$kw/sync.json" lists_ms)"); hwm_vals+=("$(hwm_mb "$agent_pid")")
    say "  sync $r: $(json_field "$kw/sync.json" sync_ms) ms ($(json_field "$kw/sync.json" log_line))"
    sleep "$settle_s"
    rss_vals+=("$(rss_mb "$agent_pid")")
    [ "$r" -eq "$k8s_syncs" ] || k8s_stop_agent
  done
  maps_mb=$($k8s_tool maps "$k8s_pins") || fail "reading the pinned maps failed"
  add --section k8s --metric "initial sync (agent start → status: all pods enforced)" --config "$k8s_big" --unit ms \
    --values "$(IFS=,; echo "${sync_vals[*]}")" --note "$seed_note; after --cleanup: nothing pinned"
  add --section k8s --metric "initial sync (agent start → log \"first sync applied\")" --config "$k8s_big" --unit ms \
    --values "$(IFS=,; echo "${log_vals[*]}")" --note "log times have ms resolution"
  add --section k8s --metric "  …of which listing (agent start → last \"synced\" log line)" --config "$k8s_big" --unit ms \
    --values "$(IFS=,; echo "${list_vals[*]}")"
  add --section k8s --metric "agent RSS after the initial sync (VmRSS)" --config "$k8s_big" --unit MB \
    --values "$(IFS=,; echo "${rss_vals[*]}")" --note "${settle_s} s after the sync; BPF maps (not in RSS): $maps_mb MB memlock"
  add --section k8s --metric "agent peak RSS during the initial sync (VmHWM)" --config "$k8s_big" --unit MB \
    --values "$(IFS=,; echo "${hwm_vals[*]}")"

  say "5c. kubectl patch → kernel at $k8s_big ($k8s_toggles_big times)"
  k8s_toggles "$k8s_big" "$k8s_toggles_big" kubectl
  k8s_toggles "$k8s_big" "$k8s_toggles_big" curl

  say "5d. pod churn: $k8s_events add/delete events at $(python3 -c "print(int($k8s_batch / $k8s_interval))")/s on top of $k8s_big"
  j=$($k8s_tool churn --control "https://127.0.0.1:$k8s_port" --ca "$kw/ca.crt" --status "$kw/run/status.json" \
    --uids "$kw/uids.json" --events "$k8s_events" --batch "$k8s_batch" --interval "$k8s_interval" --window "$k8s_window" \
    --pid "$agent_pid" --log "$kw/agent.log" --timeout 30) || { echo "$j" | head -c 600 >&2; fail "pod churn failed"; }
  echo "$j" > "$kw/churn.json"
  local note
  note=$(echo "$j" | python3 -c '
import json,sys; d=json.load(sys.stdin)
out = ("%d events, %d per request every %g s (%g/s), over %.1f s; %d generations applied; "
       "%d of %d pods (living ~%.0f ms each) never shown enforced; converged: %s, %.0f ms after the last write; "
       "pods watch meanwhile: %s" % (
  d["events"], d["batch"], d["interval_s"], d["rate_per_s"], d["write_span_s"], d["generations"],
  d["never_enforced_pods"], d["events"] // 2, d["pod_lifetime_ms"], "yes" if d["converged"] else "NO", d["drain_ms"] or -1,
  ", ".join("%s +%d" % kv for kv in d["pods_watch"].items())))
if d["inconsistent_snapshots"] or d["never_applied"]:
    out += ("; **%d status files showed a state the fake never had (pods missing), %d events never applied**"
            % (d["inconsistent_snapshots"], d["never_applied"]))
if d["agent_errors"]:
    out += "; **%d agent errors, first: %s**" % (d["agent_errors"], d["first_error"].replace("|", "/"))
print(out)')
  echo "$j" | add --section k8s --metric "pod churn: lag, write → applied (every event)" --config "$k8s_big" --unit ms \
    --field lag_ms --note "$note"
  echo "$j" | add --section k8s --metric "  …pod adds" --config "$k8s_big" --unit ms --field add_lag_ms
  echo "$j" | add --section k8s --metric "  …pod deletes" --config "$k8s_big" --unit ms --field delete_lag_ms
  echo "$j" | add --section k8s --metric "pod churn: the agent's applies (its log lines)" --config "$k8s_big" --unit ms --field apply_ms
  echo "$j" | add --section k8s --metric "pod churn: drain (last write → the fake's final state enforced)" --config "$k8s_big" \
    --unit ms --field drain_ms
  echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"v": d["agent_cpu_ms"] * 1000 / d["events"]}))' |
    add --section k8s --metric "pod churn: agent CPU per 1,000 events" --config "$k8s_big" --unit "ms CPU" --field v
  echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"v": d["fds_before"]["total"]}))' |
    add --section k8s --metric "agent's open file descriptors" --config "$k8s_big, before the churn" --unit fds --field v \
    --note "$(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d of them BPF links; limit %s" % (d["fds_before"]["bpf_link"], d["fd_limit"]))')"
  echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"v": d["fds_after"]["total"]}))' |
    add --section k8s --metric "agent's open file descriptors" --config "$k8s_big, after the churn (the same pods enforced)" --unit fds --field v \
    --note "$(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d of them BPF links; %d pods added and deleted meanwhile" % (d["fds_after"]["bpf_link"], d["events"] // 2))')"
  echo "$j" | add --section k8s --metric "pod churn: the fake's time per write request (context)" --config "$k8s_big" \
    --unit ms --field write_ms --note "$k8s_batch pods per request, over HTTPS keep-alive"
  k8s_stop_agent
  kill "$k8s_fake_pid" 2>/dev/null; wait "$k8s_fake_pid" 2>/dev/null || true; k8s_fake_pid=
  $k8s_tool rmtree "$k8s_node"
}
