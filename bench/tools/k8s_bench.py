#!/usr/bin/env python3
"""Helpers of scripts/bench section 5 (egressd in Kubernetes mode, fed by the
fake API server tests/k8s/fake_apiserver.py). See bench/README.md.

  k8s_bench.py seed DIR --pods-root R --pods N --egresses M --churn K
        Writes DIR/seed.json (the fake's start: one meshed pod, bench-0/curl),
        DIR/big.json (a POST /_fake/objects body: N meshed pods of node-1 and
        M Egress objects spread over namespaces and service accounts) and
        DIR/uids.json; makes the cgroup of every pod, the K churn pods'
        included, below R (the simulated node's kubepods.slice, systemd layout).
  k8s_bench.py sync --status F --uids F --ready R --start S --log F [--timeout S] [--probe-only]
        Started before the agent: creates R, then reads "T PID" from S (T:
        µs since the epoch just before the agent was started) and waits
        until the agent's status file shows every seeded pod enforced (and
        nothing waiting) at a generation >= 1; prints JSON: ms from T to
        that, to the log lines "first sync applied" and "synced, ..." (the
        lists), and the agent's VmRSS/VmHWM at that moment.
  k8s_bench.py churn --control URL --ca F --status F --uids F --events N
        --batch B --interval S --window W [--pid P --log F --timeout S --dump F]
        N pod add/delete events through the fake's control API (see
        cmd_churn), while a second process follows the agent's status file;
        prints JSON: each event's lag (write -> applied), whether the agent
        converged on the fake's final state, its CPU, fds and errors.
  k8s_bench.py maps DIR
        The bytes_memlock of the BPF maps pinned in DIR (MB): map memory is
        not in the agent's RSS.
  k8s_bench.py rmtree DIR
        Removes cgroup DIR and everything below it, deepest first, killing
        what is left in it (fast: thousands of pod cgroups).
"""
import argparse, ctypes, json, multiprocessing, os, re, select, signal, ssl, subprocess, sys, time
import datetime, hashlib, http.client

NODE = "node-1"
MESH_NS = "fsm-system"
SAS_PER_NS = 10


def pod_cgroup(root, uid):
    return os.path.join(root, "kubepods-burstable.slice", "kubepods-burstable-pod%s.slice" % uid.replace("-", "_"))


def pod(name, ns, sa, uid):
    """A meshed pod of node-1 shaped like an FSM-injected one (app container,
    sidecar, init container, status with conditions): ~3 KB of JSON, so that
    the agent's memory for its store is not flattered by toy objects."""
    image = "flomesh/pipy:1.5.5"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid,
            "labels": {"app": sa, "fsm-proxy-uuid": uid, "pod-template-hash": "6d9c7b5f8d"},
            "annotations": {"flomesh.io/sidecar-injection": "enabled", "prometheus.io/scrape": "true",
                            "prometheus.io/port": "15010", "prometheus.io/path": "/stats/prometheus"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": sa + "-6d9c7b5f8d",
                                 "uid": "0wner000-0000-4000-8000-000000000000", "controller": True,
                                 "blockOwnerDeletion": True}],
            "creationTimestamp": "2026-11-01T00:00:00Z",
        },
        "spec": {
            "nodeName": NODE, "serviceAccountName": sa, "serviceAccount": sa,
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "priority": 0, "enableServiceLinks": True,
            "initContainers": [{
                "name": "fsm-init", "image": "flomesh/fsm-sidecar-init:v1.3.0",
                "command": ["/bin/sh"], "args": ["-c", "iptables-restore --noflush <<EOF ... EOF"],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}, "privileged": False},
                "resources": {}, "terminationMessagePath": "/dev/termination-log"}],
            "containers": [
                {"name": sa, "image": "registry.example/%s:1.0" % sa, "imagePullPolicy": "IfNotPresent",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                   "readOnly": True}]},
                {"name": "sidecar", "image": image, "imagePullPolicy": "IfNotPresent",
                 "command": ["pipy"], "args": ["--log-level=error", "--admin-port=6060", "http://fsm-controller.fsm-system:6060/repo/fsm/%s/" % sa],
                 "ports": [{"containerPort": 15000, "name": "proxy-admin", "protocol": "TCP"},
                           {"containerPort": 15003, "name": "proxy-inbound", "protocol": "TCP"},
                           {"containerPort": 15010, "name": "proxy-metrics", "protocol": "TCP"}],
                 "env": [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                         {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                         {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}],
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                 "securityContext": {"runAsUser": 1500, "allowPrivilegeEscalation": False}}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "192.0.2.1", "podIP": "10.244.1.7",
            "startTime": "2026-11-01T00:00:01Z",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-01T00:00:05Z"}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": c, "ready": True, "restartCount": 0, "image": i, "started": True,
                                   "containerID": "containerd://" + hashlib.sha256((uid + c).encode()).hexdigest(),
                                   "state": {"running": {"startedAt": "2026-11-01T00:00:04Z"}}}
                                  for c, i in ((sa, "registry.example/%s:1.0" % sa), ("sidecar", image))],
        },
    }


def cmd_seed(a):
    os.makedirs(a.dir, exist_ok=True)
    n_ns = max(1, a.pods // 50)
    uid = lambda kind, i: "%s-0000-4000-8000-%012x" % (kind, i)
    probe_uid = uid("b0be0000", 0)
    seed = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MESH_NS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-0", "labels": {"flomesh.io/monitored-by": "fsm"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {"podCIDR": "10.244.1.0/24"}},
        {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
         "metadata": {"name": "fsm-mesh-config", "namespace": MESH_NS},
         "spec": {"traffic": {"enableEgress": False}, "featureFlags": {"enableEgressPolicy": True}}},
        pod("curl", "bench-0", "curl", probe_uid),  # no Egress selects bench-0/curl: it flips with enableEgress
    ]
    big = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-%d" % i, "labels": {"flomesh.io/monitored-by": "fsm"}}}
           for i in range(1, n_ns)]
    seeded = []
    for i in range(a.pods):
        u = uid("5eed0000", i)
        seeded.append(u)
        big.append(pod("p-%d" % i, "bench-%d" % (i % n_ns), "sa-%d" % ((i // n_ns) % SAS_PER_NS), u))
    for j in range(a.egresses):
        ns = "bench-%d" % (j % n_ns)
        big.append({
            "apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress",
            "metadata": {"name": "e-%d" % j, "namespace": ns},
            "spec": {"sources": [{"kind": "ServiceAccount", "name": "sa-%d" % ((j // n_ns) % SAS_PER_NS), "namespace": ns}],
                     "ipAddresses": ["198.18.%d.%d/32" % ((j >> 8) & 255, j & 255), "198.19.%d.0/24" % (j & 255)],
                     "ports": [{"number": 443, "protocol": "tcp"}, {"number": 80, "protocol": "http"}]}})
    churn = [uid("c4a40000", i) for i in range(a.churn)]
    with open(os.path.join(a.dir, "seed.json"), "w") as f:
        json.dump({"objects": seed}, f)
    with open(os.path.join(a.dir, "big.json"), "w") as f:
        json.dump({"op": "upsert", "objects": big}, f)
    with open(os.path.join(a.dir, "uids.json"), "w") as f:
        json.dump({"probe": probe_uid, "seeded": seeded, "churn": churn, "namespaces": n_ns}, f)
    for u in [probe_uid] + seeded + churn:
        os.makedirs(pod_cgroup(a.pods_root, u), exist_ok=True)
    print(json.dumps({"pod_bytes": len(json.dumps(pod("p-0", "bench-0", "sa-0", seeded[0] if seeded else probe_uid))),
                      "namespaces": n_ns, "identities": n_ns * SAS_PER_NS}))


# ---- the agent's status file ---------------------------------------------------

ENFORCED = re.compile(r'"enforcedPods": \[(.*?)\]', re.S)
UID = re.compile(r'"uid": "([^"]+)"')
GENERATION = re.compile(r'^  "generation": (\d+),?$', re.M)
WAITING = re.compile(r'"podsWaitingForCgroup": \[(.*?)\]', re.S)


def read_status(path):
    """(enforced uids, generation, waiting count) or None; regexes, not a JSON
    parse: the file has every pod twice, and is read hundreds of times."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    m, g = ENFORCED.search(text), GENERATION.search(text)
    if not m or not g:
        return None
    w = WAITING.search(text)
    return set(UID.findall(m.group(1))), int(g.group(1)), (w.group(1).count('"') // 2 if w else 0)


def vm(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0
    return out


def log_ms(line, t0_us):
    """ms from t0 to a log line's RFC 3339 (ms) time."""
    stamp = line.split(" ", 1)[0]
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return (t.timestamp() * 1e6 - t0_us) / 1000.0


def cmd_sync(a):
    uids = json.load(open(a.uids))
    want = set([uids["probe"]] + ([] if a.probe_only else uids["seeded"]))
    # Started before the agent (this interpreter takes ~0.1-0.2 s to start):
    # says it is ready, then learns the agent's start time and pid.
    open(a.ready, "w").close()
    deadline = time.monotonic() + 10
    while True:
        try:
            t0_us, pid = map(int, open(a.start).read().split())
            break
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                sys.exit("k8s_bench sync: the agent was not started")
            time.sleep(0.0005)
    deadline = time.monotonic() + a.timeout
    last = s = None
    while time.monotonic() < deadline:
        try:
            st = os.stat(a.status)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key and key != last:
            last = key
            s = read_status(a.status)
            if s and s[1] >= 1 and s[0] >= want and s[2] == 0:
                t = time.time_ns() // 1000
                mem = vm(pid)
                break
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("k8s_bench sync: the agent exited")
        time.sleep(0.001)
    else:
        sys.exit("k8s_bench sync: not all %d pods enforced within %s s (last status: %s enforced, generation %s, "
                 "%s waiting)" % ((len(want), a.timeout) + ((len(s[0]), s[1], s[2]) if s else ("no", "-", "-"))))
    out = {"sync_ms": (t - t0_us) / 1000.0, "enforced": len(s[0]), "generation": s[1],
           "rss_mb": mem.get("VmRSS"), "hwm_mb": mem.get("VmHWM")}
    for _ in range(200):  # the log line follows the status write closely
        lines = open(a.log, errors="replace").read().splitlines()
        first = [l for l in lines if "first sync applied" in l]
        if first:
            out["log_ms"] = log_ms(first[-1], t0_us)
            out["log_line"] = first[-1].split(" ", 2)[2]
            synced = [log_ms(l, t0_us) for l in lines if ": synced, " in l]
            out["lists_ms"] = max(synced) if synced else None
            break
        time.sleep(0.01)
    else:
        sys.exit("k8s_bench sync: no \"first sync applied\" line in " + a.log)
    print(json.dumps(out))


# ---- churn ------------------------------------------------------------------------

IN_MOVED_TO, IN_CLOSE_WRITE, IN_NONBLOCK, IN_CLOEXEC = 0x80, 0x8, 0o4000, 0o2000000


def monitor(status, conn, stop):
    """A process of its own (no GIL shared with the writer): wakes on every
    rename into the status file's directory (inotify), reads the file and
    sends (time after the read, generation, uids added, uids removed) for
    each new generation or change of the enforced set."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.path.dirname(status).encode(), IN_MOVED_TO | IN_CLOSE_WRITE) < 0:
        conn.send(("error", "inotify: errno %d" % ctypes.get_errno()))
        return
    prev = read_status(status)
    prev_set = prev[0] if prev else set()
    prev_gen = prev[1] if prev else None
    initial = sorted(prev_set)
    changes, reads = [], 0
    conn.send(("ready", None))
    while not stop.is_set():
        r, _, _ = select.select([fd], [], [], 0.05)
        if not r:
            continue
        try:
            while os.read(fd, 65536):
                pass
        except BlockingIOError:
            pass
        s = read_status(status)
        t = time.time_ns()
        reads += 1
        if not s:
            continue
        added, removed = s[0] - prev_set, prev_set - s[0]
        if added or removed or s[1] != prev_gen:
            changes.append((t, s[1], sorted(added), sorted(removed)))
        prev_set, prev_gen = s[0], s[1]
    conn.send(("done", {"initial": initial, "changes": changes, "reads": reads, "final": sorted(prev_set)}))


def pct(v, p):
    v = sorted(v)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def pods_watch_stats(status):
    """The pods reflector's counters in the status file (lists, relists, ...)."""
    for r in json.load(open(status))["kubernetes"]["resources"]:
        if r["resource"] == "pods":
            return {k: r[k] for k in ("lists", "relists", "watchRestarts", "gone", "errors")}
    return {}


def fd_counts(pid):
    """The agent's open file descriptors: all, and BPF links among them."""
    total = links = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        total += 1
        links += target == "anon_inode:bpf_link"
    return {"total": total, "bpf_link": links}


def fd_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]


def cpu_ms(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def applied_prefixes(events, sent, initial, changes):
    """For every event (uid, op) in commit order, the time of the first
    status snapshot showing a state at or past it. The agent applies a
    snapshot of its pod store, which is always a prefix of the event stream:
    a snapshot's churn pods equal live(P), the pods added and not yet
    deleted by the first P events, for one P (each event toggles one pod,
    each pod is added and deleted once, so no two prefixes leave the same
    set, but for the empty set at the start and at the end). P is found
    scanning forward from the last match, never past the events whose
    request was sent before the snapshot was read (a snapshot without a pod
    that should be there, e.g. one the agent failed to attach, matches no
    prefix). Returns (times, snapshots matching no prefix)."""
    churn = {u for u, _op in events}
    snap = set(initial) & churn
    live = set()  # live(pos)
    pos, times, inconsistent = 0, [None] * len(events), 0
    for t, _gen, added, removed in changes:
        snap |= set(added) & churn
        snap -= set(removed)
        mismatch = len(live ^ snap)
        p = pos
        while mismatch and p < len(events) and sent[p] <= t:
            u, op = events[p]
            mismatch += -1 if (op == "add") == (u in snap) else 1
            p += 1
        if mismatch:
            inconsistent += 1
            continue
        for i in range(pos, p):
            times[i] = t
            u, op = events[i]
            (live.add if op == "add" else live.discard)(u)
        pos = p
    return times, inconsistent


def cmd_churn(a):
    """Steps of `batch` events each, one control request per step, paced every
    `interval` seconds: add batch k (upsert of new meshed pods whose cgroups
    exist), then delete batch k - window; at the end the last `window`
    batches are deleted. An event's lag: from just before its request was
    sent to the first status file whose enforcedPods show the fake's state
    after that event, or a later one (applied_prefixes)."""
    uids = json.load(open(a.uids))
    churn = uids["churn"][: a.events // 2]
    n_ns = uids["namespaces"]
    if len(churn) * 2 != a.events or len(churn) % a.batch:
        sys.exit("k8s_bench churn: %d events need %d churn cgroups in batches of %d" % (a.events, a.events // 2, a.batch))
    batches = [churn[i:i + a.batch] for i in range(0, len(churn), a.batch)]
    steps = []
    for k in range(len(batches)):
        steps.append(("add", k))
        if k >= a.window:
            steps.append(("delete", k - a.window))
    for k in range(max(0, len(batches) - a.window), len(batches)):
        steps.append(("delete", k))

    def body(op, k):
        objs = []
        for i, u in enumerate(batches[k]):
            n = k * a.batch + i
            p = pod("churn-%d" % n, "bench-%d" % (n % n_ns), "sa-%d" % ((n // n_ns) % SAS_PER_NS), u)
            objs.append(p if op == "add" else {"apiVersion": "v1", "kind": "Pod", "metadata": p["metadata"]})
        return json.dumps({"op": "upsert" if op == "add" else "delete", "objects": objs})

    bodies = [body(op, k) for op, k in steps]  # made before the clock starts
    url = a.control.split("://", 1)[1]
    host, port = url.split("/")[0].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=a.ca)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)

    def post(path, data):
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        payload = r.read()
        if r.status != 200:
            sys.exit("k8s_bench churn: %s: HTTP %d %s" % (path, r.status, payload[:200]))
        return json.loads(payload)

    parent, child = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    mon = multiprocessing.Process(target=monitor, args=(a.status, child, stop), daemon=True)
    mon.start()
    kind, detail = parent.recv()
    if kind != "ready":
        sys.exit("k8s_bench churn: monitor: %s" % detail)
    before = read_status(a.status)
    watch0 = pods_watch_stats(a.status)
    fds0 = fd_counts(a.pid) if a.pid else None
    cpu0 = cpu_ms(a.pid) if a.pid else None
    log0 = os.path.getsize(a.log) if a.log else 0
    writes = []  # (op, k, t_send_ns, t_done_ns)
    behind = 0
    start = time.monotonic()
    for i, (op, k) in enumerate(steps):
        due = start + i * a.interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > a.interval:
            behind += 1
        t_send = time.time_ns()
        res = post("/_fake/objects", bodies[i])
        bad = [r for r in res["results"] if r["code"] not in (200, 201)]
        if bad:
            sys.exit("k8s_bench churn: %s batch %d: %s" % (op, k, bad[0]))
        writes.append((op, k, t_send, time.time_ns()))
    t_last = writes[-1][3]
    # Converged: the enforced set equals the fake's meshed pods of node-1.
    conn.request("GET", "/_fake/objects")
    objs = json.loads(conn.getresponse().read())["items"]
    fake_pods = set(o["metadata"]["uid"] for o in objs if o.get("kind") == "Pod"
                    and o["spec"].get("nodeName") == NODE and "fsm-proxy-uuid" in o["metadata"].get("labels", {}))
    converged_ns = None
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        s = read_status(a.status)
        if s and s[0] == fake_pods:
            converged_ns = time.time_ns()
            break
        time.sleep(0.005)
    time.sleep(0.1)
    stop.set()
    kind, mon_out = parent.recv()
    mon.join(5)
    cpu1 = cpu_ms(a.pid) if a.pid else None
    after = read_status(a.status)
    watch1 = pods_watch_stats(a.status)
    fds1 = fd_counts(a.pid) if a.pid else None

    events, sent = [], []
    for op, k, t_send, t_done in writes:
        for u in batches[k]:
            events.append((u, op))
            sent.append(t_send)
    times, inconsistent = applied_prefixes(events, sent, mon_out["initial"], mon_out["changes"])
    if a.dump:  # the raw material, to check the lags by hand
        with open(a.dump, "w") as f:
            json.dump({"writes": writes, "batches": batches, "monitor": mon_out, "times": times}, f)
    shown = set(mon_out["initial"])
    for _t, _g, added, _r in mon_out["changes"]:
        shown.update(added)
    write_ms = [(t_done - t_send) / 1e6 for _op, _k, t_send, t_done in writes]
    add_lag = [(t - s0) / 1e6 for (u, op), t, s0 in zip(events, times, sent) if t is not None and op == "add"]
    del_lag = [(t - s0) / 1e6 for (u, op), t, s0 in zip(events, times, sent) if t is not None and op == "delete"]
    never_applied = sum(1 for t in times if t is None)
    never_shown = sum(1 for u in churn if u not in shown)
    applies, errors = [], []
    if a.log:
        with open(a.log, errors="replace") as f:
            f.seek(log0)
            for line in f:
                m = re.search(r"applied generation (\d+) in ([\d.]+) ms", line)
                if m:
                    applies.append(float(m.group(2)))
                elif " error " in line:
                    errors.append(line.split(" error ", 1)[1].strip())
    lags = [(t - s0) / 1e6 for t, s0 in zip(times, sent) if t is not None]
    out = {
        "events": a.events, "steps": len(steps), "batch": a.batch, "interval_s": a.interval,
        "rate_per_s": a.batch / a.interval, "writer_behind_steps": behind,
        "write_span_s": (t_last - writes[0][2]) / 1e9,
        "lag_ms": lags, "add_lag_ms": add_lag, "delete_lag_ms": del_lag,
        "lag_p50": pct(lags, 50) if lags else None, "lag_p99": pct(lags, 99) if lags else None,
        "lag_max": max(lags) if lags else None,
        "never_applied": never_applied, "never_enforced_pods": never_shown, "inconsistent_snapshots": inconsistent,
        "pod_lifetime_ms": a.window * 2 * a.interval * 1000,
        "write_ms": write_ms, "converged": converged_ns is not None,
        "drain_ms": (converged_ns - t_last) / 1e6 if converged_ns else None,
        "fake_pods": len(fake_pods), "enforced_after": len(after[0]) if after else None,
        "generations": (after[1] - before[1]) if before and after else None,
        "status_reads": mon_out["reads"], "apply_ms": applies,
        "agent_cpu_ms": (cpu1 - cpu0) if cpu0 is not None else None,
        "pods_watch": {k: watch1.get(k, 0) - watch0.get(k, 0) for k in watch1},
        "fds_before": fds0, "fds_after": fds1, "fd_limit": fd_limit(a.pid) if a.pid else None,
        "agent_errors": len(errors),
        "first_error": re.sub(r"(/[^ /:]+)+/", ".../", errors[0])[:300] if errors else None,
    }
    print(json.dumps(out))
    if converged_ns is None:
        sys.exit("k8s_bench churn: the agent did not converge on the fake's %d pods within %s s (shows %s)" %
                 (len(fake_pods), a.timeout, out["enforced_after"]))
    if not lags:
        sys.exit("k8s_bench churn: no event was ever seen applied")


def cmd_maps(a):
    total = 0
    for name in sorted(os.listdir(a.dir)):
        path = os.path.join(a.dir, name)
        if not os.path.isfile(path):
            continue
        r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", path], capture_output=True, text=True)
        if r.returncode == 0:
            total += json.loads(r.stdout).get("bytes_memlock", 0)
    print("%.1f" % (total / 2**20))


def cmd_rmtree(a):
    if not os.path.isdir(a.dir):
        return
    for d, _subdirs, _files in os.walk(a.dir, topdown=False):
        try:
            pids = open(os.path.join(d, "cgroup.procs")).read().split()
        except OSError:
            pids = []
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100 if pids else 1):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("seed")
    p.add_argument("dir")
    p.add_argument("--pods-root", required=True)
    p.add_argument("--pods", type=int, required=True)
    p.add_argument("--egresses", type=int, required=True)
    p.add_argument("--churn", type=int, required=True)
    p = sub.add_parser("sync")
    p.add_argument("--status", required=True)
    p.add_argument("--uids", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--start", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--probe-only", action="store_true", help="only the pod bench-0/curl is on the API server")
    p = sub.add_parser("churn")
    p.add_argument("--control", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--uids", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--pid", type=int)
    p.add_argument("--log")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--dump", help="write the writes, the status snapshots and the lags' times here (JSON)")
    p = sub.add_parser("maps")
    p.add_argument("dir")
    p = sub.add_parser("rmtree")
    p.add_argument("dir")
    a = ap.parse_args()
    dict(seed=cmd_seed, sync=cmd_sync, churn=cmd_churn, maps=cmd_maps, rmtree=cmd_rmtree)[a.cmd](a)


if __name__ == "__main__":
    main()
