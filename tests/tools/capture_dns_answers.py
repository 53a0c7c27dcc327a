#!/usr/bin/env python3
"""Writes tests/fixtures/dns/answers.txt: real DNS responses, as dnsmasq
sends them, for the parser tests (tests/kernel/test_dns_parser.cc).

  capture_dns_answers.py OUT

Starts dnsmasq on 127.0.0.1 (a free port, no upstream, its records from the
command line below), asks it each question of QUESTIONS over UDP, and writes
one line per answer:

  QNAME QTYPE EXPECTED HEX

EXPECTED is what the answer teaches, as the test expects the parsers to read
it: "-" for nothing, else comma-separated ADDRESS/TTL for every address on
the question's chain. The fixture is committed; this script is how it was
made, run again by hand when the records change (as root or not; it needs
dnsmasq).
"""
import os, random, socket, struct, subprocess, sys, tempfile, time

RECORDS = [
    "--host-record=api.example.com,203.0.113.10,2001:db8::10",
    "--host-record=cdn.example.net,203.0.113.20",
    "--host-record=pool.example.com,203.0.113.31",
    "--host-record=pool.example.com,203.0.113.32",
    "--host-record=pool.example.com,203.0.113.33",
    "--cname=www.example.com,cdn.example.net",
    "--cname=a.example.com,b.example.com",
    "--cname=b.example.com,cdn.example.net",
    "--address=/wild.example.com/203.0.113.40",
    "--address=/v6only.example.com/2001:db8::60",
]

# (name, type, expected): what each answer must teach.
QUESTIONS = [
    ("api.example.com", "A", "203.0.113.10/300"),
    ("api.example.com", "AAAA", "2001:db8::10/300"),
    ("API.Example.COM", "A", "203.0.113.10/300"),
    ("www.example.com", "A", "203.0.113.20/300"),
    ("a.example.com", "A", "203.0.113.20/300"),
    ("pool.example.com", "A", "203.0.113.31/300,203.0.113.32/300,203.0.113.33/300"),
    ("x.wild.example.com", "A", "203.0.113.40/300"),
    ("deep.x.wild.example.com", "A", "203.0.113.40/300"),
    ("v6only.example.com", "AAAA", "2001:db8::60/300"),
    ("cdn.example.net", "AAAA", "-"),
    ("nothing.example.org", "A", "-"),
]

TYPES = {"A": 1, "AAAA": 28}


def query(name, qtype, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", TYPES[qtype], 1)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    out = sys.argv[1]
    port = free_port()
    pidfile = tempfile.mktemp(prefix="egressd-capture-dnsmasq-")
    dnsmasq = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                "--listen-address=127.0.0.1", "--port=%d" % port, "--local-ttl=300",
                                "--pid-file=" + pidfile, "--user=root"] + RECORDS)
    try:
        time.sleep(0.5)
        rng = random.Random(1)
        lines = ["# Real DNS responses from dnsmasq (tests/tools/capture_dns_answers.py). QNAME QTYPE EXPECTED HEX"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for name, qtype, expected in QUESTIONS:
                s.sendto(query(name, qtype, rng.randrange(65536)), ("127.0.0.1", port))
                answer, _ = s.recvfrom(4096)
                lines.append("%s %s %s %s" % (name, qtype, expected, answer.hex()))
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
    finally:
        dnsmasq.terminate()
        dnsmasq.wait()
        if os.path.exists(pidfile):
            os.unlink(pidfile)


if __name__ == "__main__":
    main()
