"""Building KFP components from the suite's wrapper functions, with the image chosen at compile time, and the
one-line descriptions the Kubeflow UI shows beside each parameter.

Wrappers (``<stage>/component.py``) are plain functions with KFP type annotations; ``component_op`` turns one
into a lightweight component that runs in the suite's own image. The image already holds kfops and kfp, so
no package is installed at run time (``install_kfp_package=False``).

Descriptions: KFP's compiler reads a function's Google-style docstring (``kfp/dsl/component_factory.py``,
``extract_component_interface``, with ``docstring_parser``): each ``Args:`` entry ``name: text`` becomes the
``description`` of input ``name`` in the compiled YAML, and when the docstring has a ``Returns:`` section, its
entries (and the ``Args:`` ones) describe the outputs. ``described`` writes those sections from
``DESCRIPTIONS`` (one text per name, for every name that several components or pipelines share: a pipeline passes
its parameters on to its steps by name, so one name means one thing) and from the entries a wrapper's own
docstring writes for names only it has (or means differently), which win. Pipelines get theirs the same way
(``pipelines/parameters.py``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from kfops import __version__

_KFP_RUNTIME_ENV = "_KFP_RUNTIME"

DEFAULT_IMAGE = f"ghcr.io/kfops/kfops:{__version__}"
DEFAULT_CUDA_IMAGE = f"ghcr.io/kfops/kfops-cuda:{__version__}"

# The GPU node pools' usual taint (nvidia.com/gpu:NoSchedule, as GKE, EKS and the NVIDIA GPU Operator set it,
# with or without a value): tolerated by default wherever the suite asks for a GPU.
DEFAULT_GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"

# name -> one line. Inputs and outputs alike; a wrapper's own docstring entry wins for its component.
DESCRIPTIONS: dict[str, str] = {
    # the data (pipelines/parameters.py DATA_PARAMETERS) and what the data steps hand on
    "data_uri": "The data to train on: a CSV or Parquet file, local path or s3:// URI (or give data_version).",
    "data_version": "sha256 of a stored data snapshot to train on instead of data_uri (kfops data versions).",
    "target": "Name of the target column, the one the model learns to predict.",
    "numeric_features": "Columns to use as numeric features; empty: inferred from the data.",
    "categorical_features": "Columns to use as categorical features; empty: inferred from the data.",
    "drop_columns": "Columns never used as features (ids, leaks); ids and timestamps are left out anyway.",
    "time_column": "A timestamp column: kept out of the features, and what split_by_time orders rows by.",
    "split_by_time": "Split by time_column (oldest rows train, newest test) instead of a stratified random split.",
    "positive_class": "The target value that is the positive class of a binary task; empty: chosen from the data.",
    "task": "auto (from the target), binary, multiclass or regression.",
    "expectation_suite": "A Great Expectations suite (JSON, path or s3://) to validate with; empty: inferred.",
    "validation_mode": "fail stops the run when validation fails; warn reports and goes on.",
    "max_missing": "At least 0: validate with a fixed cap on each column's empty share; below 0: the usual suite.",
    "validation_fraction": "Share of the rows in the validation split (threshold choice, early stopping).",
    "test_fraction": "Share of the rows in the test split (evaluation and the gate).",
    "split_seed": "Seed of the random split.",
    "max_categories": "Most categories one-hot encoded per categorical column; rarer ones become 'other'.",
    "min_frequency": "Fewest rows a category needs to get its own column; rarer ones become 'other'.",
    "artifact_store": "Where data snapshots are stored: a folder or s3:// prefix (MinIO in a cluster).",
    "data_sha256": "sha256 of the data snapshot (the version step's output), which keys the cache.",
    "schema_json": "The data's schema (columns, kinds, task) from the version step, as JSON.",
    "train": "The training split.",
    "validation": "The validation split.",
    "test": "The test split, raw (before the feature transform).",
    "train_features": "The training split, transformed into model features.",
    "validation_features": "The validation split, transformed into model features.",
    "test_features": "The test split, transformed into model features.",
    "feature_spec": "The fitted feature transform (FeatureSpec JSON) that training and serving share.",
    "raw_train": "The raw training split (reference statistics for drift monitoring).",
    # training (TrainConfig's fields as pipeline parameters: pipelines/parameters.py TRAIN_PARAMETERS)
    "hidden_sizes": "The MLP's hidden layer widths, e.g. [64, 32].",
    "dropout": "The MLP's dropout probability, in [0, 1).",
    "learning_rate": "The optimizer's learning rate.",
    "batch_size": "Largest training batch (small data gets smaller batches).",
    "epochs": "Most training epochs (early stopping may end sooner).",
    "optimizer": "adam, adamw or sgd.",
    "weight_decay": "The optimizer's weight decay.",
    "class_weighting": "none, balanced, or auto (balanced when the positive class is rare).",
    "early_stopping_patience": "Epochs without a better validation loss before training stops.",
    "seed": "Seed of the model's initialisation and the batch order.",
    "device": "auto, cpu or cuda.",
    "threshold": "Decision threshold on the positive-class probability (fixed, or the start of the choice).",
    "threshold_objective": "How the threshold is chosen: f1, youden, precision>=P, recall>=R, or fixed.",
    "model_family": "mlp, gbdt, module (model_module) or imported (imported_model).",
    "model_params": "The model family's own parameters, e.g. gbdt's {\"max_leaf_nodes\": 31}.",
    "model_module": "The module family's Python file (path or s3://) that defines the model.",
    "imported_model": "The imported family's MLflow model: models:/..., runs:/..., a folder or s3://.",
    # model, registry and tracking
    "model_name": "Registered model name in MLflow (also the InferenceService's name unless isvc_name is set).",
    "version": "Model version to act on: a number or an alias (champion, challenger).",
    "experiment": "MLflow experiment to log the runs in.",
    "mlflow_tracking_uri": "MLflow tracking server; empty: MLFLOW_TRACKING_URI from the cluster's ConfigMap.",
    "tensorboard_root": "Folder or s3:// prefix for TensorBoard event files; empty: beside the model output.",
    "thresholds": "The gate's thresholds as JSON: per metric, value limits and changes against the champion.",
    "promotion_metric": "Metric that must not get worse for a new version to replace the champion.",
    "evaluation": "The evaluation result (metrics per split and threshold) as JSON.",
    "blessing": "The gate's verdict (Blessing JSON): only a blessed model is registered as challenger or served.",
    "pipeline_run": "The KFP run that produced the model, recorded on the registered version.",
    # deployment and the canary (pipelines/parameters.py DEPLOYMENT_PARAMETERS) and the deploy component's own
    "isvc_name": "InferenceService name; empty: the model name.",
    "namespace": "Kubernetes namespace to work in; empty: the run's own namespace.",
    "deployment_mode": "KServe deployment mode: knative (Serverless) or standard (RawDeployment).",
    "canary_percent": "Traffic share of a new version while the serving one stays; 100 replaces it at once.",
    "service_account": "Service account of the pods (needs read access to the model store).",
    "steps": "The canary's traffic percentages, step by step; the last (100) promotes it.",
    "window_seconds": "Seconds of traffic judged at each canary step.",
    "prometheus_url": "Prometheus to read the canary's and the stable model's request metrics from.",
    "max_error_rate": "Highest error rate the canary may have at a step before it is rolled back.",
    "max_p99_ratio": "Highest ratio of the canary's p99 latency to the stable model's before it is rolled back.",
    "min_requests": "Fewest canary requests in a window for a step to be judged (else the window is extended).",
    "runtime": "KServe ServingRuntime that serves the model.",
    "image": "Serving image; empty: the ServingRuntime's.",
    "cpu_request": "CPU request of each predictor pod.",
    "cpu_limit": "CPU limit of each predictor pod (the server uses one thread per CPU: keep it whole).",
    "memory_request": "Memory request of each predictor pod.",
    "memory_limit": "Memory limit of each predictor pod.",
    "gpus": "GPUs (nvidia.com/gpu) per predictor pod; needs a CUDA serving image.",
    "min_replicas": "Fewest predictor replicas (0 lets Knative scale to zero).",
    "max_replicas": "Most predictor replicas.",
    "scale_metric": "Autoscaling metric: cpu, memory, concurrency or rps (the last two Knative only); empty: KServe's.",
    "scale_target": "Autoscaling target for scale_metric; 0: KServe's default.",
    "logger_url": "Where the payload logger sends requests and responses as CloudEvents; empty: no logging.",
    "logger_mode": "What the payload logger sends: all, request or response.",
    "timeout_seconds": "Seconds to wait for the step's work to finish before it fails.",
    "poll_seconds": "Seconds between status checks while waiting.",
    "operation": "What deploy did: create, canary, replace or update (dry-run: nothing).",
    "manifest": "The InferenceService manifest applied (YAML).",
    "deployed_version": "The model version now deployed.",
    "storage_uri": "Storage URI of the deployed version's model.",
    "stable_version": "The version that keeps the rest of the traffic during a canary; empty if none.",
    "stable_storage_uri": "Storage URI of the stable version's model; empty if none.",
    "url": "The InferenceService's URL.",
    "status": "KServe's status of the InferenceService (JSON).",
    # monitoring
    "current_uri": "The live data: a payload-log folder or a data file, local or s3://.",
    "date_from": "First day of the window to read (YYYY-MM-DD); empty: from the start.",
    "date_to": "Last day of the window to read (YYYY-MM-DD); empty: to the end.",
    "stattest": "Drift test per column: auto (Evidently's choice by size and type), or a test's name.",
    "drift_share": "Share of drifted columns at which the dataset counts as drifted.",
    "min_rows": "Fewest rows in the window for a verdict (fewer: no verdict, nothing retrains).",
    "pushgateway": "Prometheus Pushgateway to push gauges to; empty: none.",
    "webhook": "URL that gets a JSON alert when drift is detected; empty: none.",
    # feature store
    "feature_repo": "The Feast feature repository: a folder or s3:// prefix with feature_store.yaml.",
    "start_time": "Start of the window to materialise (ISO 8601); empty: incremental since the last run.",
    "end_time": "End of the window to materialise (ISO 8601); empty: now.",
    "feature_views": "Feature views to materialise; empty: all.",
    # batch prediction
    "input_uri": "The data to score: a Parquet, JSONL or CSV file or folder, local or s3://.",
    "output_uri": "Folder or s3:// prefix to write the predictions and the manifest to.",
    "shards": "Number of shards to cut the input into; 0: one per shard_rows rows.",
    "shard_rows": "Rows per shard when shards is 0.",
    "id_column": "Input column that identifies each row, copied to the predictions; empty: none.",
    "passthrough": "Input columns copied to the predictions unchanged.",
    "output_format": "Format of the prediction files: parquet, jsonl or csv.",
    "chunk_rows": "Rows scored at a time within a shard (bounds the memory used).",
    "total_rows": "Rows scored in all.",
    "model_version": "The model version that scored (resolved once from the reference).",
    "manifest_uri": "Where the batch's manifest (_manifest.json) was written.",
    # sweeps
    "sweep_spec": "The sweep spec (W&B format) as YAML text: method, metric and parameter ranges.",
    "trials": "Number of trials; 0: the spec's run_cap, else its default.",
    "parallel": "Trials run at once; 0: the spec's default.",
    "env_secret": "Secret whose keys (MLflow and S3 settings) become the trial or node pods' environment.",
    # A/B analysis
    "outcomes_uri": "Outcomes to join with the logged predictions (file or folder, local or s3://); empty: none.",
    "join_on": "Column that joins predictions and outcomes (a request id).",
    "variant_column": "Column naming each row's variant.",
    "outcome_column": "Column holding each row's outcome.",
    "metric": "mean (Welch's t-test) or rate (two-proportion z-test) of the outcome.",
    "alpha": "Significance level of the test.",
    "power": "Statistical power the sample size is judged against.",
    "control": "The control variant's name.",
    "treatment": "The treatment variant's name.",
    "minimum_detectable_effect": "Smallest effect worth detecting, for the power analysis.",
    "higher_is_better": "Whether a higher outcome is the better one.",
    "report": "A report for the Kubeflow UI.",
    "message": "The verdict in words.",
    # GPU placement (pipelines/placement.py; the TrainJob's pods get the same)
    "gpu_tolerations": "Tolerations of the GPU pods, a list of Kubernetes tolerations (kfops compile's default: "
    "the nvidia.com/gpu:NoSchedule taint, any value).",
    "gpu_node_selector": "nodeSelector of the GPU pods, label -> value, e.g. the node pool's accelerator label.",
    "accelerator_type": "Extended resource name of the GPU the pods ask for, e.g. nvidia.com/gpu or amd.com/gpu.",
}

_SECTION = re.compile(r"^(Args|Returns):\s*$")
_ENTRY = re.compile(r"^    (\w+):\s*(.*)$")
_ORIGINAL_DOC = "_kfops_original_doc"


def own_descriptions(doc: str) -> tuple[str, dict[str, dict[str, str]]]:
    """A docstring's text before its ``Args:``/``Returns:`` sections, and each section's ``name: text`` entries
    (an entry's indented continuation lines joined into its one line): ``{"Args": {...}, "Returns": {...}}``."""
    lines = inspect.cleandoc(doc or "").splitlines()
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
    sections: dict[str, dict[str, str]] = {"Args": {}, "Returns": {}}
    entries, name = sections["Args"], None
    for line in lines[start:]:
        title = _SECTION.match(line)
        if title or not line.strip():
            entries, name = (sections[title.group(1)] if title else entries), None
            continue
        entry = _ENTRY.match(line)
        if entry:
            name = entry.group(1)
            entries[name] = entry.group(2).strip()
        elif name and line.startswith("        "):
            entries[name] = f"{entries[name]} {line.strip()}"
        else:
            raise ValueError(f"docstring section line {line!r} is not a 'name: description' entry")
    return "\n".join(lines[:start]).rstrip(), sections


def _outputs(func: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """(input names, output names) of a KFP function: outputs are its Output[...] parameters and its returns
    (a NamedTuple's fields, or KFP's single ``Output``)."""
    from kfp.dsl.types import type_annotations

    signature = inspect.signature(func)
    inputs, outputs = [], []
    for p in signature.parameters.values():
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        is_output = type_annotations.is_artifact_wrapped_in_Output(p.annotation) or isinstance(
            p.annotation, type_annotations.OutputPath
        )
        (outputs if is_output else inputs).append(p.name)
    returned = signature.return_annotation
    if returned not in (inspect.Signature.empty, None):
        outputs += list(getattr(returned, "_fields", ["Output"]))
    return inputs, outputs


def described(func: Callable[..., Any], descriptions: Mapping[str, str] | None = None) -> Callable[..., Any]:
    """Give ``func`` (a component wrapper or a pipeline function, before KFP decorates it) a docstring whose
    ``Args:`` describes every input and ``Returns:`` every output, in signature order: each from the entry
    ``func``'s own docstring writes, else ``descriptions``, else ``DESCRIPTIONS``. A name none of them has is
    left out (``missing_descriptions`` lists them). Returns ``func``; applying it again gives the same text."""
    original = func.__dict__.setdefault(_ORIGINAL_DOC, func.__doc__ or "")
    text, own = own_descriptions(original)
    inputs, outputs = _outputs(func)
    # docstring_parser reads a docstring that opens with "Args:" as all summary: always open with a line of text
    sections = [text or func.__name__.replace("_", " ").capitalize() + "."]
    for title, names in (("Args", inputs), ("Returns", outputs)):
        known = {**DESCRIPTIONS, **(descriptions or {}), **own[title]}
        entries = [f"    {name}: {known[name]}" for name in names if name in known]
        if entries:
            sections.append(f"{title}:\n" + "\n".join(entries))
    func.__doc__ = "\n\n".join(s for s in sections if s) + "\n"
    return func


def missing_descriptions(component) -> list[str]:
    """The inputs and outputs of a built KFP component or pipeline that have no description."""
    spec = component.component_spec
    named = {**{f"input {k}": v for k, v in (spec.inputs or {}).items()}}
    named.update({f"output {k}": v for k, v in (spec.outputs or {}).items()})
    return sorted(name for name, io in named.items() if not (io.description or "").strip())


def component_op(func, image: str = DEFAULT_IMAGE):
    """A KFP component of ``func`` running in ``image``, its inputs and outputs described (``described``)."""
    from kfp import dsl

    return dsl.component(func=described(func), base_image=image, install_kfp_package=False)


def import_kfp_without_client() -> None:
    """Import the ``kfp`` package without its API client, for a process that builds and runs pipelines locally.

    ``kfp/__init__.py`` imports ``kfp.client`` (and with it the Kubernetes client: 0.4 s idle, up to 2 s on a loaded
    machine) unless ``_KFP_RUNTIME`` is ``true``, the flag KFP's own executor sets. It is set only while the package
    itself is imported; ``kfp.dsl``, imported after, has its whole compile-time API, and ``kfp.client`` still imports
    when something asks for it. A no-op once kfp is imported."""
    import os
    import sys

    if "kfp" in sys.modules:
        return
    before = os.environ.get(_KFP_RUNTIME_ENV)
    os.environ[_KFP_RUNTIME_ENV] = "true"
    try:
        import kfp  # noqa: F401
    finally:
        if before is None:
            del os.environ[_KFP_RUNTIME_ENV]
        else:
            os.environ[_KFP_RUNTIME_ENV] = before
