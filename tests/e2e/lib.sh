# Shared by the end-to-end scripts (sourced): TAP-like reporting, the
# CI=true rule for what cannot run, and measuring an agent's CPU.

passed=0
failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { # check NAME CMD...: CMD must succeed
  local name=$1; shift
  if "$@"; then ok "$name"; else not_ok "$name"; fi
}
# Under CI=true a test that cannot run is a failure, never a skip.
unavailable() {
  if [ "${CI:-}" = "true" ]; then echo "e2e: cannot run under CI=true: $*" >&2; echo "0 passed, 1 failed"; exit 1; fi
  echo "e2e: SKIPPED: $*" >&2; echo "0 passed, 0 failed, 1 skipped"; exit 0
}
# e2e_require TOOL...: root, a cgroup2 mount (sets cg2) and TOOLs on PATH,
# or the script cannot run (unavailable).
e2e_require() {
  [ "$(id -u)" -eq 0 ] || unavailable "needs root"
  cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
  [ -n "$cg2" ] || unavailable "no cgroup2 mount in /proc/mounts"
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null || unavailable "missing $tool"; done
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# start_egressd LOG SETTINGS [ARGS...]: starts "$egressd", appending to LOG,
# and waits (10 s at most) for this start's own "watching" line: LOG holds
# the earlier agents' lines too. Sets agent_pid; fails if the agent exits.
start_egressd() {
  local log=$1 settings=$2 before
  shift 2
  before=$(grep -c "watching" "$log" 2>/dev/null || true)
  "$egressd" --config "$settings" "$@" >>"$log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 400); do
    [ "$(grep -c "watching" "$log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
    kill -0 "$agent_pid" 2>/dev/null || return 1
    sleep 0.025
  done
  return 1
}

# Nanoseconds of CPU that process PID has used so far, all its threads
# (the first field of each task's schedstat).
cpu_ns() {
  local total=0 run _
  for stat in /proc/"$1"/task/*/schedstat; do
    read -r run _ < "$stat" 2>/dev/null || continue
    total=$((total + run))
  done
  echo "$total"
}

# Milliseconds of CPU per second that PID uses over SECONDS seconds.
cpu_ms_per_second() {
  local before after
  before=$(cpu_ns "$1")
  sleep "$2"
  after=$(cpu_ns "$1")
  python3 -c "print(round(($after - $before) / 1e6 / $2, 2))"
}

# Removes the cgroup DIR and everything below it, deepest first, killing
# what the test left running in them.
remove_cgroup_tree() {
  [ -d "$1" ] || return 0
  find "$1" -depth -type d | while read -r dir; do
    for p in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    sleep 0.02
    rmdir "$dir" 2>/dev/null
  done
}

# The test network: client namespace $1 whose only route leads, over a veth,
# to sink namespace $2, where an HTTP server answers on 203.0.113.10:80
# (serving $3/www). Sets server_pid. Fails when namespaces cannot be made.
make_test_network() {
  local client=$1 sink=$2 dir=$3
  ip netns add "$client" && ip netns add "$sink" || return 1
  ip link add veth-c netns "$client" type veth peer name veth-s netns "$sink"
  ip -n "$client" link set lo up; ip -n "$sink" link set lo up
  ip -n "$client" addr add 198.18.255.1/24 dev veth-c
  ip -n "$sink" addr add 198.18.255.2/24 dev veth-s
  ip -n "$client" link set veth-c up; ip -n "$sink" link set veth-s up
  ip -n "$sink" addr add 203.0.113.10/32 dev lo
  # The client's only routes lead to the sink: no default route.
  ip -n "$client" route add 203.0.113.0/24 via 198.18.255.2
  mkdir -p "$dir/www" && echo "hello from the sink" > "$dir/www/index.html"
  ip netns exec "$sink" python3 -m http.server 80 --bind 203.0.113.10 --directory "$dir/www" >/dev/null 2>&1 &
  server_pid=$!
}

# Undoes make_test_network: the sink's server, then both namespaces.
remove_test_network() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  ip netns del "$1" 2>/dev/null
  ip netns del "$2" 2>/dev/null
}
