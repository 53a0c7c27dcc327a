#!/usr/bin/env python3
"""Writes an Egress policy directory for the benchmarks.

  gen_policies.py DIR POLICIES SOURCES_PER_POLICY DESTS_PER_POLICY [HOSTS HOSTS_FILE]

Each policy allows its sources (ServiceAccounts bench/sa-<n>, distinct per
policy) TCP port 80 and UDP port 9 to its destinations: /32s in 198.18.0.0/15
(distinct per policy). Policy 0's first destination is 203.0.113.10/32 and its
first source is bench/sa-0, the measuring workload. Policy rules =
POLICIES x SOURCES x 2 ports x DESTS; identities = POLICIES x SOURCES.
With HOSTS, as many more policies allow the same sources of policy i the
host h<i>.bench.test (TCP 80, UDP 9), and HOSTS_FILE gets the hosts-file
lines (198.19.200.<i>) for the DNS server the benchmark starts: HOSTS x
SOURCES x 2 more entries, derived from DNS answers.
Only documentation/benchmark ranges are used.
"""
import os, sys

d, npol, nsrc, ndst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
nhosts = int(sys.argv[5]) if len(sys.argv) > 5 else 0
if nhosts > min(npol, 250):
    sys.exit("gen_policies.py: at most min(POLICIES, 250) hosts")
os.makedirs(d, exist_ok=True)
if npol * ndst > 131072:
    sys.exit("gen_policies.py: more destinations than 198.18.0.0/15 holds")
per_file = 100
addr = 0
for f0 in range(0, npol, per_file):
    docs = []
    for p in range(f0, min(npol, f0 + per_file)):
        srcs = ", ".join(f"{{kind: ServiceAccount, name: sa-{p * nsrc + s}, namespace: bench}}" for s in range(nsrc))
        dsts = []
        for k in range(ndst):
            if p == 0 and k == 0:
                dsts.append("203.0.113.10/32")
                continue
            a = 0xC6120000 + addr  # 198.18.0.0 + addr
            addr += 1
            dsts.append(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/32")
        docs.append(f"""kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {{name: p{p}, namespace: bench}}
spec:
  sources: [{srcs}]
  ipAddresses: [{", ".join(dsts)}]
  ports: [{{number: 80, protocol: tcp}}, {{number: 9, protocol: udp}}]
""")
    with open(os.path.join(d, f"bench-{f0 // per_file:04d}.yaml"), "w") as f:
        f.write("---\n".join(docs))

if nhosts:
    docs = []
    with open(sys.argv[6], "w") as hosts_file:
        for i in range(nhosts):
            hosts_file.write(f"198.19.200.{i} h{i}.bench.test\n")
            srcs = ", ".join(f"{{kind: ServiceAccount, name: sa-{i * nsrc + s}, namespace: bench}}" for s in range(nsrc))
            docs.append(f"""kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {{name: host-{i}, namespace: bench}}
spec:
  sources: [{srcs}]
  hosts: [h{i}.bench.test]
  ports: [{{number: 80, protocol: tcp}}, {{number: 9, protocol: udp}}]
""")
    with open(os.path.join(d, "bench-hosts.yaml"), "w") as f:
        f.write("---\n".join(docs))
