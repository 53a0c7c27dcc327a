#!/usr/bin/env bash
# End to end, a torn apply: the agent is killed (-9) while it applies a
# change of 100,000 policy rules (one Egress file replaced whole: generation
# A's addresses out, B's in). Whatever the moment, the kernel must show one
# whole generation, A or B, never a mix; and the restarted agent must
# converge to the file's content (B). Five kills, at 50 to 100 % of the
# time the same change takes when left alone.
#
# usage: tests/e2e/torn_apply.sh BIN_DIR        (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: torn_apply.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require ip python3

id=$$
work=$(mktemp -d /tmp/egressd-torn.XXXXXX)
pins=/sys/fs/bpf/egressd-torn-$id
cgroup_rel=egressd-tests/torn-$id/enforced
client=egtt${id}c
sink=egtt${id}s
agent_pid=
server_pid=

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  rm -rf "$pins"
  remove_cgroup_tree "$cg2/egressd-tests/torn-$id"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"
mkdir -p "$work/policies" "$work/run"
cat > "$work/meshconfig.yaml" <<EOF
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata: {name: fsm-mesh-config, namespace: fsm-system}
spec:
  traffic: {enableEgress: false}
  featureFlags: {enableEgressPolicy: true}
EOF
cat > "$work/egressd.yaml" <<EOF
cgroup: $cgroup_rel
bpffs: $pins
meshConfig: meshconfig.yaml
meshCIDRs: [198.18.0.0/16]
runDir: $work/run
policyDir: policies
workloads: $work/run/workloads.yaml
httpAddress: null
EOF
ctl() { "$egressctl" --config "$work/egressd.yaml" "$@"; }

# policies NAME BASE: 100 Egress documents of 1,000 addresses each, all for
# torn/app on 443/tcp: 10.BASE.0.0 upwards, 100,000 addresses.
policies() {
  python3 - "$2" > "$work/$1.yaml" <<'EOF'
import sys
base = int(sys.argv[1])
for p in range(100):
    print("---\nkind: Egress\napiVersion: policy.flomesh.io/v1alpha1")
    print("metadata: {name: p%d, namespace: torn}" % p)
    print("spec:\n  sources: [{kind: ServiceAccount, name: app, namespace: torn}]")
    print("  ports: [{number: 443, protocol: tcp}]\n  ipAddresses:")
    for i in range(1000):
        n = p * 1000 + i
        print("  - 10.%d.%d.%d/32" % (base + n // 65536, (n // 256) % 256, n % 256))
EOF
}
policies A 1
policies B 3
start_agent() { start_egressd "$work/agent.log" "$work/egressd.yaml"; }
# Which generation the kernel decides by: connects of torn/app to 40 of A's
# addresses and 40 of B's (unrouted: ENETUNREACH when allowed, EPERM when
# denied). Prints A, B, or what it saw.
# The workload's cgroup is joined directly: egressctl run --as needs a
# running agent, and the agent is dead right after a kill.
generation_seen() {
  bash -c 'echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" python3 -' _ "$cg2/$cgroup_rel/torn/app" "$client" <<'EOF'
import errno, socket
def allowed(addr):
    s = socket.socket()
    try:
        s.connect((addr, 443))
        return True
    except OSError as e:
        return e.errno != errno.EPERM
    finally:
        s.close()
a = [allowed("10.1.%d.%d" % ((n // 256) % 256, n % 256)) for n in range(0, 100000, 2500)]
b = [allowed("10.3.%d.%d" % ((n // 256) % 256, n % 256)) for n in range(0, 100000, 2500)]
if all(a) and not any(b): print("A")
elif all(b) and not any(a): print("B")
else: print("mix: A %d/40 allowed, B %d/40 allowed" % (sum(a), sum(b)))
EOF
}

cp "$work/A.yaml" "$work/policies/rules.yaml"
check "the agent starts with generation A (100,000 rules)" start_agent
ctl run --as torn/app -- true   # registers the workload
check "the kernel decides by A" test "$(generation_seen)" = A
# Calibration: how long the whole change takes here, uninterrupted (parsing
# 100,000 addresses, building, then writing the inactive slot and flipping).
# The kills land late in it, where the kernel is being written.
swap_in() { cp "$work/$1.yaml" "$work/policies/.rules.tmp" && mv "$work/policies/.rules.tmp" "$work/policies/rules.yaml"; }
last_apply_ms() { grep -o 'applied generation [0-9]* in [0-9.]* ms' "$work/agent.log" | tail -1 | sed 's/.* in \([0-9.]*\) ms/\1/'; }
swap_in B
for _ in $(seq 200); do [ "$(generation_seen)" = B ] && break; sleep 0.05; done
apply_ms=$(last_apply_ms)
check "the change applies whole when left alone (${apply_ms} ms)" test "$(generation_seen)" = B
swap_in A
for _ in $(seq 200); do [ "$(generation_seen)" = A ] && break; sleep 0.05; done
seen_b=0
for fraction in 0.5 0.8 0.9 0.95 1.0; do
  delay=$(python3 -c "print(round($apply_ms * $fraction / 1000, 3))")
  swap_in B
  sleep "$delay"
  kill -9 "$agent_pid"; wait "$agent_pid" 2>/dev/null; agent_pid=
  seen=$(generation_seen)
  check "killed at ${fraction} of the apply (${delay} s): the kernel shows one whole generation ($seen)" \
    test "$seen" = A -o "$seen" = B
  [ "$seen" = B ] && seen_b=$((seen_b + 1))
  check "the restarted agent converges to the file (B)" start_agent
  check "the kernel decides by B" test "$(generation_seen)" = B
  # Back to A for the next kill.
  swap_in A
  for _ in $(seq 200); do [ "$(generation_seen)" = A ] && break; sleep 0.05; done
done
echo "# of 5 kills, $seen_b left generation B in force, $((5 - seen_b)) generation A"
echo "# the agent's applies of the 100,000-rule change: $(grep -o 'applied generation [0-9]* in [0-9.]* ms' "$work/agent.log" | sed 's/.* in //' | tr '\n' ' ')"

finish
