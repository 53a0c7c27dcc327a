#!/usr/bin/env bash
# "A && B || C" below means "C unless A and B", as intended.
# shellcheck disable=SC2015
# Tests the fake Kubernetes API server (tests/k8s/fake_apiserver.py) with the
# real kubectl and with raw wire-protocol checks (tests/k8s/fake/protocol_checks.py).
# Run by CTest as k8s-fake (label k8s). Needs python3, openssl, kubectl and curl; no
# root, no network beyond 127.0.0.1. Exit 77 (skip) when a tool is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fake="$here/fake_apiserver.py"
fixtures="$here/fake"

for tool in python3 openssl kubectl curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool not found"
    exit 77
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/egressd-k8s-fake.XXXXXX")
server_pid=""
bg_pids=()
passed=0
failed=0

cleanup() {
  local rc=$?
  set +e
  for p in "${bg_pids[@]}"; do
    kill "$p" 2>/dev/null
  done
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  for p in "${bg_pids[@]}"; do
    wait "$p" 2>/dev/null
  done
  if [[ $rc -ne 0 && -f "$work/server.log" ]]; then
    echo "---- last lines of the fake's log ----"
    tail -n 40 "$work/server.log"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { passed=$((passed + 1)); echo "ok - $*"; }
bad() { failed=$((failed + 1)); echo "FAIL - $*"; }
# check NAME COMMAND...: passes when COMMAND succeeds; its output is shown on
# failure. COMMAND runs in this shell (not a subshell), so it may start and
# wait for background processes.
check() {
  local name=$1
  shift
  if "$@" >"$work/check.out" 2>&1; then
    ok "$name"
  else
    bad "$name"
    sed 's/^/    /' "$work/check.out" | tail -n 25
  fi
}

# ---- certificates: a CA and a server certificate for 127.0.0.1 -------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/ca.key" -out "$work/ca.crt" -days 2 -subj "/CN=egressd-fake-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=127.0.0.1" >/dev/null 2>&1
printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:::1" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -out "$work/server.crt" -days 2 -extfile "$work/ext.cnf" >/dev/null 2>&1

# ---- start the fake ---------------------------------------------------------
token1="token-$RANDOM-$RANDOM"
echo "$token1" >"$work/token"
python3 "$fake" --port 0 --port-file "$work/port" --cert "$work/server.crt" --key "$work/server.key" \
  --token-file "$work/token" --seed "$fixtures/seed.json" --log "$work/server.log" \
  --bookmark-interval 1 --exit-with-parent >"$work/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  [[ -s "$work/port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.out"; echo "fake exited"; exit 1; }
  sleep 0.1
done
port=$(cat "$work/port")
base="https://127.0.0.1:$port"
echo "# fake API server on $base (pid $server_pid)"

ctl() { # control API: ctl PATH [JSON]
  if [[ $# -gt 1 ]]; then
    curl -sS --fail --cacert "$work/ca.crt" -X POST -d "$2" "$base/_fake/$1"
  else
    curl -sS --fail --cacert "$work/ca.crt" "$base/_fake/$1"
  fi
}

# ---- kubectl against it -----------------------------------------------------
export HOME="$work/home" KUBECONFIG="$work/kubeconfig"
mkdir -p "$HOME"
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: $base
    certificate-authority: $work/ca.crt
users:
- name: tester
  user:
    token: $token1
contexts:
- name: fake
  context:
    cluster: fake
    user: tester
current-context: fake
EOF
k() { kubectl --cache-dir "$work/cache" --request-timeout=10s "$@"; }
has() { grep -q -- "$1" <<<"$2"; }

t_get_ns() {
  local out; out=$(k get ns)
  has default "$out" && has app "$out" && has kube-system "$out"
}
check "kubectl get ns" t_get_ns

t_apply() {
  local out
  out=$(k apply -f "$fixtures/namespaces.yaml") && has "namespace/fsm-system created" "$out" || return 1
  out=$(k apply -f "$fixtures/meshconfig-fsm.yaml") &&
    has "meshconfig.config.flomesh.io/fsm-mesh-config created" "$out" || return 1
  out=$(k apply -f "$fixtures/egress-fsm.yaml") &&
    has "egress.policy.flomesh.io/httpbin-80 created" "$out" &&
    has "egress.policy.flomesh.io/cidr-443 created" "$out" || return 1
  # a second apply computes a patch from last-applied-configuration
  out=$(k apply -f "$fixtures/meshconfig-fsm.yaml") && has "unchanged" "$out" || return 1
  out=$(sed 's/enableSnapshotCacheMode: false/enableSnapshotCacheMode: true/' \
    "$fixtures/meshconfig-fsm.yaml" | k apply -f -) && has "configured" "$out"
}
check "kubectl apply -f Namespace, MeshConfig, Egress (create, unchanged, configured)" t_apply

json_field() { # json_field PYTHON-EXPR < json  (d = the document)
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

t_get_json() {
  local out
  out=$(k get meshconfig -n fsm-system fsm-mesh-config -o json)
  [[ $(json_field 'd["apiVersion"], d["kind"], d["spec"]["traffic"]["enableEgress"]' <<<"$out") == \
    "('config.flomesh.io/v1alpha3', 'MeshConfig', False)" ]] || { echo "$out"; return 1; }
  [[ $(json_field 'd["spec"]["featureFlags"]["enableSnapshotCacheMode"]' <<<"$out") == True ]]
}
check "kubectl get meshconfig -n fsm-system fsm-mesh-config -o json" t_get_json

t_patch() {
  local out gen0 gen1
  gen0=$(k get meshconfig -n fsm-system fsm-mesh-config -o jsonpath='{.metadata.generation}')
  out=$(k patch meshconfig fsm-mesh-config -n fsm-system --type=merge \
    -p '{"spec":{"traffic":{"enableEgress":true}}}') && has "patched" "$out" || return 1
  out=$(k get meshconfig -n fsm-system fsm-mesh-config -o json)
  [[ $(json_field 'd["spec"]["traffic"]["enableEgress"], d["spec"]["traffic"]["interceptionMode"]' \
    <<<"$out") == "(True, 'PodLevel')" ]] || { echo "$out"; return 1; }
  gen1=$(json_field 'd["metadata"]["generation"]' <<<"$out")
  [[ $gen1 -eq $((gen0 + 1)) ]] || { echo "generation $gen0 -> $gen1"; return 1; }
  out=$(k patch meshconfig fsm-mesh-config -n fsm-system --type=merge \
    -p '{"spec":{"traffic":{"enableEgress":true}}}') && has "(no change)" "$out"
}
check "kubectl patch meshconfig --type=merge (enableEgress: true), then verify" t_patch

t_egresses() {
  local out
  out=$(k get egresses -A)
  has "httpbin-80" "$out" && has "cidr-443" "$out" && has NAMESPACE "$out" || { echo "$out"; return 1; }
  out=$(k delete egress -n curl httpbin-80) && has 'egress.policy.flomesh.io "httpbin-80" deleted' "$out" ||
    { echo "$out"; return 1; }
  out=$(k get egresses -A -o name)
  [[ "$out" == "egress.policy.flomesh.io/cidr-443" ]] || { echo "$out"; return 1; }
}
check "kubectl get egresses -A; kubectl delete egress" t_egresses

t_field_selector() {
  local out
  out=$(k get pods -A --field-selector spec.nodeName=node-1 -o name)
  [[ "$out" == $'pod/db-1\npod/web-1' ]] || { echo "$out"; return 1; }
  out=$(k get pods -A --field-selector spec.nodeName=node-1,metadata.namespace!=app -o name)
  [[ -z "$out" ]] || { echo "$out"; return 1; }
  if out=$(k get pods -A --field-selector spec.bogus=x 2>&1); then return 1; fi
  has "field label not supported: spec.bogus" "$out"
}
check "kubectl get pods -A --field-selector spec.nodeName=node-1 (and a 400)" t_field_selector

t_label_selector() {
  local out
  out=$(k get pods -n app -l 'app=web,!fsm-proxy-uuid' -o name)
  [[ "$out" == "pod/web-2" ]] || { echo "$out"; return 1; }
  out=$(k get pods -n app -l 'app in (db,web),fsm-proxy-uuid' -o name)
  [[ "$out" == "pod/web-1" ]]
}
check "kubectl get pods -l (equality, in, exists, !key)" t_label_selector

t_watch() {
  local out="$work/watch.out" pid
  timeout 15 kubectl --cache-dir "$work/cache" get pods -n app --watch --output-watch-events \
    >"$out" 2>&1 &
  pid=$!
  bg_pids+=("$pid")
  for _ in $(seq 50); do grep -q web-1 "$out" && break; sleep 0.1; done
  ctl objects '{"op":"create","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"watched-pod","namespace":"app"},"spec":{"nodeName":"node-2"}}}' >/dev/null
  for _ in $(seq 80); do grep -q "ADDED *watched-pod" "$out" && break; sleep 0.1; done
  ctl objects '{"op":"delete","apiVersion":"v1","kind":"Pod","namespace":"app","name":"watched-pod"}' >/dev/null
  for _ in $(seq 80); do grep -q "DELETED *watched-pod" "$out" && break; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  cat "$out"
  grep -q "ADDED *watched-pod" "$out" && grep -q "DELETED *watched-pod" "$out"
}
check "kubectl get pods --watch sees ADDED and DELETED" t_watch

t_crd_group() {
  local out
  out=$(k get meshconfigs.config.openservicemesh.io -A 2>&1) && has "No resources found" "$out" ||
    { echo "$out"; return 1; }
  ctl groups '{"group":"config.openservicemesh.io","installed":false}' >/dev/null
  if out=$(kubectl --cache-dir "$work/cache2" get meshconfigs.config.openservicemesh.io -A 2>&1); then
    echo "$out"; return 1
  fi
  has "the server doesn't have a resource type" "$out" || { echo "$out"; return 1; }
  ctl groups '{"group":"config.openservicemesh.io","installed":true}' >/dev/null
  k get meshconfigs.config.openservicemesh.io -A >/dev/null
}
check "CRD group uninstalled at runtime: kubectl no longer finds the type" t_crd_group

t_bad_token() {
  local out
  if out=$(k --token wrong-token get ns 2>&1); then return 1; fi
  has Unauthorized "$out" || { echo "$out"; return 1; }
}
check "kubectl with a wrong token fails with Unauthorized" t_bad_token

t_rotation() {
  local out token2="rotated-$RANDOM-$RANDOM"
  echo "$token2" >"$work/token"
  if out=$(k get ns 2>&1); then echo "old token still accepted"; return 1; fi
  has Unauthorized "$out" || { echo "$out"; return 1; }
  kubectl config set-credentials tester --token="$token2" >/dev/null
  out=$(k get ns) && has fsm-system "$out"
}
check "token rotation (token file rewritten): old token 401, new token works" t_rotation

# ---- wire-protocol checks -----------------------------------------------------
echo "# protocol checks"
if python3 "$fixtures/protocol_checks.py" --port "$port" --ca "$work/ca.crt" \
  --token-file "$work/token" | sed 's/^/  /'; then
  ok "protocol checks (pagination, watch, bookmarks, 410 both forms, 429, split, stall, reset)"
else
  bad "protocol checks"
fi

t_no_errors() {
  ! grep -E "internal error|handler error|control error|Traceback" "$work/server.log"
}
check "the fake logged no internal errors" t_no_errors

# ---- SIGTERM ends open watches cleanly ---------------------------------------
t_sigterm() {
  local wpid rc
  curl -sS --raw --max-time 10 --cacert "$work/ca.crt" -H "Authorization: Bearer $(cat "$work/token")" \
    "$base/api/v1/namespaces/app/pods?watch=1" >"$work/sigterm.out" 2>&1 &
  wpid=$!
  bg_pids+=("$wpid")
  for _ in $(seq 50); do grep -q web-1 "$work/sigterm.out" && break; sleep 0.1; done
  kill -TERM "$server_pid"
  rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  [[ $rc -eq 0 ]] || { echo "fake exited with $rc"; return 1; }
  wait "$wpid" || { echo "curl: stream not terminated cleanly"; cat "$work/sigterm.out"; return 1; }
}
check "SIGTERM: open watch ends with the terminating chunk, exit status 0" t_sigterm

echo "k8s-fake: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
