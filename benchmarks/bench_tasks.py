"""Every task against a plain scikit-learn model written as a user would, on the same split, in the same run.

For each task (binary, multiclass with 5 classes, regression with a skewed target) the script generates ROWS rows
of tabular data with numeric and categorical features and missing values, splits it with the suite's split, and
compares:

- **test metric**: the suite's model (the feature spec's transform, the torch MLP with its default configuration,
  the task's head) against a scikit-learn ``Pipeline`` (``ColumnTransformer`` of median imputation and scaling,
  one-hot encoding; ``LogisticRegression`` or ``Ridge``), each scored on the same test rows: balanced accuracy
  (binary, multiclass; the suite's binary model at the threshold it chooses, F1 on validation, as ``kfops run``
  does; scikit-learn's at 0.5 with balanced class weights) and R² (regression), with ROC-AUC or RMSE beside them;
- **fit time on the same matrices**: the suite's ``loop.fit`` and the scikit-learn estimator fitted on the one
  matrix the feature spec's transform made (the estimator without its ColumnTransformer, so both see the same
  numbers), in rounds that alternate which goes first; the ratio is reported as the median with its range;
- **pipeline wall time**, separately: ``kfops run`` on the same file through kfp.local (ingest, validation,
  training, evaluation, gate and registration), once per task.

    python benchmarks/bench_tasks.py [--rows 100000] [--rounds 3] [--no-pipeline] [--no-write]

Goal (issue "every tabular task"): the suite's test metric within 1% (relative) of the baseline's, or better.
Appends a section to benchmarks/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TASKS = ("binary", "multiclass", "regression")
HEADLINE = {"binary": "balanced_accuracy", "multiclass": "balanced_accuracy", "regression": "r2"}
SECOND = {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "rmse"}


def generate(task: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """Tabular data with a signal a linear model and an MLP can both find, some of it non-linear: 8 numeric
    columns (two with 10% blanks), two categorical ones, and a target of the task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    region = rng.choice(["north", "south", "east", "west", "centre"], rows, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.6, 0.3, 0.1])
    effect = {"north": 0.4, "south": -0.3, "east": 0.1, "west": -0.5, "centre": 0.2}
    score = (
        1.2 * x[:, 0]
        - 0.8 * x[:, 1]
        + 0.5 * x[:, 2] * x[:, 3]
        + 0.6 * np.tanh(2 * x[:, 4])
        + pd.Series(region).map(effect).to_numpy()
        + 0.7 * (plan == "pro")
    )
    frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(8)})
    frame["region"], frame["plan"] = region, plan
    for column in ("x5", "x6"):
        frame.loc[rng.random(rows) < 0.10, column] = np.nan
    noisy = score + rng.normal(scale=0.8, size=rows)
    if task == "binary":
        frame["target"] = (noisy > np.quantile(noisy, 0.8)).astype(int)  # 20% positives
    elif task == "multiclass":
        edges = np.quantile(noisy, [0.35, 0.6, 0.8, 0.93])
        frame["target"] = np.array(["a", "b", "c", "d", "e"])[np.searchsorted(edges, noisy)]
    else:
        frame["target"] = np.round(np.exp(0.6 * noisy + 3.0), 2)  # right-skewed, like prices or amounts
    return frame


def prepare(frame: pd.DataFrame, task: str):
    """The suite's split, feature spec and matrices (what ``kfops run`` trains on)."""
    from kfops.components.contracts import SplitConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, transform_features

    schema = resolve_schema(frame, "bench", "target", task=task)
    splits = split_frame(frame, "target", SplitConfig(seed=1))
    spec = fit_feature_spec(
        splits["train"],
        "target",
        schema.numeric,
        schema.categorical,
        schema.positive_class,
        schema.negative_class,
        task=schema.task,
        classes=schema.classes,
    )
    matrices = {
        name: (transform_features(spec, part), encode_labels(spec, part["target"])) for name, part in splits.items()
    }
    return schema, splits, spec, matrices


def fit_kfops(spec, matrices):
    from kfops.components.contracts import TrainConfig
    from kfops.components.train.loop import fit

    (x, y), (xv, yv) = matrices["train"], matrices["validation"]
    if spec.task == "regression":
        y, yv = (y - spec.target_mean) / spec.target_std, (yv - spec.target_mean) / spec.target_std
    started = time.perf_counter()
    result = fit(x, y, xv, yv, TrainConfig(device="cpu"), task=spec.task, outputs=spec.output_width)
    return result.model, time.perf_counter() - started


def kfops_outputs(spec, model, x):
    import torch

    from kfops.components.train.loop import task_outputs

    with torch.inference_mode():
        out = task_outputs(spec.task, model(torch.from_numpy(x)).squeeze(-1)).numpy().astype(np.float64)
    return out * spec.target_std + spec.target_mean if spec.task == "regression" else out


def sklearn_estimator(task: str):
    from sklearn.linear_model import LogisticRegression, Ridge

    if task == "regression":
        return Ridge(alpha=1.0)
    return LogisticRegression(max_iter=1000, class_weight="balanced")


def sklearn_pipeline(task: str, schema):
    """The baseline as a user writes it: impute and scale the numbers, one-hot the categories, a linear model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), schema.numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), schema.categorical),
        ]
    )
    return Pipeline([("columns", columns), ("model", sklearn_estimator(task))])


def baseline_outputs(task: str, model, rows):
    if task == "regression":
        return model.predict(rows)
    proba = model.predict_proba(rows)
    return proba[:, 1] if task == "binary" else proba


def score(task: str, y, outputs, threshold: float = 0.5) -> dict[str, float]:
    from kfops.components.scoring import task_metrics

    return task_metrics(task, y, outputs, threshold)


def pipeline_seconds(frame: pd.DataFrame, task: str, work: Path) -> float:
    path = work / f"{task}.csv"
    frame.to_csv(path, index=False)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kfops",
            "run",
            "--data",
            str(path),
            "--target",
            "target",
            "--task",
            task,
            "--workspace",
            str(work / f"ws-{task}"),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--no-pipeline", action="store_true", help="skip the `kfops run` wall times")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kfops-bench-tasks-") as tmp:
        for task in args.tasks.split(","):
            frame = generate(task, args.rows)
            schema, splits, spec, matrices = prepare(frame, task)
            (x, y), (xt, yt) = matrices["train"], matrices["test"]
            fits: dict[str, list[float]] = {"kfops": [], "sklearn": []}
            metrics: dict[str, dict[str, float]] = {}
            for r in range(args.rounds):
                order = ("kfops", "sklearn") if r % 2 == 0 else ("sklearn", "kfops")
                for target in order:
                    if target == "kfops":
                        model, seconds = fit_kfops(spec, matrices)
                        threshold = 0.5
                        if task == "binary":  # the decision threshold `kfops run` chooses: F1 on validation
                            from kfops.components.scoring import choose_threshold

                            xv, yv = matrices["validation"]
                            threshold = choose_threshold(yv, kfops_outputs(spec, model, xv), "f1")
                        metrics["kfops"] = score(task, yt, kfops_outputs(spec, model, xt), threshold)
                    else:
                        estimator = sklearn_estimator(task)
                        labels = y if task == "regression" else y.astype(np.int64)
                        started = time.perf_counter()
                        estimator.fit(x, labels)
                        seconds = time.perf_counter() - started
                    fits[target].append(seconds)
            # The baseline's test metric from the pipeline a user writes (its own preprocessing on the raw rows).
            pipeline = sklearn_pipeline(task, schema)
            train_labels = splits["train"]["target"]
            pipeline.fit(splits["train"], train_labels)
            raw_out = baseline_outputs(task, pipeline, splits["test"])
            if task == "multiclass":  # scikit-learn orders classes as sorted labels, as the spec does
                assert list(pipeline.classes_) == spec.labels
            if task == "binary":
                positive = list(pipeline.classes_).index(int(spec.positive_class))
                raw_out = pipeline.predict_proba(splits["test"])[:, positive]
            metrics["sklearn"] = score(task, yt, raw_out)
            ratios = [k / s for k, s in zip(fits["kfops"], fits["sklearn"], strict=True)]
            wall = None if args.no_pipeline else pipeline_seconds(frame, task, Path(tmp))
            rows.append((task, metrics, fits, ratios, wall))
            print(task, {k: round(v[HEADLINE[task]], 4) for k, v in metrics.items()}, flush=True)
    load_after = os.getloadavg()
    lines = report(rows, args, load_before, load_after)
    print("\n".join(lines))
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write("\n" + "\n".join(lines) + "\n")


def report(rows, args, load_before, load_after) -> list[str]:
    lines = [
        f"## Every task against scikit-learn · {datetime.now(UTC):%Y-%m-%d} ({args.rows:,} rows)",
        "",
        f"`python benchmarks/bench_tasks.py --rows {args.rows} --rounds {args.rounds}"
        f"{' --no-pipeline' if args.no_pipeline else ''}`, {platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; 1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
        "Same split (the suite's, 70/15/15), same test rows. kfops: the feature spec's transform and the torch MLP "
        "with its defaults (64-32, 12 epochs, early stopping). scikit-learn: a Pipeline of median imputation and "
        "scaling, one-hot encoding, and LogisticRegression(class_weight='balanced') or Ridge. Fit time: both fitted "
        "on the same transformed matrix, rounds alternating which goes first; ratio = kfops / scikit-learn (below 1 "
        "is faster), median (min-max).",
        "",
        "| task | metric | kfops | scikit-learn | relative | second metric (kfops / sklearn) | fit s kfops | "
        "fit s sklearn | fit ratio median (range) | `kfops run` wall s |",
        "|---|---|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for task, metrics, fits, ratios, wall in rows:
        head, second = HEADLINE[task], SECOND[task]
        ours, theirs = metrics["kfops"][head], metrics["sklearn"][head]
        lines.append(
            f"| {task} | {head} | {ours:.4f} | {theirs:.4f} | {(ours - theirs) / abs(theirs):+.2%} | "
            f"{second} {metrics['kfops'][second]:.4g} / {metrics['sklearn'][second]:.4g} | "
            f"{statistics.median(fits['kfops']):.2f} | {statistics.median(fits['sklearn']):.2f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
            f"{'' if wall is None else f'{wall:.0f}'} |"
        )
    return lines


if __name__ == "__main__":
    main()
