#!/usr/bin/env python3
"""Socket probe for the end-to-end tests: reports exactly what the kernel
answered a connect() or sendto() (allowed, or the errno), and can wait for a
verdict to change, stamping the moment it did.

  probe.py once  HOST PORT [--udp]          prints allowed|denied|<errno name>
  probe.py until allowed|denied HOST PORT --ready FILE --out FILE [--timeout S]
  probe.py watch HOST PORT --seconds S      counts verdicts while S seconds pass
  probe.py hold  HOST PORT --ready FILE [--timeout S]
                                            connects, says so in FILE, then prints how the
                                            connection ended (the errno name, or open)
"""
import argparse, errno, json, os, socket, sys, time


def attempt(host, port, udp):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        if udp:
            s.sendto(b"x", (host, port))
        else:
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass  # EINPROGRESS: the hook allowed it
        return "allowed"
    except OSError as e:
        return "denied" if e.errno == errno.EPERM else errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["once", "until", "watch", "hold"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--ready")
    ap.add_argument("--out")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    if a.mode == "once":
        host, port = a.args[0], int(a.args[1])
        print(attempt(host, port, a.udp))
        return 0
    if a.mode == "until":
        want, host, port = a.args[0], a.args[1], int(a.args[2])
        start = attempt(host, port, a.udp)
        with open(a.ready, "w") as f:
            f.write(start + "\n")
        deadline = time.monotonic() + a.timeout
        while time.monotonic() < deadline:
            if attempt(host, port, a.udp) == want:
                with open(a.out, "w") as f:
                    json.dump({"seen_ns": time.time_ns(), "initial": start}, f)
                return 0
            time.sleep(0.0005)
        return 1
    if a.mode == "hold":
        host, port = a.args[0], int(a.args[1])
        s = socket.create_connection((host, port), timeout=2)
        with open(a.ready, "w") as f:
            f.write("open\n")
        s.settimeout(a.timeout)
        try:
            while s.recv(65536):
                pass
            print("closed")
        except socket.timeout:
            print("open")
        except OSError as e:
            print(errno.errorcode.get(e.errno, str(e.errno)))
        return 0
    host, port = a.args[0], int(a.args[1])
    counts = {}
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline:
        v = attempt(host, port, a.udp)
        counts[v] = counts.get(v, 0) + 1
        time.sleep(0.001)
    print(json.dumps(counts))
    return 0


sys.exit(main())
