#!/usr/bin/env python3
"""Checks Aqueduct's Helm charts offline (no API server, no helm binary).

usage: check-charts.py [--out DIR] CHART_DIR...

For each chart:
- the chart lints cleanly (helm lint, strict: warnings are failures), with its defaults and
  with every values file in CHART/ci/*-values.yaml;
- values.yaml documents every value: each key the chart defines has a comment above it;
- every values file in CHART/ci/ (and the defaults) passes values.schema.json, and every file
  in CHART/ci/invalid/ is REFUSED by it (and by a render, as `helm install` would), at the
  key its `# expect: /KEY` line names (for an unknown key: its name);
- the chart renders with each values file, and every rendered object of a built-in kind (and
  each CRD of crds/, which a render leaves out) passes `kubernetes-validate --strict` for the
  Kubernetes version below. Custom resources (a PodMonitor) have no schema here: they are
  listed as not validated, never passed silently;
- for the spoke's chart: the FUSE holder's DaemonSet updates OnDelete and carries no checksum
  annotation (a values change or a new image never restarts it: that would take the node's
  mounts), the spoke's keeps RollingUpdate, neither selects the other's pods, and the sockets
  agree (the holder serves where the spoke's config looks, and reads where the spoke serves);
- probes, in each render: the hub's and the spoke's containers have startup, readiness and
  liveness HTTP probes on the paths the binaries serve (/healthz, /readyz), each at a port
  the container exposes, which is the port the rendered config's `[metrics] listen` names or
  the CSI livenessprobe sidecar's --health-port (where only /healthz is served); where the
  CSI plugin is on, the livenessprobe sidecar is there, its --csi-address is on a volume the
  spoke container mounts at the directory of the config's `[csi] socket`, and the spoke's
  liveness probe asks it.

With --out DIR, each render is written to DIR/CHART/VALUES/ (one file per template), so that
a test can load the configs the charts render with the binaries' own loaders.

Prints one line per check and exits 1 if any failed, 3 if a package is missing.
"""

import argparse
import glob
import os
import re
import shlex
import sys
import tomllib

KUBERNETES_VERSION = "1.33.0"
PIP = "python3 -m pip install --quiet helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0"

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:
    print(f"missing Python package ({e.name}); install them with:\n  {PIP}", file=sys.stderr)
    sys.exit(3)

# Custom resources the charts may render, which kubernetes-validate has no schema for.
CUSTOM_GROUPS = ("monitoring.coreos.com/",)
# Free-form maps in values.yaml: their own keys (resources' requests, labels...) are data
# that Kubernetes defines, not the chart's settings, and need no comment each.
FREE_MAPS = {"resources", "labels", "annotations", "nodeSelector", "affinity", "podAnnotations"}
RELEASE = "ci"
# What aqueduct-hub and aqueduct-spoke serve on their `[metrics] listen` port besides
# /metrics (aqueduct_core::metrics), and what the livenessprobe sidecar serves.
SERVED_PATHS = {"/healthz", "/readyz"}
SIDECAR_PATHS = {"/healthz"}
# The probes each binary's container must have, and the path each asks.
REQUIRED_PROBES = {
    "aqueduct-hub": {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"},
    "aqueduct-spoke": {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"},
}
NAMESPACE = "aqueduct-system"


class Report:
    def __init__(self):
        self.failures = 0

    def ok(self, what):
        print(f"ok   {what}")

    def fail(self, what, problems=()):
        self.failures += 1
        print(f"FAIL {what}")
        for p in problems:
            for line in str(p).splitlines():
                print(f"  {line}")

    def note(self, what):
        print(f"note {what}")


def load_values(path):
    with open(path) as f:
        values = yaml.safe_load(f)
    return values or {}


def undocumented_keys(values_path):
    """Keys of values.yaml with no comment line right above them (or above their block)."""
    missing = []
    stack = []  # (indent, key)
    previous = ""
    with open(values_path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            match = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
            if match and not stripped.startswith("#") and not stripped.startswith("-"):
                indent = len(match.group(1))
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                parents = [k for _, k in stack]
                path = ".".join(parents + [match.group(2)])
                free = any(p in FREE_MAPS or ".".join(parents[: i + 1]) in FREE_MAPS for i, p in enumerate(parents))
                if not free and not previous.startswith("#"):
                    missing.append(f"line {number}: {path}")
                stack.append((indent, match.group(2)))
            if stripped:
                previous = stripped
    return missing


def documents(rendered):
    """(template, object) for every object of a render, in template order."""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield template, doc


def validate_object(report, what, doc):
    api = doc.get("apiVersion", "")
    if api.startswith(CUSTOM_GROUPS):
        report.note(f"{what}: custom resource {api} {doc.get('kind')}, not validated (no schema offline)")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        report.ok(what)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
        report.fail(what, [getattr(e, "message", e)])


def check_holder(report, label, docs):
    """The holder's DaemonSet against the spoke's (see the module's docstring)."""
    sets = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "DaemonSet"}
    holder = next((d for n, d in sets.items() if n.endswith("-holder")), None)
    spoke = next((d for n, d in sets.items() if not n.endswith("-holder")), None)
    config = next((d for _, d in docs if d.get("kind") == "ConfigMap" and "spoke.toml" in d.get("data", {})), None)
    if holder is None or spoke is None or config is None:
        report.fail(f"{label}: the holder's DaemonSet, the spoke's and its config are not all rendered")
        return
    problems = []
    if holder["spec"].get("updateStrategy", {}).get("type") != "OnDelete":
        problems.append("the holder's DaemonSet does not update OnDelete")
    annotations = holder["spec"]["template"]["metadata"].get("annotations") or {}
    problems += [f"the holder's pods carry {k}: a change restarts them" for k in annotations if k.startswith("checksum/")]
    if spoke["spec"].get("updateStrategy", {}).get("type") != "RollingUpdate":
        problems.append("the spoke's DaemonSet does not roll")
    for a, b in [(holder, spoke), (spoke, holder)]:
        selector = a["spec"]["selector"]["matchLabels"]
        labels = b["spec"]["template"]["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in selector.items()):
            problems.append(f"{a['metadata']['name']} selects the pods of {b['metadata']['name']}")
    toml = tomllib.loads(config["data"]["spoke.toml"])
    container = holder["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.split("=", 1) for a in container.get("args", []) if a.startswith("--") and "=" in a)
    mounts = toml.get("mounts", {})
    if mounts.get("holder") != "external":
        problems.append(f"the spoke's config says holder = {mounts.get('holder')!r}, not \"external\"")
    if args.get("--socket") != mounts.get("holder_socket"):
        problems.append(f"the holder serves {args.get('--socket')}, the spoke looks at {mounts.get('holder_socket')}")
    if args.get("--spoke-socket") != toml.get("socket"):
        problems.append(f"the holder reads through {args.get('--spoke-socket')}, the spoke serves {toml.get('socket')}")
    dirs = {os.path.dirname(str(p)) for p in [args.get("--socket"), toml.get("socket")]}
    for d in [holder, spoke]:
        mounted = {m["mountPath"] for c in d["spec"]["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}
        problems += [f"{d['metadata']['name']} does not mount the socket directory {x}" for x in dirs if x not in mounted]
    if problems:
        report.fail(f"{label}: the holder and the spoke", problems)
    else:
        report.ok(f"{label}: the holder updates OnDelete with no checksum, the spoke rolls, and their sockets agree ({shlex.join(container['args'])})")


def config_value(docs, section, key):
    """A key of a section of the hub.toml/spoke.toml that a rendered ConfigMap holds."""
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        for text in (doc.get("data") or {}).values():
            match = re.search(r"^\[" + re.escape(section) + r"\]\n(?:(?!\[).*\n)*?" + key + r" = \"([^\"]*)\"", text, re.M)
            if match:
                return match.group(1)
    return None


def flag(args, name):
    for a in args or []:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def probe_problems(docs):
    """What is wrong with the probes of the rendered workloads (empty: nothing)."""
    problems = []
    listen = config_value(docs, "metrics", "listen")
    metrics_port = int(listen.rsplit(":", 1)[1]) if listen else None
    csi_socket = config_value(docs, "csi", "socket")
    for doc in docs:
        if doc.get("kind") not in ("StatefulSet", "DaemonSet", "Deployment"):
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        containers = doc["spec"]["template"]["spec"].get("containers", [])
        sidecar = next((c for c in containers if "/livenessprobe:" in c.get("image", "")), None)
        sidecar_port = int(flag(sidecar.get("args"), "health-port") or 9808) if sidecar else None
        for c in containers:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for kind, path in REQUIRED_PROBES.get(c["name"], {}).items():
                if kind not in c:
                    problems.append(f"{where} container {c['name']}: no {kind}")
                elif c[kind].get("httpGet", {}).get("path") != path:
                    problems.append(f"{where} container {c['name']}: {kind} does not ask {path}")
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = (c.get(kind) or {}).get("httpGet")
                if not http:
                    continue
                port = http.get("port")
                number = ports.get(port) if isinstance(port, str) else port
                if number is None or number not in ports.values():
                    problems.append(f"{where} container {c['name']}: {kind} port {port} is not one it exposes")
                    continue
                if sidecar_port is not None and number == sidecar_port:
                    served, what = SIDECAR_PATHS, "the livenessprobe sidecar"
                elif number == metrics_port:
                    served, what = SERVED_PATHS, f"the binary on [metrics] listen port {metrics_port}"
                else:
                    problems.append(f"{where} container {c['name']}: {kind} port {number} serves no probe endpoint")
                    continue
                if http.get("path") not in served:
                    problems.append(f"{where} container {c['name']}: {kind} path {http.get('path')} is not served by {what}")
        spoke = next((c for c in containers if c["name"] == "aqueduct-spoke"), None)
        if spoke is None or csi_socket is None:
            continue
        if sidecar is None:
            problems.append(f"{where}: the CSI plugin is on, but there is no livenessprobe sidecar")
            continue
        address = flag(sidecar.get("args"), "csi-address") or ""
        volume = next((m["name"] for m in sidecar.get("volumeMounts", []) if address == m["mountPath"].rstrip("/") + "/" + os.path.basename(address)), None)
        spoke_mounts = {m["name"]: m["mountPath"].rstrip("/") for m in spoke.get("volumeMounts", [])}
        if volume is None:
            problems.append(f"{where}: the livenessprobe's --csi-address {address!r} is on none of its volumes")
        elif spoke_mounts.get(volume) != os.path.dirname(csi_socket) or os.path.basename(address) != os.path.basename(csi_socket):
            problems.append(f"{where}: the livenessprobe's {address} (volume {volume}) is not the spoke's CSI socket {csi_socket}")
        liveness = (spoke.get("livenessProbe") or {}).get("httpGet", {})
        port = liveness.get("port")
        spoke_ports = {p.get("name"): p["containerPort"] for p in spoke.get("ports", [])}
        if (spoke_ports.get(port) if isinstance(port, str) else port) != sidecar_port:
            problems.append(f"{where}: the spoke's liveness probe does not ask the livenessprobe sidecar (port {sidecar_port})")
    return problems


def lint(report, chart_dir, label, values):
    result = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}")
    problems = [f"{m.get('path')}: {m.get('error')}" for m in result.get("messages", []) if m.get("severity", 0) >= 2]
    problems += result.get("errors") or []
    if problems:
        report.fail(f"{label}: helm lint --strict", problems)
    else:
        report.ok(f"{label}: helm lint --strict")


def check_chart(report, chart_dir, out):
    chart = helm.Chart.load(chart_dir)
    name = chart.name
    schema = chart.schema
    if schema is None:
        report.fail(f"{name}: values.schema.json is missing")
        return
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        report.ok(f"{name}: values.schema.json is a valid JSON schema")
    except jsonschema.SchemaError as e:
        report.fail(f"{name}: values.schema.json is not a valid JSON schema", [e.message])

    missing = undocumented_keys(os.path.join(chart_dir, "values.yaml"))
    if missing:
        report.fail(f"{name}: values.yaml has values without a comment", missing)
    else:
        report.ok(f"{name}: every value in values.yaml has a comment")

    for crd in chart.crds:
        for doc in yaml.safe_load_all(crd["data"]):
            if doc:
                validate_object(report, f"{name}: {crd['filename']} {doc.get('kind')}/{doc['metadata']['name']}", doc)

    files = sorted(glob.glob(os.path.join(chart_dir, "ci", "*-values.yaml")))
    if not files:
        report.fail(f"{name}: no values files in {chart_dir}/ci/*-values.yaml")
    for path in files:
        label = f"{name} {os.path.basename(path)}"
        values = load_values(path)
        try:
            chart.validate_schema(chart.merge_values(values))
            report.ok(f"{label}: values match values.schema.json")
        except helm.HelmError as e:
            report.fail(f"{label}: values do not match values.schema.json", [e])
            continue
        lint(report, chart_dir, label, values)
        try:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            report.fail(f"{label}: render", [e])
            continue
        kinds = []
        docs = []
        for template, doc in documents(rendered):
            kinds.append(doc.get("kind"))
            docs.append(doc)
            validate_object(report, f"{label}: {template} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc)
        if not kinds:
            report.fail(f"{label}: the render holds no object")
        if name == "aqueduct-spoke":
            check_holder(report, label, list(documents(rendered)))
        problems = probe_problems(docs)
        if problems:
            report.fail(f"{label}: probes", problems)
        else:
            report.ok(f"{label}: probes present, on exposed ports and served paths")
        notes = [t for t in rendered if t.endswith("NOTES.txt")]
        if notes and not rendered[notes[0]].strip():
            report.fail(f"{label}: NOTES.txt renders empty")
        if out:
            where = os.path.join(out, name, os.path.basename(path)[: -len("-values.yaml")])
            for template, text in rendered.items():
                target = os.path.join(where, template)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w") as f:
                    f.write(text)

    invalid = sorted(glob.glob(os.path.join(chart_dir, "ci", "invalid", "*.yaml")))
    for path in invalid:
        label = f"{name} invalid/{os.path.basename(path)}"
        values = load_values(path)
        refused = []
        try:
            chart.validate_schema(chart.merge_values(values))
        except helm.HelmError as e:
            refused.append(f"schema: {e}")
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            refused.append(f"render: {e}")
        # Each file names the key it breaks (`# expect: /cache/disk`), so that a file refused
        # for another reason (a typo) does not pass as a rejection.
        with open(path) as f:
            expect = re.findall(r"^# expect: (\S+)", f.read(), re.M)
        if not expect:
            report.fail(f"{label}: no `# expect: /KEY` line says which key it breaks")
        elif len(refused) == 2 and not all(f"'{expect[0]}'" in r for r in refused):
            report.fail(f"{label}: refused, but not for {expect[0]}", refused)
        elif len(refused) == 2:
            report.ok(f"{label}: refused ({' '.join(refused[0].split())})")
        else:
            report.fail(f"{label}: bad values were accepted", refused or ["by the schema and by a render"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write each render under this directory")
    parser.add_argument("charts", nargs="+")
    args = parser.parse_args()
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), Kubernetes {KUBERNETES_VERSION}")
    report = Report()
    for chart_dir in args.charts:
        try:
            check_chart(report, chart_dir, args.out)
        except helm.HelmError as e:
            report.fail(f"{chart_dir}: cannot load or check the chart", [e])
    print(f"{report.failures} failure(s)" if report.failures else "all chart checks passed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
