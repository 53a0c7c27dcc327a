#!/usr/bin/env python3
"""Fake Kubernetes API server for egressd tests (Python 3 standard library only).

It speaks the real wire protocol (HTTP/1.1 over TLS, bearer tokens, JSON,
chunked watch streams) well enough for the real `kubectl` 1.32, and it keeps
state like a small apiserver: an in-memory store, one global resourceVersion,
an event history with compaction, list paging and watches. It is written
without looking at egressd's own client (userspace/k8s/).

Command line
------------
  python3 tests/k8s/fake_apiserver.py --port 0 --port-file F --cert C --key K \
      --token-file T [--seed seed.json] [--log FILE] [options]

  --host H                 127.0.0.1 (default) or ::1; nothing else is accepted.
  --port N                 0 = any free port.
  --port-file F            written (atomically) with the bound port once listening.
  --cert C --key K         PEM server certificate (with SAN IP:127.0.0.1) and key.
  --plain-http             serve plain HTTP instead of TLS (debugging; no cert needed).
  --token-file T           the valid bearer token is the file's current content,
                           stripped; it is re-read on every request, so rewriting
                           the file rotates the token. An empty file rejects all.
  --seed S                 JSON: a list of objects, a {"kind":"List","items":[...]},
                           or {"objects":[...], "groups":{"<group>":false},
                           "config":{...}} (config keys as for POST /_fake/config).
  --log FILE               one line per request and per control action.
  --bookmark-interval SEC  period of BOOKMARK events (default 60; tests use 1).
  --history N              events kept for watch/continue resumption (default 1000).
  --watch-expired-mode M   "event" (default: 200 + ERROR event, as the watch cache
                           does) or "status" (HTTP 410 Status response).
  --uninstall-group G      start with API group G not installed (repeatable).
  --no-default-namespaces  do not create default, kube-system, kube-public,
                           kube-node-lease.
  --exit-with-parent       stop (as on SIGTERM) when the parent process goes away,
                           so a test killed with SIGKILL leaves no server behind.
  SIGTERM/SIGINT: open watches end cleanly (terminating chunk), the server exits 0.

API served (auth: "Authorization: Bearer <token>", else 401 Status Unauthorized)
-------------------------------------------------------------------------------
  /version /healthz /livez /readyz /api /api/v1 /apis /apis/G /apis/G/V
  /openapi/v3 (+ per group-version documents); /openapi/v2 answers 404.
  Resources (core/v1 unless noted; * = cluster-scoped):
    pods, namespaces*, nodes*, services, configmaps;
    discovery.k8s.io/v1 endpointslices; networking.k8s.io/v1,v1beta1 servicecidrs*;
    config.flomesh.io/v1alpha3 (also v1alpha1, v1alpha2) meshconfigs;
    policy.flomesh.io/v1alpha1 egresses;
    config.openservicemesh.io/v1alpha2 (also v1alpha1) meshconfigs;
    policy.openservicemesh.io/v1alpha1 egresses.
  Creates through the API assign metadata.uid/creationTimestamp/generation (and
  reset a Pod's status to Pending, like the pod strategy); objects from --seed or
  POST /_fake/objects keep a given uid, creationTimestamp and status.
  Objects are stored once per resource; every served version shows the same
  object with its apiVersion rewritten (CRDs without conversion behave so).
  Every API group but core can be uninstalled/installed at runtime (meant for
  the four CRD groups); an uninstalled group is absent from discovery and every
  path under it answers 404 Status NotFound.
  Verbs: get, list, watch, create (POST), update (PUT), patch (merge-patch,
  strategic-merge-patch handled as a merge patch minus $-directives,
  json-patch), delete, deletecollection; the status subresource (get/put/patch).
  apply-patch+yaml (server-side apply) answers 415.
  LIST: limit + continue (token = base64 {"v":"meta.k8s.io/v1","rv":N,
  "start":"ns/name\\u0000"}, like the real one; later pages are served from a
  snapshot at the first page's resourceVersion; a token older than the compaction
  gives 410 Expired), metadata.remainingItemCount (only without selectors),
  resourceVersion/resourceVersionMatch per the api-concepts table (RV=N with
  limit = Exact, served from history; RV="0" ignores limit, as the watch cache does;
  continue + RV="N" -> 400; RV newer than the store -> waits tooLargeWaitSeconds,
  then 504 Timeout with cause ResourceVersionTooLarge),
  fieldSelector (metadata.name, metadata.namespace, and per resource e.g. pods:
  spec.nodeName, spec.serviceAccountName, status.phase ...; = == !=, comma = AND,
  unknown field -> 400), labelSelector (= == != in notin, key, !key).
  WATCH (watch=1|true): resourceVersion unset/"0" = synthetic ADDED first, "N" =
  events after N (older than the history -> 410, in the mode configured),
  timeoutSeconds (stream ends with the terminating chunk; default 1800 s),
  allowWatchBookmarks (BOOKMARK every bookmarkInterval and one before the
  deadline), sendInitialEvents=true (needs resourceVersionMatch=NotOlderThan
  and allowWatchBookmarks=true; ends the initial ADDEDs with a BOOKMARK
  annotated k8s.io/initial-events-end), selectors (leaving = DELETED, entering =
  ADDED). Events are compact JSON + "\\n"; by default all events pending at one
  moment go in one chunk. A watch on a single object path is a watch with
  fieldSelector metadata.name=<name>. List items of built-in types carry no
  kind/apiVersion; items of custom resources do (as on a real server).
  Accept "application/json;as=Table;..." (kubectl get) returns meta.k8s.io/v1 Tables.
  gzip is used when the client accepts it and the body exceeds gzipThreshold.

Control API: /_fake/..., plain JSON, NO authentication (the port is loopback-only)
--------------------------------------------------------------------------------
  GET  /_fake/healthz                 -> "ok"
  GET  /_fake/state                   -> {resourceVersion, compactedResourceVersion,
                                          historySize, groups, config, watches}
  GET  /_fake/stats                   -> {total, byVerb:{verb:n},
                                          byVerbPath:{verb:{path:n}}, byStatus:{code:n},
                                          activeWatches}
  POST /_fake/stats/reset             -> zero the counters and the request log
  GET  /_fake/requests[?since=SEQ]    -> {requests:[{seq,method,path,query,verb,
                                          status,userAgent}], nextSeq}
  POST /_fake/config   {"bookmarkInterval":1, "watchExpiredMode":"event"|"status",
                        "expiredReason":"Expired"|"Gone", "historySize":N,
                        "defaultWatchTimeout":1800, "bookmarkBeforeDeadline":true,
                        "rv0IgnoresLimit":true, "sendInitialEvents":"support"|"reject",
                        "namespaceLifecycle":true, "gzipThreshold":131072,
                        "tooLargeWaitSeconds":3}     -> the whole config
  GET  /_fake/config
  POST /_fake/compact  {} | {"resourceVersion":N}  -> history before N (default: the
                        current RV) is dropped; older watch RVs / continue tokens -> 410.
                        Open watches are not affected.
  POST /_fake/faults   {"status":429, "count":K, "pathPrefix":"/api/v1/pods",
                        "verb":"watch"|"list"|"get"|..., "method":"GET",
                        "retryAfter":N, "message":"..."}  (count -1 = forever;
                        status any of 403 404 409 410 429 500 503 504 ...)
                        -> next K matching API requests (after authentication) get
                        that Status (+ Retry-After header and details.retryAfterSeconds).
                        verb: get list watch create update patch delete discovery
  POST /_fake/faults/clear
  GET  /_fake/watches                 -> {watches:[{id,path,query,stalled,sent,started}]}
  POST /_fake/watches/reset {"mode":"rst"|"close", "partial":false, "pathPrefix":""}
                        rst = TCP RST (SO_LINGER 0), close = FIN without the
                        terminating chunk; partial = first write a chunk header
                        and only the start of an event (a truncated chunk).
  POST /_fake/watches/stall {"pathPrefix":"", "future":false}
                        matching open watches (and, with future, new ones) send
                        nothing at all (no events, bookmarks or end) until released.
  POST /_fake/watches/release
  POST /_fake/watches/split {"mode":"normal"|"per-event"|"bytes"|"offset",
                        "offset":N, "delayMs":0}
                        bytes = every event written one byte per chunk; offset = each
                        event in two chunks split at N; per-event = one chunk each;
                        normal = pending events coalesced in one chunk.
  POST /_fake/token    {"token":"..."}  -> rewrites the token file
  GET  /_fake/groups   -> {"<group>": true|false}
  POST /_fake/groups   {"group":"config.flomesh.io", "installed":false,
                        "keepObjects":false}  (uninstall ends open watches of the
                        group and, unless keepObjects, drops its objects like a
                        deleted CRD)
  GET  /_fake/objects  -> {"items":[every stored object]}
  POST /_fake/objects  {"op":"create"|"update"|"upsert"(default)|"patch"|"delete",
                        "object":{...}} or {"objects":[...]} for create/upsert;
                        patch: {"op":"patch","apiVersion","kind","namespace","name",
                        "patch":{merge patch}}; delete: apiVersion, kind, namespace,
                        name (or "object"). Result: {"results":[{code, object|status}]}
  Writes through /_fake/objects are ordinary writes: new resourceVersion, history,
  watch events. Errors of the control API: 400 (404 for an unknown path) with
  {"error": "..."}.
"""

import argparse
import base64
import copy
import datetime
import gzip
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --------------------------------------------------------------------------
# Resource catalogue
# --------------------------------------------------------------------------

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
META_FIELDS = ("metadata.name", "metadata.namespace")


class Res:
    def __init__(self, group, versions, plural, kind, namespaced, short=(), singular=None,
                 fields=(), crd=False, status_sub=True, categories=()):
        self.group = group
        self.versions = list(versions)  # first = preferred / storage
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.short = list(short)
        self.singular = singular or kind.lower()
        self.fields = set(META_FIELDS) | set(fields)
        self.crd = crd
        self.status_sub = status_sub
        self.categories = list(categories)

    @property
    def gp(self):
        return (self.group, self.plural)

    def api_version(self, version):
        return version if not self.group else self.group + "/" + version

    def qualified(self):
        return self.plural if not self.group else self.plural + "." + self.group


RESOURCES = [
    Res("", ["v1"], "pods", "Pod", True, short=["po"], categories=["all"],
        fields=["spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                "status.podIP", "status.nominatedNodeName"]),
    Res("", ["v1"], "namespaces", "Namespace", False, short=["ns"], fields=["status.phase"]),
    Res("", ["v1"], "nodes", "Node", False, short=["no"], fields=["spec.unschedulable"]),
    Res("", ["v1"], "services", "Service", True, short=["svc"], categories=["all"],
        fields=["spec.clusterIP", "spec.type"]),
    Res("", ["v1"], "configmaps", "ConfigMap", True, short=["cm"], status_sub=False),
    Res("discovery.k8s.io", ["v1"], "endpointslices", "EndpointSlice", True,
        fields=["addressType"], status_sub=False),
    Res("networking.k8s.io", ["v1", "v1beta1"], "servicecidrs", "ServiceCIDR", False),
    Res("config.flomesh.io", ["v1alpha3", "v1alpha2", "v1alpha1"], "meshconfigs", "MeshConfig",
        True, short=["meshconfig"], crd=True, status_sub=False),
    Res("policy.flomesh.io", ["v1alpha1"], "egresses", "Egress", True, short=["egress"],
        crd=True, status_sub=False),
    Res("config.openservicemesh.io", ["v1alpha2", "v1alpha1"], "meshconfigs", "MeshConfig",
        True, short=["meshconfig"], crd=True, status_sub=False),
    Res("policy.openservicemesh.io", ["v1alpha1"], "egresses", "Egress", True,
        short=["egress"], crd=True, status_sub=False),
]
GROUPS = []  # API groups (not core), in discovery order: built-ins, then CRD groups by name
for _r in RESOURCES:
    if _r.group and _r.group not in GROUPS:
        GROUPS.append(_r.group)
GROUPS = [g for g in GROUPS if not any(r.crd for r in RESOURCES if r.group == g)] + \
    sorted(g for g in GROUPS if any(r.crd for r in RESOURCES if r.group == g))


def group_versions(group):
    out = []
    for r in RESOURCES:
        if r.group == group:
            for v in r.versions:
                if v not in out:
                    out.append(v)
    return out


def find_res(group, version, plural):
    for r in RESOURCES:
        if r.group == group and r.plural == plural and version in r.versions:
            return r
    return None


def find_res_by_kind(api_version, kind):
    group, _, version = api_version.rpartition("/")
    for r in RESOURCES:
        if r.group == group and r.kind == kind and version in r.versions:
            return r, version
    return None, None


# --------------------------------------------------------------------------
# Helpers: Status objects, time, selectors, patches
# --------------------------------------------------------------------------

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
           415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    def __init__(self, code, message, reason=None, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def status(self):
        return make_status(self.code, self.message, self.reason, self.details)


def make_status(code, message, reason=None, details=None):
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": message, "reason": reason or REASONS.get(code, "Unknown")}
    if details is not None:
        st["details"] = details
    st["code"] = code
    return st


def not_found_path():
    return ApiError(404, "the server could not find the requested resource", "NotFound", {})


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(s):
    try:
        return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def human_duration(sec):
    sec = max(0, int(sec))
    if sec < 120:
        return "%ds" % sec
    m = sec // 60
    if m < 10:
        return "%dm%ds" % (m, sec % 60) if sec % 60 else "%dm" % m
    if m < 180:
        return "%dm" % m
    h = sec // 3600
    if h < 8:
        return "%dh%dm" % (h, m % 60) if m % 60 else "%dh" % h
    if h < 48:
        return "%dh" % h
    d = h // 24
    if d < 8:
        return "%dd%dh" % (d, h % 24) if h % 24 else "%dd" % d
    if d < 730:
        return "%dd" % d
    return "%dy" % (d // 365)


def query_bool(q, name):
    """k8s rule: absent -> False; "false"/"0" -> False; anything else (even "") -> True."""
    if name not in q:
        return False
    return q[name][0].lower() not in ("false", "0")


def get_path_value(obj, dotted):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        return ""
    return str(cur)


def split_unescaped(s, sep):
    out, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def unescape_field(v):
    return re.sub(r"\\(.)", r"\1", v)


def parse_field_selector(s, res):
    """Returns a list of (field, op, value); op in '=', '!='. Raises ApiError 400."""
    reqs = []
    if not s:
        return reqs
    for term in split_unescaped(s, ","):
        if term == "":
            continue
        m = None
        for op in ("!=", "==", "="):
            idx = _find_unescaped(term, op)
            if idx >= 0:
                m = (term[:idx], "!=" if op == "!=" else "=", term[idx + len(op):])
                break
        if m is None:
            raise ApiError(400, "invalid selector: '%s'; can't understand '%s'" % (s, term))
        field, op, value = m[0].strip(), m[1], unescape_field(m[2].strip())
        if field not in res.fields:
            raise ApiError(400, "field label not supported: %s" % field)
        reqs.append((field, op, value))
    return reqs


def _find_unescaped(s, token):
    i = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s.startswith(token, i):
            return i
        i += 1
    return -1


def field_matches(reqs, obj):
    for field, op, value in reqs:
        v = get_path_value(obj, field)
        if (v == value) != (op == "="):
            return False
    return True


_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_LABEL_VAL = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


def parse_label_selector(s):
    reqs = []
    if not s or not s.strip():
        return reqs
    terms, depth, cur = [], 0, []
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    terms.append("".join(cur))
    for raw in terms:
        t = raw.strip()
        m = re.fullmatch(r"(!?)\s*(%s)" % _LABEL_KEY, t)
        if m:
            reqs.append((m.group(2), "!exists" if m.group(1) else "exists", None))
            continue
        m = re.fullmatch(r"(%s)\s*(==|=|!=)\s*(%s)" % (_LABEL_KEY, _LABEL_VAL), t)
        if m:
            op = "!=" if m.group(3) == "!=" else "="
            reqs.append((m.group(1), op, m.group(4)))
            continue
        m = re.fullmatch(r"(%s)\s+(in|notin)\s*\(([^)]*)\)" % _LABEL_KEY, t)
        if m:
            vals = [v.strip() for v in m.group(4).split(",")]
            reqs.append((m.group(1), m.group(3), set(vals)))
            continue
        raise ApiError(400, "unable to parse requirement: invalid label selector term %r" % t)
    return reqs


def label_matches(reqs, obj):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, val in reqs:
        has = key in labels
        v = labels.get(key)
        if op == "exists" and not has:
            return False
        if op == "!exists" and has:
            return False
        if op == "=" and (not has or v != val):
            return False
        if op == "!=" and has and v == val:
            return False
        if op == "in" and (not has or v not in val):
            return False
        if op == "notin" and has and v in val:
            return False
    return True


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge_patch(target, patch):
    """Strategic merge patch approximated as a merge patch: lists are replaced,
    $patch: delete / replace on maps are honoured, other $-directives dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    clean = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return _strip_directives(clean)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in clean.items():
        if v is None:
            result.pop(k, None)
        else:
            nv = strategic_merge_patch(result.get(k), v)
            if nv is None:
                result.pop(k, None)
            else:
                result[k] = nv if not isinstance(v, list) else _strip_directives(v)
    return result


def _strip_directives(v):
    if isinstance(v, dict):
        return {k: _strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [_strip_directives(x) for x in v
                if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    return v


def _pointer_parts(ptr):
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise ApiError(422, "invalid JSON pointer %r" % ptr)
    return [p.replace("~1", "/").replace("~0", "~") for p in ptr[1:].split("/")]


def _resolve_parent(doc, parts, ptr):
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(422, "jsonpatch: path %r not found" % ptr)
    return cur


def json_patch(doc, ops):
    """RFC 6902 JSON patch."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def get(ptr):
        parts = _pointer_parts(ptr)
        if not parts:
            return doc
        parent = _resolve_parent(doc, parts, ptr)
        last = parts[-1]
        if isinstance(parent, dict) and last in parent:
            return parent[last]
        if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            return parent[int(last)]
        raise ApiError(422, "jsonpatch: path %r not found" % ptr)

    def remove(ptr):
        parts = _pointer_parts(ptr)
        parent = _resolve_parent(doc, parts, ptr)
        last = parts[-1]
        if isinstance(parent, dict) and last in parent:
            return parent.pop(last)
        if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            return parent.pop(int(last))
        raise ApiError(422, "jsonpatch remove operation does not apply: doc is missing path: %s" % ptr)

    def add(ptr, value, replace=False):
        nonlocal doc
        parts = _pointer_parts(ptr)
        if not parts:
            doc = value
            return
        parent = _resolve_parent(doc, parts, ptr)
        last = parts[-1]
        if isinstance(parent, dict):
            if replace and last not in parent:
                raise ApiError(422, "jsonpatch replace operation does not apply: doc is missing key: %s" % ptr)
            parent[last] = value
        elif isinstance(parent, list):
            if last == "-" and not replace:
                parent.append(value)
            elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
                if replace:
                    parent[int(last)] = value
                else:
                    parent.insert(int(last), value)
            else:
                raise ApiError(422, "jsonpatch: index out of range at %r" % ptr)
        else:
            raise ApiError(422, "jsonpatch: cannot add at %r" % ptr)

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "invalid json patch operation %r" % (op,))
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            remove(path)
        elif kind == "replace":
            add(path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "move":
            v = remove(op["from"])
            add(path, v)
        elif kind == "copy":
            add(path, copy.deepcopy(get(op["from"])))
        elif kind == "test":
            if get(path) != op.get("value"):
                raise ApiError(422, "testing value %s failed" % path)
        else:
            raise ApiError(400, "unknown json patch operation %r" % kind)
    return doc


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------

class Event:
    __slots__ = ("rv", "gp", "type", "obj", "prev")

    def __init__(self, rv, gp, etype, obj, prev):
        self.rv, self.gp, self.type, self.obj, self.prev = rv, gp, etype, obj, prev


class WatchState:
    _ids = 0

    def __init__(self, res, version, ns, fsel, lsel, path, query):
        WatchState._ids += 1
        self.id = WatchState._ids
        self.res, self.version, self.ns = res, version, ns
        self.fsel, self.lsel = fsel, lsel
        self.path, self.query = path, query
        self.queue = deque()
        self.seen_rv = 0  # every event with rv <= seen_rv is delivered or queued
        self.stalled = False
        self.reset = None  # None or dict(mode, partial)
        self.ended = False  # end cleanly (group uninstalled / shutdown)
        self.sent = 0
        self.started = time.time()

    def matches(self, obj):
        if obj is None:
            return False
        md = obj.get("metadata") or {}
        if self.ns is not None and md.get("namespace", "") != self.ns:
            return False
        return field_matches(self.fsel, obj) and label_matches(self.lsel, obj)


DEFAULT_CONFIG = {
    "bookmarkInterval": 60.0,
    "bookmarkBeforeDeadline": True,
    "watchExpiredMode": "event",
    "expiredReason": "Expired",
    "historySize": 1000,
    "defaultWatchTimeout": 1800,
    "rv0IgnoresLimit": True,
    "sendInitialEvents": "support",
    "namespaceLifecycle": True,
    "gzipThreshold": 128 * 1024,
    "tooLargeWaitSeconds": 3.0,
    "watchQueueMax": 100000,
}


class Store:
    def __init__(self, log):
        self.cond = threading.Condition(threading.RLock())
        self.rv = 0
        self.floor = 0  # watch RVs / continue tokens below this are expired
        self.objects = {r.gp: {} for r in RESOURCES}
        self.history = deque()
        self.watches = {}
        self.installed = {g: True for g in GROUPS}
        self.config = dict(DEFAULT_CONFIG)
        self.faults = []
        self.split = {"mode": "normal", "offset": 0, "delayMs": 0}
        self.stall_future = None  # None or pathPrefix for new watches
        self.stopping = False
        self.log = log
        self.stats_lock = threading.Lock()
        self.reset_stats()

    # ---- stats
    def reset_stats(self):
        with self.stats_lock:
            self.stats = {"total": 0, "byVerb": {}, "byVerbPath": {}, "byStatus": {}}
            self.reqlog = deque(maxlen=5000)
            self.reqseq = getattr(self, "reqseq", 0)

    def record(self, entry):
        with self.stats_lock:
            self.reqseq += 1
            entry["seq"] = self.reqseq
            s = self.stats
            s["total"] += 1
            v = entry["verb"]
            s["byVerb"][v] = s["byVerb"].get(v, 0) + 1
            bp = s["byVerbPath"].setdefault(v, {})
            bp[entry["path"]] = bp.get(entry["path"], 0) + 1
            self.reqlog.append(entry)

    def record_status(self, code):
        with self.stats_lock:
            k = str(code)
            self.stats["byStatus"][k] = self.stats["byStatus"].get(k, 0) + 1

    # ---- availability
    def available(self, res):
        return not res.group or self.installed.get(res.group, True)

    # ---- writes (call with self.cond held)
    def _append_history(self, ev):
        self.history.append(ev)
        limit = max(1, int(self.config["historySize"]))
        while len(self.history) > limit:
            old = self.history.popleft()
            self.floor = max(self.floor, old.rv)

    def commit(self, res, key, etype, obj, prev):
        """obj: new state (for DELETED: the final state). Assigns the RV, records
        history and fans out to watches. Returns the stored/sent object."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        table = self.objects[res.gp]
        if etype == "DELETED":
            table.pop(key, None)
        else:
            table[key] = obj
        ev = Event(self.rv, res.gp, etype, obj, prev)
        self._append_history(ev)
        qmax = int(self.config["watchQueueMax"])
        for w in list(self.watches.values()):
            if w.res.gp == res.gp:
                w.queue.append(ev)
                if len(w.queue) > qmax:
                    w.ended = True  # like the cacher dropping a slow watcher
        self.cond.notify_all()
        return obj

    def compact(self, upto=None):
        with self.cond:
            upto = self.rv if upto is None else min(int(upto), self.rv)
            while self.history and self.history[0].rv <= upto:
                self.history.popleft()
            self.floor = max(self.floor, upto)
            return upto

    def snapshot(self, res, rv):
        """Objects of res as they were at rv (rv >= floor). Returns dict key->obj."""
        table = dict(self.objects[res.gp])
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.gp != res.gp:
                continue
            key = _key(ev.obj)
            if ev.type == "ADDED":
                table.pop(key, None)
            else:
                table[key] = ev.prev
        return table

    def wait_for_rv(self, rv):
        """Waits (cond held) until self.rv >= rv; raises 504 TooLarge after a while."""
        deadline = time.time() + float(self.config["tooLargeWaitSeconds"])
        while self.rv < rv:
            left = deadline - time.time()
            if left <= 0:
                raise too_large_error(rv, self.rv)
            self.cond.wait(left)


def too_large_error(rv, cur):
    return ApiError(504, "Too large resource version: %d, current: %d" % (rv, cur), "Timeout",
                    {"causes": [{"reason": "ResourceVersionTooLarge",
                                 "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


def _key(obj):
    md = obj.get("metadata") or {}
    return (md.get("namespace", "") or "", md.get("name", ""))


def key_str(key):
    return key[0] + "/" + key[1] if key[0] else key[1]


def gen_suffix(n=5):
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


# --------------------------------------------------------------------------
# The API: object operations (independent of HTTP)
# --------------------------------------------------------------------------

class Api:
    def __init__(self, store):
        self.s = store

    def expired(self, message):
        return ApiError(410, message, self.s.config["expiredReason"])

    def _serve_obj(self, res, version, obj):
        if obj is None:
            return None
        out = dict(obj)
        out["apiVersion"] = res.api_version(version)
        out["kind"] = res.kind
        # keep apiVersion/kind first, like the real server's output
        return {"apiVersion": out.pop("apiVersion"), "kind": out.pop("kind"), **out}

    def not_found(self, res, name):
        return ApiError(404, '%s "%s" not found' % (res.qualified(), name), "NotFound",
                        {"name": name, "group": res.group, "kind": res.plural})

    def _check_namespace_exists(self, res, ns):
        if res.namespaced and self.s.config["namespaceLifecycle"]:
            nsres = find_res("", "v1", "namespaces")
            if ("", ns) not in self.s.objects[nsres.gp]:
                raise ApiError(404, 'namespaces "%s" not found' % ns, "NotFound",
                               {"name": ns, "kind": "namespaces"})

    def _validate_body(self, res, version, ns, body, name=None):
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format")
        av, kind = body.get("apiVersion"), body.get("kind")
        if not av or not kind:
            raise ApiError(400, "Object 'Kind' is missing in '%s'" % json.dumps(body)[:200]
                           if not kind else "Object 'apiVersion' is missing")
        if kind != res.kind:
            raise ApiError(400, "%s in version \"%s\" cannot be handled as a %s: "
                           "the kind in the data (%s) does not match the expected kind (%s)"
                           % (kind, version, res.kind, kind, res.kind))
        group, _, ver = av.rpartition("/")
        if group != res.group or ver not in res.versions:
            raise ApiError(400, "the API version in the data (%s) does not match the expected "
                           "API version (%s)" % (av, res.api_version(version)))
        md = body.get("metadata")
        if md is None or not isinstance(md, dict):
            md = body["metadata"] = {}
        if res.namespaced:
            bns = md.get("namespace")
            if bns and bns != ns:
                raise ApiError(400, "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        if name is not None and md.get("name") and md["name"] != name:
            raise ApiError(400, "the name of the object (%s) does not match the name on the URL (%s)"
                           % (md["name"], name))
        if name is not None:
            md["name"] = name

    def _invalid(self, res, name, msg, field):
        return ApiError(422, '%s "%s" is invalid: %s: %s' % (res.kind, name, field, msg), "Invalid",
                        {"name": name, "group": res.group, "kind": res.kind,
                         "causes": [{"reason": "FieldValueRequired", "message": msg,
                                     "field": field}]})

    # ---- create
    def create(self, res, version, ns, body, dry_run=False, trusted=False):
        with self.s.cond:
            self._validate_body(res, version, ns, body)
            md = body["metadata"]
            if not md.get("name"):
                if md.get("generateName"):
                    md["name"] = md["generateName"] + gen_suffix()
                else:
                    raise self._invalid(res, "", "Required value: name or generateName is required",
                                        "metadata.name")
            name = md["name"]
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
                raise ApiError(422, '%s "%s" is invalid: metadata.name: Invalid value: "%s": a '
                               "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                               "characters, '-' or '.'" % (res.kind, name, name), "Invalid",
                               {"name": name, "group": res.group, "kind": res.kind})
            if res.namespaced:
                self._check_namespace_exists(res, ns)
            key = (ns or "", name)
            if key in self.s.objects[res.gp]:
                raise ApiError(409, '%s "%s" already exists' % (res.qualified(), name),
                               "AlreadyExists", {"name": name, "group": res.group,
                                                 "kind": res.plural})
            for f in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                md.pop(f, None)
            if not (trusted and md.get("uid")):
                md["uid"] = str(uuid.uuid4())
            if not (trusted and md.get("creationTimestamp")):
                md["creationTimestamp"] = now_rfc3339()
            md["generation"] = 1
            body["apiVersion"] = res.api_version(res.versions[0])
            if res.plural == "pods" and not trusted:  # as the pod strategy does on create
                body["status"] = {"phase": "Pending"}
            if res.plural == "namespaces":
                md.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                body.setdefault("status", {})["phase"] = "Active"
            if dry_run:
                body["metadata"]["resourceVersion"] = ""
                return self._serve_obj(res, version, body)
            obj = self.s.commit(res, key, "ADDED", body, None)
            return self._serve_obj(res, version, obj)

    # ---- get
    def get(self, res, version, ns, name):
        with self.s.cond:
            obj = self.s.objects[res.gp].get((ns or "", name))
            if obj is None:
                raise self.not_found(res, name)
            return self._serve_obj(res, version, obj)

    # ---- update helpers
    def _finish_update(self, res, version, key, old, new, dry_run):
        """Common tail of PUT / PATCH: immutable fields, generation, no-op detection."""
        md, omd = new.setdefault("metadata", {}), old["metadata"]
        for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if f in omd:
                md[f] = omd[f]
            else:
                md.pop(f, None)
        md["name"] = omd["name"]
        if res.namespaced:
            md["namespace"] = omd["namespace"]
        else:
            md.pop("namespace", None)
        new["apiVersion"] = old["apiVersion"]
        new["kind"] = res.kind
        md["resourceVersion"] = omd["resourceVersion"]

        def body_wo(o):
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        md["generation"] = omd.get("generation", 1) + (0 if body_wo(new) == body_wo(old) else 1)
        if new == old:
            return self._serve_obj(res, version, old)
        if dry_run:
            return self._serve_obj(res, version, new)
        if omd.get("deletionTimestamp") and not md.get("finalizers"):
            obj = self.s.commit(res, key, "DELETED", new, old)
            return self._serve_obj(res, version, obj)
        obj = self.s.commit(res, key, "MODIFIED", new, old)
        return self._serve_obj(res, version, obj)

    def update(self, res, version, ns, name, body, subresource=None, dry_run=False):
        with self.s.cond:
            self._validate_body(res, version, ns, body, name)
            key = (ns or "", name)
            old = self.s.objects[res.gp].get(key)
            if old is None:
                raise self.not_found(res, name)
            want_rv = body["metadata"].get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise self.conflict(res, name)
            if subresource == "status":
                new = copy.deepcopy(old)
                if "status" in body:
                    new["status"] = copy.deepcopy(body["status"])
                else:
                    new.pop("status", None)
            else:
                new = copy.deepcopy(body)
                if res.status_sub:  # status is ignored on the main resource
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                    else:
                        new.pop("status", None)
            return self._finish_update(res, version, key, old, new, dry_run)

    def conflict(self, res, name):
        return ApiError(409, 'Operation cannot be fulfilled on %s "%s": the object has been '
                        "modified; please apply your changes to the latest version and try again"
                        % (res.qualified(), name), "Conflict",
                        {"name": name, "group": res.group, "kind": res.plural})

    def patch(self, res, version, ns, name, ctype, patch_body, subresource=None, dry_run=False):
        ctype = (ctype or "").split(";")[0].strip().lower()
        if ctype == "application/apply-patch+yaml":
            raise ApiError(415, "the fake API server does not implement server-side apply "
                           "(application/apply-patch+yaml)", "UnsupportedMediaType")
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                         "application/json-patch+json"):
            raise ApiError(415, "the body of the request was in an unknown format - accepted "
                           "media types include: application/json-patch+json, "
                           "application/merge-patch+json, application/apply-patch+yaml",
                           "UnsupportedMediaType")
        try:
            patch_doc = json.loads(patch_body or b"null")
        except ValueError as e:
            raise ApiError(400, "error decoding patch: %s" % e)
        with self.s.cond:
            key = (ns or "", name)
            old = self.s.objects[res.gp].get(key)
            if old is None:
                raise self.not_found(res, name)
            cur = self._serve_obj(res, version, old)
            if ctype == "application/merge-patch+json":
                if not isinstance(patch_doc, dict):
                    raise ApiError(400, "merge patch must be a JSON object")
                new = merge_patch(cur, patch_doc)
            elif ctype == "application/strategic-merge-patch+json":
                if not isinstance(patch_doc, dict):
                    raise ApiError(400, "strategic merge patch must be a JSON object")
                new = strategic_merge_patch(cur, patch_doc)
            else:
                new = json_patch(cur, patch_doc)
            if not isinstance(new, dict):
                raise ApiError(422, "patch result is not an object")
            pmd = (patch_doc.get("metadata") or {}) if isinstance(patch_doc, dict) else {}
            want_rv = pmd.get("resourceVersion") if isinstance(pmd, dict) else None
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise self.conflict(res, name)
            nmd = new.get("metadata") or {}
            if nmd.get("name", name) != name:
                raise ApiError(400, "the name of the object (%s) does not match the name on the "
                               "URL (%s)" % (nmd.get("name"), name))
            if res.namespaced and nmd.get("namespace", ns) != ns:
                raise ApiError(400, "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            if subresource == "status":
                nn = copy.deepcopy(old)
                if "status" in new:
                    nn["status"] = new["status"]
                else:
                    nn.pop("status", None)
                new = nn
            elif res.status_sub:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            return self._finish_update(res, version, key, old, new, dry_run)

    def delete(self, res, version, ns, name, opts=None, dry_run=False):
        opts = opts or {}
        with self.s.cond:
            key = (ns or "", name)
            old = self.s.objects[res.gp].get(key)
            if old is None:
                raise self.not_found(res, name)
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise ApiError(409, "Precondition failed: UID in precondition: %s, UID in object "
                               "meta: %s" % (pre["uid"], old["metadata"].get("uid")), "Conflict")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise self.conflict(res, name)
            if dry_run:
                return self._serve_obj(res, version, old)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return self._serve_obj(res, version, old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                obj = self.s.commit(res, key, "MODIFIED", new, old)
                return self._serve_obj(res, version, obj)
            if res.plural == "namespaces":  # the namespace controller, in one go
                for r in RESOURCES:
                    if r.namespaced:
                        for k in sorted(k for k in self.s.objects[r.gp] if k[0] == name):
                            o = self.s.objects[r.gp][k]
                            self.s.commit(r, k, "DELETED", o, o)
            obj = self.s.commit(res, key, "DELETED", old, old)
            return self._serve_obj(res, version, obj)

    # ---- list
    def list(self, res, version, ns, q):
        fsel = parse_field_selector(q.get("fieldSelector", [""])[0], res)
        lsel = parse_label_selector(q.get("labelSelector", [""])[0])
        rv_s = q.get("resourceVersion", [None])[0]
        match = q.get("resourceVersionMatch", [""])[0]
        cont = q.get("continue", [""])[0]
        try:
            limit = int(q.get("limit", ["0"])[0] or 0)
            if limit < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "invalid limit: %r" % q.get("limit"))
        rv_n = None
        if rv_s not in (None, ""):
            try:
                rv_n = int(rv_s)
                if rv_n < 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "invalid resource version: %s" % rv_s)
        if match and match not in ("Exact", "NotOlderThan"):
            raise ApiError(400, "resourceVersionMatch: Unsupported value: \"%s\"" % match)
        if match and rv_n is None:
            raise ApiError(422, "resourceVersionMatch is forbidden unless resourceVersion is provided",
                           "Invalid")
        if match == "Exact" and rv_n == 0:
            raise ApiError(422, "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                           "Invalid")
        if cont and rv_n not in (None, 0):
            raise ApiError(400, "specifying resource version is not allowed when using continue")
        if cont and match:
            raise ApiError(422, "resourceVersionMatch is forbidden when continue is provided", "Invalid")
        with self.s.cond:
            start = None
            if cont:
                try:
                    tok = json.loads(b64url_decode(cont))
                    list_rv, start = int(tok["rv"]), tok["start"]
                    if tok.get("v") != "meta.k8s.io/v1" or not isinstance(start, str):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    raise ApiError(400, "continue key is not valid: %s" % cont)
                if list_rv < self.s.floor:
                    raise self.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter, or use "
                        "the continue token in this response to retrieve the remainder of the "
                        "results. Continuing with the provided token results in an inconsistent "
                        "list - objects that were created, modified, or deleted between the time "
                        "the first chunk was returned and now may show up in the list.")
                table = self.s.snapshot(res, list_rv)
            elif rv_n is not None and rv_n > 0 and (match == "Exact" or (limit > 0 and not match)):
                if rv_n > self.s.rv:
                    self.s.wait_for_rv(rv_n)
                if rv_n < self.s.floor:
                    raise self.expired("too old resource version: %d (%d)" % (rv_n, self.s.floor))
                list_rv = rv_n
                table = self.s.snapshot(res, rv_n)
            else:
                if rv_n is not None and rv_n > self.s.rv:
                    self.s.wait_for_rv(rv_n)
                list_rv = self.s.rv
                table = dict(self.s.objects[res.gp])
                if rv_n == 0 and not cont and self.s.config["rv0IgnoresLimit"]:
                    limit = 0
            keys = sorted(table)
            items = []
            for k in keys:
                if start is not None and key_str(k) + "\x00" <= start:
                    continue
                o = table[k]
                if ns is not None and k[0] != ns:
                    continue
                if field_matches(fsel, o) and label_matches(lsel, o):
                    items.append(o)
            meta = {"resourceVersion": str(list_rv)}
            if limit and len(items) > limit:
                remaining = len(items) - limit
                items = items[:limit]
                meta["continue"] = b64url(dumps({"v": "meta.k8s.io/v1", "rv": list_rv,
                                                 "start": key_str(_key(items[-1])) + "\x00"}))
                if not fsel and not lsel:
                    meta["remainingItemCount"] = remaining
            out_items = []
            for o in items:
                if res.crd:  # custom resources are unstructured: items keep kind/apiVersion
                    out_items.append(self._serve_obj(res, version, o))
                else:  # built-in types: the typed list's items carry neither
                    so = dict(o)
                    so.pop("apiVersion", None)
                    so.pop("kind", None)
                    out_items.append(so)
            return {"kind": res.kind + "List", "apiVersion": res.api_version(version),
                    "metadata": meta, "items": out_items}

    def delete_collection(self, res, version, ns, q, dry_run=False):
        lst = self.list(res, version, ns, {k: v for k, v in q.items()
                                           if k in ("fieldSelector", "labelSelector")})
        out = []
        for it in lst["items"]:
            md = it["metadata"]
            try:
                self.delete(res, version, md.get("namespace"), md["name"], dry_run=dry_run)
                out.append(it)
            except ApiError:
                pass
        return {"kind": res.kind + "List", "apiVersion": res.api_version(version),
                "metadata": {"resourceVersion": str(self.s.rv)}, "items": out}


# --------------------------------------------------------------------------
# Tables (kubectl get asks for them)
# --------------------------------------------------------------------------

def table_columns(res):
    cols = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
             "description": "Name must be unique within a namespace."}]
    if res.plural == "pods":
        cols += [{"name": "Status", "type": "string", "format": "", "priority": 0,
                  "description": "The phase of the pod."},
                 {"name": "Node", "type": "string", "format": "", "priority": 0,
                  "description": "The node the pod runs on."}]
    elif res.plural in ("namespaces",):
        cols += [{"name": "Status", "type": "string", "format": "", "priority": 0,
                  "description": "The phase of the namespace."}]
    cols.append({"name": "Age", "type": "string", "format": "", "priority": 0,
                 "description": "CreationTimestamp of the object."})
    return cols


def table_row(res, obj, include):
    md = obj.get("metadata") or {}
    ts = parse_rfc3339(md.get("creationTimestamp"))
    age = human_duration(time.time() - ts) if ts else "<unknown>"
    cells = [md.get("name", "")]
    if res.plural == "pods":
        cells += [get_path_value(obj, "status.phase") or "Pending",
                  get_path_value(obj, "spec.nodeName") or "<none>"]
    elif res.plural == "namespaces":
        cells += [get_path_value(obj, "status.phase") or "Active"]
    cells.append(age)
    row = {"cells": cells}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": md}
    return row


def to_table(res, objs, meta, include):
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": table_columns(res),
            "rows": [table_row(res, o, include) for o in objs]}


TABLE_CT = "application/json;as=Table;v=v1;g=meta.k8s.io"


def wants_table(accept):
    for part in (accept or "").split(","):
        p = [x.strip() for x in part.split(";")]
        if p[0] in ("application/json", "*/*") and "as=Table" in p and "g=meta.k8s.io" in p:
            return True
        if p[0] in ("application/json", "*/*") and "as=Table" not in p:
            return False
    return False


# --------------------------------------------------------------------------
# Discovery and OpenAPI
# --------------------------------------------------------------------------

def api_resource(res, version=None):
    out = [{"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
            "kind": res.kind, "verbs": list(ALL_VERBS)}]
    if res.short:
        out[0]["shortNames"] = list(res.short)
    if res.categories:
        out[0]["categories"] = list(res.categories)
    out[0]["storageVersionHash"] = b64url(dumps([res.group, res.plural]))[:11]
    if res.status_sub:
        out.append({"name": res.plural + "/status", "singularName": "", "namespaced": res.namespaced,
                    "kind": res.kind, "verbs": ["get", "patch", "update"]})
    return out


def resource_list(group, version):
    gv = version if not group else group + "/" + version
    resources = []
    for r in RESOURCES:
        if r.group == group and version in r.versions:
            resources += api_resource(r, version)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


def api_group(group):
    versions = [{"groupVersion": group + "/" + v, "version": v} for v in group_versions(group)]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
            "preferredVersion": versions[0]}


def openapi_v3_root(store):
    paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + _ohash("api/v1")}}
    for g in GROUPS:
        if store.installed.get(g):
            for v in group_versions(g):
                p = "apis/%s/%s" % (g, v)
                paths[p] = {"serverRelativeURL": "/openapi/v3/%s?hash=%s" % (p, _ohash(p))}
    return {"paths": paths}


def _ohash(p):
    return hashlib.sha256(p.encode()).hexdigest()[:16].upper()


def openapi_v3_doc(group, version):
    """A small OpenAPI v3 document: enough for kubectl's field-validation check
    (PATCH operations carrying x-kubernetes-group-version-kind and the
    fieldValidation parameter). Schemas allow anything."""
    paths, schemas = {}, {}
    params = [{"name": n, "in": "query", "schema": {"type": "string"}}
              for n in ("dryRun", "fieldManager", "fieldValidation", "pretty")]
    for r in RESOURCES:
        if r.group != group or version not in r.versions:
            continue
        gvk = {"group": group, "version": version, "kind": r.kind}
        sname = "%s.%s.%s" % (group or "core", version, r.kind)
        schemas[sname] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                          "x-kubernetes-group-version-kind": [gvk]}
        base = ("/api/" + version) if not group else ("/apis/%s/%s" % (group, version))
        if r.namespaced:
            base += "/namespaces/{namespace}"
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params,
              "responses": {"200": {"description": "OK", "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/" + sname}}}}}}
        paths[base + "/" + r.plural + "/{name}"] = {
            "get": dict(op, **{"x-kubernetes-action": "get"}),
            "put": dict(op, **{"x-kubernetes-action": "put"}),
            "patch": dict(op, **{"x-kubernetes-action": "patch"}),
            "delete": dict(op, **{"x-kubernetes-action": "delete"})}
        paths[base + "/" + r.plural] = {
            "get": dict(op, **{"x-kubernetes-action": "list"}),
            "post": dict(op, **{"x-kubernetes-action": "post"})}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (fake)", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


VERSION_INFO = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0",
                "compiler": "gc", "platform": "linux/amd64"}


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver"
    sys_version = ""

    # -- plumbing
    def setup(self):
        conn = self.request
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(10)
            conn.do_handshake()
            conn.settimeout(None)
        super().setup()
        self._dead = False

    def finish(self):
        if self._dead:
            return
        try:
            super().finish()
        except (OSError, ssl.SSLError):
            pass

    def log_message(self, fmt, *args):
        pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, ClientGone, BrokenPipeError, TimeoutError):
            self.close_connection = True
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = \
        lambda self: self.dispatch()

    @property
    def store(self):
        return self.server.store

    @property
    def api(self):
        return self.server.api

    def log(self, msg):
        self.server.write_log(msg)

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send_body(self, code, body, ctype="application/json", headers=None):
        if self.command != "HEAD" and len(body) >= int(self.store.config["gzipThreshold"]) and \
                "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            headers = dict(headers or {}, **{"Content-Encoding": "gzip"})
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.status_code = code
        self.store.record_status(code)

    def send_json(self, code, obj, headers=None, ctype="application/json"):
        self.send_body(code, dumps(obj) + b"\n", ctype, headers)

    def send_error_status(self, err):
        self.send_json(err.code, err.status(), err.headers)

    # -- dispatch
    def dispatch(self):
        self.status_code = 0
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            body = self.read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        if path.startswith("/_fake/") or path == "/_fake":
            try:
                self.control(path, q, body)
            except ApiError as e:
                self.send_json(e.code, {"error": e.message})
            except Exception as e:  # pragma: no cover - keep serving
                self.log("control error: %s\n%s" % (e, traceback.format_exc()))
                self.send_json(400, {"error": str(e)})
            self.log("%s %s -> %s (control)" % (self.command, self.path, self.status_code))
            return
        verb = self.classify(path, q)
        entry = {"time": time.time(), "method": self.command, "path": path,
                 "query": {k: v[0] for k, v in q.items()}, "verb": verb, "status": None,
                 "userAgent": self.headers.get("User-Agent", "")}
        try:
            self.authenticate()
            self.store.record(entry)
            self.inject_fault(path, verb)
            self.route(path, q, body, verb)
        except ApiError as e:
            if entry.get("seq") is None:
                self.store.record(entry)
            self.send_error_status(e)
        except (ConnectionError, BrokenPipeError, ssl.SSLError, ClientGone):
            self.close_connection = True
        except Exception as e:
            self.log("internal error on %s: %s\n%s" % (self.path, e, traceback.format_exc()))
            try:
                self.send_error_status(ApiError(500, "internal error in the fake: %s" % e))
            except OSError:
                self.close_connection = True
        entry["status"] = self.status_code
        self.log("%s %s -> %s [%s]" % (self.command, self.path, self.status_code, verb))

    def authenticate(self):
        try:
            with open(self.server.token_file, "r") as f:
                token = f.read().strip()
        except OSError:
            token = ""
        auth = self.headers.get("Authorization") or ""
        if not token or not auth.startswith("Bearer ") or auth[7:].strip() != token:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def inject_fault(self, path, verb):
        with self.store.cond:
            for f in self.store.faults:
                if f["count"] == 0:
                    continue
                if not path.startswith(f.get("pathPrefix", "")):
                    continue
                if f.get("verb") and f["verb"] != verb:
                    continue
                if f.get("method") and f["method"].upper() != self.command:
                    continue
                if f["count"] > 0:
                    f["count"] -= 1
                code = int(f["status"])
                headers = {}
                details = None
                if f.get("retryAfter") is not None:
                    headers["Retry-After"] = str(f["retryAfter"])
                    details = {"retryAfterSeconds": int(f["retryAfter"])}
                msg = f.get("message") or {
                    429: "Too many requests, please try again later.",
                    500: "Internal error occurred: injected fault",
                    503: "the server is currently unable to handle the request"}.get(
                        code, "injected fault %d" % code)
                raise ApiError(code, msg, f.get("reason"), details, headers)

    def classify(self, path, q):
        if path in ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz") or \
                path.startswith("/openapi") or re.fullmatch(r"/api/[^/]+|/apis/[^/]+(/[^/]+)?", path):
            return "discovery"
        m = self.command
        if m == "GET":
            if query_bool(q, "watch"):
                return "watch"
            try:
                p = self.parse_resource_path(path)
            except ApiError:
                return "get"
            return "list" if p and p[3] is None else "get"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(m, m.lower())

    def parse_resource_path(self, path):
        """-> (res, version, ns, name, subresource) or raises 404."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found_path()
        if group and not self.store.installed.get(group, False):
            raise not_found_path()
        if version not in (group_versions(group) if group else ["v1"]):
            raise not_found_path()
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and find_res(group, version, rest[2]) and \
                find_res(group, version, rest[2]).namespaced:
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise not_found_path()
        res = find_res(group, version, rest[0])
        if res is None:
            raise not_found_path()
        if res.namespaced and ns is None and len(rest) > 1:
            raise not_found_path()
        if not res.namespaced and ns is not None:
            raise not_found_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and res.status_sub):
            raise not_found_path()
        return res, version, ns, name, sub

    # -- routing
    def route(self, path, q, body, verb):
        if path in ("/healthz", "/livez", "/readyz"):
            return self.send_body(200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            return self.send_json(200, VERSION_INFO)
        if path == "/api":
            host, port = self.server.server_address[:2]
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [
                                            {"clientCIDR": "0.0.0.0/0",
                                             "serverAddress": "%s:%d" % (host, port)}]})
        if path == "/api/v1":
            return self.send_json(200, resource_list("", "v1"))
        if path == "/apis":
            groups = [api_group(g) for g in GROUPS if self.store.installed.get(g)]
            for g in groups:
                g.pop("kind")
                g.pop("apiVersion")
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        m = re.fullmatch(r"/apis/([^/]+)/?", path)
        if m:
            if not self.store.installed.get(m.group(1)):
                raise not_found_path()
            return self.send_json(200, api_group(m.group(1)))
        m = re.fullmatch(r"/apis/([^/]+)/([^/]+)/?", path)
        if m:
            g, v = m.groups()
            if not self.store.installed.get(g) or v not in group_versions(g):
                raise not_found_path()
            return self.send_json(200, resource_list(g, v))
        if path == "/openapi/v3":
            return self.send_json(200, openapi_v3_root(self.store))
        m = re.fullmatch(r"/openapi/v3/(api/v1|apis/([^/]+)/([^/]+))", path)
        if m:
            if m.group(1) == "api/v1":
                return self.send_json(200, openapi_v3_doc("", "v1"))
            g, v = m.group(2), m.group(3)
            if not self.store.installed.get(g) or v not in group_versions(g):
                raise not_found_path()
            return self.send_json(200, openapi_v3_doc(g, v))
        if path.startswith("/openapi/"):
            raise not_found_path()
        res, version, ns, name, sub = self.parse_resource_path(path)
        if not self.store.available(res):
            raise not_found_path()
        dry = "dryRun" in q and q["dryRun"][0] == "All"
        table = wants_table(self.headers.get("Accept"))
        include = q.get("includeObject", ["Metadata"])[0] or "Metadata"
        cmd = self.command
        if cmd == "GET" and verb == "watch":
            if name is not None:
                if sub is not None:
                    raise ApiError(405, "watch is not supported on subresources", "MethodNotAllowed")
                fs = q.get("fieldSelector", [""])[0]
                q["fieldSelector"] = ["metadata.name=" + name + ("," + fs if fs else "")]
            return self.watch(res, version, ns, q, table, include)
        if cmd == "GET" and name is None:
            lst = self.api.list(res, version, ns, q)
            if table:
                items = [dict(it, apiVersion=lst["apiVersion"], kind=res.kind) for it in lst["items"]]
                return self.send_json(200, to_table(res, items, lst["metadata"], include),
                                      ctype=TABLE_CT)
            return self.send_json(200, lst)
        if cmd == "GET":
            obj = self.api.get(res, version, ns, name)
            if table:
                meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                return self.send_json(200, to_table(res, [obj], meta, include), ctype=TABLE_CT)
            return self.send_json(200, obj)
        if cmd == "POST" and name is None:
            if res.namespaced and ns is None:
                raise ApiError(405, "the server does not allow this method on the requested "
                               "resource", "MethodNotAllowed")
            obj = self.api.create(res, version, ns, self.parse_json(body), dry)
            return self.send_json(201, obj)
        if cmd == "PUT" and name is not None:
            obj = self.api.update(res, version, ns, name, self.parse_json(body), sub, dry)
            return self.send_json(200, obj)
        if cmd == "PATCH" and name is not None:
            obj = self.api.patch(res, version, ns, name, self.headers.get("Content-Type"), body,
                                 sub, dry)
            return self.send_json(200, obj)
        if cmd == "DELETE" and name is not None and sub is None:
            opts = self.parse_json(body) if body.strip() else {}
            obj = self.api.delete(res, version, ns, name, opts, dry)
            return self.send_json(200, obj)
        if cmd == "DELETE" and name is None:
            return self.send_json(200, self.api.delete_collection(res, version, ns, q, dry))
        raise ApiError(405, "the server does not allow this method on the requested resource",
                       "MethodNotAllowed")

    def parse_json(self, body):
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype not in ("application/json", "*/*", ""):
            raise ApiError(415, "the body of the request was in an unknown format - accepted "
                           "media types include: application/json, application/yaml, "
                           "application/vnd.kubernetes.protobuf", "UnsupportedMediaType")
        try:
            return json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "the body of the request was in an unknown format: %s" % e)

    # -- watch
    def write_chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def write_events(self, lines):
        if not lines:
            return
        split = dict(self.store.split)
        mode = split.get("mode", "normal")
        delay = float(split.get("delayMs") or 0) / 1000.0
        if mode == "normal":
            self.write_chunk(b"".join(lines))
            return
        for data in lines:
            if mode == "bytes":
                for i in range(len(data)):
                    self.write_chunk(data[i:i + 1])
                    if delay:
                        time.sleep(delay)
            elif mode == "offset":
                k = max(0, min(int(split.get("offset") or 0), len(data)))
                self.write_chunk(data[:k])
                if delay:
                    time.sleep(delay)
                self.write_chunk(data[k:])
            else:  # per-event
                self.write_chunk(data)
                if delay:
                    time.sleep(delay)

    def client_gone(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        if not r:
            return False
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.setblocking(False)
                try:
                    data = self.connection.recv(1)
                except ssl.SSLWantReadError:
                    return False
                finally:
                    self.connection.setblocking(True)
            else:
                data = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return data == b""
        except BlockingIOError:
            return False
        except (OSError, ssl.SSLError):
            return True

    def abort_connection(self, mode, partial):
        try:
            if partial:
                frag = b'{"type":"MODIFIED","object":{"kind":"'
                self.wfile.write(b"%x\r\n%s" % (len(frag) * 3, frag))
        except OSError:
            pass
        sock = self.connection
        try:
            if mode == "rst":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.rfile.close()
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
        self._dead = True
        self.close_connection = True

    def watch(self, res, version, ns, q, table, include):
        st, api, cfg = self.store, self.api, self.store.config
        fsel = parse_field_selector(q.get("fieldSelector", [""])[0], res)
        lsel = parse_label_selector(q.get("labelSelector", [""])[0])
        rv_s = q.get("resourceVersion", [""])[0]
        bookmarks = query_bool(q, "allowWatchBookmarks")
        sie_given = "sendInitialEvents" in q
        sie = query_bool(q, "sendInitialEvents")
        match = q.get("resourceVersionMatch", [""])[0]
        try:
            timeout = int(q["timeoutSeconds"][0]) if q.get("timeoutSeconds", [""])[0] else 0
            if timeout <= 0:  # unset or 0: the server's own limit
                timeout = int(cfg["defaultWatchTimeout"])
            rv_n = int(rv_s) if rv_s else None
            if rv_n is not None and rv_n < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "invalid resourceVersion or timeoutSeconds")
        if sie_given:
            if cfg["sendInitialEvents"] != "support":
                raise ApiError(422, "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: "
                               "Forbidden: sendInitialEvents is forbidden for watch unless the "
                               "WatchList feature gate is enabled", "Invalid")
            if match != "NotOlderThan":
                raise ApiError(422, "resourceVersionMatch: Forbidden: sendInitialEvents requires "
                               "setting resourceVersionMatch to NotOlderThan", "Invalid")
            if not bookmarks:
                raise ApiError(422, "allowWatchBookmarks: Forbidden: sendInitialEvents requires "
                               "setting allowWatchBookmarks to true", "Invalid")
        elif match:
            raise ApiError(422, "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden "
                           "for watch unless sendInitialEvents is provided", "Invalid")
        w = WatchState(res, version, ns, fsel, lsel, self.path, {k: v[0] for k, v in q.items()})
        initial, pre_error = [], None
        with st.cond:
            if rv_n is not None and rv_n > st.rv:
                try:
                    st.wait_for_rv(rv_n)
                except ApiError as e:
                    if cfg["watchExpiredMode"] == "status":
                        raise
                    pre_error = e
            if pre_error is None:
                if (sie_given and sie) or (not sie_given and rv_n in (None, 0)):
                    for k in sorted(st.objects[res.gp]):
                        o = st.objects[res.gp][k]
                        if w.matches(o):
                            initial.append(("ADDED", o))
                    start_rv = st.rv
                else:
                    start_rv = rv_n if rv_n is not None else st.rv
                    if start_rv < st.floor:
                        err = api.expired("too old resource version: %d (%d)" % (start_rv, st.floor))
                        if cfg["watchExpiredMode"] == "status":
                            raise err
                        pre_error = err
                    else:
                        for ev in st.history:
                            if ev.rv > start_rv and ev.gp == res.gp:
                                w.queue.append(ev)
                w.seen_rv = st.rv
                if st.stall_future is not None and self.path.startswith(st.stall_future):
                    w.stalled = True
                if pre_error is None:
                    st.watches[w.id] = w
        ctype = TABLE_CT if table else "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.status_code = 200
        st.record_status(200)

        def enc(etype, obj):
            o = api._serve_obj(res, version, obj)
            if table:
                o = to_table(res, [o], {"resourceVersion": o["metadata"].get("resourceVersion", "")},
                             include)
            return dumps({"type": etype, "object": o}) + b"\n"

        def bookmark(rv, annotations=None):
            md = {"resourceVersion": str(rv)}
            if annotations:
                md["annotations"] = annotations
            if table:
                o = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md,
                     "columnDefinitions": None, "rows": None}
            else:
                o = {"kind": res.kind, "apiVersion": res.api_version(version), "metadata": md}
            return dumps({"type": "BOOKMARK", "object": o}) + b"\n"

        try:
            if pre_error is not None:
                self.write_events([dumps({"type": "ERROR", "object": pre_error.status()}) + b"\n"])
                self.wfile.write(b"0\r\n\r\n")
                return
            lines = [enc(t, o) for t, o in initial]
            if sie_given and sie:
                lines.append(bookmark(start_rv, {"k8s.io/initial-events-end": "true"}))
            if lines and not w.stalled:
                self.write_events(lines)
                w.sent += len(lines)
                lines = []
            deadline = time.time() + timeout
            interval = max(0.05, float(cfg["bookmarkInterval"]))
            next_bm = time.time() + interval
            while True:
                reset = None
                with st.cond:
                    while True:
                        if st.stopping or w.ended:
                            break
                        if w.reset is not None:
                            reset = w.reset
                            break
                        now = time.time()
                        if not w.stalled:
                            if w.queue or lines:
                                break
                            if now >= deadline:
                                break
                            if bookmarks and now >= next_bm:
                                break
                        wait = 0.5
                        if not w.stalled:
                            wait = min(wait, deadline - now)
                            if bookmarks:
                                wait = min(wait, next_bm - now)
                        st.cond.wait(max(0.01, wait))
                        if self.client_gone():
                            raise ClientGone()
                    if reset is None and not (st.stopping or w.ended):
                        for ev in w.queue:
                            item = self.convert_event(w, ev)
                            if item:
                                lines.append(enc(*item))
                        w.queue.clear()
                        w.seen_rv = st.rv
                    seen = w.seen_rv
                if reset is not None:
                    self.abort_connection(reset.get("mode", "rst"), reset.get("partial", False))
                    return
                if st.stopping or w.ended:
                    break
                now = time.time()
                if lines:
                    self.write_events(lines)
                    w.sent += len(lines)
                    lines = []
                if now >= deadline:
                    if bookmarks and cfg["bookmarkBeforeDeadline"]:
                        self.write_events([bookmark(seen)])
                    break
                if bookmarks and now >= next_bm:
                    self.write_events([bookmark(seen)])
                    w.sent += 1
                    next_bm = now + max(0.05, float(cfg["bookmarkInterval"]))
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, ssl.SSLError, ClientGone):
            self.close_connection = True
        finally:
            with st.cond:
                st.watches.pop(w.id, None)

    def convert_event(self, w, ev):
        old_m = w.matches(ev.prev) if ev.type != "ADDED" else False
        new_m = w.matches(ev.obj) if ev.type != "DELETED" else False
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if w.matches(ev.prev) else None
        if new_m and old_m:
            return ("MODIFIED", ev.obj)
        if new_m:
            return ("ADDED", ev.obj)
        if old_m:
            gone = copy.deepcopy(ev.prev)
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            return ("DELETED", gone)
        return None

    # -- control API
    def control(self, path, q, body):
        st = self.store
        cmd = self.command
        data = {}
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError as e:
                raise ApiError(400, "bad JSON: %s" % e)
        if not isinstance(data, dict):
            raise ApiError(400, "JSON object expected")
        p = path[len("/_fake"):].rstrip("/")
        if p == "/healthz":
            return self.send_body(200, b"ok", "text/plain")
        if p == "/state" and cmd == "GET":
            with st.cond:
                return self.send_json(200, {
                    "resourceVersion": str(st.rv), "compactedResourceVersion": str(st.floor),
                    "historySize": len(st.history), "groups": dict(st.installed),
                    "config": dict(st.config), "split": dict(st.split),
                    "faults": [dict(f) for f in st.faults], "watches": self.watch_list()})
        if p == "/stats" and cmd == "GET":
            with st.stats_lock:
                out = json.loads(json.dumps(st.stats))
            out["activeWatches"] = len(st.watches)
            return self.send_json(200, out)
        if p == "/stats/reset" and cmd == "POST":
            st.reset_stats()
            return self.send_json(200, {"ok": True})
        if p == "/requests" and cmd == "GET":
            since = int(q.get("since", ["0"])[0] or 0)
            with st.stats_lock:
                reqs = [dict(e) for e in st.reqlog if e["seq"] > since]
                nxt = st.reqseq
            return self.send_json(200, {"requests": reqs, "nextSeq": nxt})
        if p == "/config":
            if cmd == "POST":
                with st.cond:
                    for k, v in data.items():
                        if k not in DEFAULT_CONFIG:
                            raise ApiError(400, "unknown config key %r" % k)
                        if k == "watchExpiredMode" and v not in ("event", "status"):
                            raise ApiError(400, "watchExpiredMode must be event or status")
                        st.config[k] = v
                    st.cond.notify_all()
                self.log("config %s" % data)
            return self.send_json(200, dict(st.config))
        if p == "/compact" and cmd == "POST":
            upto = st.compact(data.get("resourceVersion"))
            self.log("compacted up to %d" % upto)
            return self.send_json(200, {"compactedResourceVersion": str(upto)})
        if p == "/faults" and cmd == "POST":
            if "status" not in data:
                raise ApiError(400, "status is required")
            f = {"status": int(data["status"]), "count": int(data.get("count", 1)),
                 "pathPrefix": data.get("pathPrefix", "/")}
            for k in ("verb", "method", "retryAfter", "message", "reason"):
                if data.get(k) is not None:
                    f[k] = data[k]
            with st.cond:
                st.faults.append(f)
            self.log("fault %s" % f)
            return self.send_json(200, {"faults": st.faults})
        if p == "/faults/clear" and cmd == "POST":
            with st.cond:
                st.faults = []
            return self.send_json(200, {"faults": []})
        if p == "/watches" and cmd == "GET":
            with st.cond:
                return self.send_json(200, {"watches": self.watch_list()})
        if p == "/watches/reset" and cmd == "POST":
            n = self.for_watches(data.get("pathPrefix", ""), lambda w: setattr(
                w, "reset", {"mode": data.get("mode", "rst"), "partial": bool(data.get("partial"))}))
            return self.send_json(200, {"watches": n})
        if p == "/watches/stall" and cmd == "POST":
            n = self.for_watches(data.get("pathPrefix", ""), lambda w: setattr(w, "stalled", True))
            with st.cond:
                st.stall_future = data.get("pathPrefix", "") if data.get("future") else None
            return self.send_json(200, {"watches": n})
        if p == "/watches/release" and cmd == "POST":
            with st.cond:
                st.stall_future = None
            n = self.for_watches("", lambda w: setattr(w, "stalled", False))
            return self.send_json(200, {"watches": n})
        if p == "/watches/split" and cmd == "POST":
            mode = data.get("mode", "normal")
            if mode not in ("normal", "per-event", "bytes", "offset"):
                raise ApiError(400, "mode must be normal, per-event, bytes or offset")
            with st.cond:
                st.split = {"mode": mode, "offset": int(data.get("offset", 0)),
                            "delayMs": float(data.get("delayMs", 0))}
            return self.send_json(200, st.split)
        if p == "/token" and cmd == "POST":
            tok = data.get("token")
            if not isinstance(tok, str):
                raise ApiError(400, "token (string) is required")
            tmp = self.server.token_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(tok + "\n")
            os.replace(tmp, self.server.token_file)
            self.log("token rotated")
            return self.send_json(200, {"ok": True})
        if p == "/groups":
            if cmd == "POST":
                g = data.get("group")
                if g not in st.installed:
                    raise ApiError(400, "unknown group %r; known: %s" % (g, sorted(st.installed)))
                self.server.set_group(g, bool(data.get("installed", True)),
                                      bool(data.get("keepObjects", False)))
            return self.send_json(200, dict(st.installed))
        if p == "/objects":
            if cmd == "GET":
                with st.cond:
                    items = [o for r in RESOURCES for _, o in sorted(st.objects[r.gp].items())]
                return self.send_json(200, {"items": items})
            return self.send_json(200, {"results": self.server.object_ops(data)})
        raise ApiError(404, "unknown control path %s" % path)

    def watch_list(self):
        return [{"id": w.id, "path": w.path, "query": w.query, "stalled": w.stalled,
                 "sent": w.sent, "started": w.started} for w in self.store.watches.values()]

    def for_watches(self, prefix, fn):
        with self.store.cond:
            n = 0
            for w in self.store.watches.values():
                if w.path.startswith(prefix):
                    fn(w)
                    n += 1
            self.store.cond.notify_all()
            return n


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, ssl_ctx, token_file, store, logf):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.ssl_ctx = ssl_ctx
        self.token_file = token_file
        self.store = store
        self.api = Api(store)
        self.logf = logf
        self.log_lock = threading.Lock()
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.ssl_ctx is not None:
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError, ClientGone)):
            return
        self.write_log("handler error: %s" % traceback.format_exc())

    def write_log(self, msg):
        if self.logf is None:
            return
        with self.log_lock:
            self.logf.write("%s %s\n" % (datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3], msg))
            self.logf.flush()

    def set_group(self, group, installed, keep_objects=False):
        st = self.store
        with st.cond:
            st.installed[group] = installed
            if not installed:
                for w in st.watches.values():
                    if w.res.group == group:
                        w.ended = True
                if not keep_objects:
                    for r in RESOURCES:
                        if r.group == group:
                            st.objects[r.gp].clear()
            st.cond.notify_all()
        self.write_log("group %s installed=%s" % (group, installed))

    def object_ops(self, data):
        api = self.api
        op = data.get("op", "upsert")
        objs = data.get("objects") or ([data["object"]] if data.get("object") else [])
        results = []

        def resolve(av, kind):
            res, version = find_res_by_kind(av or "", kind or "")
            if res is None:
                raise ApiError(400, "unknown apiVersion/kind %s/%s" % (av, kind))
            return res, version

        try:
            if op in ("patch", "delete") and not objs:
                res, version = resolve(data.get("apiVersion"), data.get("kind"))
                ns = data.get("namespace") if res.namespaced else None
                if op == "patch":
                    obj = api.patch(res, version, ns, data.get("name"), "application/merge-patch+json",
                                    dumps(data.get("patch") or {}))
                else:
                    obj = api.delete(res, version, ns, data.get("name"))
                results.append({"code": 200, "object": obj})
                return results
        except ApiError as e:
            results.append({"code": e.code, "status": e.status()})
            return results
        for body in objs:
            try:
                res, version = resolve(body.get("apiVersion"), body.get("kind"))
                md = body.get("metadata") or {}
                ns = (md.get("namespace") or "default") if res.namespaced else None
                body = copy.deepcopy(body)
                if op == "create":
                    obj, code = api.create(res, version, ns, body, trusted=True), 201
                elif op == "update":
                    obj, code = api.update(res, version, ns, md.get("name"), body), 200
                elif op == "upsert":
                    with self.store.cond:
                        if (ns or "", md.get("name")) in self.store.objects[res.gp]:
                            body.setdefault("metadata", {}).pop("resourceVersion", None)
                            obj, code = api.update(res, version, ns, md.get("name"), body), 200
                        else:
                            obj, code = api.create(res, version, ns, body, trusted=True), 201
                elif op == "delete":
                    obj, code = api.delete(res, version, ns, md.get("name")), 200
                elif op == "patch":
                    obj, code = api.patch(res, version, ns, md.get("name"),
                                          "application/merge-patch+json",
                                          dumps(data.get("patch") or {})), 200
                else:
                    raise ApiError(400, "unknown op %r" % op)
                results.append({"code": code, "object": obj})
            except ApiError as e:
                results.append({"code": e.code, "status": e.status()})
        self.write_log("objects op=%s -> %s" % (op, [r["code"] for r in results]))
        return results


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def load_seed(path):
    with open(path) as f:
        doc = json.load(f)
    if isinstance(doc, list):
        return {"objects": doc}
    if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
        return {"objects": doc.get("items") or []}
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Kubernetes API server for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--plain-http", action="store_true")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--seed")
    ap.add_argument("--log")
    ap.add_argument("--bookmark-interval", type=float)
    ap.add_argument("--history", type=int)
    ap.add_argument("--watch-expired-mode", choices=["event", "status"])
    ap.add_argument("--uninstall-group", action="append", default=[])
    ap.add_argument("--no-default-namespaces", action="store_true")
    ap.add_argument("--exit-with-parent", action="store_true")
    a = ap.parse_args(argv)
    if a.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("--host must be 127.0.0.1 or ::1 (loopback only)")
    host = "127.0.0.1" if a.host == "localhost" else a.host
    ctx = None
    if not a.plain_http:
        if not a.cert or not a.key:
            ap.error("--cert and --key are required unless --plain-http")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["http/1.1"])
    logf = open(a.log, "a", buffering=1) if a.log else None
    store = Store(logf)
    server = FakeServer((host, a.port), ctx, a.token_file, store, logf)
    seed = load_seed(a.seed) if a.seed else {}
    with store.cond:
        store.config.update(seed.get("config") or {})
        if a.bookmark_interval is not None:
            store.config["bookmarkInterval"] = a.bookmark_interval
        if a.history is not None:
            store.config["historySize"] = a.history
        if a.watch_expired_mode:
            store.config["watchExpiredMode"] = a.watch_expired_mode
        for g, inst in (seed.get("groups") or {}).items():
            if g in store.installed:
                store.installed[g] = bool(inst)
        for g in a.uninstall_group:
            if g not in store.installed:
                ap.error("unknown group %s" % g)
            store.installed[g] = False
    objs = list(seed.get("objects") or [])
    if not a.no_default_namespaces:
        have = {(o.get("metadata") or {}).get("name") for o in objs if o.get("kind") == "Namespace"}
        objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                for n in ("default", "kube-system", "kube-public", "kube-node-lease")
                if n not in have] + objs
    # namespaces first, so namespaced objects find theirs
    objs.sort(key=lambda o: 0 if o.get("kind") == "Namespace" else 1)
    for r in server.object_ops({"op": "create", "objects": objs}):
        if r["code"] >= 300:
            sys.stderr.write("seed object rejected: %s\n" % r["status"]["message"])
            return 2
    port = server.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, a.port_file)
    server.write_log("listening on %s:%d (%s)" % (host, port, "http" if a.plain_http else "https"))

    def on_signal(signum, frame):
        with store.cond:
            store.stopping = True
            store.cond.notify_all()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if a.exit_with_parent:
        parent = os.getppid()

        def watch_parent():
            while os.getppid() == parent:
                time.sleep(0.5)
            server.write_log("parent %d gone, stopping" % parent)
            on_signal(None, None)

        threading.Thread(target=watch_parent, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        # give open watches a moment to write their terminating chunk
        deadline = time.time() + 2
        while store.watches and time.time() < deadline:
            time.sleep(0.05)
        server.server_close()
        server.write_log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
