"""Monitoring a user's files as the READMEs show it: every monitoring example of README.md and
components/monitor/README.md (a code block after a ``<!-- monitor example: NAME -->`` marker) runs as written, the
``kfops`` CLI in-process in a fresh folder, on the files the ``kfops data generate`` commands before it make; what
the README says of the result is what comes out. Also a dataset nobody tuned the rules to (scikit-learn's breast
cancer data with an id and a timestamp, as a CSV): the target, the id and the timestamp are not compared."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfops.cli import main

REPO = Path(__file__).resolve().parents[2]
READMES = {"README.md": REPO / "README.md", "monitor": REPO / "components" / "monitor" / "README.md"}
LEFT_OUT = ["transaction_id", "event_time", "customer_id", "is_fraud"]
FAST_RUN = ["--epochs", "3", "--hidden-sizes", "16,8", "--batch-size", "256", "--rows", "20000"]


def example(readme: str, name: str) -> str:
    """The code block after the ``<!-- monitor example: NAME -->`` marker."""
    text = READMES[readme].read_text()
    match = re.search(rf"<!-- monitor example: {re.escape(name)} -->\n```\w+\n(.*?)\n```", text, re.S)
    assert match, f"{readme} has no code block marked <!-- monitor example: {name} -->"
    return match.group(1)


def commands(block: str) -> list[list[str]]:
    """The block's shell commands as argument lists (``\\`` continues a line; ``#`` starts a comment)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run(argv: list[str], capsys) -> str:
    """One ``kfops ...`` command as a user types it; its output (stdout and stderr)."""
    assert argv[0] == "kfops", f"not a kfops command: {shlex.join(argv)}"
    code = main(argv[1:])
    out = capsys.readouterr()
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.out + out.err)
    assert code == 0, f"{shlex.join(argv)} exited {code}:\n{text}"
    return " ".join(text.split())  # the console wraps long lines


def drift_json(folder: Path) -> dict:
    return json.loads((folder / "drift.json").read_text())


def test_every_monitor_command_in_the_readmes_is_a_tested_example():
    for readme, path in READMES.items():
        text = path.read_text()
        blocks = re.findall(r"(<!-- monitor example: [\w-]+ -->\n)?```(\w*)\n(.*?)\n```", text, re.S)
        untested = [
            line
            for marker, _lang, body in blocks
            if not marker
            for line in body.replace("\\\n", " ").splitlines()
            if re.match(r"\s*(\.venv/bin/)?kfops (monitor\b|data generate\b.*--drift)", line)
        ]
        assert untested == [], f"{readme}: monitoring commands outside a tested example: {untested}"


def test_the_readme_monitoring_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    readme = READMES["README.md"].read_text()
    outputs = {}  # the window compared -> (what the CLI printed, drift.json)
    for argv in commands(example("README.md", "files")):
        out = run(argv, capsys)
        if argv[1] == "monitor":
            outputs[argv[argv.index("--current") + 1]] = (out, drift_json(Path("drift")))

    # --drift 0: another month like this one; --drift 0.6: a later month. Both as the README says.
    same_out, same = outputs["next-month.csv"]
    drifted_out, drifted = outputs["later-month.csv"]
    for claim, out in (
        ("no dataset drift: 0 of 12 features drifted", same_out),
        ("DRIFT: 9 of 12 features drifted (share 0.75, threshold 0.50)", drifted_out),
    ):
        assert claim in " ".join(readme.split()) and claim in out, (claim, out)
    assert (same["verdict"], same["tested_features"], same["drifted_features"]) == ("no_drift", 12, 0)
    assert (drifted["verdict"], drifted["dataset_drift"], drifted["drifted_features"]) == ("drift", True, 9)
    for result, out in ((same, same_out), (drifted, drifted_out)):
        assert list(result["left_out"]) == LEFT_OUT
        assert result["left_out"]["is_fraud"] == "the target" and result["left_out"]["event_time"] == "timestamps"
        assert not {f["name"] for f in result["features"]} & set(LEFT_OUT)
        assert "left out, no features: transaction_id (an id: unique per row); event_time (timestamps); " in out
    # Without --target nothing says which column is the label: it is compared, and the CLI says so.
    argv = commands(example("README.md", "files"))[-1]
    out = run([a for a in argv if a not in ("--target", "is_fraud")], capsys)
    assert "no --target given" in out and "name it with --target COLUMN" in out
    assert "is_fraud" in {f["name"] for f in drift_json(Path("drift"))["features"]}
    # A --target the data does not have is a clear error (exit code 2).
    assert main([*argv[1:-2], "--target", "fraud", "--output", "x/"]) == 2
    assert "target column 'fraud' is not in the reference" in capsys.readouterr().err


def test_the_monitor_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    *generate, monitor_cmd = commands(example("monitor", "files"))
    for argv in generate:
        run(argv, capsys)
    assert "--json" in monitor_cmd and main(monitor_cmd[1:]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "drift" and (result["drifted_features"], result["tested_features"]) == (9, 12)
    assert list(result["left_out"]) == LEFT_OUT
    readme = " ".join(READMES["monitor"].read_text().split())
    assert '`"verdict": "drift"`, 9 of the 12 features drifted' in readme


def test_the_monitor_readme_pipeline_example_compiles(tmp_path, monkeypatch):
    from kfp import compiler

    monkeypatch.chdir(REPO)  # the example loads components/monitor/monitor_drift.yaml from the repository root
    namespace: dict = {}
    # dont_inherit: this module's `from __future__ import annotations` would make the example's annotations text
    code = compile(example("monitor", "pipeline"), "components/monitor/README.md", "exec", dont_inherit=True)
    exec(code, namespace)
    compiler.Compiler().compile(namespace["weekly_drift"], str(tmp_path / "weekly-drift.yaml"))
    assert "monitor-drift" in (tmp_path / "weekly-drift.yaml").read_text()


@pytest.mark.e2e
def test_the_readme_model_example_runs_after_a_training_run(tmp_path, monkeypatch, capsys):
    for name in ("MLFLOW_TRACKING_URI", "KFOPS_MLFLOW_ARTIFACT_ROOT", "KFOPS_WORKSPACE", "KFOPS_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    # `make run` as the README says, with a smaller network and fewer rows: the champion in ./.kfops.
    assert main(["run", *FAST_RUN]) == 0
    for argv in commands(example("README.md", "files")):
        if argv[1] == "data":
            run(argv, capsys)
    capsys.readouterr()
    (argv,) = commands(example("README.md", "model"))
    out = run(argv, capsys)
    result = drift_json(Path("drift"))
    assert result["model"] == "fraud-detector" and result["dataset_drift"], out
    assert result["left_out"] == {
        "transaction_id": "dropped in training",
        "event_time": "not a feature of the model",
        "customer_id": "dropped in training",
        "is_fraud": "the target",
    }
    assert len(result["features"]) == 12 and "no --target given" not in out


def test_a_users_breast_cancer_csv_compares_its_measurements_only(tmp_path, monkeypatch, capsys):
    """scikit-learn's bundled breast cancer data as a clinic would export it: a patient id, a visit time and the
    diagnosis beside the 30 measurements. Its two halves compared as the README shows: only the measurements are
    features, and the columns left out are those training leaves out."""
    from sklearn.datasets import load_breast_cancer

    from kfops.components.ingest.logic import read_table, resolve_schema

    data = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(3)
    rows = len(data.frame)
    frame = pd.DataFrame(
        {
            "patient_id": rng.choice(np.arange(8_000, 99_999_999), rows, replace=False),
            "visit_time": (
                pd.Timestamp("2025-01-06 08:00")
                + pd.to_timedelta(np.sort(rng.integers(0, 365 * 24 * 60, rows)), unit="min")
            ).strftime("%Y-%m-%d %H:%M:%S"),
            **{name: data.frame[name] for name in data.feature_names},
            "diagnosis": np.where(data.target == 0, "malignant", "benign"),
        }
    )
    monkeypatch.chdir(tmp_path)
    frame.iloc[: rows // 2].to_csv("first-half.csv", index=False)
    frame.iloc[rows // 2 :].to_csv("second-half.csv", index=False)

    argv = "kfops monitor --reference first-half.csv --current second-half.csv --target diagnosis --output drift/"
    out = run(shlex.split(argv), capsys)
    result = drift_json(Path("drift"))
    assert [f["name"] for f in result["features"]] == list(data.feature_names)
    assert result["left_out"] == {
        "patient_id": f"an id: named like one, {rows // 2:,} distinct values",
        "visit_time": "timestamps",
        "diagnosis": "the target",
    }
    assert "left out, no features: patient_id (an id: named like one" in out
    # The same columns training leaves out of the same file.
    schema = resolve_schema(read_table("first-half.csv"), "first-half.csv", "diagnosis")
    assert {*schema.dropped, schema.target} == set(result["left_out"])
    assert schema.features == list(data.feature_names)
