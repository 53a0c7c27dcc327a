#!/usr/bin/env python3
"""The workload of the end-to-end DNS test (tests/e2e/dns_learning.sh): asks
a resolver, then at once connects to the address it was told, COUNT times.

  dns_client.py --resolver A --names N1,N2 --port P --count C

A stub resolver of its own (one UDP socket per query, a random id, answers
with another id skipped), so that it asks exactly the resolver given; the
benchmark's bench/tools/dns_bench.py uses its encode() and last_a(). Prints
JSON: loops, connects allowed, denied (EPERM), failed (anything else, with
the first few reasons).
"""
import argparse, errno, json, random, socket, struct


def encode(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def skip_name(data, offset):
    while True:
        n = data[offset]
        if n == 0:
            return offset + 1
        if n & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + n


def last_a(data):
    """The last A record's address of the answer section (the end of a CNAME chain)."""
    qd, an = struct.unpack("!HH", data[4:8])
    offset = 12
    for _ in range(qd):
        offset = skip_name(data, offset) + 4
    address = None
    for _ in range(an):
        offset = skip_name(data, offset)
        rtype, _, _, length = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            address = socket.inet_ntoa(data[offset:offset + 4])
        offset += length
    return address


def resolve(resolver, name, rng):
    qid = rng.randrange(65536)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode(name) + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect((resolver, 53))
        s.send(query)
        while True:
            data = s.recv(2048)
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                return last_a(data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resolver", required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    a = p.parse_args()
    rng = random.Random()
    names = a.names.split(",")
    result = {"loops": 0, "allowed": 0, "denied": 0, "failed": 0, "reasons": []}
    for i in range(a.count):
        result["loops"] += 1
        try:
            address = resolve(a.resolver, names[i % len(names)], rng)
            if address is None:
                raise OSError("no address in the answer")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((address, a.port))
            result["allowed"] += 1
        except PermissionError:
            result["denied"] += 1
        except OSError as e:
            if e.errno == errno.EPERM:
                result["denied"] += 1
            else:
                result["failed"] += 1
                if len(result["reasons"]) < 5:
                    result["reasons"].append(str(e))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
