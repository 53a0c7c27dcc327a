# Sourced by scripts/bench: section 8, an event flood. tests/e2e/flood.sh,
# in its own namespaces and cgroups: 100 cgroups make denied connects as
# fast as the machine allows (30 s; 5 s in --quick), sharing one CPU weight
# as a node's pods do. Its checks must pass; its report gives the figures.
# See bench/README.md, "8. Event flood".

flood_section() {
  local seconds=30 json=$work/flood.json
  [ $quick -eq 1 ] && seconds=5
  say "8. event flood: denied connects from 100 cgroups for $seconds s"
  CI=true bash "$root/tests/e2e/flood.sh" "$bin" "$seconds" "$json" > "$work/flood.log" 2>&1 \
    || { cat "$work/flood.log" >&2; fail "the flood's checks failed"; }
  field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$json" "$1"; }
  add --section flood --metric "denied connects per second (100 cgroups, kernel counters)" --config "$seconds s" \
    --unit "calls/s" --values "$(field denied_per_second)"
  local what
  for what in sent suppressed lost; do
    add --section flood --metric "events $what (of every denial: sent to the agent, suppressed by the rate limit, lost with the ring full)" \
      --config "$seconds s" --unit events --values "$(field $what)"
  done
  add --section flood --metric "/metrics response, slowest of the run (every 100 ms)" --config "$seconds s" \
    --unit ms --values "$(field metrics_worst_ms)"
  add --section flood --metric "agent RSS before the flood" --config "$seconds s" --unit MB --scale 0.0009765625 \
    --values "$(field rss_before_kb)"
  add --section flood --metric "agent RSS at its highest during the flood" --config "$seconds s" --unit MB \
    --scale 0.0009765625 --values "$(field rss_worst_kb)"
}
