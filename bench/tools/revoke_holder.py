#!/usr/bin/env python3
"""Holds TCP connections open for the revocation benchmark and stamps when
each is torn down.

  revoke_holder.py --to HOST:PORT:COUNT [--to ...] --ready FILE --out FILE [--timeout S]

Opens COUNT connections to each HOST:PORT, writes FILE when all are open, then
waits (epoll) until connections end or the timeout passes, and writes to
--out a JSON object: per target the number torn down, and the CLOCK_REALTIME
nanoseconds of the first and last teardown.
"""
import argparse, json, resource, select, socket, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", action="append", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--expect", type=int, required=True, help="teardowns to wait for")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ep = select.epoll()
    owner, sockets = {}, []
    result = {}
    for spec in a.to:
        host, port, count = spec.rsplit(":", 2)
        result[spec] = {"opened": 0, "torn_down": 0, "first_ns": 0, "last_ns": 0}
        for _ in range(int(count)):
            s = socket.create_connection((host, int(port)), timeout=5)
            sockets.append(s)
            owner[s.fileno()] = spec
            ep.register(s.fileno(), select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP)
            result[spec]["opened"] += 1
    with open(a.ready, "w") as f:
        f.write("open\n")
    done, deadline = 0, time.monotonic() + a.timeout
    while done < a.expect and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.05):
            now = time.time_ns()
            r = result[owner[fd]]
            r["torn_down"] += 1
            r["first_ns"] = r["first_ns"] or now
            r["last_ns"] = now
            ep.unregister(fd)
            done += 1
    time.sleep(0.2)  # late teardowns of what must stay open would show here
    for fd, _ in ep.poll(0):
        result[owner[fd]]["torn_down"] += 1
    with open(a.out, "w") as f:
        json.dump(result, f)
    return 0


raise SystemExit(main())
