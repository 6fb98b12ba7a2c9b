"""Wiring: what the suite's pods and generated objects refer to, checked against a rendered overlay.

``kfops platform check OVERLAY`` renders the overlay; this module collects every Secret (and key), ConfigMap (and
key), ServiceAccount, PersistentVolumeClaim, Service (and port) and runtime that something the suite runs names,
each with where it is named, and reports each one the rendered objects do not provide:

- the compiled pipelines (``pipelines/compiled/*.yaml``, KFP v2 IR): the kfp-kubernetes platform spec of every
  step (``secretAsEnv``, ``secretAsVolume``, ``configMapAsEnv``, ``configMapAsVolume``, ``pvcMount``,
  ``imagePullSecret``) and the in-cluster addresses among the steps' parameter values (``prometheus_url``);
- the objects the suite creates at run time, built by the real builders from the compiled parameter defaults:
  the InferenceService of every ``deploy`` step (``components/isvc/spec.py``), the Katib Experiment's trial
  template (``components/sweep/katib.py``), the TrainJob of ``train_distributed``
  (``components/train/trainjob.py``), and the router example (``manifests/serving/examples/``);
- the Feast repository (``manifests/feature-store/feature_store.yaml``): the online store's Redis Service;
- ``kfops submit``'s default service account, and the S3 endpoint annotation of ``manifests/secrets.yaml``'s
  Secrets (KServe's storage initializer reads it);
- the rendered objects' own references other than Secrets (those are ``check_secret_references``'s): ConfigMap
  keys, claims, service accounts, RoleBinding subjects, and addresses such as
  ``http://mlflow.kfops.svc.cluster.local:5000`` in ConfigMaps, arguments and environment variables.

A reference resolves when the rendered overlay has the object (and the key or port), when
``manifests/secrets.yaml`` lists the Secret (and the key), or when ``PLATFORM_PROVIDED`` says who else creates it.
Standard library and yaml only; the builders are plain Python.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kfops.components.contracts import KfopsError
from kfops.platform_manifests import SecretSpec, describe

# ------------------------------------------------------------------------------------------------ constants
SERVICE_ACCOUNT = "ServiceAccount"
SECRET = "Secret"
CONFIG_MAP = "ConfigMap"
PVC = "PersistentVolumeClaim"
SERVICE = "Service"
SERVING_RUNTIME = "ServingRuntime"
FEATURE_STORE_CONFIG = "kfops-feature-store"  # manifests/feature-store's ConfigMap: the add-on is in the overlay
KSERVE_PREDICTOR_PORT = 80  # `<isvc>-predictor` listens on 80 in Knative and Standard mode (router example)

# Keys the training entry point (`python -m kfops.components.train`) needs from the Secret a Katib trial gets
# with envFrom: katib.TrialPod and components/sweep/README.md name MLflow's URI, the S3 endpoint and the AWS
# credentials. The TrainJob names its keys itself (trainjob.SECRET_KEYS, each optional).
TRAINING_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# Protocols whose URLs name a host to connect to (s3://bucket, models:/name and file paths do not).
NETWORK_SCHEMES = {"http", "https", "grpc", "grpcs", "redis", "rediss", "postgres", "postgresql", "mysql", "tcp"}
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://([^\s/'\"?#,;]+)", re.IGNORECASE)
# name.namespace.svc[.cluster.local][:port] written without a scheme (S3_ENDPOINT, KServe's s3-endpoint).
_SVC_ADDRESS = re.compile(rf"(?<![\w.-])({_LABEL})\.({_LABEL})\.svc(?:\.cluster\.local)?(?::(\d+))?(?![\w.-])")
_LOOPBACK = {"localhost"}


@dataclass(frozen=True)
class Provided:
    """An object the platform (not the overlay, not the suite) creates, which the suite may name."""

    kind: str
    name: str
    provider: str  # who creates it, for the reader and the problem line
    namespace: str | None = None  # None: the suite's namespace
    ports: tuple[int, ...] = ()
    # The provider is assumed only in overlays that render objects of this API group (they need its CRDs).
    requires_api_group: str = ""


# Kept small on purpose: each entry says who creates the object. Secrets the platform creates are in
# manifests/secrets.yaml (`provided_by`), not here.
PLATFORM_PROVIDED: tuple[Provided, ...] = (
    # Kubernetes creates `default` in every namespace (pods that name no service account run as it).
    Provided(SERVICE_ACCOUNT, "default", "Kubernetes (every namespace has one)"),
    # Kubeflow's profile controller creates default-editor in every profile namespace (profile-controller
    # DEFAULT_EDITOR); KFP runs steps as it when a run names no account. Assumed where the overlay renders
    # Kubeflow objects (kubeflow.org: PodDefault, Tensorboard), i.e. deploys into a profile namespace.
    Provided(
        SERVICE_ACCOUNT,
        "default-editor",
        "Kubeflow's profile controller (every profile namespace)",
        requires_api_group="kubeflow.org",
    ),
    # Kubeflow Trainer installs its default runtimes, torch-distributed among them (kubeflow.org/docs/components/
    # trainer/operator-guides/runtime); a cluster that accepts a TrainJob has it.
    Provided("ClusterTrainingRuntime", "torch-distributed", "Kubeflow Trainer (its default runtimes)"),
    # The Prometheus Operator's governing Service of every Prometheus (prometheus-operator pkg/prometheus,
    # governingServiceName), port 9090 (web); kube-prometheus runs its Prometheus in namespace monitoring. The
    # cluster's, not an overlay's: the canary analysis needs it (manifests/README.md, e2e-cluster.yaml installs
    # kube-prometheus-stack), whether or not the overlay adds the suite's PodMonitors.
    Provided(SERVICE, "prometheus-operated", "the Prometheus Operator", namespace="monitoring", ports=(9090,)),
)


# ------------------------------------------------------------------------------------------------ references
@dataclass(frozen=True)
class Reference:
    """Something a pod or a generated object names: (kind, name, optional key or port) and where it is named."""

    kind: str
    name: str
    used_by: str  # what names it: "Deployment kfops/mlflow", "the TrainJob (...) that ... submits"
    key: str | None = None
    port: int | None = None
    namespace: str | None = None  # None: the namespace the suite runs in (the overlay's)
    at: str = ""  # where inside it: "spec.template.spec.containers[mlflow].args[4]", "kfp-kubernetes secretAsEnv"
    # The key may be missing (an optional secretKeyRef); the object itself must exist all the same: the suite
    # names it on purpose, and a pod started without it runs without its settings.
    optional: bool = False


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            label = value.get("name") if isinstance(value, dict) and isinstance(value.get("name"), str) else index
            yield from _walk(value, f"{path}[{label}]")


def service_addresses(text: str) -> list[tuple[str, str | None, int | None]]:
    """The in-cluster Services an address in ``text`` names, as (name, namespace or None, port or None):
    ``http://mlflow.kfops.svc.cluster.local:5000``, ``postgresql+psycopg2://mlflow-postgres:5432/mlflow``,
    ``minio.kfops.svc.cluster.local:9000``. Hosts with other dots (example.com, IPs) and loopback are not
    Services; a scheme-less single name is not read as one (too easily a word)."""
    found: list[tuple[str, str | None, int | None]] = []
    spans: list[tuple[int, int]] = []
    for match in _URL.finditer(text):
        scheme = match.group(1).lower().split("+", 1)[0]
        if scheme not in NETWORK_SCHEMES:
            continue
        spans.append(match.span())
        try:
            parts = urlsplit(f"{scheme}://{match.group(2)}")
            host, port = (parts.hostname or ""), parts.port
        except ValueError:  # a port that is not a number: a template, not an address
            continue
        port = port if port is not None else DEFAULT_PORTS.get(scheme)
        if service := _service_host(host):
            found.append((*service, port))
    for match in _SVC_ADDRESS.finditer(text):
        if any(start <= match.start() < end for start, end in spans):
            continue
        found.append((match.group(1), match.group(2), int(match.group(3)) if match.group(3) else None))
    return found


def _service_host(host: str) -> tuple[str, str | None] | None:
    host = host.lower().removesuffix(".cluster.local")
    if host.endswith(".svc"):
        parts = host.removesuffix(".svc").split(".")
        if len(parts) == 2 and all(_DNS_LABEL.match(p) for p in parts):
            return parts[0], parts[1]
        return None
    if "." not in host and host not in _LOOPBACK and _DNS_LABEL.match(host):
        return host, None
    return None


def _address_references(text: str, used_by: str, at: str = "") -> list[Reference]:
    return [
        Reference(SERVICE, name, used_by, port=port, namespace=ns, at=at) for name, ns, port in service_addresses(text)
    ]


def object_references(
    obj: Mapping[str, Any], used_by: str, secrets: bool = True, env_from_keys: Sequence[str] = ()
) -> list[Reference]:
    """Every reference inside ``obj`` (a pod template anywhere in it, an InferenceService, a TrainJob...).
    ``secrets=False`` leaves Secrets out (check_secret_references reads the rendered objects' own);
    ``env_from_keys``: the keys an ``envFrom`` Secret must hold for the program the container runs."""
    refs: list[Reference] = []

    def add(kind: str, name: Any, at: str, key: Any = None, optional: Any = False) -> None:
        key = None if key is None else str(key)
        refs.append(Reference(kind, str(name or ""), used_by, key, optional=bool(optional), at=at))

    for at, node in _walk(obj):
        if isinstance(node, str):
            refs += _address_references(node, used_by, at)
            continue
        if not isinstance(node, dict):
            continue
        if secrets and isinstance(ref := node.get("secretKeyRef"), dict):
            add(SECRET, ref.get("name"), f"{at}.secretKeyRef", ref.get("key", ""), ref.get("optional"))
        if secrets and isinstance(ref := node.get("secretRef"), dict):  # envFrom
            for key in list(env_from_keys) or [None]:
                add(SECRET, ref.get("name"), f"{at}.secretRef", key, ref.get("optional"))
        if secrets and isinstance(volume := node.get("secret"), dict):
            for key in [i.get("key") for i in volume.get("items") or []] or [None]:
                name = volume.get("secretName") or volume.get("name")
                add(SECRET, name, f"{at}.secret", key, volume.get("optional"))
        if isinstance(ref := node.get("configMapKeyRef"), dict):
            add(CONFIG_MAP, ref.get("name"), f"{at}.configMapKeyRef", ref.get("key", ""), ref.get("optional"))
        if isinstance(ref := node.get("configMapRef"), dict):  # envFrom
            add(CONFIG_MAP, ref.get("name"), f"{at}.configMapRef", None, ref.get("optional"))
        if isinstance(volume := node.get("configMap"), dict) and "name" in volume:
            for key in [i.get("key") for i in volume.get("items") or []] or [None]:
                add(CONFIG_MAP, volume["name"], f"{at}.configMap", key, volume.get("optional"))
        if isinstance(claim := node.get("persistentVolumeClaim"), dict) and "claimName" in claim:
            add(PVC, claim["claimName"], f"{at}.persistentVolumeClaim")
        if isinstance(account := node.get("serviceAccountName"), str) and account:
            add(SERVICE_ACCOUNT, account, f"{at}.serviceAccountName")
        if isinstance(runtime := node.get("runtime"), str) and runtime and "modelFormat" in node:
            add(SERVING_RUNTIME, runtime, f"{at}.runtime")  # an InferenceService's model
        if isinstance(ref := node.get("runtimeRef"), dict) and ref.get("name"):  # a TrainJob's runtime
            add(str(ref.get("kind") or "ClusterTrainingRuntime"), ref["name"], f"{at}.runtimeRef")
    return refs


def rendered_references(objects: Iterable[Mapping[str, Any]]) -> list[Reference]:
    """The rendered objects' own references, Secrets aside (check_secret_references reads those)."""
    refs: list[Reference] = []
    for obj in objects:
        source = describe(obj)
        if obj.get("kind") in (CONFIG_MAP, SECRET):
            # Their data holds addresses pods read (kfops-platform's endpoints), not references of their own kind.
            for key, value in (obj.get("data") or {}).items():
                refs += _address_references(str(value), source, f"data.{key}")
            continue
        refs += object_references(obj, source, secrets=False)
        if obj.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == SERVICE_ACCOUNT:
                    refs.append(Reference(SERVICE_ACCOUNT, str(subject.get("name", "")), source,
                                          namespace=subject.get("namespace"),
                                          at=f"subjects[{subject.get('name')}]"))  # fmt: skip
    return refs


# ------------------------------------------------------------------------------------------------ other sources
def feast_references(path: str | Path, label: str) -> list[Reference]:
    """The Services a Feast ``feature_store.yaml`` connects to: the online store (Redis, ``host:port,opts``),
    and a registry or store given as a network URL."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read the Feast repository config {path}: {err}") from err
    if not isinstance(config, dict):
        raise KfopsError(f"{path}: a Feast feature_store.yaml is a mapping, got {type(config).__name__}")
    refs: list[Reference] = []
    for section in ("registry", "offline_store", "online_store"):
        value = config.get(section)
        for key, text in value.items() if isinstance(value, dict) else [("path", value)]:
            if not isinstance(text, str):
                continue
            at = f"{section}.{key}" if isinstance(value, dict) else section
            if section == "online_store" and key == "connection_string" and value.get("type") == "redis":
                # Feast's Redis connection string: "host:port[,ssl=true][,password=...]"; a cluster lists
                # several host:port parts. The options are no addresses.
                for address in text.split(","):
                    host, _, port = address.strip().partition(":")
                    service = _service_host(host) if port.isdigit() else None
                    if service:
                        refs.append(Reference(SERVICE, service[0], label, port=int(port), namespace=service[1],
                                              at=at))  # fmt: skip
            else:
                refs += _address_references(text, label, at)
    return refs


def manifest_file_references(path: str | Path, label: str) -> tuple[list[Reference], list[dict[str, Any]]]:
    """(references, objects) of a manifest file applied beside an overlay (the router example)."""
    import yaml

    path = Path(path)
    try:
        objects = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read {path}: {err}") from err
    refs = [ref for obj in objects for ref in object_references(obj, f"{describe(obj)} in {label}")]
    return refs, objects


def secret_annotation_references(specs: Mapping[str, SecretSpec], namespace: str, label: str) -> list[Reference]:
    """Addresses in the listed Secrets' annotations: KServe's storage initializer reads
    ``serving.kserve.io/s3-endpoint`` from the Secret of the predictor's service account."""
    refs: list[Reference] = []
    for spec in specs.values():
        for key, value in spec.annotations.items():
            text = value.replace("{namespace}", namespace or "default")
            refs += _address_references(text, f"Secret {spec.name} in {label}", f"annotation {key}")
    return refs


@dataclass
class SuiteSources:
    """Where the suite's references come from; ``for_manifests`` fills it in for a checkout or an install."""

    pipelines: list[Path]  # compiled pipelines and component YAMLs
    feast_config: Path | None = None
    extra_manifests: list[Path] = field(default_factory=list)  # applied beside an overlay (the router example)
    root: Path | None = None  # paths are shown relative to it

    @classmethod
    def for_manifests(cls, manifests_dir: str | Path) -> SuiteSources:
        """The package's compiled pipelines and its train_distributed component (not in any compiled pipeline:
        users add it to theirs), and the Feast config and router example under ``manifests_dir``."""
        import kfops.components.train as train_package
        from kfops.pipelines.submit_inputs import suite_pipelines

        manifests_dir = Path(manifests_dir).resolve()
        feast = manifests_dir / "feature-store" / "feature_store.yaml"
        router = manifests_dir / "serving" / "examples" / "router-inferenceservice.yaml"
        pipelines = [*suite_pipelines().values(), Path(train_package.__file__).parent / "train_distributed.yaml"]
        return cls(
            pipelines=[p for p in pipelines if p.is_file()],
            feast_config=feast if feast.is_file() else None,
            extra_manifests=[router] if router.is_file() else [],
            root=manifests_dir.parent,
        )

    def label(self, path: str | Path) -> str:
        path = Path(path).resolve()
        if self.root and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))
        return str(path)


def suite_references(
    sources: SuiteSources,
    specs: Mapping[str, SecretSpec],
    namespace: str,
    secrets_label: str = "secrets.yaml",
    feature_store_rendered: bool = True,
) -> tuple[list[Reference], list[dict[str, Any]]]:
    """(references, the objects among them that get Services from KServe: InferenceServices) of every source;
    Feast's only where the overlay includes the feature store (manifests/feature-store, an add-on)."""
    from kfops.pipelines.submit import DEFAULT_SERVICE_ACCOUNT

    refs = [Reference(SERVICE_ACCOUNT, DEFAULT_SERVICE_ACCOUNT, "the runs `kfops submit` and `kfops schedule` start",
                      at="--service-account default, pipelines/submit.py")]  # fmt: skip
    created: list[dict[str, Any]] = []
    from kfops.pipeline_wiring import pipeline_references

    for path in sources.pipelines:
        refs += pipeline_references(path, sources.label(path), namespace)
    if sources.feast_config and feature_store_rendered:
        refs += feast_references(sources.feast_config, f"Feast's {sources.label(sources.feast_config)}")
    for path in sources.extra_manifests:
        more, objects = manifest_file_references(path, sources.label(path))
        refs += more
        created += [o for o in objects if o.get("kind") == "InferenceService"]
    refs += secret_annotation_references(specs, namespace, secrets_label)
    return refs, created


# ------------------------------------------------------------------------------------------------ resolution
def overlay_namespace(objects: Iterable[Mapping[str, Any]]) -> str:
    """The namespace most of the rendered objects go to ("" when they name none)."""
    counts = Counter((o.get("metadata") or {}).get("namespace") for o in objects)
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else ""


class Inventory:
    """What a rendered overlay (with the Secrets list and the platform) provides, by kind, namespace and name."""

    def __init__(
        self,
        objects: Iterable[Mapping[str, Any]],
        specs: Mapping[str, SecretSpec],
        created: Iterable[Mapping[str, Any]] = (),
        secrets_file: str | Path = "secrets.yaml",
    ) -> None:
        objects = list(objects)
        self.namespace = overlay_namespace(objects)
        self.secrets_file = str(secrets_file)
        self.api_groups = {str(o.get("apiVersion", "")).rpartition("/")[0] for o in objects}
        # (kind, namespace, name) -> (keys of a Secret or ConfigMap, or ports of a Service, else None; origin)
        self.found: dict[tuple[str, str, str], tuple[set[Any] | None, str]] = {}
        for obj in objects:
            meta = obj.get("metadata") or {}
            kind = str(obj.get("kind", ""))
            detail: set[Any] | None = None
            if kind == SECRET:
                detail = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            elif kind == CONFIG_MAP:
                detail = set(obj.get("data") or {}) | set(obj.get("binaryData") or {})
            elif kind == SERVICE:
                detail = {p.get("port") for p in (obj.get("spec") or {}).get("ports") or []}
            self.found[(kind, meta.get("namespace") or "", str(meta.get("name", "")))] = (detail, "the overlay")
        for name, spec in specs.items():
            self.found.setdefault((SECRET, self.namespace, name), (set(spec.keys), self.secrets_file))
        # KServe gives every InferenceService a predictor Service, `<name>-predictor`, on port 80.
        for obj in [*objects, *created]:
            if obj.get("kind") == "InferenceService":
                meta = obj.get("metadata") or {}
                name = str(meta.get("name", ""))
                key = (SERVICE, meta.get("namespace") or self.namespace, f"{name}-predictor")
                self.found.setdefault(key, ({KSERVE_PREDICTOR_PORT}, f"KServe, for InferenceService {name}"))
        for entry in PLATFORM_PROVIDED:
            if not entry.requires_api_group or entry.requires_api_group in self.api_groups:
                key = (entry.kind, entry.namespace or self.namespace, entry.name)
                self.found.setdefault(key, (set(entry.ports) or None, entry.provider))

    def lookup(self, kind: str, name: str, namespace: str) -> tuple[set[Any] | None, str] | None:
        """(its keys or ports, where it comes from), or None when nothing provides it."""
        for candidate in (kind, "ClusterServingRuntime") if kind == SERVING_RUNTIME else (kind,):
            # "": rendered without a namespace (cluster-scoped, or applied to the current one)
            for ns in dict.fromkeys((namespace, self.namespace, "") if not namespace else (namespace, "")):
                if (candidate, ns, name) in self.found:
                    return self.found[(candidate, ns, name)]
        return None

    def unassumed_provider(self, kind: str, name: str, namespace: str) -> Provided | None:
        """The platform entry for this object when this overlay does not assume its provider."""
        for entry in PLATFORM_PROVIDED:
            if (entry.kind, entry.name, entry.namespace or self.namespace) == (kind, name, namespace):
                return entry
        return None


def _label(kind: str, name: str, namespace: str, overlay_ns: str, items: Sequence[Any]) -> str:
    text = f"{kind} {name}"
    if namespace and namespace != overlay_ns:
        text += f" in namespace {namespace}"
    if items:
        what = "port" if kind == SERVICE else "key"
        text += f" ({what}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))})"
    return text


def _places(uses: Mapping[str, list[str]], most: int = 3) -> str:
    parts = []
    for used_by, ats in uses.items():
        shown = [a for a in ats if a][:most]
        more = len([a for a in ats if a]) - len(shown)
        if shown:
            used_by += f" ({', '.join(shown)}{f' and {more} more' if more else ''})"
        parts.append(used_by)
    return "; ".join(parts)


def check_references(refs: Iterable[Reference], inventory: Inventory, overlay: str | Path) -> list[str]:
    """One line per dangling reference: what it names, who names it (and where inside), which overlay lacks
    it. References to the same object that fail the same way are one line, their keys or ports and their
    places listed together."""
    groups: dict[tuple[str, str, str, str], tuple[list[Any], dict[str, list[str]]]] = {}
    for ref in refs:
        namespace = ref.namespace or inventory.namespace
        found = inventory.lookup(ref.kind, ref.name, namespace) if ref.name else None
        detail = found[0] if found else None
        if not ref.name:
            reason, item = "unnamed", None
        elif found is None:
            reason, item = "missing", None if ref.optional else (ref.key or ref.port)
        elif ref.key is not None and not ref.optional and detail is not None and ref.key not in detail:
            reason, item = "key", ref.key
        elif ref.port is not None and ref.kind == SERVICE and detail is not None and ref.port not in detail:
            reason, item = "port", ref.port
        else:
            continue
        items, uses = groups.setdefault((reason, ref.kind, namespace, ref.name), ([], {}))
        if item is not None and item not in items:
            items.append(item)
        ats = uses.setdefault(ref.used_by, [])
        if ref.at not in ats:
            ats.append(ref.at)
    problems = []
    for (reason, kind, namespace, name), (items, uses) in groups.items():
        places = _places(uses)
        if reason == "unnamed":
            problems.append(f"a {kind} reference without a name, used by {places}, in overlay {overlay}")
            continue
        label = _label(kind, name, namespace, inventory.namespace, items)
        line = f"{label}, used by {places}, is not in overlay {overlay}"
        if reason == "missing":
            entry = inventory.unassumed_provider(kind, name, namespace)
            if entry is not None:
                line += (f": {entry.provider} provides it, and the overlay renders no {entry.requires_api_group} "
                         "object (it does not assume that provider)")  # fmt: skip
            elif kind == SECRET:
                line += f" nor listed in {inventory.secrets_file}"
            elif namespace != inventory.namespace:
                line += f": the overlay renders nothing into namespace {namespace} and no known platform part does"
        else:
            detail, origin = inventory.lookup(kind, name, namespace) or (set(), "?")
            what = "ports" if reason == "port" else "keys"
            have = ", ".join(map(str, sorted(detail or [], key=str))) or "none"
            line += f": {kind} {name} has {what} {have} ({origin})"
        problems.append(line)
    return problems


def check_wiring(
    overlay: str | Path,
    objects: list[dict[str, Any]],
    specs: Mapping[str, SecretSpec],
    secrets_file: str | Path,
    sources: SuiteSources | None = None,
) -> list[str]:
    """Every dangling reference of the suite (pipelines, the objects they create, Feast, the router example) and
    of the rendered objects themselves (Secrets aside: check_secret_references), against ``objects``, the
    rendered ``overlay``. ``sources`` defaults to the package's pipelines and the manifests folder that holds
    ``secrets_file``."""
    sources = sources or SuiteSources.for_manifests(Path(secrets_file).parent)
    namespace = overlay_namespace(objects)
    label = sources.label(secrets_file)
    # The feature store is an add-on: its config is wiring only in an overlay that includes it (its ConfigMap).
    feature_store = any(
        o.get("kind") == CONFIG_MAP and o["metadata"].get("name") == FEATURE_STORE_CONFIG for o in objects
    )
    suite, created = suite_references(sources, specs, namespace, label, feature_store_rendered=feature_store)
    inventory = Inventory(objects, specs, created, label)
    return check_references([*rendered_references(objects), *suite], inventory, overlay)
