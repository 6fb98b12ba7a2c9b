"""pipelines/cluster_env.py: every step of a compiled pipeline gets the S3 credentials from Secret kfops-s3 and
the endpoints from ConfigMap kfops-platform, beside the kfp-kubernetes settings its tasks already have."""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.

import yaml
from google.protobuf import json_format
from kfp import compiler, dsl, kubernetes
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from kfops.pipelines.cluster_env import CLUSTER_CONFIG_MAP, CLUSTER_SECRET, CONFIG_MAP_ENV, SECRET_ENV, with_cluster_env


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def produce() -> str:
    return "x"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def consume(value: str) -> str:
    return value


@dsl.pipeline(name="cluster-env-example")
def example():
    first = produce()
    kubernetes.use_secret_as_env(first, secret_name="warehouse", secret_key_to_env={"password": "WAREHOUSE_PASSWORD"})
    kubernetes.add_pod_label(first, "team", "fraud")
    consume(value=first.output)


def _compiled(pipeline, tmp_path) -> dict:
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 2
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())  # unknown fields raise
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_executor_gets_the_secret_and_config_map_beside_its_own_settings(tmp_path):
    executors = _compiled(with_cluster_env(with_cluster_env(example)), tmp_path)  # twice: no duplicates
    assert set(executors) == {"exec-produce", "exec-consume"}
    for name, config in executors.items():
        parsed = json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
        ours = [s for s in parsed.secret_as_env if s.secret_name == CLUSTER_SECRET]
        assert len(ours) == 1, name
        assert {(k.secret_key, k.env_var) for k in ours[0].key_to_env} == set(SECRET_ENV.items())
        assert not ours[0].optional  # a missing Secret stops the pod with a clear event, not a silent default
        [config_map] = parsed.config_map_as_env
        assert config_map.config_map_name == CLUSTER_CONFIG_MAP
        assert {(k.config_map_key, k.env_var) for k in config_map.key_to_env} == set(CONFIG_MAP_ENV.items())
    produce_config = executors["exec-produce"]
    assert [s["secretName"] for s in produce_config["secretAsEnv"]] == ["warehouse", CLUSTER_SECRET]
    assert produce_config["podMetadata"]["labels"] == {"team": "fraud"}


def test_no_credential_value_is_compiled_in(tmp_path):
    text = yaml.safe_dump(_compiled(with_cluster_env(example), tmp_path))
    assert "secretKey: AWS_SECRET_ACCESS_KEY" in text
    assert "value:" not in text and "stringValue" not in text
