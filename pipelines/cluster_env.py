"""Credentials and endpoints for every step of a pipeline on a cluster, from Kubernetes objects.

Each step's pod gets

- ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` from the Secret ``kfops-s3`` (kfp-kubernetes
  ``use_secret_as_env``), the suite's MinIO user;
- ``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL``, ``KFOPS_S3_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` from
  the ConfigMap ``kfops-platform`` (``use_config_map_as_env``), the in-cluster MLflow and MinIO endpoints.

Both live in the run's namespace: ``manifests/`` creates the ConfigMap, and ``manifests/secrets.yaml`` lists the
Secret, which is created out of band. No credential is compiled into the YAML. A pipeline parameter such as
``mlflow_tracking_uri`` still wins over the environment when it is set.

``kfops compile`` applies ``with_cluster_env`` to every pipeline it writes. ``kfp.local`` ignores kfp-kubernetes
settings, so a local run keeps reading the process environment.
"""

from __future__ import annotations

from typing import Any

CLUSTER_SECRET = "kfops-s3"
SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
CLUSTER_CONFIG_MAP = "kfops-platform"
CONFIG_MAP_ENV = {
    name: name
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "KFOPS_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")
}


class _ExecutorSettings:
    """The part of a PipelineTask that kfp.kubernetes's functions read and write: its platform config."""

    def __init__(self, kubernetes_config: dict[str, Any]):
        self.platform_config = {"kubernetes": kubernetes_config}


def with_cluster_env(pipeline):
    """Give every executor of a built pipeline (a ``@dsl.pipeline`` function) the Secret and ConfigMap above,
    beside whatever kfp-kubernetes settings its tasks already have. Returns the pipeline; applying it twice
    changes nothing."""
    from google.protobuf import json_format, struct_pb2
    from kfp import kubernetes

    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    configs = pipeline.platform_spec.platforms["kubernetes"].deployment_spec.executors
    for name in sorted(executors.keys()):
        existing = json_format.MessageToDict(configs[name]) if name in configs else {}
        if any(entry.get("secretName") == CLUSTER_SECRET for entry in existing.get("secretAsEnv", [])):
            continue
        settings = _ExecutorSettings(existing)
        kubernetes.use_secret_as_env(settings, secret_name=CLUSTER_SECRET, secret_key_to_env=SECRET_ENV)
        kubernetes.use_config_map_as_env(
            settings, config_map_name=CLUSTER_CONFIG_MAP, config_map_key_to_env=CONFIG_MAP_ENV
        )
        struct = struct_pb2.Struct()
        struct.update(settings.platform_config["kubernetes"])
        configs[name].CopyFrom(struct)
    return pipeline
