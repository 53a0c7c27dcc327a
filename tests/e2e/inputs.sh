#!/usr/bin/env bash
# End to end, the agent against its own file layouts and against broken input:
#  - idle CPU with the bundled config's layout (status file beside the
#    workloads file) and with every other place the status file may share a
#    watched directory with an input (beside the MeshConfig, in the policy
#    directory, all in one directory): at most 10 ms of CPU per second;
#  - invalid UTF-8 in the MeshConfig, an Egress file and the workloads file:
#    the agent stays up, reports each error, every JSON it writes stays
#    valid, and the next good change still applies.
# Each agent has its own cgroup, pin directory, run directory and HTTP port.
#
# usage: tests/e2e/inputs.sh BIN_DIR        (root; CI=true turns every skip into a failure)
set -uo pipefail

bin=$(cd "${1:?usage: inputs.sh BIN_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
egressd=$bin/egressd
egressctl=$bin/egressctl
prom_check=$bin/prom_check
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

e2e_require python3 curl

id=$$
work=$(mktemp -d /tmp/egressd-inputs.XXXXXX)
cgroup_base=egressd-tests/inputs-$id
pin_base=/sys/fs/bpf/egressd-inputs-$id
agent_pid=
settings=   # the settings file of the agent under test

stop_agent() {
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  agent_pid=
  [ -n "$settings" ] && "$egressd" --cleanup --config "$settings" >/dev/null 2>&1
  return 0
}
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  agent_pid=
  for config in "$work"/*/config/egressd.yaml; do
    [ -f "$config" ] && "$egressd" --cleanup --config "$config" >/dev/null 2>&1
  done
  rm -rf "$pin_base"-*
  remove_cgroup_tree "$cg2/$cgroup_base"
  rmdir "$cg2/egressd-tests" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# layout NAME RUN_DIR WORKLOADS: the shipped config/ copied as it is (same
# files side by side, same relative paths) into $work/NAME/config, with only
# the names a second copy must not share changed: cgroup, pins, run
# directory, workloads file, HTTP port (0: any free one).
layout() {
  local name=$1 run_dir=$2 workloads=$3 dir=$work/$1/config
  mkdir -p "$dir"
  cp -r "$root/config/egressd.yaml" "$root/config/meshconfig.yaml" "$root/config/policies" "$dir/"
  sed -i -e "s|^cgroup: .*|cgroup: $cgroup_base/$name|" -e "s|^bpffs: .*|bpffs: $pin_base-$name|" \
    -e "s|^runDir: .*|runDir: $run_dir|" -e "s|^workloads: .*|workloads: $workloads|" "$dir/egressd.yaml"
  echo "httpAddress: 127.0.0.1:0" >> "$dir/egressd.yaml"
  for key in "cgroup: $cgroup_base/$name" "bpffs: $pin_base-$name" "runDir: $run_dir" "workloads: $workloads"; do
    grep -qx "$key" "$dir/egressd.yaml" || { echo "layout $name: the bundled config has no line '$key'" >&2; return 1; }
  done
  settings=$dir/egressd.yaml
}

# start_agent [ARGS...]: egressd on $settings, logging to the layout's agent.log.
start_agent() {
  log=$(dirname "$(dirname "$settings")")/agent.log
  start_egressd "$log" "$settings" "$@"
}
ctl() { "$egressctl" --config "$settings" "$@"; }
applied_count() { grep -c "applied generation" "$log"; }
# wait_applied N: until the log shows more than N applied generations (3 s at most).
wait_applied() {
  for _ in $(seq 60); do [ "$(applied_count)" -gt "$1" ] && return 0; sleep 0.05; done
  return 1
}
status_json() { ctl status --json 2>/dev/null; }
kernel_enable_egress() { status_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernel"]["enableEgress"])'; }

# ---- idle CPU in every layout ------------------------------------------------------
# idle_check NAME: the agent of the current layout at rest, before and after
# a change of its MeshConfig (the change must still be seen).
idle_check() {
  local name=$1 meshconfig ms before
  meshconfig=$(dirname "$settings")/meshconfig.yaml
  check "$name: egressd starts" start_agent
  sleep 1.5  # past the one-shot memory-release timer of the start
  ms=$(cpu_ms_per_second "$agent_pid" 2)
  check "$name: idle agent uses at most 10 ms of CPU per second (${ms} ms)" \
    python3 -c "import sys; sys.exit(0 if $ms <= 10 else 1)"
  before=$(applied_count)
  sed -i 's/enableEgress: false/enableEgress: true/' "$meshconfig"
  check "$name: a MeshConfig change is still applied" wait_applied "$before"
  sleep 1.5
  ms=$(cpu_ms_per_second "$agent_pid" 2)
  check "$name: after the change, idle again (${ms} ms of CPU per second)" \
    python3 -c "import sys; sys.exit(0 if $ms <= 10 else 1)"
  stop_agent
}

layout bundled "$work/bundled/run" "$work/bundled/run/workloads.yaml" &&
  idle_check "bundled layout (status beside the workloads file)"
layout beside-meshconfig "$work/beside-meshconfig/config" "$work/beside-meshconfig/run/workloads.yaml" &&
  idle_check "status file beside the MeshConfig"
layout in-policy-dir "$work/in-policy-dir/config/policies" "$work/in-policy-dir/run/workloads.yaml" &&
  idle_check "status file in the policy directory"
layout one-dir "$work/one-dir/config" "$work/one-dir/config/workloads.yaml" &&
  idle_check "status, MeshConfig and workloads in one directory"

# ---- invalid UTF-8 in every input ----------------------------------------------------
layout bad-bytes "$work/bad-bytes/run" "$work/bad-bytes/run/workloads.yaml"
dir=$(dirname "$settings")
run_dir=$work/bad-bytes/run
check "egressd starts with JSON logs" start_agent --log-format json

all_json() { # every line of FILE is one JSON object
  python3 -c "
import json, sys
for n, line in enumerate(open(sys.argv[1], 'rb'), 1):
    try: json.loads(line.decode('utf-8'))
    except Exception as e: sys.exit(f'line {n}: {e}: {line[:120]!r}')" "$1"
}
alive_and_valid() { # the agent runs; its log, status file and egressctl's JSON parse
  kill -0 "$agent_pid" && all_json "$log" && python3 -c "import json; json.load(open('$run_dir/status.json', encoding='utf-8'))" &&
    status_json | python3 -c 'import json,sys; json.load(sys.stdin)' && ctl status >/dev/null &&
    ctl dump --json | python3 -c 'import json,sys; json.load(sys.stdin)'
}
# replace_bytes FILE OLD NEW: in FILE, the bytes OLD become NEW (both may hold \xNN escapes).
replace_bytes() {
  python3 -c "
import sys
old, new = (a.encode('latin-1').decode('unicode_escape').encode('latin-1') for a in sys.argv[2:4])
text = open(sys.argv[1], 'rb').read()
assert old in text, f'{old!r} not in {sys.argv[1]}'
open(sys.argv[1], 'wb').write(text.replace(old, new))" "$@"
}
policy_error_listed() { status_json | python3 -c "
import json, sys
errors = json.load(sys.stdin)['agent']['policyErrors']
sys.exit(0 if any(sys.argv[1] in e and 'not UTF-8 text' in e for e in errors) else 1)" "$1"; }
policy_named() { ctl dump --json | python3 -c "
import json, sys
sys.exit(0 if sys.argv[1] in json.dumps(json.load(sys.stdin), ensure_ascii=False) else 1)" "$1"; }
http_port() { python3 -c "import json; print(json.load(open('$run_dir/status.json'))['httpPort'])"; }

# A byte that is never UTF-8 (0xF7). YAML is Unicode text: the file is refused
# with the position of the byte, and its last good content stays applied.
not_utf8_error() { status_json | python3 -c "
import json, sys
e = json.load(sys.stdin)['agent']['lastError']
sys.exit(0 if e and sys.argv[1] in e['message'] and 'not UTF-8 text' in e['message'] else 1)" "$1"; }

# The MeshConfig: 0xF7 inside a value.
before=$(applied_count)
replace_bytes "$dir/meshconfig.yaml" 'enableEgress: false' 'enableEgress: fal\xf7se'
sleep 0.5
check "MeshConfig with 0xF7: the agent is alive and all its JSON is valid" alive_and_valid
check "MeshConfig with 0xF7: the error names the file and the position" \
  grep -aq 'meshconfig.yaml:[0-9]*:[0-9]*: not UTF-8 text' "$log"
check "MeshConfig with 0xF7: status shows it" not_utf8_error "meshconfig.yaml"
check "MeshConfig with 0xF7: /readyz says the input was not applied" \
  test "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$(http_port)/readyz")" = 503
replace_bytes "$dir/meshconfig.yaml" 'enableEgress: fal\xf7se' 'enableEgress: true'
check "the next good MeshConfig is applied" wait_applied "$before"
check "and the kernel enforces it" test "$(kernel_enable_egress)" = True

# An Egress file: a policy whose name holds 0xF7. No document of the file is
# applied.
before=$(applied_count)
printf 'kind: Egress\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: "broken\xf7", namespace: shop}\nspec:\n  sources: [{kind: ServiceAccount, name: web, namespace: shop}]\n  ipAddresses: [203.0.113.10/32]\n  ports: [{number: 80, protocol: http}]\n' \
  > "$dir/policies/broken.yaml"
sed -i 's/enableEgress: true/enableEgress: false/' "$dir/meshconfig.yaml"  # policies apply (row 7)
check "Egress file with 0xF7: the MeshConfig change is applied" wait_applied "$before"
sleep 0.3
check "Egress file with 0xF7: the agent is alive and all its JSON is valid" alive_and_valid
check "Egress file with 0xF7: the error names the file and the position" \
  grep -aq 'broken.yaml:[0-9]*:[0-9]*: not UTF-8 text' "$log"
check "Egress file with 0xF7: status lists it" policy_error_listed "broken.yaml"
not_named() { ! policy_named "$1"; }
check "Egress file with 0xF7: no policy of it is applied" not_named "shop/broken"
check "Egress file with 0xF7: /metrics passes the strict exposition parser" \
  bash -c "curl -s -m 2 'http://127.0.0.1:$(http_port)/metrics' | '$prom_check'"

# The workloads file: an unknown key holding 0xF7.
before=$(applied_count)
mkdir -p "$run_dir"
printf 'workloads:\n  - cgroup: "shop-web"\n    namespace: "shop"\n    servic\xf7eAccount: "web"\n' > "$run_dir/workloads.yaml"
sleep 0.5
check "workloads with 0xF7: the agent is alive and all its JSON is valid" alive_and_valid
check "workloads with 0xF7: the error names the file" grep -aq 'workloads not updated: .*workloads.yaml:[0-9]*:[0-9]*: not UTF-8 text' "$log"
check "workloads with 0xF7: status shows it" not_utf8_error "workloads.yaml"
printf 'workloads:\n  - cgroup: "shop-web"\n    namespace: "shop"\n    serviceAccount: "web"\n' > "$run_dir/workloads.yaml"
check "the next good workloads file is applied" wait_applied "$before"
check "and the workload has its identity in the kernel" bash -c "'$egressctl' --config '$settings' dump | grep -q 'shop/web'"
no_last_error() { # the status file follows the log line: wait a little
  for _ in $(seq 20); do
    status_json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["agent"]["lastError"] is None else 1)' &&
      return 0
    sleep 0.05
  done
  return 1
}
check "status has no error any more" no_last_error
stop_agent

finish
