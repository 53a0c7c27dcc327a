#!/usr/bin/env python3
"""The end-to-end DNS test's own resolver (tests/e2e/dns_learning.sh).

  dns_server.py --loopback-port P --netns PATH --address A --ready FILE [--log FILE]

One process, two sockets sharing one pool of addresses: UDP 127.0.0.1:P in
the caller's network namespace (for the agent's own lookups) and UDP A:53
in the network namespace PATH (for the workloads). Every answer for a name
below test.egressd takes the next address of 203.0.113.100-199, so two
resolvers asking one after the other are never told the same address (as
with CDNs, geo-DNS and round-robin pools). TTLs are 1-5 s.

  api.test.egressd          A from the pool
  www.test.egressd          CNAME edge.cdn.egressd, CNAME eN.cdn.egressd, A from the pool
  <anything>.wild.test.egressd  A from the pool
  malformed.test.egressd    an answer whose record runs past the end
  anything else             NXDOMAIN

Every 7th query is preceded by an unsolicited answer (another id) naming
api.test.egressd. Writes FILE once both sockets are bound. With --log, one
line per answer sent in the namespace: "ADDRESS BOOTTIME_NS" (the
benchmark's answer-to-kernel timing). Python's standard library only.
"""
import argparse, ctypes, os, random, select, socket, struct, sys, time

CLONE_NEWNET = 0x40000000
rng = random.Random(7)
next_address = [0]
queries = [0]


def pool_address():
    a = "203.0.113.%d" % (100 + next_address[0] % 100)
    next_address[0] += 1
    return socket.inet_aton(a)


def name_at(data, offset):
    labels = []
    while True:
        n = data[offset]
        if n == 0:
            return ".".join(labels), offset + 1
        labels.append(data[offset + 1:offset + 1 + n].decode("ascii", "replace"))
        offset += 1 + n


def encode(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def rr(owner, rtype, ttl, rdata):
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def respond(query):
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    name, end = name_at(query, 12)
    question = query[12:end + 4]
    lname = name.lower()
    ttl = rng.randint(1, 5)
    answers = []
    rcode = 0
    malformed = False
    if lname == "api.test.egressd" or lname.endswith(".wild.test.egressd"):
        answers.append(rr(b"\xc0\x0c", 1, ttl, pool_address()))
    elif lname == "www.test.egressd":
        edge = encode("edge.cdn.egressd")
        leaf = encode("e%d.cdn.egressd" % rng.randint(1, 9))
        first = rr(b"\xc0\x0c", 5, ttl + 1, edge)
        edge_at = 12 + len(question) + 12  # where the first CNAME's target lies
        second = rr(struct.pack("!H", 0xc000 | edge_at), 5, ttl, leaf)
        leaf_at = edge_at + len(edge) + 12
        answers += [first, second, rr(struct.pack("!H", 0xc000 | leaf_at), 1, ttl, pool_address())]
    elif lname == "malformed.test.egressd":
        answers.append(rr(b"\xc0\x0c", 1, ttl, pool_address()))
        malformed = True
    else:
        rcode = 3
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    out = header + question + b"".join(answers)
    return out[:-3] if malformed else out


def unsolicited():
    q = struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 0) + encode("api.test.egressd") + b"\0\1\0\1"
    return respond(q)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--loopback-port", type=int, required=True)
    p.add_argument("--netns", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--log")
    a = p.parse_args()
    log = open(a.log, "a", buffering=1) if a.log else None
    loop = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop.bind(("127.0.0.1", a.loopback_port))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(a.netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        sys.exit("setns %s: %s" % (a.netns, os.strerror(ctypes.get_errno())))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sink.bind((a.address, 53))
    with open(a.ready, "w") as f:
        f.write("ready\n")
    while True:
        readable, _, _ = select.select([loop, sink], [], [])
        for s in readable:
            data, peer = s.recvfrom(2048)
            if len(data) < 17:
                continue
            queries[0] += 1
            try:
                if s is sink and queries[0] % 7 == 0:
                    s.sendto(unsolicited(), peer)
                reply = respond(data)
                sent_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                s.sendto(reply, peer)
                if log and s is sink and len(reply) >= 4 and reply[-6:-4] == b"\0\4":
                    log.write("%s %d\n" % (socket.inet_ntoa(reply[-4:]), sent_ns))
            except (IndexError, UnicodeError):
                pass


if __name__ == "__main__":
    main()
