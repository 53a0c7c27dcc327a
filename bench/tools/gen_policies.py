#!/usr/bin/env python3
"""Writes an Egress policy directory for the benchmarks.

  gen_policies.py [--prefixes all|mixed] [--ports both|udp] DIR POLICIES SOURCES_PER_POLICY DESTS_PER_POLICY
                  [HOSTS HOSTS_FILE]

Each policy allows its sources (ServiceAccounts bench/sa-<n>, distinct per
policy) TCP port 80 and UDP port 9 to its destinations: /32s in 198.18.0.0/15
(distinct per policy). Policy 0's first destination is 203.0.113.10/32 and its
first source is bench/sa-0, the measuring workload. Policy rules =
POLICIES x SOURCES x 2 ports x DESTS; identities = POLICIES x SOURCES.
With HOSTS, as many more policies allow the same sources of policy i the
host h<i>.bench.test (TCP 80, UDP 9), and HOSTS_FILE gets the hosts-file
lines (198.19.200.<i>) for the DNS server the benchmark starts: HOSTS x
SOURCES x 2 more entries, derived from DNS answers.

--ports udp: UDP port 9 only (policy rules = POLICIES x SOURCES x DESTS).
--prefixes all: every destination is a /24 of 198.18.0.0/15 (512 of them);
  policy p takes DESTS consecutive ones from /24 number p x DESTS on
  (wrapping), distinct within a policy (DESTS <= 512); policy 0's first is
  203.0.113.0/24 (it covers 203.0.113.10). Each rule is its own (identity,
  port, prefix) entry, so the entries number POLICIES x SOURCES x ports x DESTS.
--prefixes mixed: the even-numbered destinations of a policy are /32s in
  198.18.0.0/16 (distinct), the odd-numbered ones prefixes of 198.19.0.0/16 of
  four lengths in turn (/24, /26, /28, /30; a pool of 5,440 disjoint ones,
  shared by the policies); policy 0's first is 203.0.113.10/32.
Only documentation/benchmark ranges are used.
"""
import os, sys

args = sys.argv[1:]
prefixes, ports = "none", "both"
while args and args[0].startswith("--"):
    if args[0] == "--prefixes" and len(args) > 1 and args[1] in ("all", "mixed"):
        prefixes = args[1]
    elif args[0] == "--ports" and len(args) > 1 and args[1] in ("both", "udp"):
        ports = args[1]
    else:
        sys.exit(__doc__)
    args = args[2:]
if len(args) not in (4, 6):
    sys.exit(__doc__)
d, npol, nsrc, ndst = args[0], int(args[1]), int(args[2]), int(args[3])
nhosts = int(args[4]) if len(args) > 4 else 0
if nhosts > min(npol, 250):
    sys.exit("gen_policies.py: at most min(POLICIES, 250) hosts")
os.makedirs(d, exist_ok=True)
if prefixes == "none" and npol * ndst > 131072:
    sys.exit("gen_policies.py: more destinations than 198.18.0.0/15 holds")
if prefixes == "all" and ndst > 512:
    sys.exit("gen_policies.py: --prefixes all: at most 512 destinations per policy")
if prefixes == "mixed" and (npol * ndst + 1) // 2 > 65536:
    sys.exit("gen_policies.py: --prefixes mixed: more /32s than 198.18.0.0/16 holds")
port_list = "{number: 9, protocol: udp}" if ports == "udp" else "{number: 80, protocol: tcp}, {number: 9, protocol: udp}"


def dotted(a):
    return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


# --prefixes mixed: disjoint prefixes of 198.19.0.0/16, one quarter per length.
POOL = []
for quarter, (length, count) in enumerate(((24, 64), (26, 256), (28, 1024), (30, 4096))):
    POOL.append([(0xC6130000 + (quarter << 14) + (i << (32 - length)), length) for i in range(count)])


def mixed_prefix(j):
    cls = POOL[j % 4]
    a, length = cls[(j // 4) % len(cls)]
    return f"{dotted(a)}/{length}"


per_file = 100
addr = 0
for f0 in range(0, npol, per_file):
    docs = []
    for p in range(f0, min(npol, f0 + per_file)):
        srcs = ", ".join(f"{{kind: ServiceAccount, name: sa-{p * nsrc + s}, namespace: bench}}" for s in range(nsrc))
        dsts = []
        for k in range(ndst):
            if p == 0 and k == 0:
                dsts.append("203.0.113.0/24" if prefixes == "all" else "203.0.113.10/32")
            elif prefixes == "all":
                dsts.append(f"{dotted(0xC6120000 + (((p * ndst + k) % 512) << 8))}/24")
            elif prefixes == "mixed" and k % 2 == 1:
                dsts.append(mixed_prefix((p * ndst + k) // 2))
            else:
                dsts.append(f"{dotted(0xC6120000 + addr)}/32")  # 198.18.0.0 + addr
                addr += 1
        docs.append(f"""kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {{name: p{p}, namespace: bench}}
spec:
  sources: [{srcs}]
  ipAddresses: [{", ".join(dsts)}]
  ports: [{port_list}]
""")
    with open(os.path.join(d, f"bench-{f0 // per_file:04d}.yaml"), "w") as f:
        f.write("---\n".join(docs))

if nhosts:
    docs = []
    with open(args[5], "w") as hosts_file:
        for i in range(nhosts):
            hosts_file.write(f"198.19.200.{i} h{i}.bench.test\n")
            srcs = ", ".join(f"{{kind: ServiceAccount, name: sa-{i * nsrc + s}, namespace: bench}}" for s in range(nsrc))
            docs.append(f"""kind: Egress
apiVersion: policy.flomesh.io/v1alpha1
metadata: {{name: host-{i}, namespace: bench}}
spec:
  sources: [{srcs}]
  hosts: [h{i}.bench.test]
  ports: [{port_list}]
""")
    with open(os.path.join(d, "bench-hosts.yaml"), "w") as f:
        f.write("---\n".join(docs))
