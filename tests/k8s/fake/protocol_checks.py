#!/usr/bin/env python3
"""Wire-protocol checks of tests/k8s/fake_apiserver.py, with a raw HTTP/1.1 client
over TLS (so chunk boundaries, stalls and resets are visible).

  protocol_checks.py --port P --ca CA --token-file T

Run by tests/k8s/test_fake_apiserver.sh against a fake started with
--bookmark-interval 1 and tests/k8s/fake/seed.json. Prints one "ok - ..." or
"FAIL - ..." line per check; exit status 1 if any check failed.
"""

import argparse
import json
import socket
import ssl
import sys
import time
import traceback
import urllib.parse

A = None
CTX = None
RESULTS = []


# ---------------------------------------------------------------- raw client

class Resp:
    def __init__(self, status, headers, sock, buf):
        self.status, self.headers, self.sock, self.buf = status, headers, sock, buf
        self.chunks = []  # every chunk payload as received
        self.ended = False  # the terminating chunk was seen

    def _fill(self, deadline):
        left = deadline - time.time()
        if left <= 0:
            raise TimeoutError("read timeout")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next_chunk(self, timeout=5.0):
        """Returns the next chunk's payload, or None after the terminating chunk."""
        deadline = time.time() + timeout
        size = int(self._line(deadline).split(b";")[0], 16)
        if size == 0:
            self._line(deadline)
            self.ended = True
            return None
        data = self._exact(size, deadline)
        if self._exact(2, deadline) != b"\r\n":
            raise ValueError("bad chunk trailer")
        self.chunks.append(data)
        return data

    def body(self, timeout=5.0):
        deadline = time.time() + timeout
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                c = self.next_chunk(deadline - time.time())
                if c is None:
                    return out
                out += c
        return self._exact(int(self.headers.get("content-length", "0")), deadline)

    def json(self):
        return json.loads(self.body())


class Watch:
    """Reassembles newline-delimited events across chunks."""

    def __init__(self, resp):
        self.r = resp
        self.pending = b""

    def next_event(self, timeout=5.0):
        deadline = time.time() + timeout
        while b"\n" not in self.pending:
            c = self.r.next_chunk(max(0.01, deadline - time.time()))
            if c is None:
                return None
            self.pending += c
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        try:
            self.r.sock.close()
        except OSError:
            pass


def token():
    with open(A.token_file) as f:
        return f.read().strip()


def request(method, path, body=None, tok=None, ctype="application/json", headers=None,
            timeout=10.0):
    raw = socket.create_connection(("127.0.0.1", A.port), timeout=timeout)
    sock = CTX.wrap_socket(raw, server_hostname="127.0.0.1")
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Host": "127.0.0.1:%d" % A.port, "Accept": "application/json",
            "User-Agent": "protocol-checks"}
    if tok is not False:
        hdrs["Authorization"] = "Bearer " + (tok if tok is not None else token())
    if body is not None:
        hdrs["Content-Type"] = ctype
    hdrs["Content-Length"] = str(len(data))
    hdrs.update(headers or {})
    req = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % kv for kv in hdrs.items())
    sock.sendall(req.encode() + b"\r\n" + data)
    buf = b""
    deadline = time.time() + timeout
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.time()))
        d = sock.recv(65536)
        if not d:
            raise EOFError("closed before headers")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Resp(status, headers, sock, rest)


def get_json(path, **kw):
    r = request("GET", path, **kw)
    return r.status, r.json()


def control(path, body=None):
    method = "GET" if body is None else "POST"
    r = request(method, "/_fake/" + path, body=body, tok=False)
    out = r.json()
    if r.status != 200:
        raise AssertionError("control %s -> %d %s" % (path, r.status, out))
    return out


def q(**kw):
    return "?" + urllib.parse.urlencode(kw)


def create(path, obj):
    r = request("POST", path, body=obj)
    out = r.json()
    if r.status != 201:
        raise AssertionError("create %s -> %d %s" % (path, r.status, out))
    return out


def cm(name, ns="paging", labels=None):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "data": {"k": name}}


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_status(code, body, want, reason=None):
    expect(code == want, "HTTP %d, want %d: %s" % (code, want, body))
    if want >= 400:
        expect(body.get("kind") == "Status" and body.get("code") == want,
               "not a Status with code %d: %s" % (want, body))
        if reason:
            expect(body.get("reason") == reason, "reason %r, want %r" % (body.get("reason"), reason))


def open_watch(path):
    r = request("GET", path)
    if r.status != 200:
        raise AssertionError("watch %s -> %d %s" % (path, r.status, r.body()))
    expect(r.headers.get("transfer-encoding", "").lower() == "chunked", "watch not chunked")
    return Watch(r)


def check(name):
    def deco(fn):
        def run():
            t0 = time.time()
            try:
                fn()
                RESULTS.append((name, True, ""))
                print("ok - %s (%.1fs)" % (name, time.time() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                RESULTS.append((name, False, str(e)))
                print("FAIL - %s: %s" % (name, e), flush=True)
                traceback.print_exc(file=sys.stdout)
            finally:
                try:
                    control("faults/clear", {})
                    control("watches/split", {"mode": "normal"})
                    control("watches/release", {})
                    control("config", {"watchExpiredMode": "event"})
                except Exception:  # noqa: BLE001
                    pass
        run.__name__ = fn.__name__
        CHECKS.append(run)
        return run
    return deco


CHECKS = []


# ---------------------------------------------------------------- checks

@check("auth: missing or wrong token -> 401 Status; right token -> 200")
def _auth():
    c, b = get_json("/api/v1/namespaces", tok=False)
    expect_status(c, b, 401, "Unauthorized")
    c, b = get_json("/api/v1/namespaces", tok="wrong")
    expect_status(c, b, 401, "Unauthorized")
    c, b = get_json("/api/v1/namespaces")
    expect(c == 200 and b["kind"] == "NamespaceList", "list namespaces: %d %s" % (c, b))


@check("discovery: /version /api /apis /apis/G /apis/G/V; missing CRD group -> 404 NotFound")
def _discovery():
    c, b = get_json("/version")
    expect(c == 200 and b["major"] == "1", b)
    c, b = get_json("/api")
    expect(b["kind"] == "APIVersions" and b["versions"] == ["v1"], b)
    c, b = get_json("/apis")
    names = [g["name"] for g in b["groups"]]
    for g in ("config.flomesh.io", "policy.flomesh.io", "config.openservicemesh.io",
              "policy.openservicemesh.io", "discovery.k8s.io", "networking.k8s.io"):
        expect(g in names, "group %s missing from /apis" % g)
    c, b = get_json("/apis/config.flomesh.io")
    expect(b["kind"] == "APIGroup" and b["preferredVersion"]["version"] == "v1alpha3", b)
    c, b = get_json("/apis/policy.flomesh.io/v1alpha1")
    expect([r["name"] for r in b["resources"]] == ["egresses"] and b["resources"][0]["namespaced"], b)
    c, b = get_json("/api/v1")
    rs = {r["name"]: r for r in b["resources"]}
    expect(not rs["nodes"]["namespaced"] and rs["pods"]["namespaced"] and "services" in rs, b)
    control("groups", {"group": "config.openservicemesh.io", "installed": False})
    try:
        c, b = get_json("/apis/config.openservicemesh.io")
        expect_status(c, b, 404, "NotFound")
        c, b = get_json("/apis/config.openservicemesh.io/v1alpha2/meshconfigs")
        expect_status(c, b, 404, "NotFound")
        c, b = get_json("/apis")
        expect("config.openservicemesh.io" not in [g["name"] for g in b["groups"]], "still listed")
    finally:
        control("groups", {"group": "config.openservicemesh.io", "installed": True})
    c, b = get_json("/apis/config.openservicemesh.io/v1alpha2/meshconfigs")
    expect(c == 200 and b["kind"] == "MeshConfigList", b)


@check("writes: create/get/409/404/400, merge + json patch, PUT conflict, generation")
def _writes():
    create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": "writes"}})
    body = {"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress",
            "metadata": {"name": "e1", "namespace": "writes"},
            "spec": {"sources": [{"kind": "ServiceAccount", "name": "a", "namespace": "writes"}],
                     "ports": [{"number": 443, "protocol": "tcp"}]}}
    base = "/apis/policy.flomesh.io/v1alpha1/namespaces/writes/egresses"
    o = create(base, body)
    md = o["metadata"]
    expect(md["uid"] and md["creationTimestamp"] and md["generation"] == 1 and
           md["resourceVersion"].isdigit(), md)
    r = request("POST", base, body=body)
    expect_status(r.status, r.json(), 409, "AlreadyExists")
    c, b = get_json(base + "/nope")
    expect_status(c, b, 404, "NotFound")
    expect(b["details"]["name"] == "nope", b)
    r = request("POST", "/apis/policy.flomesh.io/v1alpha1/namespaces/other/egresses", body=body)
    expect_status(r.status, r.json(), 400, "BadRequest")
    r = request("POST", base, body={"apiVersion": "policy.flomesh.io/v1alpha1",
                                    "metadata": {"name": "x"}})
    expect_status(r.status, r.json(), 400)
    r = request("POST", "/apis/policy.flomesh.io/v1alpha1/namespaces/absent/egresses",
                body=dict(body, metadata={"name": "e1"}))
    expect_status(r.status, r.json(), 404, "NotFound")
    r = request("PATCH", base + "/e1", body={"spec": {"hosts": ["example.com"]},
                                              "metadata": {"labels": {"x": "y"}}},
                ctype="application/merge-patch+json")
    p = r.json()
    expect(r.status == 200 and p["spec"]["hosts"] == ["example.com"] and
           p["spec"]["ports"][0]["number"] == 443 and p["metadata"]["generation"] == 2 and
           int(p["metadata"]["resourceVersion"]) > int(md["resourceVersion"]), p)
    r = request("PATCH", base + "/e1", body=[{"op": "replace", "path": "/spec/ports/0/number",
                                               "value": 8443}],
                ctype="application/json-patch+json")
    p2 = r.json()
    expect(r.status == 200 and p2["spec"]["ports"][0]["number"] == 8443, p2)
    stale = dict(p, metadata=dict(p["metadata"]))
    r = request("PUT", base + "/e1", body=stale)
    expect_status(r.status, r.json(), 409, "Conflict")
    r = request("PUT", base + "/e1", body=p2)
    expect(r.status == 200, r.json())
    r = request("DELETE", base + "/e1")
    expect(r.status == 200 and r.json()["metadata"]["name"] == "e1", "delete")
    r = request("DELETE", base + "/e1")
    expect_status(r.status, r.json(), 404, "NotFound")


@check("list paging: limit/continue/remainingItemCount, consistent snapshot across pages")
def _paging():
    create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": "paging"}})
    for i in range(7):
        create("/api/v1/namespaces/paging/configmaps", cm("cm-%d" % i))
    base = "/api/v1/namespaces/paging/configmaps"
    c, p1 = get_json(base + q(limit=3))
    rv = p1["metadata"]["resourceVersion"]
    expect(len(p1["items"]) == 3 and p1["metadata"]["remainingItemCount"] == 4 and
           p1["metadata"]["continue"], p1["metadata"])
    expect("kind" not in p1["items"][0], "items should not carry kind")
    # writes between pages must not show up: the pages are one snapshot
    create(base, cm("cm-00-late"))
    request("DELETE", base + "/cm-6").body()
    c, p2 = get_json(base + q(limit=3, **{"continue": p1["metadata"]["continue"]}))
    expect(p2["metadata"]["resourceVersion"] == rv and len(p2["items"]) == 3 and
           p2["metadata"]["remainingItemCount"] == 1, p2["metadata"])
    c, p3 = get_json(base + q(limit=3, **{"continue": p2["metadata"]["continue"]}))
    expect(len(p3["items"]) == 1 and not p3["metadata"].get("continue"), p3["metadata"])
    names = [i["metadata"]["name"] for p in (p1, p2, p3) for i in p["items"]]
    expect(names == ["cm-%d" % i for i in range(7)], names)
    # continue together with a resourceVersion is a 400
    c, b = get_json(base + q(limit=3, resourceVersion=rv, **{"continue": p1["metadata"]["continue"]}))
    expect_status(c, b, 400)
    # RV=N with limit is an Exact read from history
    c, ex = get_json(base + q(limit=100, resourceVersion=rv))
    expect(len(ex["items"]) == 7 and ex["metadata"]["resourceVersion"] == rv, ex["metadata"])
    # RV="0" is served like the watch cache: limit ignored
    c, z = get_json(base + q(limit=2, resourceVersion="0"))
    expect(len(z["items"]) == 7 and not z["metadata"].get("continue"), z["metadata"])


@check("expired continue token after compaction -> 410 Expired")
def _expired_continue():
    base = "/api/v1/namespaces/paging/configmaps"
    c, p1 = get_json(base + q(limit=2))
    create(base, cm("cm-after-page"))
    control("compact", {})
    c, b = get_json(base + q(limit=2, **{"continue": p1["metadata"]["continue"]}))
    expect_status(c, b, 410, "Expired")
    c, b = get_json(base + q(limit=2, resourceVersion=p1["metadata"]["resourceVersion"]))
    expect_status(c, b, 410, "Expired")
    c, b = get_json(base + "?continue=not-a-token")
    expect_status(c, b, 400)


@check("field and label selectors; unsupported field -> 400")
def _selectors():
    c, b = get_json("/api/v1/pods" + q(fieldSelector="spec.nodeName=node-1"))
    names = sorted(i["metadata"]["name"] for i in b["items"])
    expect("web-1" in names and "db-1" in names and "web-2" not in names, names)
    expect(all(i["spec"]["nodeName"] == "node-1" for i in b["items"]), names)
    c, b = get_json("/api/v1/pods" + q(fieldSelector="spec.nodeName==node-1,metadata.namespace!=app"))
    expect(all(i["metadata"]["namespace"] != "app" for i in b["items"]), b["items"])
    c, b = get_json("/api/v1/namespaces/app/pods" + q(fieldSelector="metadata.name=web-2"))
    expect([i["metadata"]["name"] for i in b["items"]] == ["web-2"], b["items"])
    c, b = get_json("/api/v1/pods" + q(fieldSelector="spec.bogus=1"))
    expect_status(c, b, 400, "BadRequest")
    expect("field label not supported" in b["message"], b["message"])
    c, b = get_json("/apis/config.flomesh.io/v1alpha3/meshconfigs" + q(fieldSelector="spec.x=1"))
    expect_status(c, b, 400, "BadRequest")
    c, b = get_json("/api/v1/namespaces/app/pods" + q(labelSelector="app=web,!fsm-proxy-uuid"))
    expect([i["metadata"]["name"] for i in b["items"]] == ["web-2"], b["items"])
    c, b = get_json("/api/v1/namespaces/app/pods" + q(labelSelector="app!=web"))
    expect("db-1" in [i["metadata"]["name"] for i in b["items"]], b["items"])
    c, b = get_json("/api/v1/namespaces/app/pods" + q(labelSelector="fsm-proxy-uuid"))
    expect([i["metadata"]["name"] for i in b["items"]] == ["web-1"], b["items"])
    c, b = get_json("/api/v1/pods" + q(labelSelector="a=(b"))
    expect_status(c, b, 400)


@check("watch: events after the list RV, bookmarks, timeoutSeconds ends the stream cleanly")
def _watch_basic():
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    rv = lst["metadata"]["resourceVersion"]
    w = open_watch(base + q(watch="1", resourceVersion=rv, allowWatchBookmarks="true",
                            timeoutSeconds="3"))
    t0 = time.time()
    create(base, cm("watched"))
    ev = w.next_event(5)
    expect(ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "watched" and
           ev["object"]["kind"] == "ConfigMap" and ev["object"]["apiVersion"] == "v1", ev)
    expect(int(ev["object"]["metadata"]["resourceVersion"]) > int(rv), ev)
    bm = w.next_event(5)
    expect(bm["type"] == "BOOKMARK" and set(bm["object"]["metadata"]) == {"resourceVersion"} and
           bm["object"]["kind"] == "ConfigMap", bm)
    expect(int(bm["object"]["metadata"]["resourceVersion"]) >=
           int(ev["object"]["metadata"]["resourceVersion"]), bm)
    types = []
    while True:
        e = w.next_event(5)
        if e is None:
            break
        types.append(e["type"])
    dt = time.time() - t0
    expect(w.r.ended and 2.5 < dt < 8, "stream ended=%s after %.1fs" % (w.r.ended, dt))
    expect(set(types) <= {"BOOKMARK"} and types, types)
    w.close()
    # without resourceVersion: synthetic ADDED for the current state first
    w = open_watch(base + q(watch="true", timeoutSeconds="1", labelSelector="!nope"))
    first = w.next_event(5)
    expect(first["type"] == "ADDED", first)
    w.close()


@check("watch selector semantics: leaving = DELETED, entering = ADDED")
def _watch_selector():
    base = "/api/v1/namespaces/paging/configmaps"
    create(base, cm("sel", labels={"role": "a"}))
    c, lst = get_json(base + q(labelSelector="role=a"))
    w = open_watch(base + q(watch="1", labelSelector="role=a",
                            resourceVersion=lst["metadata"]["resourceVersion"], timeoutSeconds="5"))
    mp = "application/merge-patch+json"
    request("PATCH", base + "/sel", body={"data": {"k": "v2"}}, ctype=mp).body()
    request("PATCH", base + "/sel", body={"metadata": {"labels": {"role": "b"}}}, ctype=mp).body()
    request("PATCH", base + "/sel", body={"metadata": {"labels": {"role": "a"}}}, ctype=mp).body()
    request("DELETE", base + "/sel").body()
    got = [w.next_event(5)["type"] for _ in range(4)]
    expect(got == ["MODIFIED", "DELETED", "ADDED", "DELETED"], got)
    w.close()
    # a watch on a single object's path
    create(base, cm("single"))
    w = open_watch(base + "/single" + q(watch="1", timeoutSeconds="3"))
    expect(w.next_event(5)["object"]["metadata"]["name"] == "single", "single object watch")
    request("DELETE", base + "/single").body()
    expect(w.next_event(5)["type"] == "DELETED", "single deleted")
    w.close()


@check("410: watch from a compacted RV -> 200 + ERROR event (event mode), HTTP 410 (status mode)")
def _watch_410():
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    old = lst["metadata"]["resourceVersion"]
    create(base, cm("for-410"))
    control("compact", {})
    w = open_watch(base + q(watch="1", resourceVersion=old, allowWatchBookmarks="true"))
    ev = w.next_event(5)
    expect(ev["type"] == "ERROR" and ev["object"]["kind"] == "Status" and
           ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired" and
           "too old resource version" in ev["object"]["message"], ev)
    expect(w.next_event(5) is None and w.r.ended, "stream should end after ERROR")
    w.close()
    control("config", {"watchExpiredMode": "status"})
    c, b = get_json(base + q(watch="1", resourceVersion=old))
    expect_status(c, b, 410, "Expired")
    # a current RV is still fine
    c, lst = get_json(base)
    w = open_watch(base + q(watch="1", resourceVersion=lst["metadata"]["resourceVersion"],
                            timeoutSeconds="1"))
    expect(w.next_event(5) is None, "quiet watch ends")
    w.close()


@check("sendInitialEvents: ADDED..., then BOOKMARK k8s.io/initial-events-end")
def _watch_list():
    base = "/api/v1/namespaces/app/pods"
    w = open_watch(base + q(watch="1", sendInitialEvents="true", allowWatchBookmarks="true",
                            resourceVersionMatch="NotOlderThan", resourceVersion="",
                            timeoutSeconds="2"))
    types = []
    while True:
        ev = w.next_event(5)
        types.append(ev["type"])
        if ev["type"] == "BOOKMARK":
            expect(ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true", ev)
            break
    expect(types[:-1] and set(types[:-1]) == {"ADDED"}, types)
    w.close()
    c, b = get_json(base + q(watch="1", sendInitialEvents="true"))
    expect_status(c, b, 422, "Invalid")


@check("429 with Retry-After for the next K matching requests, then 500 once")
def _faults():
    control("stats/reset", {})
    control("faults", {"status": 429, "count": 2, "pathPrefix": "/api/v1/pods", "verb": "list",
                       "retryAfter": 3})
    for _ in range(2):
        r = request("GET", "/api/v1/pods")
        b = r.json()
        expect_status(r.status, b, 429, "TooManyRequests")
        expect(r.headers.get("retry-after") == "3" and b["details"]["retryAfterSeconds"] == 3,
               r.headers)
    c, b = get_json("/api/v1/namespaces")  # other paths unaffected
    expect(c == 200, b)
    c, b = get_json("/api/v1/pods")
    expect(c == 200, b)
    control("faults", {"status": 500, "count": 1, "pathPrefix": "/apis/config.flomesh.io"})
    c, b = get_json("/apis/config.flomesh.io/v1alpha3/meshconfigs")
    expect_status(c, b, 500, "InternalError")
    c, b = get_json("/apis/config.flomesh.io/v1alpha3/meshconfigs")
    expect(c == 200, b)
    st = control("stats")
    expect(st["byVerbPath"]["list"]["/api/v1/pods"] == 3 and st["byStatus"]["429"] == 2, st)


@check("split events: one byte per chunk, and split at an offset, reassemble")
def _split():
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    control("watches/split", {"mode": "bytes"})
    w = open_watch(base + q(watch="1", resourceVersion=lst["metadata"]["resourceVersion"],
                            timeoutSeconds="5"))
    create(base, cm("split-1"))
    ev = w.next_event(5)
    expect(ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "split-1", ev)
    expect(len(w.r.chunks) > 50 and all(len(c) == 1 for c in w.r.chunks),
           "chunks: %d, sizes %s" % (len(w.r.chunks), sorted({len(c) for c in w.r.chunks})))
    w.close()
    control("watches/split", {"mode": "offset", "offset": 7})
    w = open_watch(base + q(watch="1", resourceVersion=ev["object"]["metadata"]["resourceVersion"],
                            timeoutSeconds="5"))
    create(base, cm("split-2"))
    ev2 = w.next_event(5)
    expect(ev2["object"]["metadata"]["name"] == "split-2", ev2)
    expect(len(w.r.chunks) == 2 and len(w.r.chunks[0]) == 7 and w.r.chunks[1].endswith(b"\n"),
           [len(c) for c in w.r.chunks])
    w.close()


@check("stall: nothing (not even bookmarks) until released, then the events")
def _stall():
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    w = open_watch(base + q(watch="1", resourceVersion=lst["metadata"]["resourceVersion"],
                            allowWatchBookmarks="true", timeoutSeconds="30"))
    n = control("watches/stall", {"pathPrefix": base})["watches"]
    expect(n == 1, "stalled %d watches" % n)
    create(base, cm("during-stall"))
    try:
        c = w.r.next_chunk(2.5)
        raise AssertionError("got bytes while stalled: %r" % c)
    except TimeoutError:
        pass
    control("watches/release", {})
    while True:
        ev = w.next_event(5)
        if ev["type"] != "BOOKMARK":
            break
    expect(ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "during-stall", ev)
    w.close()


@check("reset: RST mid-stream, and a truncated event then close")
def _reset():
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    for mode, partial in (("rst", False), ("close", True)):
        w = open_watch(base + q(watch="1", resourceVersion=lst["metadata"]["resourceVersion"],
                                timeoutSeconds="30"))
        time.sleep(0.2)
        n = control("watches/reset", {"mode": mode, "partial": partial, "pathPrefix": base})
        expect(n["watches"] >= 1, n)
        try:
            while True:
                if w.next_event(5) is None:
                    raise AssertionError("clean end instead of a reset")
        except (ConnectionResetError, EOFError, ssl.SSLError, OSError) as e:
            expect(not w.r.ended, "terminating chunk seen")
            if partial:
                expect(b"MODIFIED" in w.r.buf or w.pending, "no partial event seen: %r" % e)
        w.close()
    deadline = time.time() + 3
    while control("watches")["watches"] and time.time() < deadline:
        time.sleep(0.1)
    expect(not [x for x in control("watches")["watches"] if x["path"].startswith(base)],
           "reset watches still registered")


@check("too large resourceVersion -> 504 ResourceVersionTooLarge")
def _too_large():
    control("config", {"tooLargeWaitSeconds": 0.2})
    try:
        c, b = get_json("/api/v1/pods" + q(resourceVersion="99999999"))
        expect_status(c, b, 504, "Timeout")
        expect(b["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge", b)
    finally:
        control("config", {"tooLargeWaitSeconds": 3})


@check("stats and request log record lists and watches with their query")
def _stats():
    control("stats/reset", {})
    c, lst = get_json("/api/v1/pods" + q(fieldSelector="spec.nodeName=node-1"))
    w = open_watch("/api/v1/pods" + q(watch="1", fieldSelector="spec.nodeName=node-1",
                                      resourceVersion=lst["metadata"]["resourceVersion"],
                                      timeoutSeconds="1", allowWatchBookmarks="true"))
    while w.next_event(5) is not None:
        pass
    w.close()
    st = control("stats")
    expect(st["byVerb"].get("list") == 1 and st["byVerb"].get("watch") == 1, st)
    reqs = control("requests")["requests"]
    wr = [r for r in reqs if r["verb"] == "watch"][0]
    expect(wr["query"]["resourceVersion"] == lst["metadata"]["resourceVersion"] and
           wr["query"]["fieldSelector"] == "spec.nodeName=node-1", wr)


@check("consistency: concurrent writers, 4 watchers rebuild exactly the final list")
def _consistency():
    import threading
    base = "/api/v1/namespaces/paging/configmaps"
    c, lst = get_json(base)
    rv0 = lst["metadata"]["resourceVersion"]
    state0 = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in lst["items"]}
    watches = [open_watch(base + q(watch="1", resourceVersion=rv0, allowWatchBookmarks="true",
                                   timeoutSeconds="30")) for _ in range(4)]
    mp = "application/merge-patch+json"

    def writer(n):
        for i in range(25):
            name = "conc-%d-%d" % (n, i)
            create(base, cm(name))
            request("PATCH", base + "/" + name, body={"data": {"i": str(i)}}, ctype=mp).body()
            if i % 3 == 0:
                request("DELETE", base + "/" + name).body()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c, final = get_json(base)
    want = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in final["items"]}
    final_rv = int(final["metadata"]["resourceVersion"])
    for w in watches:
        state, last = dict(state0), int(rv0)
        while last < final_rv:
            ev = w.next_event(5)
            r = int(ev["object"]["metadata"]["resourceVersion"])
            expect(r >= last if ev["type"] == "BOOKMARK" else r > last, "RV went back: %s" % ev)
            last = r
            name = ev["object"]["metadata"].get("name")
            if ev["type"] in ("ADDED", "MODIFIED"):
                state[name] = str(r)
            elif ev["type"] == "DELETED":
                state.pop(name, None)
        expect(state == want, "watch state differs from the list")
        w.close()


@check("token rotation through the control API: old token 401, new token 200")
def _rotate():
    old = token()
    control("token", {"token": "rotated-" + old})
    try:
        c, b = get_json("/api/v1/namespaces", tok=old)
        expect_status(c, b, 401, "Unauthorized")
        c, b = get_json("/api/v1/namespaces", tok="rotated-" + old)
        expect(c == 200, b)
    finally:
        control("token", {"token": old})


def main():
    global A, CTX
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token-file", required=True)
    A = ap.parse_args()
    CTX = ssl.create_default_context(cafile=A.ca)
    for c in CHECKS:
        c()
    failed = [r for r in RESULTS if not r[1]]
    print("protocol checks: %d passed, %d failed" % (len(RESULTS) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
