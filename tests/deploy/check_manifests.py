#!/usr/bin/env python3
"""The deploy-manifests test: renders deploy/ and deploy/optional/ with
`kubectl kustomize` and checks what the cluster would get: the agent's
DaemonSet (node name, bpffs and cgroup mounts, capabilities, probes, priority,
tolerations, rolling update), its read-only ClusterRole, the optional egress
toggle role, the agent settings in the ConfigMap; and that deploy/Containerfile
and deploy/build-image agree with the build and with each other.

Then a self-test: each of a list of faults, injected into the rendered
objects, must be reported, so that a check cannot silently stop checking.

    check_manifests.py SOURCE_DIR [BIN_DIR]

With BIN_DIR (where egressctl is), the ConfigMap's egressd.yaml is also read
by the agent's own settings parser (through `egressctl status`).

Exit 0: all good; 1: a check failed (every failure is printed); 77: kubectl
or python3-yaml is missing (a failure under CI=true).
"""
import copy
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

NAMESPACE = "egressd-system"
READ = {"get", "list", "watch"}
# What the agent may read, and nothing more: (API group, resource) -> verbs.
AGENT_RULES = {
    ("", "pods"): READ,
    ("", "namespaces"): READ,
    ("", "nodes"): READ,
    ("", "services"): READ,
    ("discovery.k8s.io", "endpointslices"): READ,
    ("networking.k8s.io", "servicecidrs"): READ,
    ("policy.flomesh.io", "egresses"): READ,
    ("policy.openservicemesh.io", "egresses"): READ,
    ("config.flomesh.io", "meshconfigs"): READ,
    ("config.openservicemesh.io", "meshconfigs"): READ,
}
TOGGLE_RULES = {
    ("config.flomesh.io", "meshconfigs"): {"get", "patch"},
    ("config.openservicemesh.io", "meshconfigs"): {"get", "patch"},
}
AGENT_CAPABILITIES = {"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE", "PERFMON", "SYS_PTRACE"}
# hostPath volumes the pod may have, and nothing else of the host.
HOST_PATHS = {"/sys/fs/bpf", "/sys/fs/cgroup", "/run/egressd"}
# The agent settings a Kubernetes-mode file may have (userspace/core/agent_config.cc
# reads them); the file-mode sources are refused there, the API server replaces them.
SETTINGS_KEYS = {"cgroup", "cgroupMount", "bpffs", "runDir", "httpAddress", "mode", "kubernetes", "meshCIDRs",
                 "rawSockets", "revokeOnTighten",
                 "sidecarUID", "egressPolicySemantics", "dnsServer", "events", "capacities"}
FILE_MODE_KEYS = {"meshConfig", "policyDir", "workloads"}
SETTINGS_REQUIRED = {"cgroupMount", "bpffs", "runDir", "httpAddress", "mode", "kubernetes"}
KUBERNETES_KEYS = {"mesh", "kubeconfig", "nodeName", "meshName", "meshConfigRef"}
CONFIG_DIR = "/etc/egressd"
CONFIG_FILE = "egressd.yaml"


class Checker:
    """Collects failures; each check says what it checked when it passes."""

    def __init__(self, quiet=False):
        self.errors = []
        self.quiet = quiet

    def fail(self, message):
        self.errors.append(message)

    def expect(self, condition, message):
        if not condition:
            self.fail(message)
        return condition

    def passed(self, what, before):
        if not self.quiet and len(self.errors) == before:
            print(f"ok: {what}")


# ---- rendering ---------------------------------------------------------------
def render(directory):
    result = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"FAIL: kubectl kustomize {directory}:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(c, docs, kind, where):
    found = of_kind(docs, kind)
    if not c.expect(len(found) == 1, f"{where}: expected one {kind}, found {len(found)}"):
        return None
    return found[0]


def rule_triples(c, role, name):
    """(group, resource, verb) of every rule; wildcards and narrowing fields are failures."""
    triples = set()
    c.expect(not role.get("aggregationRule"), f"ClusterRole {name}: has an aggregationRule")
    for rule in role.get("rules") or []:
        for field in ("resourceNames", "nonResourceURLs"):
            c.expect(field not in rule, f"ClusterRole {name}: a rule has {field}: {rule}")
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    if "*" in (group, resource, verb):
                        c.fail(f"ClusterRole {name}: wildcard in {rule}")
                    triples.add((group, resource, verb))
    return triples


def expected_triples(rules):
    return {(g, r, v) for (g, r), verbs in rules.items() for v in verbs}


def show(triples):
    return ", ".join(f"{v} {r}.{g or 'core'}" for g, r, v in sorted(triples))


# ---- the main render ---------------------------------------------------------
def check_resources(c, docs):
    before = len(c.errors)
    kinds = sorted(d.get("kind", "?") for d in docs)
    wanted = sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"])
    c.expect(kinds == wanted, f"deploy/ renders {kinds}, expected exactly {wanted}")
    ns = one(c, docs, "Namespace", "deploy/")
    if ns:
        c.expect(ns["metadata"]["name"] == NAMESPACE, f"Namespace is {ns['metadata']['name']}, expected {NAMESPACE}")
        labels = ns["metadata"].get("labels") or {}
        c.expect(labels.get("pod-security.kubernetes.io/enforce") == "privileged",
                 "Namespace: pod-security.kubernetes.io/enforce must be privileged (hostPath, hostNetwork, BPF)")
    for d in docs:
        if d.get("kind") in ("ServiceAccount", "ConfigMap", "DaemonSet"):
            c.expect(d["metadata"].get("namespace") == NAMESPACE,
                     f"{d['kind']} {d['metadata']['name']} is in namespace {d['metadata'].get('namespace')}, "
                     f"expected {NAMESPACE}")
    c.passed(f"deploy/ renders Namespace {NAMESPACE}, ServiceAccount, ClusterRole(+Binding), ConfigMap, DaemonSet",
             before)


def check_rbac(c, docs):
    before = len(c.errors)
    role = one(c, docs, "ClusterRole", "deploy/")
    binding = one(c, docs, "ClusterRoleBinding", "deploy/")
    sa = one(c, docs, "ServiceAccount", "deploy/")
    ds = one(c, docs, "DaemonSet", "deploy/")
    if role:
        name = role["metadata"]["name"]
        got, want = rule_triples(c, role, name), expected_triples(AGENT_RULES)
        c.expect(not got - want, f"ClusterRole {name} grants more than the agent reads: {show(got - want)}")
        c.expect(not want - got, f"ClusterRole {name} lacks: {show(want - got)}")
        writes = {t for t in got if t[2] not in READ}
        c.expect(not writes, f"ClusterRole {name} has write verbs: {show(writes)}")
        for key in (role["metadata"].get("labels") or {}):
            c.expect(not key.startswith("rbac.authorization.k8s.io/aggregate-to-"),
                     f"ClusterRole {name} aggregates into a built-in role ({key})")
    if role and binding and sa:
        c.expect(binding.get("roleRef") == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                            "name": role["metadata"]["name"]},
                 f"ClusterRoleBinding {binding['metadata']['name']} does not bind ClusterRole {role['metadata']['name']}")
        subjects = binding.get("subjects") or []
        c.expect(subjects == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}],
                 f"ClusterRoleBinding subjects are {subjects}, expected only ServiceAccount "
                 f"{NAMESPACE}/{sa['metadata']['name']}")
    if ds and sa:
        got = ds["spec"]["template"]["spec"].get("serviceAccountName")
        c.expect(got == sa["metadata"]["name"], f"DaemonSet runs as service account {got}, "
                                                f"expected {sa['metadata']['name']}")
    c.passed("ClusterRole: get/list/watch on exactly pods, namespaces, nodes, services, endpointslices, "
             "servicecidrs, egresses and meshconfigs (FSM and OSM); bound to the agent's ServiceAccount only", before)


def check_optional(c, optional, main):
    before = len(c.errors)
    kinds = sorted(d.get("kind", "?") for d in optional)
    c.expect(kinds == ["ClusterRole"], f"deploy/optional/ renders {kinds}, expected one ClusterRole (an admin binds it)")
    role = one(c, optional, "ClusterRole", "deploy/optional/")
    if role:
        name = role["metadata"]["name"]
        got, want = rule_triples(c, role, name), expected_triples(TOGGLE_RULES)
        c.expect(not got - want, f"ClusterRole {name} grants more than get/patch on meshconfigs: {show(got - want)}")
        c.expect(not want - got, f"ClusterRole {name} lacks: {show(want - got)}")
        for key in (role["metadata"].get("labels") or {}):
            c.expect(not key.startswith("rbac.authorization.k8s.io/aggregate-to-"),
                     f"ClusterRole {name} must not aggregate into a built-in role ({key})")
        c.expect(all(d["metadata"]["name"] != name for d in main),
                 f"ClusterRole {name} is applied by default (it is rendered by deploy/)")
    c.passed("deploy/optional/: one ClusterRole, get/patch on meshconfigs (FSM and OSM), not aggregated, "
             "not applied by default", before)


def settings_of(c, docs):
    cm = one(c, docs, "ConfigMap", "deploy/")
    if not cm:
        return None, None
    text = (cm.get("data") or {}).get(CONFIG_FILE)
    if not c.expect(text is not None, f"ConfigMap {cm['metadata']['name']} has no {CONFIG_FILE}"):
        return cm, None
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError as e:
        c.fail(f"ConfigMap {CONFIG_FILE} does not parse: {e}")
        return cm, None
    if not c.expect(isinstance(settings, dict), f"ConfigMap {CONFIG_FILE} is not a mapping"):
        return cm, None
    return cm, settings


def check_settings(c, docs):
    before = len(c.errors)
    _, s = settings_of(c, docs)
    if s is None:
        return
    c.expect(not set(s) & FILE_MODE_KEYS, f"{CONFIG_FILE}: {sorted(set(s) & FILE_MODE_KEYS)} not with kubernetes "
                                          "(the API server is the source of the MeshConfig, policies and workloads)")
    unknown = set(s) - SETTINGS_KEYS - FILE_MODE_KEYS
    c.expect(not unknown, f"{CONFIG_FILE}: unknown keys {sorted(unknown)}")
    c.expect(not SETTINGS_REQUIRED - set(s), f"{CONFIG_FILE}: missing {sorted(SETTINGS_REQUIRED - set(s))}")
    c.expect(s.get("mode") in ("enforce", "audit"), f"{CONFIG_FILE}: mode is {s.get('mode')!r}")
    c.expect(s.get("httpAddress") == "0.0.0.0:9477", f"{CONFIG_FILE}: httpAddress is {s.get('httpAddress')!r}, "
                                                     "expected \"0.0.0.0:9477\" (probes come to the node's address)")
    c.expect(str(s.get("bpffs", "")).startswith("/sys/fs/bpf/"), f"{CONFIG_FILE}: bpffs {s.get('bpffs')!r} "
                                                                 "is not in the host's bpffs (/sys/fs/bpf/...)")
    k = s.get("kubernetes")
    if c.expect(isinstance(k, dict), f"{CONFIG_FILE}: no kubernetes block"):
        c.expect(not set(k) - KUBERNETES_KEYS, f"{CONFIG_FILE}: unknown kubernetes keys {sorted(set(k) - KUBERNETES_KEYS)}")
        c.expect(k.get("mesh") in ("fsm", "osm"), f"{CONFIG_FILE}: kubernetes.mesh is {k.get('mesh')!r}, "
                                                  "expected fsm or osm")
    if "meshCIDRs" in s:
        for cidr in s["meshCIDRs"] or []:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                c.fail(f"{CONFIG_FILE}: meshCIDRs has {cidr!r}, not a CIDR")
    c.passed(f"ConfigMap {CONFIG_FILE}: parses; Kubernetes-mode keys only; kubernetes.mesh {k.get('mesh') if isinstance(k, dict) else '?'}",
             before)


def mounts_by_path(container):
    return {m["mountPath"]: m for m in container.get("volumeMounts") or []}


def check_daemonset(c, docs, version):
    before = len(c.errors)
    ds = one(c, docs, "DaemonSet", "deploy/")
    if not ds:
        return
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    selector = spec["selector"].get("matchLabels") or {}
    c.expect(selector and all(labels.get(k) == v for k, v in selector.items()),
             f"DaemonSet selector {selector} does not select its pods ({labels})")

    strategy = spec.get("updateStrategy") or {}
    c.expect(strategy.get("type") == "RollingUpdate" and
             (strategy.get("rollingUpdate") or {}).get("maxUnavailable") == 1,
             f"DaemonSet updateStrategy is {strategy}, expected RollingUpdate with maxUnavailable 1")
    c.expect(pod.get("hostNetwork") is True, "DaemonSet: hostNetwork must be true")
    c.expect(pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
             f"DaemonSet: dnsPolicy is {pod.get('dnsPolicy')}, expected ClusterFirstWithHostNet (hostNetwork)")
    # hostPID: revocation enters pods' network namespaces through their processes.
    c.expect(pod.get("hostPID") is True, "DaemonSet: hostPID must be true (revocation enters pods' namespaces)")
    c.expect(not pod.get("hostIPC"), "DaemonSet: hostIPC is set; the agent does not need it")
    c.expect(pod.get("priorityClassName") == "system-node-critical",
             f"DaemonSet: priorityClassName is {pod.get('priorityClassName')}, expected system-node-critical")
    c.expect({"operator": "Exists"} in (pod.get("tolerations") or []),
             f"DaemonSet: tolerations {pod.get('tolerations')} lack {{operator: Exists}} (every node, every taint)")
    grace = pod.get("terminationGracePeriodSeconds")
    c.expect(isinstance(grace, int) and 1 <= grace <= 60,
             f"DaemonSet: terminationGracePeriodSeconds is {grace}, expected 1..60")

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    c.expect(not host_paths - HOST_PATHS, f"DaemonSet mounts more of the host than it needs: "
                                          f"{sorted(host_paths - HOST_PATHS)}")

    def host_path(mount):
        return (volumes.get(mount["name"]) or {}).get("hostPath", {}).get("path")

    containers = pod.get("containers") or []
    inits = pod.get("initContainers") or []
    if not c.expect(len(containers) == 1, f"DaemonSet has {len(containers)} containers, expected one (the agent)"):
        return
    agent = containers[0]
    image = f"egressd:{version}"
    for ctr in containers + inits:
        c.expect(ctr.get("image") == image, f"container {ctr['name']}: image {ctr.get('image')}, expected {image} "
                                            "(the project's version)")
        c.expect(ctr.get("imagePullPolicy") == "IfNotPresent",
                 f"container {ctr['name']}: imagePullPolicy {ctr.get('imagePullPolicy')}, expected IfNotPresent "
                 "(the image is imported into the nodes' runtime)")
        sc = ctr.get("securityContext") or {}
        for m in ctr.get("volumeMounts") or []:
            if m.get("mountPropagation") == "Bidirectional":
                c.expect(sc.get("privileged") is True,
                         f"container {ctr['name']}: Bidirectional propagation of {m['mountPath']} "
                         "needs a privileged container")

    # NODE_NAME from the downward API.
    env = {e["name"]: e for e in agent.get("env") or []}
    node = env.get("NODE_NAME", {})
    c.expect(node.get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}},
             f"agent: NODE_NAME must come from fieldRef spec.nodeName, got {node or 'nothing'}")

    # Capabilities instead of privileged.
    sc = agent.get("securityContext") or {}
    c.expect(sc.get("privileged") is False, f"agent: privileged is {sc.get('privileged')}, expected false")
    caps = sc.get("capabilities") or {}
    c.expect(caps.get("drop") == ["ALL"], f"agent: capabilities.drop is {caps.get('drop')}, expected [ALL]")
    added = caps.get("add") or []
    c.expect(sorted(added) == sorted(AGENT_CAPABILITIES),
             f"agent: capabilities.add is {added}, expected exactly {sorted(AGENT_CAPABILITIES)}")
    c.expect(sc.get("readOnlyRootFilesystem") is True, "agent: readOnlyRootFilesystem should be true")

    # bpffs: the agent sees the host's (HostToContainer); a privileged init
    # container mounts it on the host if needed (Bidirectional).
    mounts = mounts_by_path(agent)
    bpf = mounts.get("/sys/fs/bpf")
    if c.expect(bpf is not None, "agent: /sys/fs/bpf is not mounted"):
        c.expect(host_path(bpf) == "/sys/fs/bpf", f"agent: /sys/fs/bpf comes from {host_path(bpf)}")
        c.expect(bpf.get("mountPropagation") == "HostToContainer",
                 f"agent: /sys/fs/bpf propagation is {bpf.get('mountPropagation')}, expected HostToContainer")
    mounters = [i for i in inits
                if (mounts_by_path(i).get("/sys/fs/bpf") or {}).get("mountPropagation") == "Bidirectional"]
    if c.expect(len(mounters) == 1, "no init container mounts /sys/fs/bpf with Bidirectional propagation"):
        init = mounters[0]
        c.expect(host_path(mounts_by_path(init)["/sys/fs/bpf"]) == "/sys/fs/bpf",
                 f"init container {init['name']}: /sys/fs/bpf is not the host's")
        c.expect((init.get("securityContext") or {}).get("privileged") is True,
                 f"init container {init['name']} must be privileged (Bidirectional)")
        command = " ".join(init.get("command") or []) + " " + " ".join(init.get("args") or [])
        c.expect("mount -t bpf" in command, f"init container {init['name']} does not mount bpffs: {command.strip()}")
    for i in inits:
        if i not in mounters:
            c.expect(not (i.get("securityContext") or {}).get("privileged"),
                     f"init container {i['name']} is privileged without need")

    # Settings <-> mounts.
    cm, s = settings_of(Checker(quiet=True), docs)
    s = s or {}
    cg = mounts.get(s.get("cgroupMount", "/host/sys/fs/cgroup"))
    if c.expect(cg is not None, f"agent: the settings' cgroupMount {s.get('cgroupMount')} is not mounted"):
        c.expect(host_path(cg) == "/sys/fs/cgroup", f"agent: {cg['mountPath']} comes from {host_path(cg)}, "
                                                    "expected the host's /sys/fs/cgroup")
        c.expect(cg.get("readOnly") is True, f"agent: {cg['mountPath']} must be read-only")
    run = mounts.get(s.get("runDir", "/run/egressd"))
    if c.expect(run is not None, f"agent: the settings' runDir {s.get('runDir')} is not mounted"):
        c.expect(host_path(run) == "/run/egressd", f"agent: {run['mountPath']} comes from {host_path(run)}, "
                                                   "expected the host's /run/egressd (egressctl on the node)")
    conf = mounts.get(CONFIG_DIR)
    if c.expect(conf is not None, f"agent: {CONFIG_DIR} is not mounted"):
        source = (volumes.get(conf["name"]) or {}).get("configMap", {}).get("name")
        c.expect(cm is not None and source == cm["metadata"]["name"],
                 f"agent: {CONFIG_DIR} is ConfigMap {source}, expected {cm and cm['metadata']['name']}")
    args = agent.get("args") or []
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}"
    c.expect(f"--config={config_path}" in args or
             any(a == "--config" and b == config_path for a, b in zip(args, args[1:])),
             f"agent: args {args} do not pass --config {config_path}")

    # Probes on the agent's HTTP port.
    port = int(str(s.get("httpAddress", ":9477")).rsplit(":", 1)[1])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        p = agent.get(probe)
        if p is None and probe == "startupProbe":
            continue
        get = (p or {}).get("httpGet") or {}
        c.expect(get.get("path") == path and get.get("port") == port,
                 f"agent: {probe} is {p}, expected httpGet {path} on port {port}")

    res = agent.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    c.expect("cpu" in requests and "memory" in requests, f"agent: resources.requests {requests} lack cpu or memory")
    c.expect("memory" in limits, f"agent: resources.limits {limits} lack memory")
    c.expect("cpu" not in limits, "agent: a CPU limit would throttle the agent during pod churn")
    c.passed("DaemonSet: hostNetwork, system-node-critical, tolerates all, RollingUpdate maxUnavailable 1; agent: "
             f"{image}, NODE_NAME from spec.nodeName, unprivileged with {sorted(AGENT_CAPABILITIES)}, bpffs "
             "HostToContainer (privileged init container: Bidirectional), host cgroup2 read-only, /run/egressd, "
             "probes /healthz and /readyz", before)


def check_settings_with_parser(c, docs, bin_dir):
    """The agent's own parser reads the settings (egressctl shares it with egressd)."""
    before = len(c.errors)
    egressctl = os.path.join(bin_dir, "egressctl")
    if not os.access(egressctl, os.X_OK):
        print(f"note: no {egressctl}: the settings were not read by the agent's parser")
        return
    _, s = settings_of(Checker(quiet=True), docs)
    if s is None:
        return
    with tempfile.TemporaryDirectory(prefix="egressd-check-settings.") as tmp:
        # runDir and bpffs moved into the temporary directory: status only reads
        # them, but never the host's.
        s = dict(s, runDir=os.path.join(tmp, "run"), bpffs=os.path.join(tmp, "bpf"))
        path = os.path.join(tmp, CONFIG_FILE)
        with open(path, "w") as f:
            yaml.safe_dump(s, f)
        try:
            result = subprocess.run([egressctl, "--config", path, "status"], capture_output=True, text=True,
                                    timeout=30, env=dict(os.environ, NODE_NAME="check-manifests"))
        except subprocess.TimeoutExpired:
            print("note: egressctl status did not answer in 30 s: the settings were not read by the agent's parser")
            return
        # A settings error reads "FILE:LINE:COLUMN: key: why".
        m = re.search(re.escape(path) + r":\d+:\d+: .*", result.stderr)
        c.expect(not m, f"the agent's parser rejects the ConfigMap's {CONFIG_FILE}: "
                        f"{m and m.group(0).replace(path, CONFIG_FILE)}")
    c.passed(f"ConfigMap {CONFIG_FILE}: accepted by the agent's settings parser ({egressctl})", before)


# ---- the image's build -------------------------------------------------------
def project_version(source):
    text = open(os.path.join(source, "CMakeLists.txt")).read()
    m = re.search(r"project\(\s*egressd\s+VERSION\s+([0-9][^\s)]*)", text)
    if not m:
        raise SystemExit("FAIL: cannot read the project's version in CMakeLists.txt")
    return m.group(1)


def install_deps_build_packages(source):
    text = open(os.path.join(source, "scripts", "install-deps")).read()
    block = re.search(r"^packages=\(\n(.*?)^\)", text, re.S | re.M).group(1)
    section, packages = None, set()
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("#"):
            section = line.lstrip("# ").split()[0]
        elif section == "build":
            packages.update(line.split())
    return packages


def runtime_packages(source):
    packages = []
    for line in open(os.path.join(source, "deploy", "runtime-packages")):
        line = line.split("#", 1)[0].strip()
        if line:
            packages.append(line)
    return packages


def check_image_build(c, source, version):
    before = len(c.errors)
    deploy = os.path.join(source, "deploy")
    text = open(os.path.join(deploy, "Containerfile")).read()
    # Instructions, with continuation lines joined.
    joined = re.sub(r"\\\n", " ", text)
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", joined, re.M | re.I)
    c.expect(len(stages) >= 2, f"Containerfile: expected a build and a runtime stage, found {stages}")
    for image, _ in stages:
        c.expect(re.match(r"(docker\.io/(library/)?)?debian:(12|bookworm)\b", image),
                 f"Containerfile: stage FROM {image} is not Debian 12 (bookworm)")
    build_run = " ".join(re.findall(r"^RUN\s+(.*)$", joined.split("\nFROM", 2)[1], re.M)) if len(stages) >= 2 else ""
    build_words = set(build_run.split())
    missing = install_deps_build_packages(source) - build_words
    c.expect(not missing, f"Containerfile: the build stage lacks build packages of scripts/install-deps: "
                          f"{sorted(missing)}")
    c.expect("doctest-dev" in build_words, "Containerfile: the build stage lacks doctest-dev (CMake finds it)")
    runtime = joined.split("\nFROM")[-1]
    c.expect("deploy/runtime-packages" in runtime,
             "Containerfile: the runtime stage does not install deploy/runtime-packages")
    c.expect(re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/egressd"\]', runtime, re.M),
             "Containerfile: ENTRYPOINT is not [\"/usr/local/bin/egressd\"]")
    c.expect(re.search(r"^COPY\s+--from=\S+\s+.*egressd\s.*egressctl\s+/usr/local/bin/", runtime, re.M),
             "Containerfile: the runtime stage does not copy both binaries to /usr/local/bin")
    m = re.search(r"^ARG\s+VERSION=(\S+)", runtime, re.M)
    c.expect(m and m.group(1) == version,
             f"Containerfile: ARG VERSION is {m and m.group(1)}, expected the project's {version}")

    packages = runtime_packages(source)
    c.expect(packages and len(packages) == len(set(packages)), f"deploy/runtime-packages: {packages}")
    for package in ("libbpf1", "libelf1", "libyaml-0-2", "libfmt9", "libc-ares2", "libcurl4",
                    "ca-certificates", "zlib1g", "mount"):
        c.expect(package in packages, f"deploy/runtime-packages lacks {package}")

    script = os.path.join(deploy, "build-image")
    c.expect(os.access(script, os.X_OK), "deploy/build-image is not executable")
    syntax = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    c.expect(syntax.returncode == 0, f"deploy/build-image: {syntax.stderr.strip()}")
    usage = subprocess.run([script, "--help"], capture_output=True, text=True)
    for option in ("--bin-dir", "--out", "--tag", "--rootfs-cache"):
        c.expect(option in usage.stdout, f"deploy/build-image --help does not offer {option}")
    c.passed("Containerfile: Debian 12 build and runtime stages, the build packages of scripts/install-deps, "
             f"deploy/runtime-packages, entrypoint egressd, version {version}; build-image parses", before)


# ---- the self-test -------------------------------------------------------------
def agent(docs):
    return of_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]


def pod(docs):
    return of_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]


def mount(docs, path):
    return mounts_by_path(agent(docs))[path]


def set_settings(docs, edit):
    cm = of_kind(docs, "ConfigMap")[0]
    s = yaml.safe_load(cm["data"][CONFIG_FILE])
    edit(s)
    cm["data"][CONFIG_FILE] = yaml.safe_dump(s)


def role(docs):
    return of_kind(docs, "ClusterRole")[0]


# (what, edit of the main render, edit of the optional render, a word the failure must say)
FAULTS = [
    ("a write verb", lambda d: role(d)["rules"][0]["verbs"].append("create"), None, "create"),
    ("secrets", lambda d: role(d)["rules"][0]["resources"].append("secrets"), None, "secrets"),
    ("a wildcard", lambda d: role(d)["rules"].append({"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}),
     None, "wildcard"),
    ("servicecidrs missing", lambda d: role(d)["rules"].pop(2), None, "servicecidrs"),
    ("aggregation", lambda d: role(d)["metadata"].setdefault("labels", {}).update(
        {"rbac.authorization.k8s.io/aggregate-to-view": "true"}), None, "aggregate"),
    ("binding to another account", lambda d: of_kind(d, "ClusterRoleBinding")[0]["subjects"][0].update(
        {"name": "default"}), None, "subjects"),
    ("no NODE_NAME", lambda d: agent(d).pop("env"), None, "NODE_NAME"),
    ("NODE_NAME from a literal", lambda d: agent(d)["env"][0].update({"valueFrom": None, "value": "n"}), None,
     "NODE_NAME"),
    ("Bidirectional in the agent", lambda d: mount(d, "/sys/fs/bpf").update({"mountPropagation": "Bidirectional"}),
     None, "Bidirectional"),
    ("no bpffs propagation", lambda d: mount(d, "/sys/fs/bpf").pop("mountPropagation"), None, "HostToContainer"),
    ("an unprivileged init container", lambda d: pod(d)["initContainers"][0]["securityContext"].update(
        {"privileged": False}), None, "privileged"),
    ("no hostPID", lambda d: pod(d).pop("hostPID"), None, "hostPID"),
    ("a seventh capability", lambda d: agent(d)["securityContext"]["capabilities"]["add"].append("NET_RAW"), None,
     "NET_RAW"),
    ("capabilities not dropped", lambda d: agent(d)["securityContext"]["capabilities"].pop("drop"), None, "drop"),
    ("a privileged agent", lambda d: agent(d)["securityContext"].update({"privileged": True}), None, "privileged"),
    ("a writable cgroup mount", lambda d: mount(d, "/host/sys/fs/cgroup").update({"readOnly": False}), None,
     "read-only"),
    ("liveness on /metrics", lambda d: agent(d)["livenessProbe"]["httpGet"].update({"path": "/metrics"}), None,
     "livenessProbe"),
    ("readiness on another port", lambda d: agent(d)["readinessProbe"]["httpGet"].update({"port": 8080}), None,
     "readinessProbe"),
    ("no priority class", lambda d: pod(d).pop("priorityClassName"), None, "system-node-critical"),
    ("no tolerations", lambda d: pod(d).pop("tolerations"), None, "tolerations"),
    ("OnDelete", lambda d: of_kind(d, "DaemonSet")[0]["spec"].update({"updateStrategy": {"type": "OnDelete"}}), None,
     "RollingUpdate"),
    ("pod networking", lambda d: pod(d).update({"hostNetwork": False}), None, "hostNetwork"),
    ("the host's root", lambda d: pod(d)["volumes"].append({"name": "root", "hostPath": {"path": "/"}}), None,
     "more of the host"),
    ("another image", lambda d: agent(d).update({"image": "egressd:latest"}), None, "image"),
    ("no kubernetes block", lambda d: set_settings(d, lambda s: s.pop("kubernetes")), None, "kubernetes"),
    ("a file-mode setting", lambda d: set_settings(d, lambda s: s.update({"meshConfig": "x.yaml"})), None,
     "not with kubernetes"),
    ("an unknown setting", lambda d: set_settings(d, lambda s: s.update({"cgroupRoot": "/x"})), None,
     "unknown keys"),
    ("cgroupMount elsewhere", lambda d: set_settings(d, lambda s: s.update({"cgroupMount": "/cg"})), None,
     "cgroupMount"),
    ("toggle role can update", None, lambda o: o[0]["rules"][0]["verbs"].append("update"), "update"),
    ("toggle role on egresses", None, lambda o: o[0]["rules"][0]["resources"].append("egresses"), "egresses"),
]


def run_checks(main, optional, source, version, quiet=False):
    c = Checker(quiet=quiet)
    check_resources(c, main)
    check_rbac(c, main)
    check_optional(c, optional, main)
    check_settings(c, main)
    check_daemonset(c, main, version)
    return c.errors


def self_test(main, optional, source, version):
    failures = []
    for what, edit_main, edit_optional, word in FAULTS:
        m, o = copy.deepcopy(main), copy.deepcopy(optional)
        if edit_main:
            edit_main(m)
        if edit_optional:
            edit_optional(o)
        errors = run_checks(m, o, source, version, quiet=True)
        if not any(word in e for e in errors):
            failures.append(f"self-test: {what} went unreported (expected a failure saying '{word}'; got {errors})")
    return failures


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    source = os.path.abspath(sys.argv[1])
    bin_dir = sys.argv[2] if len(sys.argv) == 3 else None
    missing = [what for what, ok in (("kubectl", shutil.which("kubectl")), ("python3-yaml", yaml)) if not ok]
    if missing:
        message = f"{' and '.join(missing)} missing"
        if os.environ.get("CI") == "true":
            print(f"FAIL: {message} (CI=true: this test must run)", file=sys.stderr)
            return 1
        print(f"SKIP: {message}", file=sys.stderr)
        return 77

    version = project_version(source)
    main_docs = render(os.path.join(source, "deploy"))
    optional_docs = render(os.path.join(source, "deploy", "optional"))
    errors = run_checks(main_docs, optional_docs, source, version)
    c = Checker()
    if bin_dir:
        check_settings_with_parser(c, main_docs, bin_dir)
    check_image_build(c, source, version)
    errors += c.errors
    if not errors:
        errors += self_test(main_docs, optional_docs, source, version)
        if not errors:
            print(f"ok: self-test: each of {len(FAULTS)} injected faults is reported")
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    print("PASS: deploy-manifests" if not errors else f"{len(errors)} failure(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
