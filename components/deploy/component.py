"""KFP wrapper for deploy: serve a blessed model version with a KServe InferenceService (typed inputs)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Output

from kfops.components.kfp_support import component_op


def deploy(
    model_name: str,
    manifest: Output[Artifact],
    status: Output[Artifact],
    version: str = "champion",
    isvc_name: str = "",
    namespace: str = "",
    deployment_mode: str = "knative",
    canary_percent: int = 10,
    runtime: str = "kfops-pytorch-tabular",
    image: str = "",
    cpu_request: str = "1",
    cpu_limit: str = "1",
    memory_request: str = "1Gi",
    memory_limit: str = "2Gi",
    gpus: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 3,
    scale_metric: str = "",
    scale_target: int = 0,
    service_account: str = "kfops-model-reader",
    logger_url: str = "",
    logger_mode: str = "all",
    mlflow_tracking_uri: str = "",
    timeout_seconds: int = 600,
    poll_seconds: float = 5.0,
) -> NamedTuple(
    "DeployOutputs",
    [
        ("operation", str),
        ("deployed_version", str),
        ("storage_uri", str),
        ("stable_version", str),
        ("stable_storage_uri", str),
        ("url", str),
    ],
):
    """Serve ``version`` of ``model_name`` (blessed only): create the InferenceService, or start a canary at
    ``canary_percent`` beside the version serving now; wait until KServe shows that split. Writes the applied
    manifest (YAML) and KServe's status (JSON)."""
    import json
    from collections import namedtuple
    from pathlib import Path

    import yaml

    from kfops.components.contracts.delivery import DeploySpec
    from kfops.components.deploy.logic import deploy as deploy_version

    spec = DeploySpec.from_parameters(locals())  # the spec's fields among the parameters above
    result = deploy_version(spec, tracking_uri=mlflow_tracking_uri, timeout_s=timeout_seconds, poll_s=poll_seconds)
    Path(manifest.path).write_text(yaml.safe_dump(result.manifest, sort_keys=False), encoding="utf-8")
    Path(status.path).write_text(json.dumps(result.status, indent=2, sort_keys=True), encoding="utf-8")
    where = f"{result.namespace}/{result.name}"
    for artifact in (manifest, status):
        artifact.metadata.update({"inferenceservice": where, "model": result.model_name, "version": result.version})
    stable = f"; stable version {result.stable_version or '?'}" if result.stable_storage_uri else ""
    print(f"{result.operation} {where}: {result.model_name} version {result.version}{stable}; {result.url}")
    outputs = namedtuple(
        "DeployOutputs", ["operation", "deployed_version", "storage_uri", "stable_version", "stable_storage_uri", "url"]
    )
    return outputs(
        result.operation,
        result.version,
        result.storage_uri,
        result.stable_version,
        result.stable_storage_uri,
        result.url,
    )


deploy_op = component_op(deploy)
