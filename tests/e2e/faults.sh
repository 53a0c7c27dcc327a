#!/usr/bin/env bash
# End to end, faults under a running agent:
#  - the enforced cgroup removed, then made again at the same path: /readyz
#    says why it fails meanwhile, the agent attaches to the new cgroup by
#    itself, and what runs in it is decided again;
#  - a link detached by hand: attached again;
#  - the pin directory's bpffs unmounted underfoot: enforcement never stops
#    (the agent's own references hold the links), the pins are made again;
#  - a crafted map of the wrong shape pinned in place of one of egressd's:
#    a restarted agent never adopts it and enforces from fresh generation maps;
#  - two writers on the MeshConfig: egressctl toggling while an editor
#    rewrites the file; no update of the editor's is lost by egressctl, and
#    the last write wins.
#
# usage: tests/e2e/faults.sh BIN_DIR        (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: faults.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl
probe=$here/probe.py
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require ip python3 curl bpftool

id=$$
work=$(mktemp -d /tmp/egressd-faults.XXXXXX)
# The pins live on a bpffs of the test's own, mounted below the host's, so
# that unmounting it touches nothing else.
pin_mount=/sys/fs/bpf/egressd-faults-$id
pins=$pin_mount/pins
cgroup_rel=egressd-tests/faults-$id/enforced
cgroup=$cg2/$cgroup_rel
client=egtf${id}c
sink=egtf${id}s
http=127.0.0.1:$((40000 + (id + 7) % 20000))
agent_pid=
server_pid=

cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  "$egressd" --cleanup --config "$work/egressd.yaml" >/dev/null 2>&1
  while mountpoint -q "$pin_mount" 2>/dev/null; do umount -l "$pin_mount"; done
  rm -rf "$pin_mount"
  remove_cgroup_tree "$cg2/egressd-tests/faults-$id"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  remove_test_network "$client" "$sink"
  rm -rf "$work"
}
trap cleanup EXIT

make_test_network "$client" "$sink" "$work" || unavailable "cannot create network namespaces"
mkdir -p "$pin_mount" && mount -t bpf bpf "$pin_mount" || unavailable "cannot mount a bpffs at $pin_mount"

cp "$root/config/meshconfig.yaml" "$work/meshconfig.yaml"
cat > "$work/egressd.yaml" <<EOF
cgroup: $cgroup_rel
bpffs: $pins
meshConfig: meshconfig.yaml
meshCIDRs: [198.18.0.0/16]
runDir: $work/run
httpAddress: $http
EOF
ctl() { "$egressctl" --config "$work/egressd.yaml" "$@"; }
in_workload() { ctl run -- ip netns exec "$client" "$@"; }
verdict() { in_workload python3 "$probe" once 203.0.113.10 80 "$@"; }
start_agent() { start_egressd "$work/agent.log" "$work/egressd.yaml"; }
readyz() { curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$http/readyz"; }
readyz_is() { test "$(readyz)" = "$1"; }
verdict_is() { test "$(verdict)" = "$1"; }
# wait_for SECONDS CMD...: until CMD succeeds
wait_for() {
  local tries=$(($1 * 20)); shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.05; done
  return 1
}
log_has() { grep -q -- "$1" "$work/agent.log"; }

check "the agent starts (enableEgress false)" start_agent
check "a connect from the cgroup is denied" test "$(verdict)" = denied

# ---- the enforced cgroup removed, then made again ---------------------------------
rmdir "$cgroup" 2>/dev/null || { remove_cgroup_tree "$cgroup"; }
check "the cgroup is gone" test ! -d "$cgroup"
check "/readyz fails while it is gone" wait_for 3 readyz_is 503
check "/readyz says why" bash -c "curl -s -m 2 'http://$http/readyz' | grep -q 'enforced cgroup .* was removed'"
check "the agent logged it" wait_for 2 log_has "not enforcing what the inputs say: the enforced cgroup"
check "egressctl status shows the problem" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q '^PROBLEM: .*removed'"
mkdir "$cgroup"
check "the agent attaches to the new cgroup by itself" wait_for 3 log_has "was made anew .*attached again"
check "/readyz is ready again" wait_for 3 readyz_is 200
check "egressctl status says enforcing" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q '^enforcing: *yes'"
check "a connect from the new cgroup is denied" test "$(verdict)" = denied

# ---- a link detached by hand (bpftool, as a CAP_SYS_ADMIN process could) ----------
bpftool link detach pinned "$pins/links/connect4"
check "a detached hook is attached again by the agent" wait_for 3 log_has "was detached .*attached again"
check "and connects are denied again" test "$(verdict)" = denied

# ---- the pins' bpffs unmounted underfoot -------------------------------------------
in_workload python3 "$probe" watch 203.0.113.10 80 --seconds 3 > "$work/watch.json" &
watcher=$!
sleep 0.3
umount -l "$pin_mount"
check "the pins are gone" test ! -e "$pins/control_v1"
check "the agent pins everything again" wait_for 3 test -e "$pins/control_v1" -a -e "$pins/links/connect4"
check "it said so" log_has "were gone .*pinned again"
wait "$watcher"
check "no connect was allowed meanwhile ($(cat "$work/watch.json"))" \
  python3 -c "import json; d=json.load(open('$work/watch.json')); exit(0 if d.get('denied',0) > 100 and set(d) == {'denied'} else 1)"
check "/readyz is ready" test "$(readyz)" = 200
check "egressctl reads the new pins" bash -c "'$egressctl' --config '$work/egressd.yaml' status | grep -q '^enforcing: *yes'"
check "a toggle still reaches the kernel" ctl egress enable
check "and decides" test "$(verdict)" = allowed
ctl egress disable >/dev/null

# ---- tampering: a map of the wrong shape in place of one of egressd's ---------------
kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=
rm "$pins/ports_v1"
bpftool map create "$pins/ports_v1" type hash key 4 value 4 entries 8 name ports_v1 2>"$work/bpftool.err"
check "a crafted ports_v1 is pinned" test -e "$pins/ports_v1"
check "the agent restarts" start_agent
check "it did not adopt the crafted map, and said why" log_has "not keeping some of the pinned maps in .*ports_v1 does not match this build"
check "egressd's own ports_v1 is pinned in its place" bash -c "bpftool -j map show pinned '$pins/ports_v1' | python3 -c 'import json,sys; m=json.load(sys.stdin); exit(0 if m[\"max_entries\"] != 8 and m.get(\"btf_id\", 0) != 0 else 1)'"
check "connects are still denied" test "$(verdict)" = denied
check "and a toggle still decides" bash -c "'$egressctl' --config '$work/egressd.yaml' egress enable >/dev/null"
check "allowed after it" test "$(verdict)" = allowed

# ---- two writers on the MeshConfig -------------------------------------------------
# An editor saves the file 200 times (a new file renamed into place, as
# editors do), each time adding a line to what it read; egressctl toggles 40
# times meanwhile. egressctl re-reads and redoes its edit when the file
# changed under it, so none of the editor's lines may be missing at the end.
# Then the editor writes last, and its content wins.
python3 - "$work/meshconfig.yaml" > "$work/editor.log" <<'EOF' &
import os, sys, time
path = sys.argv[1]
for n in range(1, 201):
    text = open(path).read()
    tmp = path + ".editor"
    with open(tmp, "w") as f:
        f.write(text + "# editor line %d\n" % n)
    os.rename(tmp, path)
    time.sleep(0.003)
EOF
editor=$!
toggles_ok=0
for i in $(seq 40); do
  if [ $((i % 2)) -eq 0 ]; then action=enable; else action=disable; fi
  ctl egress "$action" --no-wait >/dev/null 2>>"$work/toggle.err" && toggles_ok=$((toggles_ok + 1))
done
wait "$editor"
check "every egressctl toggle succeeded ($toggles_ok of 40)" test "$toggles_ok" -eq 40
lines=$(grep -c "^# editor line " "$work/meshconfig.yaml")
check "none of the editor's 200 updates was lost by egressctl ($lines kept)" test "$lines" -eq 200
python3 - "$work/meshconfig.yaml" <<'EOF'
import os, sys
path = sys.argv[1]
text = open(path).read().replace("enableEgress: true", "enableEgress: false")
open(path + ".last", "w").write(text + "# editor line last\n")
os.rename(path + ".last", path)
EOF
check "the last write (the editor's) wins in the kernel" wait_for 3 verdict_is denied
check "the agent is still running" kill -0 "$agent_pid"

finish
