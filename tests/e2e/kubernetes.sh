#!/usr/bin/env bash
# End to end, Kubernetes mode: egressd fed by the fake API server
# (tests/k8s/fake_apiserver.py) over TLS with a kubeconfig, enforcing on a
# simulated node: a kubepods tree (systemd layout) under the test's own
# cgroup, pod processes in a private network namespace whose only route
# leads to a sink namespace. Driven as an operator does: kubectl apply,
# kubectl patch, kill -9 and restart.
#
# Usage: kubernetes.sh BIN_DIR [systemd|cgroupfs] (the kubelet's cgroup
# driver the simulated node uses; CTest runs both, as root).
set -uo pipefail

bin=$(cd "${1:?usage: kubernetes.sh BIN_DIR [systemd|cgroupfs]}" && pwd)
driver=${2:-systemd}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl
probe=$here/probe.py

. "$here/lib.sh"

e2e_require ip python3 openssl kubectl curl

id=$$
echo "# kubelet cgroup driver: $driver"
work=$(mktemp -d /tmp/egressd-e2e-k8s.XXXXXX)
pins=/sys/fs/bpf/egressd-e2e-k8s-$id
node_rel=egressd-tests/k8s-$id  # the simulated node's cgroups, below the test parent
case $driver in
  systemd) pods_rel=kubepods.slice ;;
  cgroupfs) pods_rel=kubepods ;;
  *) echo "kubernetes.sh: unknown driver $driver" >&2; exit 2 ;;
esac
pods_root=$cg2/$node_rel/$pods_rel
client=egtk${id}c
sink=egtk${id}s
agent_pid=
fake_pid=
server_pid=
uid_curl=2f0c1a2e-1111-4a4a-8b8b-000000000001
uid_late=2f0c1a2e-1111-4a4a-8b8b-000000000002
uid_plain=2f0c1a2e-1111-4a4a-8b8b-000000000003
# A Burstable pod's cgroup, named as the kubelet names it with each driver.
pod_dir() {
  if [ "$driver" = systemd ]; then echo "$pods_root/kubepods-burstable.slice/kubepods-burstable-pod${1//-/_}.slice"
  else echo "$pods_root/burstable/pod$1"; fi
}

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  rm -rf "$pins"
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null
  remove_cgroup_tree "$cg2/$node_rel"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

# ---- network: client namespace -> sink namespace (203.0.113.10:80) ---------
make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"

# ---- the fake API server, with TLS and a token (tests/k8s/fake/start.sh) ----
. "$root/tests/k8s/fake/start.sh"

pod_json() { # NAME UID [LABELS_JSON]
  cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "app", "uid": "$2", "labels": ${3:-{\"fsm-proxy-uuid\": \"$2\"\}}},
 "spec": {"nodeName": "node-1", "serviceAccountName": "$1", "containers": [{"name": "c", "image": "x"}]},
 "status": {"phase": "Running", "qosClass": "Burstable"}}
EOF
}
cat > "$work/seed.json" <<EOF
{"objects": [
 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fsm-system"}},
 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": {"flomesh.io/monitored-by": "fsm"}}},
 {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.1.0/24"}},
 {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
  "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"},
  "spec": {"traffic": {"enableEgress": false}, "featureFlags": {"enableEgressPolicy": true}}},
 $(pod_json curl "$uid_curl"),
 $(pod_json plain "$uid_plain" '{"app": "plain"}')
]}
EOF
start_fake() { start_fake_apiserver "$work" "$work/seed.json" "${1:-0}"; }
start_fake || { cat "$work/fake.log"; unavailable "the fake API server did not start"; }
port=$fake_port
kc() { kubectl --kubeconfig "$work/kubeconfig" "$@"; }
control() { curl -sk -X POST "https://127.0.0.1:$port/_fake/$1" -H 'Content-Type: application/json' -d "$2" >/dev/null; }

# ---- the simulated node and the agent ---------------------------------------
mkdir -p "$(pod_dir "$uid_curl")" "$(pod_dir "$uid_plain")" || unavailable "cannot create cgroups under $cg2"
cat > "$work/egressd.yaml" <<EOF
cgroup: $node_rel/$pods_rel
cgroupMount: $cg2
bpffs: $pins
runDir: $work/run
httpAddress: "127.0.0.1:0"
events: {log: $work/events.log}
kubernetes:
  kubeconfig: $work/kubeconfig
  nodeName: node-1
  mesh: fsm
EOF
status_field() { python3 -c "import json,sys; print(eval(sys.argv[1], {'s': json.load(open('$work/run/status.json'))}))" "$1" 2>/dev/null; }
start_agent() {
  "$egressd" --config "$work/egressd.yaml" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 150); do
    [ "$(status_field "len(s['kubernetes']['enforcedPods']) > 0")" = True ] && return 0
    kill -0 "$agent_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# A command in a cgroup (a pod's, or another), inside the client namespace.
in_cgroup() {
  local dir=$1; shift
  sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@"' sh "$dir" "$client" "$@"
}
verdict_in() { in_cgroup "$1" python3 "$probe" once "${2:-203.0.113.10}" 80; }
# Waits up to 5 s for the verdict $2 in cgroup $1.
becomes() {
  for _ in $(seq 50); do [ "$(verdict_in "$1")" = "$2" ] && return 0; sleep 0.1; done
  return 1
}

check "agent starts and enforces the meshed pod after the first sync" start_agent
[ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; finish; exit 1; }
check "the meshed pod is denied (enableEgress false, no policy)" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
check "a pod without the proxy label carries no program" test "$(verdict_in "$(pod_dir "$uid_plain")")" = allowed
check "a process in the pods' parent carries no program" test "$(verdict_in "$pods_root")" = allowed
check "meshCIDRs from the node's spec.podCIDR" grep -q "meshCIDRs from the cluster: 10.244.1.0/24" "$work/agent.log"
# No route leads there: the hook allowed it (row 5) when the network answers unreachable.
check "  ...a pod address is not denied (row 5)" test "$(verdict_in "$(pod_dir "$uid_curl")" 10.244.1.7)" = ENETUNREACH
check "  ...another address is" test "$(verdict_in "$(pod_dir "$uid_curl")" 10.245.1.7)" = denied

# The cluster DNS (no dnsServer in the settings): its Service IP and ready
# endpoints become trusted resolvers, an unready endpoint does not.
control objects '{"op": "upsert", "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"}, "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 53, "protocol": "UDP"}]}}}'
control objects '{"op": "upsert", "object": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "kube-dns-abcde", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "kube-dns"}}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.3"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.4"], "conditions": {"ready": false}}]}}'
trusted() { bpftool -j map dump pinned "$pins/dns_servers_v1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    a = e["formatted"]["key"]["addr"]
    b = bytes(int(x, 16) if isinstance(x, str) else x for x in a)
    print(".".join(map(str, b[12:])))'; }
for _ in $(seq 50); do trusted 2>/dev/null | grep -q 10.244.0.3 && break; sleep 0.1; done
trusted 2>/dev/null > "$work/trusted.txt"
check "the cluster DNS's Service IP is a trusted resolver" grep -qx 10.96.0.10 "$work/trusted.txt"
check "  ...its ready endpoint too" grep -qx 10.244.0.3 "$work/trusted.txt"
check "  ...not its unready one" bash -c "! grep -qx 10.244.0.4 '$work/trusted.txt'"
check "  ...and the agent says so" grep -q "DNS answers are learned from the cluster DNS: 10.96.0.10, 10.244.0.3" "$work/agent.log"
check "status names the API server and the enforced pod" \
  test "$(status_field "s['kubernetes']['enforcedPods'][0]['uid']")" = "$uid_curl"

kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":true}}}' >/dev/null
check "kubectl patch enableEgress=true: passthrough" becomes "$(pod_dir "$uid_curl")" allowed
kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":false}}}' >/dev/null
check "kubectl patch enableEgress=false: denied again" becomes "$(pod_dir "$uid_curl")" denied
check "egressctl egress enable patches the MeshConfig and waits for the kernel" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' egress enable --kubeconfig '$work/kubeconfig' | grep -q 'egressd applied it'"
check "  ...the API server has it" test "$(kc get meshconfig fsm-mesh-config -n fsm-system -o jsonpath='{.spec.traffic.enableEgress}')" = true
check "  ...and the pod is allowed" test "$(verdict_in "$(pod_dir "$uid_curl")")" = allowed
check "egressctl egress disable (credentials from \$KUBECONFIG)" \
  env KUBECONFIG="$work/kubeconfig" "$egressctl" --config "$work/egressd.yaml" egress disable
check "  ...denied" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
check "egressctl status: enforcing, the pod, its identity and the API server" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' status > '$work/status.txt' && grep -q '$uid_curl app/curl as app/curl' '$work/status.txt' && grep -q 'meshconfigs  synced' '$work/status.txt'"

cat > "$work/egress.yaml" <<EOF
apiVersion: policy.flomesh.io/v1alpha1
kind: Egress
metadata: {name: web, namespace: app}
spec:
  sources: [{kind: ServiceAccount, name: curl, namespace: app}]
  ipAddresses: [203.0.113.10/32]
  ports: [{number: 80, protocol: http}]
EOF
kc apply -f "$work/egress.yaml" >/dev/null
check "an Egress for app/curl allows it" becomes "$(pod_dir "$uid_curl")" allowed
check "egressctl check --from app/curl names the Egress (row 7)" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/curl --to 203.0.113.10:80 | grep -q 'ALLOW.*Egress app/web.*row 7'"
check "egressctl check --from app/other: row 8" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/other --to 203.0.113.10:80 | grep -q 'DENY.*row 8'"
kc delete egress web -n app >/dev/null
check "the Egress deleted: denied" becomes "$(pod_dir "$uid_curl")" denied

# The watch expires while an Egress is deleted: the agent's watch resumes from
# a compacted resourceVersion, gets 410, lists again and drops the Egress.
kc apply -f "$work/egress.yaml" >/dev/null
check "the Egress again: allowed" becomes "$(pod_dir "$uid_curl")" allowed
control watches/stall '{"pathPrefix": "/apis/policy.flomesh.io"}'
kc delete egress web -n app >/dev/null
control compact '{}'
control watches/reset '{"mode": "close", "pathPrefix": "/apis/policy.flomesh.io"}'
control watches/release '{}'
check "deleted during an expired watch: denied after the relist" becomes "$(pod_dir "$uid_curl")" denied
check "  ...the agent counted it (410, relist)" test "$(status_field "[r['relists'] for r in s['kubernetes']['resources'] if r['resource'] == 'egresses'][0] > 0")" = True

check "/metrics counts the relist per resource, and parses" bash -c "
  m=\$(curl -s http://127.0.0.1:$(status_field "s['httpPort']")/metrics) &&
  echo \"\$m\" | '$bin/prom_check' >/dev/null &&
  echo \"\$m\" | grep -Eq '^egressd_kubernetes_relists_total\{resource=\"egresses\"\} [1-9]' &&
  echo \"\$m\" | grep -q '^egressd_kubernetes_synced{resource=\"pods\"} 1'"
check "/metrics has the apply lag of the changes since the first sync" bash -c "
  curl -s http://127.0.0.1:$(status_field "s['httpPort']")/metrics | grep -Eq '^egressd_kubernetes_apply_lag_seconds_count [1-9]'"

# The token rotates: the agent re-reads its token file on the 401.
control token "{\"token\": \"rotated-$RANDOM\"}"
control watches/reset '{"mode": "close"}'
kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":true}}}' >/dev/null
check "after a token rotation the agent still follows kubectl patch" becomes "$(pod_dir "$uid_curl")" allowed
kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":false}}}' >/dev/null
check "  ...and back" becomes "$(pod_dir "$uid_curl")" denied

# A bad Egress and a deleted MeshConfig: reported, the last good state kept,
# and the agent stays ready (one bad object must not stall a rollout).
ready_code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(status_field "s['httpPort']")/readyz"; }
# The watches reset above recover within a bookmark period or a backoff step.
for _ in $(seq 100); do [ "$(ready_code)" = 200 ] && break; sleep 0.1; done
sed 's/number: 80/number: 70000/; s/name: web/name: bad/' "$work/egress.yaml" | kc apply -f - >/dev/null
for _ in $(seq 50); do [ "$(status_field "len(s['policyErrors'])")" = 1 ] && break; sleep 0.1; done
check "a bad Egress is reported with its field" test "$(status_field "'Egress app/bad' in s['policyErrors'][0] and 'spec.ports[0]' in s['policyErrors'][0]")" = True
check "  ...and the agent stays ready" test "$(ready_code)" = 200
kc delete egress bad -n app >/dev/null
kc get meshconfig fsm-mesh-config -n fsm-system -o json > "$work/meshconfig.json"
kc delete meshconfig fsm-mesh-config -n fsm-system >/dev/null
for _ in $(seq 50); do grep -q "MeshConfig fsm-system/fsm-mesh-config not found" "$work/agent.log" && break; sleep 0.1; done
check "the MeshConfig deleted: reported" grep -q "MeshConfig fsm-system/fsm-mesh-config not found.*stays in force" "$work/agent.log"
check "  ...the last one stays enforced" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
check "  ...and the agent stays ready" test "$(ready_code)" = 200
python3 -c "import json,sys; o=json.load(open(sys.argv[1])); o['metadata']={'name':'fsm-mesh-config','namespace':'fsm-system'}; json.dump(o, open(sys.argv[1],'w'))" "$work/meshconfig.json"
kc apply -f "$work/meshconfig.json" >/dev/null

# A pod whose Pod object comes before its cgroup.
control objects "{\"op\": \"upsert\", \"object\": $(pod_json late "$uid_late")}"
sleep 0.5
check "a pod without its cgroup yet is waiting" \
  test "$(status_field "len(s['kubernetes']['podsWaitingForCgroup'])")" = 1
mkdir -p "$(pod_dir "$uid_late")"
check "its cgroup appears: enforced" becomes "$(pod_dir "$uid_late")" denied
# The same path made again is another cgroup (another inode): attached again.
rmdir "$(pod_dir "$uid_late")" && mkdir "$(pod_dir "$uid_late")"
check "its cgroup made again at the same path: the new one is enforced" becomes "$(pod_dir "$uid_late")" denied

# Killed with -9: enforcement stays; a pod deleted meanwhile is detached after the relist.
kill -9 "$agent_pid"; wait "$agent_pid" 2>/dev/null; agent_pid=
check "agent killed: the pod stays denied" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
control objects "{\"op\": \"delete\", \"apiVersion\": \"v1\", \"kind\": \"Pod\", \"namespace\": \"app\", \"name\": \"late\"}"
check "agent restarted: adopts and syncs" start_agent
check "the restarted agent still denies the meshed pod" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
check "the pod deleted while it was away is no longer enforced" becomes "$(pod_dir "$uid_late")" allowed
check "adopted the pinned maps" grep -q "adopted the pinned maps" "$work/agent.log"

# The API server goes away: the last state keeps being enforced.
kill "$fake_pid"; wait "$fake_pid" 2>/dev/null; fake_pid=
down_at=$EPOCHREALTIME
sleep 1
check "API server down: still denied" test "$(verdict_in "$(pod_dir "$uid_curl")")" = denied
check "API server down: the agent runs" kill -0 "$agent_pid"
# A failure shorter than the grace (5 s) is a blip: readiness does not flap.
if python3 -c "import sys; sys.exit(0 if $EPOCHREALTIME - $down_at < 4 else 1)"; then
  check "API server down for a second: still ready (a blip)" test "$(ready_code)" = 200
fi
readyz() { curl -s "http://127.0.0.1:$(status_field "s['httpPort']")/readyz"; }
for _ in $(seq 100); do readyz 2>/dev/null | grep -q 'API server' && break; sleep 0.1; done
check "API server down for 5 s: /readyz says what is stale, and since when" \
  bash -c "curl -s http://127.0.0.1:$(status_field "s['httpPort']")/readyz | grep -q 'from the API server may be stale since 20'"
check "  ...and answers 503" test "$(ready_code)" = 503
# Back (a new server on the same port, its state from the seed): the agent
# lists again and follows it.
start_fake "$port"
kc patch meshconfig fsm-mesh-config -n fsm-system --type=merge -p '{"spec":{"traffic":{"enableEgress":true}}}' >/dev/null
check "API server back: the agent follows kubectl patch again" becomes "$(pod_dir "$uid_curl")" allowed

# First start with no MeshConfig and no pins: not ready, nothing enforced;
# the MeshConfig created: enforced.
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null; agent_pid=
"$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
kc get meshconfig fsm-mesh-config -n fsm-system -o json > "$work/meshconfig.json"
kc delete meshconfig fsm-mesh-config -n fsm-system >/dev/null
"$egressd" --config "$work/egressd.yaml" >>"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 50); do readyz 2>/dev/null | grep -q "not found" && break; sleep 0.1; done
check "no MeshConfig at first start: not ready, and says why" bash -c "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$(status_field "s['httpPort']")/readyz | grep -q 503 && curl -s http://127.0.0.1:$(status_field "s['httpPort']")/readyz | grep -q 'MeshConfig fsm-system/fsm-mesh-config not found'"
check "  ...and enforces nothing new" test "$(verdict_in "$(pod_dir "$uid_curl")")" = allowed
python3 -c "import json,sys; o=json.load(open(sys.argv[1])); o['metadata']={'name':'fsm-mesh-config','namespace':'fsm-system'}; o['spec']['traffic']['enableEgress']=False; json.dump(o, open(sys.argv[1],'w'))" "$work/meshconfig.json"
kc apply -f "$work/meshconfig.json" >/dev/null
check "the MeshConfig created: the pod is enforced" becomes "$(pod_dir "$uid_curl")" denied
check "  ...and the agent is ready" test "$(ready_code)" = 200

if [ "$failed" -gt 0 ]; then echo "---- agent log"; tail -50 "$work/agent.log"; fi
finish
