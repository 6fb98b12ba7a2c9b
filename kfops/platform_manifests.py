"""Checks on the suite's Kubernetes manifests (``manifests/``) before anything reaches a cluster.

``kfops platform check OVERLAY`` renders an overlay with kubectl's built-in kustomize and fails, listing every
problem, when

- a manifest references a Secret (``secretKeyRef``, ``envFrom.secretRef``, a secret volume, a service account's
  ``secrets``) or a key of one that the overlay does not create and ``manifests/secrets.yaml`` does not list
  (the one list of Secrets created out of band);
- a container may run as root, writes to its root filesystem, may escalate privileges, keeps capabilities, or
  lacks CPU/memory requests or limits;
- the endpoints in the ``kfops-platform`` ConfigMap or MLflow's ``--allowed-hosts`` name another namespace
  than the one the overlay deploys to;
- a Secret, ConfigMap, ServiceAccount, PVC, Service (or its port) or runtime that the suite's pipelines, the
  objects they create at run time (InferenceService, Katib Experiment, TrainJob), Feast's config, the router
  example or the overlay's own pods name is not in the overlay (``kfops.platform_wiring``).

``kfops platform secrets`` prints the listed Secrets as manifests (values from the environment, or random with
``--generate``) for ``kubectl apply -f -``; nothing is written to disk.
"""

from __future__ import annotations

import re
import secrets as _random
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfops.components.contracts import KfopsError

SECRETS_FILE_NAME = "secrets.yaml"
PLATFORM_CONFIG_MAP = "kfops-platform"
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    # KServe copies a runtime's containers into every predictor pod it serves.
    "ServingRuntime": ("spec",),
    "ClusterServingRuntime": ("spec",),
}


# ------------------------------------------------------------------------------------------------ secrets list
@dataclass(frozen=True)
class SecretSpec:
    """One Secret the manifests reference but never contain (an entry of manifests/secrets.yaml)."""

    name: str
    keys: dict[str, str]  # the Secret's key -> the environment variable `kfops platform secrets` reads
    description: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    provided_by: str = ""  # set when the platform creates it (the suite only reads it)


def find_secrets_file(start: str | Path) -> Path:
    """manifests/secrets.yaml: the nearest ``secrets.yaml`` in ``start`` or a folder above it."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        candidate = folder / SECRETS_FILE_NAME
        if candidate.is_file():
            return candidate
    raise KfopsError(f"no {SECRETS_FILE_NAME} in {start} or any folder above it: pass --secrets-file")


def load_secret_specs(path: str | Path) -> dict[str, SecretSpec]:
    """The Secrets listed in ``path`` by name; a malformed entry is an error naming it."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read the Secrets list {path}: {err}") from err
    entries = document.get("secrets") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KfopsError(f"{path}: expected a non-empty `secrets:` list")
    specs: dict[str, SecretSpec] = {}
    for number, entry in enumerate(entries, 1):
        where = f"{path}: secrets entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise KfopsError(f"{where}: needs a `name`")
        name = entry["name"]
        keys = entry.get("keys")
        if not isinstance(keys, dict) or not keys:
            raise KfopsError(f"{where} ({name}): needs `keys` (the Secret's key -> an environment variable name)")
        if name in specs:
            raise KfopsError(f"{where}: Secret '{name}' is listed twice")
        provided_by = str(entry.get("provided_by") or "")
        variables = {str(k): str(v or "") for k, v in keys.items()}
        if not provided_by:
            bad = [f"{k}: {v!r}" for k, v in variables.items() if not re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", v)]
            if bad:
                raise KfopsError(f"{where} ({name}): each key needs $VARIABLE, the value's environment variable: {bad}")
        specs[name] = SecretSpec(
            name=name,
            keys={k: v.removeprefix("$") for k, v in variables.items()},
            description=str(entry.get("description") or ""),
            annotations={str(k): str(v) for k, v in (entry.get("annotations") or {}).items()},
            provided_by=provided_by,
        )
    return specs


# ------------------------------------------------------------------------------------------------ rendering
def render_overlay(overlay: str | Path, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize OVERLAY`` renders (kubectl ships kustomize v5; no cluster needed)."""
    import yaml

    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file():
        raise KfopsError(f"{overlay}: not a kustomization (no kustomization.yaml in it)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise KfopsError("kubectl is not installed: rendering an overlay needs `kubectl kustomize` (kubectl >= 1.27)")
    try:
        result = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise KfopsError(f"kubectl kustomize {overlay} did not finish within {timeout_s:.0f} s") from err
    if result.returncode != 0:
        raise KfopsError(f"kubectl kustomize {overlay} failed: {result.stderr.strip()}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(result.stdout, Loader=loader) if doc]


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {namespace}{meta.get('name', '?')}"


# ------------------------------------------------------------------------------------------------ references
@dataclass(frozen=True)
class SecretReference:
    """A place in a manifest that needs a Secret (and one of its keys, when ``key`` is set)."""

    source: str  # "Deployment kfops/mlflow"
    where: str  # "spec.template.spec.containers[mlflow].env[PGPASSWORD]"
    secret: str
    key: str | None = None
    optional: bool = False


def _step(path: str, key: Any, node: Any) -> str:
    if isinstance(key, int):
        label = node.get("name") if isinstance(node, dict) and isinstance(node.get("name"), str) else key
        return f"{path}[{label}]"
    return f"{path}.{key}" if path else str(key)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, _step(path, key, value))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, _step(path, index, value))


def secret_references(objects: list[dict[str, Any]]) -> list[SecretReference]:
    """Every Secret reference in the objects, wherever it sits (pod templates, runtimes, PodDefaults...)."""
    refs: list[SecretReference] = []
    for obj in objects:
        source = describe(obj)
        if obj.get("kind") == "ServiceAccount":
            for list_name in ("secrets", "imagePullSecrets"):
                for item in obj.get(list_name) or []:
                    refs.append(SecretReference(source, f"{list_name}[{item.get('name')}]", item.get("name", "")))
        for path, node in _walk(obj):
            if not isinstance(node, dict):
                continue
            if isinstance(ref := node.get("secretKeyRef"), dict):
                refs.append(
                    SecretReference(
                        source, path, ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional", False))
                    )
                )
            if isinstance(ref := node.get("secretRef"), dict):  # envFrom
                refs.append(SecretReference(source, path, ref.get("name", ""), None, bool(ref.get("optional"))))
            if isinstance(volume := node.get("secret"), dict):
                # a secret volume (secretName) or a projected volume's source (name), optionally with items
                name = volume.get("secretName") or volume.get("name") or ""
                items = [i.get("key", "") for i in volume.get("items") or []] or [None]
                for key in items:
                    refs.append(SecretReference(source, path, name, key, bool(volume.get("optional"))))
            if obj.get("kind") != "ServiceAccount" and isinstance(node.get("imagePullSecrets"), list):
                for item in node["imagePullSecrets"]:
                    name = item.get("name", "")
                    refs.append(SecretReference(source, _step(path, "imagePullSecrets", None) + f"[{name}]", name))
    return refs


def check_secret_references(
    objects: list[dict[str, Any]], specs: Mapping[str, SecretSpec], secrets_file: str | Path = SECRETS_FILE_NAME
) -> list[str]:
    """One message per reference to a Secret, or a key, that is neither in the objects nor in ``specs``."""
    created = {
        (obj.get("metadata") or {}).get("name"): set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        for obj in objects
        if obj.get("kind") == "Secret"
    }
    problems = []
    for ref in secret_references(objects):
        if ref.optional:
            continue
        where = f"{ref.source}: {ref.where}"
        if not ref.secret:
            problems.append(f"{where}: a Secret reference without a name")
            continue
        if ref.secret in created:
            keys, origin = created[ref.secret], "the Secret the overlay creates"
        elif ref.secret in specs:
            keys, origin = set(specs[ref.secret].keys), f"{secrets_file}"
        else:
            problems.append(
                f"{where}: Secret '{ref.secret}' is not created by the overlay and not listed in {secrets_file}; "
                "list it there (and create it before applying) or fix the name"
            )
            continue
        if ref.key is not None and ref.key not in keys:
            problems.append(
                f"{where}: Secret '{ref.secret}' has no key '{ref.key}' in {origin} (keys: {', '.join(sorted(keys))})"
            )
    return problems


# ------------------------------------------------------------------------------------------------ security
def pod_specs(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload object (or a ServingRuntime's spec), else None."""
    path = POD_SPEC_PATHS.get(obj.get("kind", ""))
    node: Any = obj
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def security_problems(objects: list[dict[str, Any]]) -> list[str]:
    """What keeps each container from the suite's baseline: non-root, read-only root filesystem, no privilege
    escalation, all capabilities dropped, CPU and memory requests and limits, a pinned image."""
    problems = []
    for obj in objects:
        spec = pod_specs(obj)
        if spec is None:
            continue
        pod_ctx = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{describe(obj)}: {flag} is true")
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            where = f"{describe(obj)} container {container.get('name', '?')}"
            ctx = container.get("securityContext") or {}
            effective = {**pod_ctx, **ctx}
            if effective.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true (container or pod securityContext)")
            if effective.get("runAsUser") == 0:
                problems.append(f"{where}: runAsUser is 0 (root)")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if ctx.get("privileged"):
                problems.append(f"{where}: privileged is true")
            capabilities = ctx.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []):
                problems.append(f"{where}: capabilities.drop does not include ALL")
            if capabilities.get("add"):
                problems.append(f"{where}: adds capabilities {capabilities['add']}")
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if not (resources.get(kind) or {}).get(resource):
                        problems.append(f"{where}: no {resource} {kind[:-1]}")
            image = str(container.get("image", ""))
            name_part = image.split("@", 1)[0].rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in name_part or name_part.endswith(":latest")):
                problems.append(f"{where}: image '{image}' is not pinned to a version tag or digest")
    return problems


# ------------------------------------------------------------------------------------------------ consistency
def endpoint_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Endpoints that name a namespace must name the one the overlay deploys to."""
    problems = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        if not namespace:
            continue
        if obj.get("kind") == "ConfigMap" and meta.get("name") == PLATFORM_CONFIG_MAP:
            for key, value in (obj.get("data") or {}).items():
                if ".svc" in value and f".{namespace}.svc" not in value:
                    problems.append(
                        f"{describe(obj)}: {key}={value} names another namespace than '{namespace}' "
                        "(merge new values in the overlay's configMapGenerator)"
                    )
        spec = pod_specs(obj) if obj.get("kind") == "Deployment" and meta.get("name") == "mlflow" else None
        for container in (spec or {}).get("containers") or []:
            for arg in container.get("args") or []:
                if str(arg).startswith("--allowed-hosts=") and f"mlflow.{namespace}.svc" not in str(arg):
                    problems.append(
                        f"{describe(obj)}: {arg} does not allow mlflow.{namespace}.svc.cluster.local, the name "
                        f"clients in namespace '{namespace}' use"
                    )
    return problems


def check_overlay(
    overlay: str | Path, secrets_file: str | Path | None = None, wiring: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """Render ``overlay`` and return (objects, problems). ``wiring``: also check every reference the suite's
    pipelines, the objects they create, Feast's config and the router example make (kfops.platform_wiring),
    taking those under the manifests folder that holds the secrets list."""
    secrets_path = Path(secrets_file) if secrets_file else find_secrets_file(overlay)
    specs = load_secret_specs(secrets_path)
    objects = render_overlay(overlay)
    problems = [
        *check_secret_references(objects, specs, secrets_path),
        *security_problems(objects),
        *endpoint_problems(objects),
    ]
    if wiring:
        from kfops.platform_wiring import check_wiring  # it builds on this module

        problems += check_wiring(overlay, objects, specs, secrets_path)
    return objects, problems


# ------------------------------------------------------------------------------------------------ secrets out
def _generated_value(key: str) -> str:
    lowered = key.lower()
    if "user" in lowered or "access_key_id" in lowered or lowered == "accesskey":
        return "kfops" + _random.token_hex(6)  # letters and digits: valid as a PostgreSQL or MinIO user name
    return _random.token_urlsafe(30)


def secret_manifests(
    specs: Mapping[str, SecretSpec],
    namespace: str,
    environ: Mapping[str, str],
    generate: bool = False,
    only: list[str] | None = None,
) -> str:
    """The Secrets the suite creates (not those the platform provides) as YAML documents, each value from the
    environment variable its key names, or random with ``generate``; all missing values are one error."""
    import yaml

    wanted = [s for s in specs.values() if not s.provided_by and (not only or s.name in only)]
    unknown = sorted(set(only or []) - {s.name for s in wanted})
    if unknown:
        names = ", ".join(s.name for s in specs.values() if not s.provided_by)
        raise KfopsError(f"no such Secret to create: {', '.join(unknown)} (the suite creates: {names})")
    missing = [
        f"{env} (Secret {spec.name}, key {key})"
        for spec in wanted
        for key, env in spec.keys.items()
        if not environ.get(env) and not generate
    ]
    if missing:
        raise KfopsError(
            "no value for: " + "; ".join(missing) + ". Set the environment variables, or pass --generate for "
            "random values (a test cluster)"
        )
    documents = []
    for spec in wanted:
        data = {key: environ.get(env) or _generated_value(key) for key, env in spec.keys.items()}
        metadata: dict[str, Any] = {
            "name": spec.name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "kfops"},
        }
        if spec.annotations:
            metadata["annotations"] = {k: v.replace("{namespace}", namespace) for k, v in spec.annotations.items()}
        documents.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "stringData": data}
        )
    return yaml.safe_dump_all(documents, sort_keys=False)


def refuse_terminal(stream=None) -> None:
    """Credentials go into a pipe (``| kubectl apply -f -``), never onto a terminal's scrollback."""
    stream = stream or sys.stdout
    if stream.isatty():
        raise KfopsError(
            "this prints credentials: pipe it into `kubectl apply -f -` (or redirect it) instead of a terminal"
        )
