# Sourced by scripts/bench: section 7, revocation. The workload (bench/sa-0)
# holds 1,000 TCP connections under passthrough: half to nginx on
# 203.0.113.10:80, half to haproxy on 203.0.113.11:80, which the MeshConfig
# excludes. enableEgress goes false: the agent's revocation pass must tear
# down exactly the first half. Uses the harness's helpers (add, say, fail,
# in_cg) and its namespaces, servers and cgroups. See bench/README.md,
# "7. Revocation".

rvw=$work/revoke
rv_pins=$pins-revoke
rv_agent_pid=
if [ $quick -eq 1 ]; then rv_reps=1; else rv_reps=5; fi

rv_cleanup() { # from the harness's cleanup
  [ -n "$rv_agent_pid" ] && kill -TERM "$rv_agent_pid" 2>/dev/null && wait "$rv_agent_pid" 2>/dev/null
  [ -f "$rvw/egressd.yaml" ] && "$bin/egressd" --cleanup --config "$rvw/egressd.yaml" >/dev/null 2>&1
  rm -rf "$rv_pins"
  rv_agent_pid=
}

rv_mesh() { # rv_mesh true|false: the MeshConfig, replaced whole as an editor would
  cat > "$rvw/mesh.tmp" <<EOM
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata: {name: fsm-mesh-config, namespace: fsm-system}
spec:
  traffic:
    enableEgress: $1
    outboundIPRangeExclusionList: [203.0.113.11/32]
EOM
  mv "$rvw/mesh.tmp" "$rvw/mesh.yaml"
}

revoke_section() {
  local rep t0 pass_ms torn_ms=() pass_vals=() exact=0
  say "7. revocation: 1,000 open connections, enableEgress true -> false tears down the 500 it denies"
  mkdir -p "$rvw/run"
  rv_mesh true
  cat > "$rvw/egressd.yaml" <<EOM
cgroup: $cgrel/enforced
bpffs: $rv_pins
meshConfig: mesh.yaml
meshCIDRs: []
sidecarUID: null
runDir: $rvw/run
workloads: $work/workloads.yaml
httpAddress: null
EOM
  "$bin/egressd" --config "$rvw/egressd.yaml" >"$rvw/agent.log" 2>&1 &
  rv_agent_pid=$!
  for _ in $(seq 3000); do grep -q "watching" "$rvw/agent.log" && break; sleep 0.005; done
  grep -q "watching" "$rvw/agent.log" || { tail "$rvw/agent.log" >&2; fail "egressd (revocation section) did not start"; }
  for rep in $(seq "$rv_reps"); do
    rv_mesh true
    sleep 0.3
    rm -f "$rvw/ready" "$rvw/out.json"
    in_cg "$wl" python3 "$root/bench/tools/revoke_holder.py" --to 203.0.113.10:80:500 --to 203.0.113.11:80:500 \
      --expect 500 --ready "$rvw/ready" --out "$rvw/out.json" --timeout 10 &
    local holder=$!
    for _ in $(seq 1000); do [ -s "$rvw/ready" ] && break; sleep 0.01; done
    [ -s "$rvw/ready" ] || fail "revocation: the workload could not open its 1,000 connections"
    t0=$(date +%s%N)
    rv_mesh false
    wait "$holder" || fail "revocation: the holder failed"
    read -r torn kept last < <(python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
print(d["203.0.113.10:80:500"]["torn_down"], d["203.0.113.11:80:500"]["torn_down"], d["203.0.113.10:80:500"]["last_ns"])' "$rvw/out.json")
    [ "$torn" -eq 500 ] && [ "$kept" -eq 0 ] && exact=$((exact + 1))
    torn_ms+=("$(python3 -c "print(($last - $t0) / 1e6)")")
    pass_ms=$(grep -o 'revoked [0-9]* of [0-9]* open connections in [0-9]* network namespace(s), [0-9.]* ms' "$rvw/agent.log" \
      | tail -1 | sed 's/.*, \([0-9.]*\) ms/\1/')
    [ -n "$pass_ms" ] || fail "revocation: the agent logged no revocation"
    pass_vals+=("$pass_ms")
    say "  rep $rep: $torn of 500 denied torn down, $kept of 500 allowed torn down; last teardown $(printf %s "${torn_ms[-1]}") ms after the file write, pass ended $pass_ms ms after the flip"
  done
  [ "$exact" -eq "$rv_reps" ] || fail "revocation: $exact of $rv_reps repetitions tore down exactly the denied half"
  add --section revocation --metric "generation flip → revocation pass done (agent)" --config "1,000 connections, 500 denied" \
    --unit ms --values "$(IFS=,; echo "${pass_vals[*]}")" --note "socket iterator, reference decision, bpf_sock_destroy"
  add --section revocation --metric "MeshConfig write → last denied connection torn down (application)" \
    --config "1,000 connections, 500 denied" --unit ms --values "$(IFS=,; echo "${torn_ms[*]}")" \
    --note "includes inotify, the new generation and the pass; each rep tore down exactly the 500 denied"
  rv_cleanup
}
