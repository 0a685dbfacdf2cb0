#!/usr/bin/env python3
"""Render and validate the Kubernetes manifests of deploy/kubernetes.

Run it through .ci/validate-manifests.sh, which makes the virtualenv with the
packages this needs (.ci/manifests-requirements.txt). Subcommands:

  validate [DIR]   render DIR (default deploy/kubernetes) and check it; exit 1
                   with one line per problem when anything is wrong
  render [DIR]     print the rendered YAML stream (what `kubectl apply -k` sends)
  sync-rules       regenerate deploy/kubernetes/prometheusrule.yaml from
                   deploy/prometheus/scopegate-alerts.yml (needs no packages)

What `validate` checks:
  1. Every core object against the Kubernetes OpenAPI schemas in strict mode
     (unknown fields fail), with the oldest and the newest Kubernetes version
     this base supports (package kubernetes-validate, offline).
  2. ServiceMonitor and PrometheusRule against the prometheus-operator CRD
     types (package cloudcoil.models.prometheus_operator, offline), made strict
     the way the API server's strict field validation is: unknown fields fail.
  3. The PrometheusRule is the rule file, byte for byte after the header, and
     `promtool check rules` passes on it when promtool is installed.
  4. The objects fit together: selectors, port names, probe paths on the
     metrics port, the config mounted as a folder (no subPath), the security
     context, the shutdown timeline, the Secret-backed ${VAR}s, the Redis URL.
  5. The scopegate config inside the ConfigMap: fields of docs/reference.md
     ("Server config", "Replicas and Redis") only, listen on all interfaces, state.backend redis with a full redis
     block. With SCOPEGATE_BIN set, also `$SCOPEGATE_BIN check` on it.
  6. The Dockerfile fits the Deployment: numeric non-root USER equal to
     runAsUser, ENTRYPOINT/CMD with the config path, the exposed ports, a
     locked release build, ca-certificates (hadolint runs in the shell script).
  7. A self-test: deliberately broken variants of the rendered objects and of
     the Dockerfile must each be rejected for their intended reason, so a check
     that silently stopped checking fails CI.

The renderer understands only the kustomization fields this base uses
(resources, configMapGenerator with files and disableNameSuffixHash) and fails
on any other, so it can never quietly render something kustomize would not.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "deploy" / "kubernetes"
RULES_FILE = REPO / "deploy" / "prometheus" / "scopegate-alerts.yml"
RULE_OBJECT_FILE = "prometheusrule.yaml"

# The oldest Kubernetes this base is written for (docs/deploy.md) and the
# newest whose schemas kubernetes-validate bundles.
MIN_KUBERNETES = "1.29"

PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"

# Server-config fields (docs/reference.md#server-config; `state`:
# docs/reference.md#replicas-and-redis; `ca_file`: #upstream-fields), read from
# the config loader's own serde structs in src/ so that this list cannot fall
# behind the binary (scopegate refuses unknown fields).
def rust_struct_fields(name):
    """The field names of `struct NAME { ... }` in the crate's sources."""
    pattern = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?struct " + re.escape(name) + r"\s*\{(.*?)^\}",
                         re.S | re.M)
    for path in sorted((REPO / "src").rglob("*.rs")):
        m = pattern.search(path.read_text(encoding="utf-8"))
        if m:
            fields = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?([a-z_][a-z0-9_]*)\s*:", m.group(1), re.M)
            if fields:
                return set(fields)
    raise SystemExit(f"manifests: struct {name} not found under src/ (renamed? update .ci/manifests.py)")


CONFIG_FIELDS = rust_struct_fields("RawConfig")
UPSTREAM_FIELDS = rust_struct_fields("RawUpstream")
STATE_FIELDS = rust_struct_fields("RawState")
REDIS_FIELDS = rust_struct_fields("RawRedis")
# The `tracing` block (docs/reference.md#the-tracing-block).
TRACING_FIELDS = rust_struct_fields("TracingConfig")
# The standard variables that turn tracing on without a `tracing` block
# (docs/reference.md#otel-environment-variables).
OTEL_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# At SIGTERM, queued spans get at most this long after the drain.
TRACE_FLUSH_SECONDS = 2

CONFIG_DIR = "/etc/scopegate"
CONFIG_PATH = CONFIG_DIR + "/scopegate.yaml"
PROXY_DEPLOYMENT = "scopegate"
DEFAULT_SHUTDOWN_GRACE = 30

RULE_OBJECT_HEADER = """\
# GENERATED from deploy/prometheus/scopegate-alerts.yml: do not edit here.
# Edit the rule file (and its promtool tests), then regenerate with
#   python3 .ci/manifests.py sync-rules
# CI (.ci/validate-manifests.sh) fails when the two differ.
# If your Prometheus selects rules by label (kube-prometheus-stack:
# `release: <helm release name>`), add that label in an overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: scopegate
  labels:
    app.kubernetes.io/name: scopegate
    app.kubernetes.io/component: alerts
spec:
"""


# ---------------------------------------------------------------------------
# Problems


@dataclass
class Problems:
    """Every problem found, each with where it is."""

    items: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


class RenderError(Exception):
    """The kustomization cannot be rendered."""


# ---------------------------------------------------------------------------
# YAML


def yaml_module():
    import yaml  # from the virtualenv; sync-rules does not need it

    return yaml


def load_all(text: str, where: str) -> list[Any]:
    """Every document of a YAML stream, refusing duplicate keys (the API
    server's strict field validation refuses them too)."""
    yaml = yaml_module()

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{where}: invalid YAML: {e}") from None


# ---------------------------------------------------------------------------
# Rendering (the subset of kustomize this base uses)


@dataclass
class Rendered:
    """The rendered objects, each with the file it came from."""

    objects: list[tuple[str, dict]]
    # ConfigMap name as written -> name after the generator's hash suffix.
    generated_names: dict[str, str]

    def find(self, kind: str, name: str) -> dict | None:
        for _, obj in self.objects:
            if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def of_kind(self, kind: str) -> Iterator[dict]:
        return (o for _, o in self.objects if o.get("kind") == kind)


def inside(base: Path, rel: str, what: str) -> Path:
    path = (base / rel).resolve()
    if base.resolve() not in path.parents:
        # kustomize's default load restrictor refuses files outside the root.
        raise RenderError(f"{what} {rel!r} is outside the kustomization folder")
    if not path.is_file():
        raise RenderError(f"{what} {rel!r} does not exist")
    return path


def hash_suffix(config_map: dict) -> str:
    """A content hash for a generated ConfigMap's name, in the spirit of
    kustomize's (not byte-identical to it: CI only needs a name that changes
    with the content)."""
    text = json.dumps(
        {"kind": "ConfigMap", "name": config_map["metadata"]["name"],
         "data": config_map["data"]}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def render(base: Path) -> Rendered:
    """Render a kustomization folder. Raises RenderError on anything this
    renderer does not understand."""
    kfile = base / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{kfile}: no kustomization.yaml")
    docs = load_all(kfile.read_text(), str(kfile))
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{kfile}: must be one mapping")
    k = docs[0]
    unknown = set(k) - {"apiVersion", "kind", "resources", "configMapGenerator"}
    if unknown:
        raise RenderError(
            f"{kfile}: fields this renderer does not support: {sorted(unknown)} "
            "(add support in .ci/manifests.py, or real kustomize would render "
            "something CI never checked)")
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        raise RenderError(f"{kfile}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")

    objects: list[tuple[str, dict]] = []
    for rel in k.get("resources") or []:
        path = inside(base, rel, "resource")
        for doc in load_all(path.read_text(), str(path)):
            if not isinstance(doc, dict):
                raise RenderError(f"{path}: a document that is not a mapping")
            objects.append((rel, doc))

    generated: dict[str, str] = {}
    for gen in k.get("configMapGenerator") or []:
        unknown = set(gen) - {"name", "files", "options"}
        if unknown:
            raise RenderError(f"{kfile}: configMapGenerator fields not supported: {sorted(unknown)}")
        options = gen.get("options") or {}
        unknown = set(options) - {"disableNameSuffixHash"}
        if unknown:
            raise RenderError(f"{kfile}: configMapGenerator options not supported: {sorted(unknown)}")
        name = gen.get("name")
        if not isinstance(name, str) or not name:
            raise RenderError(f"{kfile}: a configMapGenerator without a name")
        data: dict[str, str] = {}
        for entry in gen.get("files") or []:
            key, _, rel = entry.rpartition("=")
            key = key or Path(rel).name
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                raise RenderError(f"{kfile}: {name}: invalid ConfigMap key {key!r}")
            if key in data:
                raise RenderError(f"{kfile}: {name}: key {key!r} twice")
            data[key] = inside(base, rel, f"{name} file").read_text()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        if not options.get("disableNameSuffixHash"):
            cm["metadata"]["name"] = f"{name}-{hash_suffix(cm)}"
        generated[name] = cm["metadata"]["name"]
        objects.append((f"configMapGenerator {name}", cm))

    seen = set()
    for where, obj in objects:
        ident = (obj.get("apiVersion"), obj.get("kind"), obj.get("metadata", {}).get("name"))
        if ident in seen:
            raise RenderError(f"{where}: {ident[1]}/{ident[2]} defined twice")
        seen.add(ident)

    for _, obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            rename_config_maps(spec, generated)
    return Rendered(objects, generated)


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec")
    if kind == "Pod":
        return obj.get("spec")
    return None


def containers(spec: dict) -> list[dict]:
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def rename_config_maps(spec: dict, names: dict[str, str]) -> None:
    """kustomize's name references: generated ConfigMaps are renamed wherever
    a pod refers to them."""
    def fix(ref: dict | None) -> None:
        if isinstance(ref, dict) and ref.get("name") in names:
            ref["name"] = names[ref["name"]]

    for vol in spec.get("volumes") or []:
        fix(vol.get("configMap"))
        for src in (vol.get("projected") or {}).get("sources") or []:
            fix(src.get("configMap"))
    for c in containers(spec):
        for env in c.get("env") or []:
            fix((env.get("valueFrom") or {}).get("configMapKeyRef"))
        for env_from in c.get("envFrom") or []:
            fix(env_from.get("configMapRef"))


# ---------------------------------------------------------------------------
# 1. Kubernetes schemas


def describe(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def json_path(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "."


def check_kubernetes_schemas(rendered: Rendered, problems: Problems) -> None:
    import kubernetes_validate

    versions = [MIN_KUBERNETES, kubernetes_validate.latest_version()]
    for where, obj in rendered.objects:
        if str(obj.get("apiVersion", "")).startswith(PROMETHEUS_OPERATOR_GROUP + "/"):
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.add(f"{where}: {describe(obj)}",
                             f"Kubernetes {e.version} schema: {e.message} at {json_path(e.absolute_path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.add(f"{where}: {describe(obj)}", e.message)
            except (KeyError, TypeError) as e:
                problems.add(f"{where}: {describe(obj)}", f"not a Kubernetes object: {e}")


# ---------------------------------------------------------------------------
# 2. prometheus-operator CRD schemas


def strict(schema: Any) -> Any:
    """Refuse properties a schema does not name, as the API server's strict
    field validation does for CRDs (their OpenAPI schemas only prune them)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("properties") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas() -> dict[str, dict]:
    """Strict JSON schemas of ServiceMonitor and PrometheusRule, from the
    prometheus-operator CRD types; cached beside the virtualenv, since
    importing the models takes seconds."""
    from importlib.metadata import version

    pkg = "cloudcoil.models.prometheus_operator"
    cache_dir = Path(os.environ.get("SCOPEGATE_MANIFESTS_CACHE", tempfile.gettempdir()))
    cache = cache_dir / f"scopegate-crd-schemas-{version(pkg)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from cloudcoil.models.prometheus_operator import v1

    schemas = {
        kind: strict(getattr(v1, kind).model_json_schema(by_alias=True, mode="validation"))
        for kind in ("ServiceMonitor", "PrometheusRule")
    }
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(schemas))
    tmp.replace(cache)
    return schemas


def check_crd_schemas(rendered: Rendered, problems: Problems) -> None:
    import jsonschema

    schemas = None
    for where, obj in rendered.objects:
        if not str(obj.get("apiVersion", "")).startswith(PROMETHEUS_OPERATOR_GROUP + "/"):
            continue
        if obj.get("apiVersion") != PROMETHEUS_OPERATOR_GROUP + "/v1":
            problems.add(f"{where}: {describe(obj)}", f"apiVersion {obj.get('apiVersion')} (expected {PROMETHEUS_OPERATOR_GROUP}/v1)")
            continue
        schemas = schemas or crd_schemas()
        schema = schemas.get(obj.get("kind"))
        if schema is None:
            problems.add(f"{where}: {describe(obj)}", "no CRD schema for this kind")
            continue
        if "spec" not in obj:
            problems.add(f"{where}: {describe(obj)}", "no spec")
        validator = jsonschema.Draft202012Validator(schema)
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            # Inside anyOf (a field that may also be null), name the branch's
            # own error rather than "... is not valid under any of the schemas".
            e = jsonschema.exceptions.best_match([e])
            problems.add(f"{where}: {describe(obj)}", f"CRD schema: {e.message} at {json_path(e.absolute_path)}")


# ---------------------------------------------------------------------------
# 3. The PrometheusRule is the rule file


def rule_object_text() -> str:
    """prometheusrule.yaml as generated from the rule file: the header, then
    the file from `groups:` on, indented under `spec:`."""
    lines = RULES_FILE.read_text().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("groups:")), None)
    if start is None:
        raise SystemExit(f"{RULES_FILE}: no top-level `groups:` line")
    body = "\n".join(("  " + l) if l.strip() else "" for l in lines[start:])
    return RULE_OBJECT_HEADER + body + "\n"


PROMTOOL_NOTE_SHOWN: list[bool] = []


def check_rule_objects(rendered: Rendered, problems: Problems) -> None:
    yaml = yaml_module()
    rules = yaml.safe_load(RULES_FILE.read_text())
    objects = list(rendered.of_kind("PrometheusRule"))
    if len(objects) != 1:
        problems.add("PrometheusRule", f"expected exactly one, found {len(objects)}")
        return
    spec = objects[0].get("spec")
    if spec != rules:
        problems.add(describe(objects[0]), f"spec is not the content of {RULES_FILE.relative_to(REPO)}")
    promtool = shutil.which("promtool")
    if promtool is None:
        if not PROMTOOL_NOTE_SHOWN:
            print("note: promtool not installed; skipped `promtool check rules` on the PrometheusRule",
                  file=sys.stderr)
            PROMTOOL_NOTE_SHOWN.append(True)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(spec, f)
    try:
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if run.returncode != 0:
        problems.add(describe(objects[0]), "promtool check rules failed:\n" + run.stdout + run.stderr)


# ---------------------------------------------------------------------------
# 4 and 5. How the objects fit together, and the config inside


def labels_match(selector: dict | None, labels: dict | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def port_of(address: Any) -> tuple[str, int] | None:
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+)", str(address))
    return (m.group(1), int(m.group(2))) if m else None


def config_maps_of_volume(vol: dict) -> list[str]:
    if "configMap" in vol:
        return [vol["configMap"].get("name")]
    return [s["configMap"].get("name")
            for s in (vol.get("projected") or {}).get("sources") or [] if "configMap" in s]


def pre_stop_seconds(container: dict) -> int:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep") and str(cmd[1]).isdigit():
        return int(cmd[1])
    return 0


def check_wiring(rendered: Rendered, problems: Problems) -> None:
    dep = rendered.find("Deployment", PROXY_DEPLOYMENT)
    if dep is None:
        problems.add("Deployment", f"no Deployment named {PROXY_DEPLOYMENT!r}")
        return
    where = describe(dep)
    spec = dep.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if not labels_match(spec.get("selector", {}).get("matchLabels"), pod_labels):
        problems.add(where, "selector does not match the pod template's labels")
    main = next((c for c in pod.get("containers") or [] if c.get("name") == "scopegate"), None)
    if main is None:
        problems.add(where, "no container named scopegate")
        return
    ports = {p.get("name"): p.get("containerPort") for p in main.get("ports") or []}

    # Security context: pod level or container level, container wins.
    psc, csc = pod.get("securityContext") or {}, main.get("securityContext") or {}

    def sc(key):
        return csc.get(key, psc.get(key))

    if sc("runAsNonRoot") is not True:
        problems.add(where, "securityContext.runAsNonRoot must be true")
    if sc("runAsUser") != 10001:
        problems.add(where, "securityContext.runAsUser must be 10001 (the image's user)")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.add(where, "container securityContext.readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.add(where, "container securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problems.add(where, "container securityContext.capabilities.drop must include ALL")
    if (sc("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.add(where, "seccompProfile.type must be RuntimeDefault")
    if not (main.get("resources") or {}).get("requests"):
        problems.add(where, "container has no resource requests")
    if not pod.get("topologySpreadConstraints"):
        problems.add(where, "no topologySpreadConstraints")

    # The config: both files, one folder mounted whole (never subPath).
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    config_cm = rendered.generated_names.get("scopegate-config")
    keys_cm = rendered.generated_names.get("scopegate-keys")
    config_volume = None
    for m in main.get("volumeMounts") or []:
        vol = volumes.get(m.get("name"))
        if vol is None:
            problems.add(where, f"volumeMount {m.get('name')!r} names no volume")
            continue
        cms = config_maps_of_volume(vol)
        if cms and ("subPath" in m or "subPathExpr" in m):
            problems.add(where, f"volumeMount {m.get('name')!r} uses subPath: a ConfigMap mounted by subPath "
                                "never sees the kubelet's ..data symlink swap, so keys would not reload")
        if m.get("mountPath") == CONFIG_DIR:
            config_volume = cms
    if config_volume is None:
        problems.add(where, f"nothing mounted at {CONFIG_DIR}")
        config_volume = []
    for cm in (config_cm, keys_cm):
        if cm is None or cm not in config_volume:
            problems.add(where, f"the volume at {CONFIG_DIR} must hold ConfigMap {cm or '(not generated)'}")
    args = main.get("args") or []
    if args and args[-2:] != ["--config", CONFIG_PATH]:
        problems.add(where, f"args must end with --config {CONFIG_PATH}")

    config_obj = rendered.find("ConfigMap", config_cm) if config_cm else None
    keys_obj = rendered.find("ConfigMap", keys_cm) if keys_cm else None
    text = ((config_obj or {}).get("data") or {}).get("scopegate.yaml")
    if text is None:
        problems.add("ConfigMap scopegate-config", "no scopegate.yaml key")
        return
    try:
        config = load_all(text, "scopegate.yaml")[0]
    except (RenderError, IndexError) as e:
        problems.add("ConfigMap scopegate-config", f"scopegate.yaml: {e}")
        return
    if not isinstance(config, dict):
        problems.add("ConfigMap scopegate-config", "scopegate.yaml is not a mapping")
        return
    cwhere = "ConfigMap scopegate-config: scopegate.yaml"
    check_config(config, text, cwhere, problems)

    keys_file = str(config.get("keys_file", ""))
    keys_data = (keys_obj or {}).get("data") or {}
    if keys_file not in keys_data:
        problems.add(cwhere, f"keys_file {keys_file!r} is not a key of ConfigMap scopegate-keys "
                             f"(which has {sorted(keys_data)}); it must be a name relative to {CONFIG_DIR}")
    else:
        try:
            keys_doc = load_all(keys_data[keys_file], keys_file)
            if not keys_doc or not isinstance(keys_doc[0], dict) or not isinstance(keys_doc[0].get("keys"), list):
                problems.add("ConfigMap scopegate-keys", f"{keys_file} has no `keys:` list")
        except RenderError as e:
            problems.add("ConfigMap scopegate-keys", str(e))

    # Ports and probes.
    listen = config.get("listen")
    listen = [listen] if isinstance(listen, (str, dict)) else listen or []
    listen_ports = set()
    for entry in listen:
        address = entry.get("address") if isinstance(entry, dict) else entry
        hp = port_of(address)
        if hp is None:
            problems.add(cwhere, f"listen address {address!r} is not HOST:PORT")
            continue
        if hp[0] not in ("0.0.0.0", "[::]"):
            problems.add(cwhere, f"listen {address!r} must be on all interfaces (0.0.0.0 or [::]) in a pod")
        listen_ports.add(hp[1])
    if ports.get("http") not in listen_ports:
        problems.add(where, f"container port `http` ({ports.get('http')}) is not a listen port {sorted(listen_ports)}")
    metrics = port_of(config.get("metrics_listen"))
    if metrics is None:
        problems.add(cwhere, "metrics_listen must be set (probes and the ServiceMonitor need it)")
    else:
        if metrics[0] not in ("0.0.0.0", "[::]"):
            problems.add(cwhere, "metrics_listen must be on all interfaces in a pod (the kubelet probes the pod IP)")
        if ports.get("metrics") != metrics[1]:
            problems.add(where, f"container port `metrics` ({ports.get('metrics')}) is not metrics_listen's port {metrics[1]}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (main.get(probe) or {}).get("httpGet") or {}
        port = get.get("port")
        if get.get("path") != path or (port != "metrics" and (metrics is None or port != metrics[1])):
            problems.add(where, f"{probe} must be GET {path} on the metrics port")

    # Shutdown: preStop + drain (+ the trace flush) must end before the
    # kubelet's SIGKILL.
    grace = config.get("shutdown_grace_period_seconds", DEFAULT_SHUTDOWN_GRACE)
    kill = pod.get("terminationGracePeriodSeconds", 30)
    pre = pre_stop_seconds(main)
    traced = check_tracing_env(main, where, problems) or "tracing" in config
    flush = TRACE_FLUSH_SECONDS if traced else 0
    if pre <= 0:
        problems.add(where, "no preStop sleep: the pod may be sent new connections after SIGTERM")
    if isinstance(grace, int) and isinstance(kill, int) and not kill > pre + grace + flush:
        problems.add(where, f"terminationGracePeriodSeconds {kill} must exceed preStop {pre} s "
                            f"+ shutdown_grace_period_seconds {grace} s"
                            + (f" + the {flush} s trace flush" if flush else ""))

    # ${VAR}s come from the pod's environment.
    env_names = {e.get("name") for e in main.get("env") or []}
    for var in sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", strip_comments(text)))):
        if var not in env_names:
            problems.add(where, f"${{{var}}} in scopegate.yaml is not in the container's env")
    for e in main.get("env") or []:
        if re.search(r"(KEY|TOKEN|SECRET|PASSWORD)", str(e.get("name"))) and "value" in e:
            problems.add(where, f"env {e.get('name')} holds a secret inline; take it from a Secret (valueFrom.secretKeyRef)")

    # Replicas and the state backend.
    state = config.get("state") or {}
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int):
        replicas = 1  # the schema check reports it
    if replicas > 1 and state.get("backend", "local") != "redis":
        problems.add(cwhere, f"{replicas} replicas with state.backend {state.get('backend', 'local')!r}: "
                             "every limit would be per replica (use redis)")
    if state.get("backend") == "redis":
        url = str((state.get("redis") or {}).get("url", ""))
        m = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)(?::(\d+))?", url)
        if m and "." not in m.group(1) and "$" not in m.group(1):
            svc = rendered.find("Service", m.group(1))
            port = int(m.group(2) or 6379)
            if svc is None:
                problems.add(cwhere, f"state.redis.url names host {m.group(1)!r}, which is no Service here")
            elif port not in [p.get("port") for p in svc.get("spec", {}).get("ports") or []]:
                problems.add(cwhere, f"state.redis.url port {port} is not a port of Service {m.group(1)}")

    check_services(rendered, pod_labels, ports, replicas, problems)


def check_tracing_env(main: dict, where: str, problems: Problems) -> bool:
    """The standard OTEL_* variables of the container, when set inline: usable
    values (scopegate refuses to start otherwise). True when they turn
    tracing on."""
    env = {e.get("name"): e for e in main.get("env") or []}
    value = lambda name: (env.get(name) or {}).get("value")
    for name in OTEL_ENDPOINT_VARS:
        v = value(name)
        if v is not None and not re.match(r"https?://[^/?#@]+", v):
            problems.add(where, f"env {name} {v!r} must be an http:// or https:// URL")
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        v = value(name)
        if v is not None and v not in ("http/protobuf", "grpc"):
            problems.add(where, f"env {name} {v!r} must be http/protobuf or grpc")
    ratio = value("OTEL_TRACES_SAMPLER_ARG")
    if ratio is not None:
        try:
            ok = 0.0 <= float(ratio) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            problems.add(where, f"env OTEL_TRACES_SAMPLER_ARG {ratio!r} must be a ratio from 0.0 to 1.0")
    return any(name in env for name in OTEL_ENDPOINT_VARS)


def check_tracing(tracing, where: str, problems: Problems) -> None:
    """The `tracing` block against docs/reference.md#the-tracing-block."""
    if not isinstance(tracing, dict):
        problems.add(where, "tracing must be a mapping")
        return
    for key in sorted(set(tracing) - TRACING_FIELDS):
        problems.add(where, f"tracing: unknown field {key!r}")
    if not re.match(r"https?://[^/?#@]+", str(tracing.get("otlp_endpoint", ""))):
        problems.add(where, "tracing.otlp_endpoint must be an http:// or https:// URL")
    if tracing.get("protocol", "http/protobuf") not in ("http/protobuf", "grpc"):
        problems.add(where, "tracing.protocol must be http/protobuf or grpc")
    ratio = tracing.get("sample_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        problems.add(where, "tracing.sample_ratio must be a number from 0.0 to 1.0")


def strip_comments(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))


def check_config(config: dict, text: str, where: str, problems: Problems) -> None:
    """The config against docs/reference.md#server-config, field by field."""
    for key in sorted(set(config) - CONFIG_FIELDS):
        problems.add(where, f"unknown field {key!r} (scopegate refuses unknown fields)")
    for key in ("listen", "keys_file", "upstreams"):
        if key not in config:
            problems.add(where, f"missing {key!r}")
    if config.get("log_format", "pretty") not in ("pretty", "json"):
        problems.add(where, "log_format must be pretty or json")
    grace = config.get("shutdown_grace_period_seconds", DEFAULT_SHUTDOWN_GRACE)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        problems.add(where, "shutdown_grace_period_seconds must be a whole number of seconds")
    upstreams = config.get("upstreams") or {}
    for name in ("completions", "admin"):
        up = upstreams.get(name)
        if not isinstance(up, dict) or not re.match(r"https?://", str(up.get("url", ""))):
            problems.add(where, f"upstreams.{name}.url must be an http(s) URL")
            continue
        for key in sorted(set(up) - UPSTREAM_FIELDS):
            problems.add(where, f"upstreams.{name}: unknown field {key!r}")
    for key in sorted(set(upstreams) - {"completions", "admin"}):
        problems.add(where, f"upstreams: unknown upstream {key!r}")
    if "tracing" in config:
        check_tracing(config["tracing"], where, problems)

    state = config.get("state")
    if not isinstance(state, dict):
        problems.add(where, "state must be set (state.backend: redis, docs/reference.md#replicas-and-redis)")
        return
    for key in sorted(set(state) - STATE_FIELDS):
        problems.add(where, f"state: unknown field {key!r}")
    if state.get("backend") != "redis":
        problems.add(where, f"state.backend is {state.get('backend')!r}; this deployment needs redis")
        return
    redis = state.get("redis")
    if not isinstance(redis, dict):
        problems.add(where, "state.redis must be set with backend redis")
        return
    for key in sorted(set(redis) - REDIS_FIELDS):
        problems.add(where, f"state.redis: unknown field {key!r}")
    if not re.match(r"rediss?://", str(redis.get("url", ""))):
        problems.add(where, "state.redis.url must start with redis:// or rediss://")
    timeout = redis.get("timeout_ms")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        problems.add(where, "state.redis.timeout_ms must be a positive whole number")
    if redis.get("on_error") not in ("allow", "deny"):
        problems.add(where, "state.redis.on_error must be allow or deny")
    if not isinstance(redis.get("key_prefix"), str) or not redis.get("key_prefix"):
        problems.add(where, "state.redis.key_prefix must be a non-empty string")


def check_services(rendered: Rendered, pod_labels: dict, ports: dict, replicas: int, problems: Problems) -> None:
    metrics_services = []
    for svc in rendered.of_kind("Service"):
        sel = svc.get("spec", {}).get("selector")
        if not labels_match(sel, pod_labels):
            continue
        for p in svc.get("spec", {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            if isinstance(target, str) and target not in ports:
                problems.add(describe(svc), f"targetPort {target!r} is not a port of the scopegate container")
            if target in ("metrics", ports.get("metrics")):
                metrics_services.append((svc, p.get("name")))
    if not any(s.get("metadata", {}).get("name") == PROXY_DEPLOYMENT for s in rendered.of_kind("Service")):
        problems.add("Service", f"no Service {PROXY_DEPLOYMENT!r} for clients")
    for svc in rendered.of_kind("Service"):
        if svc.get("metadata", {}).get("name") == PROXY_DEPLOYMENT and any(
                svc_port_targets(svc, "metrics", ports)):
            problems.add(describe(svc), "the clients' Service exposes the metrics port (/metrics has no authentication)")

    monitors = list(rendered.of_kind("ServiceMonitor"))
    if len(monitors) != 1:
        problems.add("ServiceMonitor", f"expected exactly one, found {len(monitors)}")
    for mon in monitors:
        sel = mon.get("spec", {}).get("selector", {}).get("matchLabels")
        hits = [(s, name) for s, name in metrics_services if labels_match(sel, s.get("metadata", {}).get("labels"))]
        if not hits:
            problems.add(describe(mon), "selects no Service that exposes the scopegate metrics port")
        names = {name for _, name in hits}
        for ep in mon.get("spec", {}).get("endpoints") or []:
            if ep.get("port") not in names:
                problems.add(describe(mon), f"endpoint port {ep.get('port')!r} is not the metrics port's name on the selected Service")
            if ep.get("path", "/metrics") != "/metrics":
                problems.add(describe(mon), "endpoint path must be /metrics")

    pdbs = [p for p in rendered.of_kind("PodDisruptionBudget")
            if labels_match(p.get("spec", {}).get("selector", {}).get("matchLabels"), pod_labels)]
    if len(pdbs) != 1:
        problems.add("PodDisruptionBudget", f"expected one selecting the scopegate pods, found {len(pdbs)}")
    for pdb in pdbs:
        s = pdb.get("spec", {})
        if "maxUnavailable" in s:
            ok = isinstance(s["maxUnavailable"], int) and 0 < s["maxUnavailable"] < replicas
        else:
            ok = isinstance(s.get("minAvailable"), int) and 0 < s["minAvailable"] < replicas
        if not ok:
            problems.add(describe(pdb), f"must allow one disruption and keep the others up ({replicas} replicas)")


def svc_port_targets(svc: dict, name: str, ports: dict) -> Iterator[bool]:
    for p in svc.get("spec", {}).get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        yield target in (name, ports.get(name))


def check_with_binary(rendered: Rendered, problems: Problems) -> None:
    """`$SCOPEGATE_BIN check` on the ConfigMaps' files, laid out as mounted."""
    binary = os.environ.get("SCOPEGATE_BIN")
    if not binary:
        return
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ)
        for name in ("scopegate-config", "scopegate-keys"):
            cm = rendered.find("ConfigMap", rendered.generated_names.get(name, name)) or {}
            for key, value in (cm.get("data") or {}).items():
                Path(d, key).write_text(value)
                for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value):
                    env.setdefault(var, "placeholder-for-check")
        run = subprocess.run([binary, "check", "--config", str(Path(d, "scopegate.yaml"))],
                             capture_output=True, text=True, env=env)
        if run.returncode != 0:
            problems.add("ConfigMap scopegate-config", f"`scopegate check` failed:\n{run.stderr.strip()}")


# ---------------------------------------------------------------------------
# 6. The image the Deployment runs (hadolint lints the Dockerfile itself)


def dockerfile_instructions(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with
    continuation lines joined and comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue  # comments (and parser directives), also inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        parts = logical.strip().split(None, 1)
        logical = ""
        if not parts:
            continue
        instr, args = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def check_dockerfile(text: str, dockerignore: str, rendered: Rendered, problems: Problems) -> None:
    where = "Dockerfile"
    stages = dockerfile_instructions(text)
    if len(stages) < 2:
        problems.add(where, "must be multi-stage: a build stage and a small runtime stage")
        return
    build, runtime = stages[0], stages[-1]
    if not build[0][1].startswith("rust:"):
        problems.add(where, "the build stage must start FROM rust:...")
    if not any(i == "RUN" and "cargo build --release --locked" in a for i, a in build):
        problems.add(where, "the build stage must run `cargo build --release --locked`")
    if not any(i == "RUN" and "cmake" in a for i, a in build):
        problems.add(where, "the build stage must install cmake (pingora builds zlib-ng with it)")
    base = runtime[0][1].split()[0]
    if not (base.startswith("debian:") or base.startswith("gcr.io/distroless/cc")):
        problems.add(where, f"runtime stage FROM {base}: expected debian:*-slim or distroless cc")
    if base.startswith("debian:") and not any(i == "RUN" and "ca-certificates" in a for i, a in runtime):
        problems.add(where, "the runtime stage must install ca-certificates (https upstreams, rediss://)")
    last = {}
    exposed = set()
    for instr, args in runtime:
        last[instr] = args
        if instr == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in args.split()}
    user = last.get("USER", "")
    dep = rendered.find("Deployment", PROXY_DEPLOYMENT)
    pod = (dep or {}).get("spec", {}).get("template", {}).get("spec", {})
    main = next((c for c in pod.get("containers") or [] if c.get("name") == "scopegate"), {})
    run_as = (main.get("securityContext") or {}).get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
    if not re.fullmatch(r"\d+(:\d+)?", user) or user.split(":")[0] == "0":
        problems.add(where, f"USER must be a numeric non-root id (runAsNonRoot checks it), not {user!r}")
    elif run_as is not None and int(user.split(":")[0]) != run_as:
        problems.add(where, f"USER {user} differs from the Deployment's runAsUser {run_as}")
    if last.get("ENTRYPOINT", "").replace(" ", "") != '["scopegate"]':
        problems.add(where, 'ENTRYPOINT must be ["scopegate"]')
    try:
        cmd = json.loads(last.get("CMD", "null"))
    except json.JSONDecodeError:
        cmd = None
    if cmd != ["serve", "--config", CONFIG_PATH]:
        problems.add(where, f'CMD must be ["serve", "--config", "{CONFIG_PATH}"]')
    ports = {p.get("containerPort") for p in main.get("ports") or []}
    if not ports <= exposed:
        problems.add(where, f"EXPOSE {sorted(exposed)} misses container ports {sorted(ports - exposed)}")
    ignored = {l.strip().rstrip("/") for l in dockerignore.splitlines() if l.strip() and not l.startswith("#")}
    for needed in ("target", ".git"):
        if needed not in ignored:
            problems.add(".dockerignore", f"must exclude {needed}")


DOCKERFILE_MUTATIONS = [
    ("image runs as root", lambda t: t.replace("USER 10001:10001", "USER root"), "USER must be a numeric non-root id"),
    ("build without --locked", lambda t: t.replace("--release --locked", "--release"), "--locked"),
    ("CMD with another config path", lambda t: t.replace("/etc/scopegate/scopegate.yaml", "/config.yaml"),
     "CMD must be"),
    ("metrics port not exposed", lambda t: t.replace("EXPOSE 8080 9464", "EXPOSE 8080"), "misses container ports"),
]


# ---------------------------------------------------------------------------
# 7. Self-test: broken variants must be caught


def mutations() -> list[tuple[str, Callable[[Rendered], None], str]]:
    def deployment(r: Rendered) -> dict:
        return r.find("Deployment", PROXY_DEPLOYMENT)

    def main_container(r: Rendered) -> dict:
        return deployment(r)["spec"]["template"]["spec"]["containers"][0]

    def edit_config(edit: Callable[[dict], None]) -> Callable[[Rendered], None]:
        def go(r: Rendered) -> None:
            yaml = yaml_module()
            cm = r.find("ConfigMap", r.generated_names["scopegate-config"])
            config = yaml.safe_load(cm["data"]["scopegate.yaml"])
            edit(config)
            cm["data"]["scopegate.yaml"] = yaml.safe_dump(config)
        return go

    def rename_key(d: dict, old: str, new: str) -> None:
        d[new] = d.pop(old)

    def first_alert(r: Rendered) -> dict:
        return next(r.of_kind("PrometheusRule"))["spec"]["groups"][0]["rules"][1]

    # (what is broken, how, a text the problems must contain: the reason it is
    # rejected must be the intended one, not an accident of the edit).
    return [
        ("typo'd container field",
         lambda r: rename_key(main_container(r), "readinessProbe", "readinesProbe"),
         "('readinesProbe' was unexpected)"),
        ("string where Kubernetes wants an integer",
         lambda r: deployment(r)["spec"].__setitem__("replicas", "three"),
         "'three' is not of type 'integer'"),
        ("unknown field in a Service port",
         lambda r: r.find("Service", "scopegate")["spec"]["ports"][0].__setitem__("portt", 80),
         "('portt' was unexpected)"),
        ("typo'd ServiceMonitor endpoint field",
         lambda r: rename_key(next(r.of_kind("ServiceMonitor"))["spec"]["endpoints"][0], "path", "pth"),
         "CRD schema: Additional properties are not allowed ('pth' was unexpected)"),
        ("PrometheusRule rule without expr", lambda r: first_alert(r).pop("expr"),
         "CRD schema: 'expr' is a required property"),
        ("PrometheusRule that differs from the rule file",
         lambda r: first_alert(r).__setitem__("for", "1h"), "spec is not the content of"),
        ("config mounted by subPath",
         lambda r: main_container(r)["volumeMounts"][0].__setitem__("subPath", "scopegate.yaml"),
         "uses subPath"),
        ("root filesystem writable",
         lambda r: main_container(r)["securityContext"].__setitem__("readOnlyRootFilesystem", False),
         "readOnlyRootFilesystem must be true"),
        ("grace period shorter than the drain",
         lambda r: deployment(r)["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 30),
         "terminationGracePeriodSeconds 30 must exceed"),
        ("readiness probe on the wrong path",
         lambda r: main_container(r)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz"),
         "readinessProbe must be GET /readyz"),
        ("unknown field in the scopegate config",
         edit_config(lambda c: c.__setitem__("listn", c["listen"])), "unknown field 'listn'"),
        ("local state with three replicas",
         edit_config(lambda c: c["state"].__setitem__("backend", "local")), "every limit would be per replica"),
        ("bad on_error",
         edit_config(lambda c: c["state"]["redis"].__setitem__("on_error", "ignore")), "on_error must be allow or deny"),
        ("listen on loopback",
         edit_config(lambda c: c.__setitem__("listen", ["127.0.0.1:8080"])), "must be on all interfaces"),
        ("tracing block with an unknown field",
         edit_config(lambda c: c.__setitem__("tracing", {"otlp_endpoint": "http://c:4318", "ratio": 1})),
         "tracing: unknown field 'ratio'"),
        ("traces on with no time for their flush",
         lambda r: main_container(r)["env"].append(
             {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4318"})
         or deployment(r)["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 36),
         "+ the 2 s trace flush"),
        ("unusable sampling ratio",
         lambda r: main_container(r)["env"].append({"name": "OTEL_TRACES_SAMPLER_ARG", "value": "10%"}),
         "OTEL_TRACES_SAMPLER_ARG '10%' must be a ratio"),
        ("${VAR} with no env",
         edit_config(lambda c: c["upstreams"]["admin"].__setitem__("set_headers", {"x-token": "${ADMIN_TOKEN}"})),
         "${ADMIN_TOKEN} in scopegate.yaml is not in the container's env"),
    ]


def check_rendered(rendered: Rendered, problems: Problems) -> None:
    check_kubernetes_schemas(rendered, problems)
    check_crd_schemas(rendered, problems)
    check_rule_objects(rendered, problems)
    try:
        check_wiring(rendered, problems)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # A shape the schema checks above report; never a crash instead of a report.
        problems.add("wiring", f"objects too malformed to check how they fit together: {e!r}")


def self_test(rendered: Rendered) -> list[str]:
    """The broken variants that were not rejected for their reason (should be none)."""
    missed = []
    for name, mutate, expected in mutations():
        broken = copy.deepcopy(rendered)
        try:
            mutate(broken)
        except (KeyError, IndexError, StopIteration, TypeError) as e:
            missed.append(f"{name} (could not apply: {e!r})")
            continue
        problems = Problems()
        check_rendered(broken, problems)
        if not any(expected in p for p in problems.items):
            found = "; ".join(problems.items) or "no problem at all"
            missed.append(f"{name}: expected a problem containing {expected!r}, got: {found}")
    return missed


# ---------------------------------------------------------------------------
# Commands


def cmd_validate(base: Path, run_self_test: bool) -> int:
    try:
        rendered = render(base)
    except RenderError as e:
        print(f"FAIL render: {e}", file=sys.stderr)
        return 1
    problems = Problems()
    check_rendered(rendered, problems)
    # The rule object's text is checked against the file it comes from; the
    # other checks work on the rendered objects.
    path = base / RULE_OBJECT_FILE
    if not path.is_file() or path.read_text() != rule_object_text():
        problems.add(str(path), f"differs from {RULES_FILE.relative_to(REPO)}: "
                                "run `python3 .ci/manifests.py sync-rules`")
    dockerfile = (REPO / "Dockerfile").read_text()
    dockerignore = (REPO / ".dockerignore").read_text()
    check_dockerfile(dockerfile, dockerignore, rendered, problems)
    check_with_binary(rendered, problems)
    kinds = ", ".join(describe(o) for _, o in rendered.objects)
    if problems:
        for p in problems.items:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"manifests: {len(problems.items)} problem(s) in {base}", file=sys.stderr)
        return 1
    print(f"manifests: {len(rendered.objects)} objects valid ({kinds})")
    if run_self_test:
        missed = self_test(rendered)
        for name, mutate, expected in DOCKERFILE_MUTATIONS:
            found = Problems()
            check_dockerfile(mutate(dockerfile), dockerignore, rendered, found)
            if not any(expected in p for p in found.items):
                missed.append(f"Dockerfile: {name}: expected a problem containing {expected!r}, "
                              f"got: {'; '.join(found.items) or 'no problem at all'}")
        if missed:
            for m in missed:
                print(f"FAIL self-test: a broken variant was not rejected as it should be: {m}", file=sys.stderr)
            return 1
        print(f"manifests: self-test: all {len(mutations()) + len(DOCKERFILE_MUTATIONS)} broken variants rejected")
    return 0


def cmd_render(base: Path) -> int:
    yaml = yaml_module()
    try:
        rendered = render(base)
    except RenderError as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    print(yaml.safe_dump_all([o for _, o in rendered.objects], sort_keys=False), end="")
    return 0


def cmd_sync_rules() -> int:
    path = BASE / RULE_OBJECT_FILE
    text = rule_object_text()
    if path.is_file() and path.read_text() == text:
        print(f"{path.relative_to(REPO)}: up to date")
    else:
        path.write_text(text)
        print(f"{path.relative_to(REPO)}: written from {RULES_FILE.relative_to(REPO)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="render and check a kustomization folder")
    v.add_argument("dir", nargs="?", type=Path, default=BASE)
    v.add_argument("--no-self-test", action="store_true", help="skip the broken-variants self-test")
    r = sub.add_parser("render", help="print the rendered objects")
    r.add_argument("dir", nargs="?", type=Path, default=BASE)
    sub.add_parser("sync-rules", help="regenerate the PrometheusRule from the rule file")
    args = parser.parse_args()
    if args.command == "validate":
        return cmd_validate(args.dir, not args.no_self_test)
    if args.command == "render":
        return cmd_render(args.dir)
    return cmd_sync_rules()


if __name__ == "__main__":
    sys.exit(main())
