#!/usr/bin/env bash
# End to end, as a user drives egressd: the agent on a temporary config
# (private cgroup, pin directory, MeshConfig copy), egressctl toggling egress,
# real connections from `egressctl run` into a private network namespace whose
# only route leads to a sink namespace serving HTTP on 203.0.113.10.
#
# usage: tests/e2e/run.sh BIN_DIR        (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: run.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl
probe=$here/probe.py

# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require ip python3 curl bpftool setpriv dnsmasq

# ---- private world ----------------------------------------------------------
id=$$
work=$(mktemp -d /tmp/egressd-e2e.XXXXXX)
pins=/sys/fs/bpf/egressd-e2e-$id
cgroup_rel=egressd-tests/e2e-$id/enforced
cgroup=$cg2/$cgroup_rel
client=egte${id}c
sink=egte${id}s
agent_pid=
server_pid=
dns_pid=
dns_port=$((20000 + id % 20000))
http_port=$((40000 + id % 20000))
http=127.0.0.1:$http_port
prom_check=$bin/prom_check

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  rm -rf "$pins"
  [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null
  # Deepest first: workload cgroups below the enforced one, then it, then the run dir.
  remove_cgroup_tree "$cg2/egressd-tests/e2e-$id"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"

# A DNS server for the policies' hosts, on loopback only.
printf '203.0.113.10 web.test.egressd\n' > "$work/dns-hosts"
dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --port="$dns_port" --listen-address=127.0.0.1 \
  --bind-interfaces --addn-hosts="$work/dns-hosts" --local-ttl=2 --pid-file="$work/dnsmasq.pid" -q >/dev/null 2>&1 &
dns_pid=$!

cp "$root/config/meshconfig.yaml" "$work/meshconfig.yaml"
mkdir -p "$work/policies"
cat > "$work/egressd.yaml" <<EOF
cgroup: $cgroup_rel
bpffs: $pins
meshConfig: meshconfig.yaml
meshCIDRs: [198.18.0.0/16]
sidecarUID: 1500
runDir: $work/run
policyDir: policies
workloads: $work/run/workloads.yaml
dnsServer: 127.0.0.1:$dns_port
httpAddress: $http
EOF
ctl() { "$egressctl" --config "$work/egressd.yaml" "$@"; }
# A command in the enforced cgroup (egressctl run, as the workload \$AS if
# set), inside the client namespace.
in_workload() {
  if [ -n "${AS:-}" ]; then ctl run --as "$AS" -- ip netns exec "$client" "$@"
  else ctl run -- ip netns exec "$client" "$@"; fi
}
verdict() { in_workload python3 "$probe" once 203.0.113.10 80 "$@"; }
start_agent() { start_egressd "$work/agent.log" "$work/egressd.yaml"; }
log_has() { grep -q -- "$1" "$work/agent.log"; }
# Milliseconds from running "$@" to the moment a looping probe in the
# workload sees the verdict $1 (the probe starts, and waits, before "$@" runs).
latency_ms() {
  local want=$1; shift
  rm -f "$work/ready" "$work/seen"
  in_workload python3 "$probe" until "$want" 203.0.113.10 80 --ready "$work/ready" --out "$work/seen" --timeout 3 &
  local watcher=$!
  for _ in $(seq 200); do [ -s "$work/ready" ] && break; sleep 0.01; done
  local t0; t0=$(date +%s%N)
  "$@" >/dev/null
  wait "$watcher" || { echo "never saw $want" >&2; echo 99999; return; }
  python3 -c "import json,sys; print(int((json.load(open('$work/seen'))['seen_ns'] - $t0) / 1e6))"
}

# ---- refuses bad input at start, attaching nothing ----------------------------
echo "apiVersion: config.flomesh.io/v1alpha3" > "$work/bad.yaml"
sed "s|meshConfig: meshconfig.yaml|meshConfig: bad.yaml|" "$work/egressd.yaml" > "$work/egressd-bad.yaml"
"$egressd" --config "$work/egressd-bad.yaml" >"$work/refused.log" 2>&1
rc=$?
check "start with an invalid MeshConfig is refused" test "$rc" -ne 0
check "the refusal names the file and field" grep -q "bad.yaml.*kind" "$work/refused.log"
check "a refused start pins nothing" test ! -e "$pins/control_v1"
printf 'cgroup: x\nmeshConfig: m.yaml\nbogus: 1\n' > "$work/unknown-key.yaml"
"$egressd" --config "$work/unknown-key.yaml" >"$work/refused2.log" 2>&1
check "an unknown agent setting is refused with its name" grep -q "unknown-key.yaml:3.*bogus" "$work/refused2.log"

# ---- start, deny, toggle ------------------------------------------------------
check "egressd starts on the temporary config" start_agent
# Enforcement starts from one slot; the other is written right after, so the
# first change writes only its difference.
slots_hold() { # slots_hold GENERATION: both slots of config_v2 hold it, and the log says so
  for _ in $(seq 200); do log_has "both slots hold generation $1" && break; sleep 0.01; done
  log_has "both slots hold generation $1" && bpftool -j map dump pinned "$pins/config_v2" | python3 -c '
import json, sys
slots = [e["formatted"]["value"] if "formatted" in e else e["value"] for e in json.load(sys.stdin)]
sys.exit(0 if len(slots) == 2 and all(v["generation"] == int(sys.argv[1]) for v in slots) else 1)' "$1"
}
check "after the start both slots hold generation 1" slots_hold 1
check "egressctl status reports enforcing" ctl status >/dev/null
check "enableEgress false: connect is denied (EPERM)" test "$(verdict)" = denied
check "enableEgress false: UDP sendmsg is denied" test "$(verdict --udp)" = denied
check "curl through egressctl run fails" test "$(in_workload curl -s -o /dev/null -m 2 -w '%{http_code}' http://203.0.113.10/ 2>/dev/null)" = 000

ms=$(latency_ms allowed ctl egress enable --no-wait)
check "egress enable reaches the kernel within 100 ms (took ${ms} ms)" test "$ms" -le 100
check "curl through egressctl run gets the page" test "$(in_workload curl -s -m 2 http://203.0.113.10/)" = "hello from the sink"
check "the MeshConfig keeps its comments" grep -q "Mesh-wide passthrough" "$work/meshconfig.yaml"
check "the MeshConfig now says enableEgress: true" grep -q "enableEgress: true" "$work/meshconfig.yaml"
check "the agent logged what changed" log_has "enableEgress false -> true"

ms=$(latency_ms denied ctl egress disable --no-wait)
check "egress disable reaches the kernel within 100 ms (took ${ms} ms)" test "$ms" -le 100
check "egressctl egress disable waits for the kernel and says so" bash -c "'$egressctl' --config '$work/egressd.yaml' egress enable | grep -q 'egressd applied it'"
check "status --json shows enableEgress as the kernel sees it" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d[\"kernel\"][\"enableEgress\"] is True and d[\"enforcing\"] else 1)'"

# ---- an editor that replaces the file by rename ----------------------------------
sed 's/enableEgress: true/enableEgress: false/' "$work/meshconfig.yaml" > "$work/meshconfig.yaml.new"
ms=$(latency_ms denied mv "$work/meshconfig.yaml.new" "$work/meshconfig.yaml")
check "a rename-replaced MeshConfig applies within 100 ms (took ${ms} ms)" test "$ms" -le 100

# ---- bad input while running: the last good policy stays ----------------------
ctl egress enable >/dev/null
cp "$work/meshconfig.yaml" "$work/good.yaml"
sed 's|outboundIPRangeExclusionList: \[\]|outboundIPRangeExclusionList: ["10.0.0.300/8"]|' "$work/good.yaml" > "$work/meshconfig.yaml"
sleep 0.3
check "a bad CIDR is logged with file, line and field" log_has "meshconfig.yaml:[0-9]*:[0-9]*: spec.traffic.outboundIPRangeExclusionList\[0\]"
check "the previous policy stays in force (still allowed)" test "$(verdict)" = allowed
check "egressctl status shows the last error" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q 'last error:.*10.0.0.300'"
printf 'apiVersion: [unclosed\n' > "$work/meshconfig.yaml"
sleep 0.3
check "a YAML syntax error is logged with the file" log_has "meshconfig.yaml:[0-9]*:[0-9]*:"
check "the agent is still running" kill -0 "$agent_pid"
check "egressctl refuses to toggle a broken file" bash -c "! '$egressctl' --config '$work/egressd.yaml' egress disable 2>/dev/null"
cp "$work/good.yaml" "$work/meshconfig.yaml"
ctl egress disable >/dev/null
check "after the fix, the new policy applies (denied)" test "$(verdict)" = denied

# ---- Egress policies: per workload, per port, by address and by host ----------
policy() { # policy FILE NAME NAMESPACE SA DESTINATIONS-YAML PORT
  cat > "$work/policies/$1" <<EOF
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: $2, namespace: $3}
spec:
  sources: [{kind: ServiceAccount, name: $4, namespace: $3}]
$5
  ports: [{number: $6, protocol: http}]
EOF
}
check "egressctl run --as before any policy: denied" test "$(AS=curl/curl verdict)" = denied
ms=$(AS=curl/curl latency_ms allowed policy curl.yaml curl-to-web curl curl "  ipAddresses: [203.0.113.10/32]" 80)
check "a new policy file reaches the kernel within 100 ms (took ${ms} ms)" test "$ms" -le 100
check "curl/curl reaches the policy's host on port 80" test "$(AS=curl/curl in_workload curl -s -m 2 http://203.0.113.10/)" = "hello from the sink"
check "curl/curl is denied on port 81" test "$(AS=curl/curl in_workload python3 "$probe" once 203.0.113.10 81)" = denied
check "curl/curl is denied over UDP on port 80" test "$(AS=curl/curl verdict --udp)" = denied
check "another identity is denied" test "$(AS=other/sa verdict)" = denied
check "a process without identity is denied" test "$(verdict)" = denied
check "egressctl check names the policy and row 7" bash -c "'$egressctl' --config '$work/egressd.yaml' check --from curl/curl --to 203.0.113.10:80 | grep -q 'ALLOW.*Egress curl/curl-to-web.*row 7'"
check "egressctl check explains the deny on port 81 (row 8)" bash -c "'$egressctl' --config '$work/egressd.yaml' check --from curl/curl --to 203.0.113.10:81 | grep -q 'DENY.*row 8'"
check "egressctl check --json is machine-readable" bash -c "'$egressctl' --config '$work/egressd.yaml' check --json --from other/sa --to 203.0.113.10:80 | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d[\"verdict\"]==\"deny\" and d[\"row\"]==8 else 1)'"
printf 'kind: Egress\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: bad, namespace: curl}\nspec:\n  sources: [{kind: ServiceAccount, name: curl, namespace: curl}]\n  ports: [{number: 80, protocol: grpc}]\n' > "$work/policies/bad.yaml"
sleep 0.3
check "a bad policy is reported with file and field" log_has "bad.yaml:[0-9]*:[0-9]*: document 1 (Egress curl/bad): spec.ports\[0\].protocol"
check "the good policy stays enforced" test "$(AS=curl/curl verdict)" = allowed
rm -f "$work/policies/bad.yaml"
policy hosts.yaml web-by-name web client "  hosts: [web.test.egressd]" 80
ok_host=no
for _ in $(seq 50); do [ "$(AS=web/client verdict)" = allowed ] && { ok_host=yes; break; }; sleep 0.1; done
check "a policy by host name allows the host's resolved address" test "$ok_host" = yes
check "status shows the resolved host" bash -c "'$egressctl' --config '$work/egressd.yaml' status --json | grep -q '203.0.113.10'"
check "dump shows the identities" bash -c "'$egressctl' --config '$work/egressd.yaml' dump | grep -q 'curl/curl'"
check "bpftool prints policy names" bash -c "bpftool map dump pinned '$pins/policy_names_v1' | grep -q 'curl-to-web'"
ms=$(AS=curl/curl latency_ms denied rm -f "$work/policies/curl.yaml")
check "deleting the policy file denies again within 100 ms (took ${ms} ms)" test "$ms" -le 100

# ---- events, flows, metrics, health ------------------------------------------------
metric() { curl -s -m 2 "http://$http/metrics" | "$prom_check" "$@"; }
check "/healthz answers ok" test "$(curl -s -m 2 "http://$http/healthz")" = ok
check "/readyz says ready" test "$(curl -s -m 2 "http://$http/readyz")" = ready
check "/metrics passes the strict exposition parser" bash -c "curl -s -m 2 'http://$http/metrics' | '$prom_check'"
before=$(metric egressd_denied_connections_total)
check "a denied connect as events/test" test "$(AS=events/test verdict)" = denied
after=$(metric egressd_denied_connections_total)
check "/metrics counts exactly that deny (${before} -> ${after})" test $((after - before)) -eq 1
sleep 0.2
check "/metrics counts it for its identity" test "$(metric egressd_identity_decisions_total identity=events/test verdict=deny)" -eq 1
ctl events --json --verdict deny --identity events/test > "$work/events.json"
check "egressctl events shows the denial with its fields" python3 -c "
import json; lines=[json.loads(l) for l in open('$work/events.json')]
e=lines[-1]
ok = len(lines) == 1 and e['identity']=='events/test' and e['destination']=='203.0.113.10' and e['port']==80 \
  and e['protocol']=='tcp' and e['hook']=='connect4' and e['reason']=='deny' and e['row']==8 and e['comm']=='python3' \
  and e['verdict']=='deny' and e['pid'] > 0
exit(0 if ok else 1)"
check "egressctl events prints it for people" bash -c "'$egressctl' --config '$work/egressd.yaml' events --identity events/test | grep -q 'deny .*events/test -> 203.0.113.10:80/tcp deny (row 8)'"
check "the event log has it as a JSON line" grep -q '"identity":"events/test"' "$work/agent.log"

# A workload looping on a denied connect does not stall the agent.
in_workload python3 -c "
import socket
for i in range(100000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try: s.connect(('203.0.113.10', 9))
    except PermissionError: pass
    s.close()" &
flood=$!
slowest=0
while kill -0 "$flood" 2>/dev/null; do
  t=$(curl -s -o /dev/null -m 2 -w '%{time_total}' "http://$http/metrics")
  slowest=$(python3 -c "print(max($slowest, int($t * 1000)))")
  sleep 0.05
done
wait "$flood"
check "/metrics answered within 100 ms during 100k denied connects (slowest ${slowest} ms)" test "$slowest" -le 100
check "the agent stayed ready" test "$(curl -s -m 2 "http://$http/readyz")" = ready
suppressed=$(metric egressd_events_suppressed_total)
check "the suppressed events are counted ($suppressed)" test "$suppressed" -gt 90000
check "egressctl status reports them" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q 'suppressed by the rate limit'"

# An open connection is a flow; its bytes reach the per-rule totals when it closes.
AS=web/client in_workload python3 -c "
import socket, time
s = socket.create_connection(('203.0.113.10', 80))
s.sendall(b'GET / HTTP/1.0\r\n\r\n')
time.sleep(1.5)
while s.recv(65536): pass
s.close()" &
client_pid=$!
sleep 0.7
check "egressctl flows shows the open connection and its bytes so far" bash -c "'$egressctl' --config '$work/egressd.yaml' flows --json | python3 -c '
import json,sys; f=json.load(sys.stdin)
exit(0 if any(x[\"identity\"]==\"web/client\" and x[\"destination\"]==\"203.0.113.10\" and x[\"port\"]==80 and x[\"policy\"]==\"web/web-by-name\" and x[\"bytesSent\"] > 18 and x[\"bytesReceived\"] > 100 for x in f) else 1)'"
open_received=$(metric egressd_open_egress_bytes reason=policy rule=web/web-by-name direction=received)
check "/metrics has its bytes so far, read from the socket (received ${open_received})" test "${open_received%.*}" -gt 100
wait "$client_pid"
sleep 0.3
sent=$(metric egressd_egress_bytes_total reason=policy rule=web/web-by-name direction=sent)
received=$(metric egressd_egress_bytes_total reason=policy rule=web/web-by-name direction=received)
check "its bytes reach the per-rule totals (sent ${sent}, received ${received})" test "$sent" -gt 20 -a "$received" -gt 100
check "and the per-identity totals" test "$(metric egressd_identity_egress_bytes_total identity=web/client direction=received)" -gt 100

# ---- revocation: a tightening tears down what is already open --------------------
ctl egress enable >/dev/null
rm -f "$work/held"
in_workload python3 "$probe" hold 203.0.113.10 80 --ready "$work/held" --timeout 5 > "$work/hold.out" &
holder=$!
for _ in $(seq 300); do [ -s "$work/held" ] && break; sleep 0.01; done
check "a connection is open under passthrough" test -s "$work/held"
ctl egress disable >/dev/null
wait "$holder"
check "egress disable tears it down: the application sees $(cat "$work/hold.out")" grep -qx ECONNABORTED "$work/hold.out"
check "the revocation is an event" bash -c "'$egressctl' --config '$work/egressd.yaml' events --verdict revoked | grep -q 'revoked .*203.0.113.10:80/tcp deny (row 8)'"
check "and counted in /metrics" test "$(metric egressd_revoked_connections_total)" -ge 1
check "status says revocation is on" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q '^revocation: *on'"

# ---- kill -9: enforcement continues; restart adopts without a gap --------------
kill -9 "$agent_pid"; wait "$agent_pid" 2>/dev/null; agent_pid=
check "after kill -9, connects are still denied" test "$(verdict)" = denied
check "status says the agent is not running" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q 'agent: *not running'"
in_workload python3 "$probe" watch 203.0.113.10 80 --seconds 2 > "$work/watch.json" &
watcher=$!
sleep 0.3
check "restart adopts the pinned state" start_agent
wait "$watcher"
check "no connect was allowed during the restart ($(cat "$work/watch.json"))" \
  python3 -c "import json; d=json.load(open('$work/watch.json')); exit(0 if d.get('denied',0) > 100 and set(d) == {'denied'} else 1)"
check "the agent logged the adoption" log_has "adopted the pinned maps"
check "the links were adopted, not re-created" log_has "connect4 adopted"

# ---- operators' views ------------------------------------------------------------
check "egressctl dump lists the mesh CIDR" bash -c "'$egressctl' --config '$work/egressd.yaml' dump | grep -q 'mesh *198.18.0.0/16'"
check "bpftool prints config_v2 with field names" bash -c "bpftool map dump pinned '$pins/config_v2' | grep -q '\"generation\"'"
check "bpftool shows the eight programs on the cgroup" test "$(bpftool cgroup show "$cgroup" | grep -c egressd_)" -eq 8
check "egressctl needs root, says so" bash -c "setpriv --reuid=65534 --regid=65534 --clear-groups '$egressctl' --config '$work/egressd.yaml' status 2>&1 | grep -q 'must run as root'"

# ---- stop and clean up ----------------------------------------------------------
kill -TERM "$agent_pid"; wait "$agent_pid"; rc=$?; agent_pid=
check "SIGTERM stops the agent cleanly" test "$rc" -eq 0
check "enforcement outlives the agent" test "$(verdict)" = denied
# ---- audit mode: report what would be denied, deny nothing ----------------------
printf 'mode: audit\n' >> "$work/egressd.yaml"
check "the agent restarts in audit mode" start_agent
check "audit mode lets a would-be denied connect through" test "$(verdict)" = allowed
sleep 0.2
check "and reports it as an audit event" bash -c "'$egressctl' --config '$work/egressd.yaml' events --verdict audit | grep -q 'audit .*203.0.113.10:80/tcp deny (row 8)'"
check "status shows the mode" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q 'mode=audit'"
kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=

check "--cleanup succeeds" "$egressd" --cleanup --config "$work/egressd.yaml"
check "--cleanup leaves nothing pinned" test ! -e "$pins"
check "--cleanup leaves nothing attached" test -z "$(bpftool cgroup show "$cgroup" 2>/dev/null | tail -n +2)"
check "egressctl run refuses when nothing enforces" bash -c "! '$egressctl' --config '$work/egressd.yaml' run -- true 2>/dev/null"

finish
