#!/usr/bin/env python3
"""Helpers of scripts/bench section 6 (hosts learned from DNS answers). See
bench/README.md.

  dns_bench.py resolve --resolver A --names N1,N2 --count C
        Run in the workload: C DNS exchanges with the resolver (no connect),
        one socket each. Prints JSON: each exchange's round trip (ns), the
        CLOCK_BOOTTIME at which recv() returned, and the address answered.
  dns_bench.py learned --map PINNED
        The entries of dns_learned_v1 (via bpftool): address -> learned_ns.
  dns_bench.py fill --map PINNED --entries N --identity-from I
        Writes N entries into dns_learned_v1 for identities I, I+1, ...
        (1,000 entries each, distinct addresses in 2001:db8:ff00::/40): the
        map as full as a busy node's, without touching the measured
        identity's entries. Uses the bpf(2) syscall directly.
  dns_bench.py timing --server-log F --client F --learned F
        Joins the three by address: answer sent by the resolver -> learned
        in the kernel -> recv() returned in the application. Prints JSON.
"""
import argparse, ctypes, json, os, random, socket, struct, subprocess, sys, time


# The DNS wire format as the end-to-end test's workload writes and reads it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "e2e"))
from dns_client import encode, last_a  # noqa: E402


def cmd_resolve(a):
    rng = random.Random()
    names = a.names.split(",")
    out = []
    for i in range(a.count):
        qid = rng.randrange(65536)
        q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode(names[i % len(names)]) + b"\0\1\0\1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.connect((a.resolver, 53))
            t0 = time.monotonic_ns()
            s.send(q)
            while True:
                data = s.recv(2048)
                if struct.unpack("!H", data[:2])[0] == qid:
                    break
            t1 = time.monotonic_ns()
            recv_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        out.append({"rtt_ns": t1 - t0, "recv_boot_ns": recv_boot, "address": last_a(data)})
    json.dump(out, sys.stdout)


def cmd_learned(a):
    dump = json.loads(subprocess.check_output(["bpftool", "-j", "map", "dump", "pinned", a.map]))
    out = {}
    for e in dump:
        v = e.get("formatted", {}).get("value") or {}
        addr = v.get("addr")
        if not addr:
            continue
        raw = bytes(int(x, 16) if isinstance(x, str) else x for x in addr)
        text = socket.inet_ntoa(raw[12:]) if raw[:12] == b"\0" * 10 + b"\xff\xff" else socket.inet_ntop(socket.AF_INET6, raw)
        out[text] = max(out.get(text, 0), int(v["learned_ns"]))
    json.dump(out, sys.stdout)


# bpf(2): BPF_MAP_UPDATE_ELEM = 2, BPF_OBJ_GET = 7
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def cmd_fill(a):
    path = ctypes.create_string_buffer(a.map.encode())
    fd = bpf(7, struct.pack("=QII", ctypes.addressof(path), 0, 0))
    key = ctypes.create_string_buffer(8)
    value = ctypes.create_string_buffer(40)
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    for i in range(a.entries):
        identity = a.identity_from + i // 1000
        addr = b"\x20\x01\x0d\xb8\xff" + i.to_bytes(11, "big")
        ctypes.memmove(key, struct.pack("=II", identity, i % 1000), 8)
        ctypes.memmove(value, addr + struct.pack("=QQII", now + 3600 * 10**9, now, 1, 0), 40)
        bpf(2, struct.pack("=IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
    os.close(fd)
    print(a.entries)


def cmd_timing(a):
    sent = {}
    for line in open(a.server_log):
        addr, ns = line.split()
        sent[addr] = int(ns)
    learned = json.load(open(a.learned))
    client = json.load(open(a.client))
    to_kernel, kernel_before_app = [], []
    # The pool wraps: an address may have been answered before; the map and
    # the resolver's log keep its last answer, so only the last exchange counts.
    last = {}
    for c in client:
        last[c["address"]] = c
    for addr, c in last.items():
        if addr in sent and addr in learned:
            to_kernel.append(learned[addr] - sent[addr])
            kernel_before_app.append(c["recv_boot_ns"] - learned[addr])
    json.dump({"to_kernel_ns": to_kernel, "kernel_before_app_ns": kernel_before_app,
               "rtt_ns": [c["rtt_ns"] for c in client]}, sys.stdout)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("--resolver", required=True)
    r.add_argument("--names", required=True)
    r.add_argument("--count", type=int, required=True)
    l = sub.add_parser("learned")
    l.add_argument("--map", required=True)
    f = sub.add_parser("fill")
    f.add_argument("--map", required=True)
    f.add_argument("--entries", type=int, required=True)
    f.add_argument("--identity-from", type=int, required=True)
    t = sub.add_parser("timing")
    t.add_argument("--server-log", required=True)
    t.add_argument("--client", required=True)
    t.add_argument("--learned", required=True)
    a = p.parse_args()
    dict(resolve=cmd_resolve, learned=cmd_learned, fill=cmd_fill, timing=cmd_timing)[a.cmd](a)


if __name__ == "__main__":
    main()
