"""Multi-node training on Kubeflow Trainer: a ``TrainJob`` (trainer.kubeflow.org/v1alpha1) that runs the
suite's training under ``torchrun`` on every node, submitted and watched through the suite's Kubernetes client.

The TrainJob references a training runtime (default the ``torch-distributed`` ClusterTrainingRuntime that
Kubeflow Trainer installs), which starts ``numNodes`` pods and sets torchrun's rendezvous variables
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``) in each.
Every pod runs ``torchrun -m kfops.components.train`` (``entry.py``) on ``preprocess``'s outputs in the artifact
store: NCCL data parallelism across all GPUs, rank 0 logging the one MLflow run (tagged
``kfops.trainjob=<name>``, how the submitting step finds it afterwards). Checkpoints go to
``<checkpoint_uri>`` every epoch, so a restarted pod resumes the job instead of starting over.

MLflow and S3 settings reach the pods from a Secret, one variable at a time (a TrainJob's trainer takes ``env``,
not ``envFrom``): ``SECRET_KEYS`` below, each optional in the Secret.

GPU placement: a GPU job's nodes ask for ``accelerator_type`` (default ``nvidia.com/gpu``) and get
``tolerations`` and ``node_selector`` through the TrainJob's ``runtimePatches`` (Kubeflow Trainer's patch of the
runtime's pod template, keyed by a manager name), on the runtime's trainer job ``node``; the same defaults and
meaning as the GPU training pipeline's parameters (``pipelines/placement.py``). A CPU job gets neither.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.kfp_support import DEFAULT_ACCELERATOR_TYPE, DEFAULT_GPU_TOLERATIONS
from kfops.components.kube import CustomResource, KubeClient, KubeError, true_condition, wait_for_condition

API_VERSION = "trainer.kubeflow.org/v1alpha1"
TRAINJOBS = CustomResource(
    group="trainer.kubeflow.org",
    version="v1alpha1",
    plural="trainjobs",
    kind="TrainJob",
    provider="Kubeflow Trainer",
    rbac_doc="components/train/README.md",
)
DEFAULT_RUNTIME = "torch-distributed"
# The replicated job of the torch runtimes that runs the trainer (its container is "node" too), and who owns the
# runtime patch (RuntimePatch.manager, Kubeflow Trainer's TrainJob API).
TRAINER_JOB = "node"
PATCH_MANAGER = "kfops.io/gpu-placement"
TRAINJOB_TAG = "kfops.trainjob"
SECRET_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "KFOPS_S3_ENDPOINT_URL",
    "KFOPS_MLFLOW_ARTIFACT_ROOT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass
class TrainJobSpec:
    """What to train, where, and on how many GPUs."""

    name: str
    namespace: str
    image: str
    train_features: str  # s3:// URIs of preprocess's outputs (pods read them from the artifact store)
    validation_features: str
    feature_spec: str
    raw_train: str
    config: TrainConfig = field(default_factory=TrainConfig)
    num_nodes: int = 1
    gpus_per_node: int = 1  # 0: CPU training, gloo, one process per node unless procs_per_node says more
    procs_per_node: int = 0  # 0: one per GPU (one on CPU)
    cpu: str = "4"
    memory: str = "16Gi"
    runtime: str = DEFAULT_RUNTIME
    env_secret: str = ""
    experiment: str = "kfops-training"
    data_sha256: str = ""
    data_uri: str = ""
    checkpoint_uri: str = ""
    checkpoint_every: int = 1
    # GPU placement (a GPU job only): Kubernetes tolerations, nodeSelector labels, the GPU's resource name
    tolerations: list[dict[str, Any]] = field(default_factory=lambda: [dict(t) for t in DEFAULT_GPU_TOLERATIONS])
    node_selector: dict[str, str] = field(default_factory=dict)
    accelerator_type: str = DEFAULT_ACCELERATOR_TYPE

    def check(self) -> None:
        if not _DNS1035.match(self.name) or len(self.name) > 63:
            raise KfopsError(f"trainjob: name {self.name!r} must be a DNS-1035 label (a-z, 0-9, '-'; 63 at most)")
        if not self.namespace:
            raise KfopsError("trainjob: a namespace is required")
        if self.num_nodes < 1:
            raise KfopsError(f"trainjob: num_nodes must be at least 1, got {self.num_nodes}")
        if self.gpus_per_node < 0 or self.procs_per_node < 0:
            raise KfopsError("trainjob: gpus_per_node and procs_per_node must not be negative")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise KfopsError(
                f"trainjob: {self.procs_per_node} processes per node but {self.gpus_per_node} GPUs: NCCL needs one "
                "GPU per process"
            )
        for label, uri in (("train_features", self.train_features), ("validation_features", self.validation_features),
                           ("feature_spec", self.feature_spec), ("raw_train", self.raw_train)):  # fmt: skip
            if not uri.startswith("s3://"):
                raise KfopsError(
                    f"trainjob: {label} must be an s3:// URI that every node can read, got {uri!r} (a local path is "
                    "on one machine only)"
                )
        if self.gpus_per_node and "/" not in self.accelerator_type:
            raise KfopsError(
                f"trainjob: accelerator_type {self.accelerator_type!r} must be an extended resource name such as "
                "nvidia.com/gpu"
            )
        for toleration in self.tolerations:
            if not isinstance(toleration, dict) or not set(toleration) <= _TOLERATION_FIELDS:
                raise KfopsError(
                    f"trainjob: toleration {toleration!r} must be a Kubernetes toleration with fields among "
                    f"{', '.join(sorted(_TOLERATION_FIELDS))}"
                )
        if not isinstance(self.node_selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()
        ):
            raise KfopsError(f"trainjob: node_selector {self.node_selector!r} must map label names to label values")
        self.config.check()

    @property
    def processes_per_node(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)


def training_args(spec: TrainJobSpec) -> list[str]:
    """The arguments of ``python -m kfops.components.train`` for this job."""
    config = spec.config
    args = [
        "--train-features",
        spec.train_features,
        "--validation-features",
        spec.validation_features,
        "--feature-spec",
        spec.feature_spec,
        "--raw-train",
        spec.raw_train,
        "--data-sha256",
        spec.data_sha256,
        "--data-uri",
        spec.data_uri or spec.raw_train,
        "--experiment",
        spec.experiment,
        "--run-name",
        spec.name,
        "--tag",
        f"{TRAINJOB_TAG}={spec.name}",
        "--hidden-sizes",
        ",".join(str(h) for h in config.hidden_sizes),
        "--dropout",
        str(config.dropout),
        "--learning-rate",
        str(config.learning_rate),
        "--batch-size",
        str(config.batch_size),
        "--epochs",
        str(config.epochs),
        "--optimizer",
        config.optimizer,
        "--weight-decay",
        str(config.weight_decay),
        "--class-weighting",
        config.class_weighting,
        "--early-stopping-patience",
        str(config.early_stopping_patience),
        "--seed",
        str(config.seed),
        "--device",
        "cuda" if spec.gpus_per_node else "cpu",
        "--threshold",
        str(config.decision_threshold),
        "--threshold-objective",
        config.threshold_objective,
    ]
    if spec.checkpoint_uri:
        args += ["--checkpoint-uri", spec.checkpoint_uri, "--checkpoint-every", str(spec.checkpoint_every)]
    return args


def build_trainjob(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob manifest."""
    spec.check()
    env: list[dict[str, Any]] = [
        {"name": "KFOPS_IMAGE", "value": spec.image},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.env_secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.env_secret, "key": key, "optional": True}}}
            for key in SECRET_KEYS
        ]
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus_per_node:
        limits[spec.accelerator_type] = spec.gpus_per_node
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "kfops", "app.kubernetes.io/component": "training"},
        },
        "spec": {
            "runtimeRef": {"name": spec.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": spec.image,
                # torchrun reads the node count, this node's rank and the rendezvous address from the PET_*
                # variables the torch runtime sets; --nproc-per-node is the processes on this node.
                "command": [
                    "torchrun",
                    "--nproc-per-node",
                    str(spec.processes_per_node),
                    "-m",
                    "kfops.components.train",
                ],
                "args": training_args(spec),
                "numNodes": spec.num_nodes,
                "numProcPerNode": spec.processes_per_node,
                "resourcesPerNode": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits},
                "env": env,
            },
        },
    }
    placement = {"tolerations": spec.tolerations, "nodeSelector": spec.node_selector}
    placement = {name: value for name, value in placement.items() if value}
    if spec.gpus_per_node and placement:
        job = {"name": TRAINER_JOB, "template": {"spec": {"template": {"spec": placement}}}}
        manifest["spec"]["runtimePatches"] = [
            {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}
        ]
    return manifest


@dataclass
class TrainJobResult:
    name: str
    namespace: str
    state: str  # Complete
    seconds: float
    status: dict[str, Any]


def submit_and_wait(
    api: KubeClient, manifest: dict[str, Any], timeout_s: float, poll_s: float = 10.0, on_poll=None
) -> TrainJobResult:
    """Create the TrainJob (one that exists with the same trainer spec, a retried step, is watched instead)
    and wait for its ``Complete`` condition; KfopsError on ``Failed``, or at the timeout (the job keeps
    running: delete it with kubectl if it should not)."""
    api = api.for_resource(TRAINJOBS)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    started = time.monotonic()
    try:
        api.create(namespace, manifest)
    except KubeError as err:
        if err.status != 409:
            raise
        live = api.get(namespace, name) or {}
        if (live.get("spec") or {}).get("trainer") != manifest["spec"]["trainer"]:
            raise KfopsError(
                f"TrainJob {namespace}/{name} already exists with another trainer spec; delete it or use another name"
            ) from None

    def timeout_message(live: dict[str, Any]) -> str:
        suspended = true_condition(live.get("status") or {}, "Suspended")
        state = "suspended (waiting for quota?)" if suspended else "running"
        return f"TrainJob {namespace}/{name} did not complete within {timeout_s:.0f} s; it is {state} and keeps running"

    return wait_for_condition(
        api,
        namespace,
        name,
        title="TrainJob",
        succeeded="Complete",
        result=lambda status: TrainJobResult(name, namespace, "Complete", time.monotonic() - started, status),
        failure_hint=lambda _: (
            f"see its pods' logs: kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name}"
        ),
        waiting_for="it to complete",
        timeout_s=timeout_s,
        poll_s=poll_s,
        timeout_message=timeout_message,
        on_poll=on_poll,
        started=started,
    )


def find_run(name: str, experiment: str, tracking_uri: str = ""):
    """The MLflow run rank 0 of TrainJob ``name`` logged (tag ``kfops.trainjob``)."""
    import mlflow

    from kfops.components.tracking import set_tracking

    set_tracking(tracking_uri)
    found = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{TRAINJOB_TAG}` = '{name}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
        max_results=1,
    )
    if not found:
        raise KfopsError(
            f"TrainJob {name} completed but no MLflow run in experiment {experiment!r} has tag {TRAINJOB_TAG}"
        )
    return found[0]
