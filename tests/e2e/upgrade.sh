#!/usr/bin/env bash
# End to end, upgrade and downgrade without a gap: an agent is replaced by a
# build whose ports map has another layout (egressd-test-bump: ports_v2,
# cmake/upgrade_test.cmake) while a workload connects without pause to a
# denied and an allowed destination, and then the other way round. Every
# connect must get its verdict (0 wrong, 0 undecided), and only the running
# build's maps may stay pinned.
#
# usage: tests/e2e/upgrade.sh BIN_DIR        (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: upgrade.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
old=$bin/egressd
new=$bin/egressd-test-bump
egressctl=$bin/egressctl
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require ip python3
[ -x "$new" ] || unavailable "no $new (cmake/upgrade_test.cmake builds it)"

id=$$
work=$(mktemp -d /tmp/egressd-upgrade.XXXXXX)
pins=/sys/fs/bpf/egressd-upgrade-$id
cgroup_rel=egressd-tests/upgrade-$id/enforced
client=egtu${id}c
sink=egtu${id}s
agent_pid=
server_pid=

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$old" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  rm -rf "$pins"
  remove_cgroup_tree "$cg2/egressd-tests/upgrade-$id"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"
# 203.0.113.11 is excluded: allowed; 203.0.113.10 is denied (enableEgress false).
cat > "$work/meshconfig.yaml" <<EOF
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata: {name: fsm-mesh-config, namespace: fsm-system}
spec:
  traffic:
    enableEgress: false
    outboundIPRangeExclusionList: [203.0.113.11/32]
EOF
cat > "$work/egressd.yaml" <<EOF
cgroup: $cgroup_rel
bpffs: $pins
meshConfig: meshconfig.yaml
meshCIDRs: [198.18.0.0/16]
runDir: $work/run
httpAddress: null
EOF
ctl() { "$egressctl" --config "$work/egressd.yaml" "$@"; }
start() { # start BINARY: waits for this start's own "watching" line
  local before; before=$(grep -c "watching" "$work/agent.log" 2>/dev/null)
  "$1" --config "$work/egressd.yaml" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 400); do [ "$(grep -c "watching" "$work/agent.log")" -gt "${before:-0}" ] && return 0; sleep 0.025; done
  return 1
}
stop() { kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=; }
verdict() { ctl run -- ip netns exec "$client" python3 "$here/probe.py" once 203.0.113.10 80; }

# A workload connecting without pause, alternating the two destinations, for
# $1 seconds; per destination, how many connects got each answer.
connect_loop() {
  ctl run -- ip netns exec "$client" python3 - "$1" <<'EOF'
import errno, json, socket, sys, time
counts = {"203.0.113.10": {}, "203.0.113.11": {}}
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    for host in counts:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, 80))
            verdict = "allowed"
        except BlockingIOError:
            verdict = "allowed"
        except OSError as e:
            verdict = "denied" if e.errno == errno.EPERM else errno.errorcode.get(e.errno, str(e.errno))
        s.close()
        counts[host][verdict] = counts[host].get(verdict, 0) + 1
print(json.dumps(counts))
EOF
}
# verdicts_right FILE: the denied destination only ever denied, the allowed one only ever allowed.
verdicts_right() {
  python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
ok = set(d['203.0.113.10']) == {'denied'} and set(d['203.0.113.11']) == {'allowed'}
ok = ok and d['203.0.113.10']['denied'] > 100 and d['203.0.113.11']['allowed'] > 100
sys.exit(0 if ok else 1)" "$1"
}

# swap FROM TO NAME: replace the running agent (FROM) by TO while the loop runs.
swap() {
  local to=$2 name=$3
  connect_loop 3 > "$work/$name.json" &
  local loop=$!
  sleep 0.7
  stop
  start "$to" || not_ok "$name: the new agent did not start"
  wait "$loop"
  check "$name: every connect got its verdict, none wrong ($(cat "$work/$name.json"))" verdicts_right "$work/$name.json"
}

check "the old build starts" start "$old"
check "it pins ports_v1" test -e "$pins/ports_v1"

swap "$old" "$new" upgrade
check "upgrade: the new build pinned ports_v2" test -e "$pins/ports_v2"
check "upgrade: no pin of the old layout is left" test ! -e "$pins/ports_v1"
check "upgrade: the agent said so" grep -q "unpinned maps of another build's layout: ports_v1" "$work/agent.log"
check "upgrade: the links were kept (their program swapped)" grep -q "connect4 adopted" "$work/agent.log"
check "upgrade: a toggle still decides" ctl egress enable
check "upgrade: after it, 203.0.113.10 is allowed" test "$(verdict)" = allowed
ctl egress disable >/dev/null

swap "$new" "$old" downgrade
check "downgrade: the old build pinned ports_v1 again" test -e "$pins/ports_v1"
check "downgrade: no pin of the newer layout is left" test ! -e "$pins/ports_v2"
check "downgrade: the agent said so" grep -q "unpinned maps of another build's layout: ports_v2" "$work/agent.log"
check "downgrade: a toggle still decides" ctl egress enable
check "downgrade: after it, 203.0.113.10 is allowed" test "$(verdict)" = allowed

finish
