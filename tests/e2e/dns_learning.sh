#!/usr/bin/env bash
# End to end: hosts as the workload resolves them. A DNS server of the test's
# own (tests/e2e/dns_server.py) answers in the sink namespace, where the
# workload asks it, and on loopback, where the agent asks it; every answer is
# a new address of a pool, with TTLs of 1-5 s, CNAME chains, wildcard names,
# a malformed answer and unsolicited ones. A workload that resolves and
# connects at once is never denied, because the kernel learns its answers;
# with the agent's own lookups alone, the same loop is denied.
#
# usage: tests/e2e/dns_learning.sh BIN_DIR     (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: dns_learning.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl

# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require ip python3 curl bpftool

id=$$
work=$(mktemp -d /tmp/egressd-e2e-dns.XXXXXX)
pins=/sys/fs/bpf/egressd-e2e-dns-$id
cgroup_rel=egressd-tests/e2e-dns-$id/enforced
client=egtd${id}c
sink=egtd${id}s
agent_pid=
server_pid=
dns_pid=
listener_pid=
dns_port=$((20000 + (id + 7) % 20000))
http=127.0.0.1:$((40000 + (id + 7) % 20000))
resolver=203.0.113.53

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  rm -rf "$pins"
  for pid in $dns_pid $listener_pid; do kill "$pid" 2>/dev/null; done
  remove_cgroup_tree "$cg2/egressd-tests/e2e-dns-$id"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"
# The pool 203.0.113.100-199 and the resolver live on the sink; TCP 8080 answers on all of them.
ip -n "$sink" addr add "$resolver/32" dev lo
ip -n "$sink" route add local 203.0.113.0/24 dev lo
ip netns exec "$sink" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8080)); s.listen(512)
while True: s.accept()[0].close()' &
listener_pid=$!
python3 "$here/dns_server.py" --loopback-port "$dns_port" --netns "/run/netns/$sink" --address "$resolver" \
  --ready "$work/dns.ready" 2>"$work/dns.log" &
dns_pid=$!
for _ in $(seq 100); do [ -s "$work/dns.ready" ] && break; sleep 0.05; done
[ -s "$work/dns.ready" ] || { cat "$work/dns.log"; unavailable "the test's DNS server did not start"; }

cp "$root/config/meshconfig.yaml" "$work/meshconfig.yaml"
mkdir -p "$work/policies"
# The workload may reach its hosts on 8080, and its resolver (no implicit
# allow for DNS). host_policy DESTINATIONS_LINE: the first policy's destinations.
host_policy() {
  cat > "$work/policies/app.yaml.new" <<EOF
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: hosts, namespace: app}
spec:
  sources: [{kind: ServiceAccount, name: curl, namespace: app}]
  $1
  ports: [{number: 8080, protocol: tcp}]
---
kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {name: resolver, namespace: app}
spec:
  sources: [{kind: ServiceAccount, name: curl, namespace: app}]
  ipAddresses: [$resolver/32]
  ports: [{number: 53, protocol: udp}]
EOF
  mv "$work/policies/app.yaml.new" "$work/policies/app.yaml"
}
host_policy 'hosts: [api.test.egressd, www.test.egressd, "*.wild.test.egressd"]'
write_settings() { # write_settings DNS_SERVERS [MIN_TTL]
  cat > "$work/egressd.yaml" <<EOF
cgroup: $cgroup_rel
bpffs: $pins
meshConfig: meshconfig.yaml
meshCIDRs: [198.18.0.0/16]
runDir: $work/run
policyDir: policies
workloads: $work/run/workloads.yaml
dnsServer: $1
dnsLearning: {minTTL: ${2:-0}}
httpAddress: $http
events: {allowedByPolicy: true, log: $work/events.log}
EOF
}
ctl() { "$egressctl" --config "$work/egressd.yaml" "$@"; }
start_agent() { start_egressd "$work/agent.log" "$work/egressd.yaml"; }
stop_agent() { kill "$agent_pid"; wait "$agent_pid" 2>/dev/null; agent_pid=; }
# The workload's loop: resolve, then connect at once; prints its JSON summary.
workload_loop() { # workload_loop COUNT
  ctl run --as app/curl -- ip netns exec "$client" python3 "$here/dns_client.py" --resolver "$resolver" \
    --names api.test.egressd,www.test.egressd,x.wild.test.egressd,deep.y.wild.test.egressd --port 8080 --count "$1"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
metric() { curl -s "http://$http/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
connect_denied() { # connect_denied ADDRESS: the workload's connect() to ADDRESS:8080 gets EPERM
  ctl run --as app/curl -- ip netns exec "$client" python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(2)
try: s.connect((sys.argv[1], 8080))
except PermissionError: sys.exit(0)
sys.exit(1)' "$1"
}

# ---- learning: the agent trusts the workloads' resolver -------------------------
write_settings "[127.0.0.1:$dns_port, $resolver]"
check "the agent starts" start_agent
loop=$(workload_loop 1000)
echo "# learning: $loop"
check "1,000 resolve-then-connect loops: none denied" test "$(field "$loop" denied)" = 0
check "  ...and none failed otherwise" test "$(field "$loop" failed)" = 0
check "  ...all 1,000 allowed" test "$(field "$loop" allowed)" = 1000
check "egressctl hosts lists the learned addresses with their host names" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' hosts --identity app/curl | grep -q '^app/curl *\*.wild.test.egressd *203.0.113.1'"
hosts_json=$(ctl hosts --json)
check "  ...with the time they have left (TTLs of 1-5 s)" python3 -c "
import json, sys; h = json.loads(sys.argv[1]); live = [e for e in h if not e['expired']]
sys.exit(0 if live and all(e['expiresInSeconds'] <= 5.1 for e in live) else 1)" "$hosts_json"
check "  ...the pool's 100 addresses are kept side by side (an identity's sets spread them)" \
  python3 -c "import json, sys; sys.exit(0 if len(json.loads(sys.argv[1])) >= 80 else 1)" "$hosts_json"
# The entry with the most time left, read again now (TTLs are 1-5 s).
live=$(python3 -c "import json,sys; print(max(json.loads(sys.argv[1]), key=lambda e: e['expiresInSeconds'])['address'])" \
  "$(ctl hosts --json)")
check "egressctl check explains an allow by a learned address ($live)" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/curl --to $live:8080 | grep -q '^ALLOW.*learned from a DNS answer'"
check "egressctl check --to HOST:PORT names the policy host and the policy" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/curl --to api.test.egressd:8080 | grep -q 'policy host \"api.test.egressd\": Egress app/hosts'"
check "  ...a name below a wildcard matches the wildcard" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/curl --to a.b.wild.test.egressd:8080 | grep -q 'policy host \"\*.wild.test.egressd\"'"
ctl check --from app/curl --to api.test.egressd:443 > "$work/check-443.txt"
check "  ...a port the policies do not grant is denied (exit 1), saying so" \
  bash -c "test $? -eq 1 && grep -q 'no policy grants it 443/tcp' '$work/check-443.txt'"
check "  ...the wildcard's own domain is no policy host" \
  bash -c "'$egressctl' --config '$work/egressd.yaml' check --from app/curl --to wild.test.egressd:8080 | grep -q 'not a host of any Egress policy'"
check "events say an allow came from a learned answer" grep -q '"learned":true' "$work/events.log"
check "/metrics counts learned answers" test "$(metric 'egressd_dns_responses_total{outcome="learned"}')" -ge 1000
check "/metrics counts the unsolicited answers (one per 7 queries)" \
  test "$(metric 'egressd_dns_responses_total{outcome="unsolicited"}')" -ge 100
ctl run --as app/curl -- ip netns exec "$client" python3 -c "
import socket, struct
q = struct.pack('!HHHHHH', 9, 0x0100, 1, 0, 0, 0) + b'\x09malformed\x04test\x07egressd\x00\x00\x01\x00\x01'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect(('$resolver', 53)); s.send(q); s.recv(2048)" \
  >/dev/null 2>&1
check "/metrics counts the malformed answer" test "$(metric 'egressd_dns_responses_total{outcome="malformed"}')" -ge 1

# Expiry: every TTL is at most 5 s (minTTL 0): after 6 s a learned address is denied.
address=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['address'])" "$hosts_json")
sleep 6
check "an address whose TTL ran out is denied ($address)" connect_denied "$address"

check "/metrics shows the learned entries whose TTL ran out" \
  test "$(metric 'egressd_dns_learned_addresses{state="expired"}')" -ge 1

# ---- the agent's own lookups alone: the same loop is denied ---------------------
stop_agent
write_settings "[127.0.0.1:$dns_port]"   # the workloads' resolver is not trusted: nothing is learned
check "the agent restarts on its own resolver only" start_agent
agent_resolved() { python3 -c "
import json, sys; h = json.load(open(sys.argv[1]))['hosts']
sys.exit(0 if any(a.startswith('203.0.113.1') for a in h.get('api.test.egressd', {}).get('addresses', [])) else 1)" \
  "$work/run/status.json" 2>/dev/null; }
for _ in $(seq 100); do agent_resolved && break; sleep 0.05; done
check "  ...and resolved the hosts itself" agent_resolved
loop=$(workload_loop 100)
echo "# the agent's lookups alone: $loop"
check "with the agent's lookups alone, the loop is denied (the pool answers each resolver differently)" \
  test "$(field "$loop" denied)" -ge 90
check "/metrics: the workloads' answers are untrusted now" \
  test "$(metric 'egressd_dns_responses_total{outcome="untrusted"}')" -ge 100

# ---- a host's number outlives the host while an answer names it ------------------
# A learned answer names its host by number and lives out its TTL even when
# the host leaves the policies. A number given to another host after a
# restart would allow the old answer's address under the new host's rule.
verdict_of() { ctl check --from app/curl --to "$1" >/dev/null; echo $?; }  # 0 allowed, 1 denied
until_verdict() { # until_verdict DEST EXPECTED: the agent applies a file change within seconds
  for _ in $(seq 100); do [ "$(verdict_of "$1")" = "$2" ] && return 0; sleep 0.1; done; return 1; }
stop_agent
"$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null   # numbering from 1: api.test.egressd gets 1
write_settings "[127.0.0.1:$dns_port, $resolver]" 120   # learned answers outlive the test
host_policy "hosts: [api.test.egressd]"
check "the agent restarts with api.test.egressd its only policy host" start_agent
ctl run --as app/curl -- ip netns exec "$client" python3 "$here/dns_client.py" --resolver "$resolver" \
  --names api.test.egressd --port 8080 --count 1 >/dev/null
learned=$(ctl hosts --json | python3 -c "
import json, sys; h = [e for e in json.load(sys.stdin) if e['host'] == 'api.test.egressd' and e['expiresInSeconds'] > 60]
print(h[0]['address'] if h else '')")
check "the workload's answer for api.test.egressd is learned (${learned:-none})" test -n "$learned"
host_policy "ipAddresses: [203.0.113.250/32]"
check "api.test.egressd withdrawn: its learned address is denied" until_verdict "$learned:8080" 1
stop_agent
check "the agent restarts on a generation with no policy host" start_agent
check "  ...and keeps the learned answer, under its old host's number alone" python3 -c "
import json, sys; h = [e for e in json.loads(sys.argv[1]) if e['address'] == sys.argv[2] and not e['expired']]
sys.exit(0 if h and h[0]['host'] is None else 1)" "$(ctl hosts --json)" "$learned"
host_policy "hosts: [www.test.egressd]"
check "a new policy host is allowed" until_verdict www.test.egressd:8080 0
check "and it does not inherit api.test.egressd's learned address ($learned)" test "$(verdict_of "$learned:8080")" = 1
check "  ...which the workload's connect() confirms" connect_denied "$learned"

finish
