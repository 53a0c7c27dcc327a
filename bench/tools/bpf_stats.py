#!/usr/bin/env python3
"""bpf_stats of the programs attached to one cgroup, for scripts/bench.

  bpf_stats.py snap CGROUP      -> {"name": [run_time_ns, run_cnt], ...} (one line of JSON)
  bpf_stats.py delta A B        -> one line per program of B: "name run_time_ns_delta run_cnt_delta"

Programs are found with `bpftool cgroup show CGROUP` (the programs attached
to that cgroup, never another's), their counters with one `bpftool prog show`.
The counters move only while kernel.bpf_stats_enabled is 1.
"""
import json, subprocess, sys


def bpftool(*args):
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip() or "[]")


def snap(cgroup):
    attached = {p["id"]: p["name"] for p in bpftool("cgroup", "show", cgroup)}
    res = {}
    for p in bpftool("prog", "show"):
        if p.get("id") in attached:
            res[attached[p["id"]]] = [p.get("run_time_ns", 0), p.get("run_cnt", 0)]
    return res


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "snap":
        print(json.dumps(snap(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "delta":
        a, b = json.loads(sys.argv[2]), json.loads(sys.argv[3])
        for name, (t, c) in sorted(b.items()):
            t0, c0 = a.get(name, [0, 0])
            print(name, t - t0, c - c0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
