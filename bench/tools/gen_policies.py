#!/usr/bin/env python3
"""Writes an Egress policy directory for the benchmarks.

  gen_policies.py DIR POLICIES SOURCES_PER_POLICY DESTS_PER_POLICY

Each policy allows its sources (ServiceAccounts bench/sa-<n>, distinct per
policy) TCP port 80 and UDP port 9 to its destinations: /32s in 198.18.0.0/15
(distinct per policy). Policy 0's first destination is 203.0.113.10/32 and its
first source is bench/sa-0, the measuring workload. Policy rules =
POLICIES x SOURCES x 2 ports x DESTS; identities = POLICIES x SOURCES.
Only documentation/benchmark ranges are used.
"""
import os, sys

d, npol, nsrc, ndst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
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
