"""The batch-prediction pipeline: its compiled shape, and one kfp.local run through `kfops predict --kfp-local`."""

from __future__ import annotations

import json

import pytest
import yaml

from kfops.pipelines.batch_prediction import DEFAULT_PARALLELISM, SHARD_RETRIES, build_batch_prediction_pipeline
from kfops.pipelines.compile import COMPILED_DIR
from tests.components.champion import Champion, register_champion


def compiled() -> dict:
    return next(yaml.safe_load_all((COMPILED_DIR / "batch-prediction.yaml").read_text()))


def test_plan_fans_out_over_shards_and_the_summary_collects_them():
    spec = compiled()
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"plan-batch", "for-loop-1", "summarize-batch"}
    loop = tasks["for-loop-1"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": DEFAULT_PARALLELISM}
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--plan-batch-Output"}
    assert loop["inputs"]["parameters"]["pipelinechannel--plan-batch-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "plan-batch",
    }
    collected = tasks["summarize-batch"]["inputs"]["parameters"]["shard_rows"]["taskOutputParameter"]
    assert collected == {
        "outputParameterKey": "pipelinechannel--score-batch-shard-Output",
        "producerTask": "for-loop-1",
    }
    shard = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["score-batch-shard"]
    assert shard["retryPolicy"]["maxRetryCount"] == SHARD_RETRIES
    # Every step talks to state outside KFP (registry, input, output): never a cached answer.
    for task in (tasks["plan-batch"], tasks["summarize-batch"], shard):
        assert task["cachingOptions"] == {}
    resources = spec["deploymentSpec"]["executors"]["exec-score-batch-shard"]["container"]["resources"]
    assert resources["cpuRequest"] == 1 and resources["memoryLimit"] == 4
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["model"]["defaultValue"] == "fraud-detector@champion"
    assert not defaults["input_uri"].get("isOptional") and not defaults["output_uri"].get("isOptional")


def test_parallelism_is_set_at_build_time(tmp_path):
    from kfp import compiler

    compiler.Compiler().compile(build_batch_prediction_pipeline(parallelism=3), str(tmp_path / "p.yaml"))
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"] == {"parallelismLimit": 3}
    with pytest.raises(ValueError, match="parallelism"):
        build_batch_prediction_pipeline(parallelism=0)


@pytest.fixture(scope="module")
def champion(tmp_path_factory, prepared, fast_config) -> Champion:
    return register_champion(tmp_path_factory.mktemp("pipeline-champion"), prepared, fast_config)


@pytest.mark.e2e
def test_kfp_local_run_scores_two_shards_like_the_direct_path(tmp_path, champion, capsys, monkeypatch):
    import pandas as pd

    from kfops.cli import main

    # Task subprocesses read these; set here so the test's environment is restored afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion.tracking_uri)
    monkeypatch.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", champion.artifact_root)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    rows = champion.rows
    rows.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=100)
    common = ["predict", "--model", champion.ref, "--input", str(tmp_path / "in.parquet"), "--shards", "2", "--json"]
    ws = tmp_path / "ws"
    assert main([*common, "--output", str(tmp_path / "out"), "--kfp-local", "--workspace", str(ws)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["mode"] == "kfp-local" and manifest["total_rows"] == len(rows)
    assert manifest["model_ref"] == f"models:/{champion.name}/{champion.version}" and len(manifest["files"]) == 2
    (log,) = (ws / "logs").glob("predict-*.log")
    assert manifest["log"] == str(log)
    text = log.read_text()  # each shard ran as its own task
    assert "shard 1 of 2: " in text and "shard 2 of 2: " in text and "planned 2 shard(s)" in text

    out = pd.read_parquet(tmp_path / "out").set_index("request_id").loc[[f"in.parquet:{i}" for i in range(len(rows))]]
    expected = champion.expected(rows)
    assert out["prediction"].tolist() == expected["prediction"].astype(str).tolist()
    assert (out["probability"] - expected["probability"].to_numpy()).abs().max() < 1e-6

    # The same job in-process writes the same predictions.
    assert main([*common, "--output", str(tmp_path / "direct"), "--tracking-uri", champion.tracking_uri]) == 0
    direct = pd.read_parquet(tmp_path / "direct").set_index("request_id").loc[out.index]
    assert direct["prediction"].tolist() == out["prediction"].tolist()
    assert (direct["probability"] - out["probability"]).abs().max() < 1e-6
