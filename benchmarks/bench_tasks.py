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
  numbers).

Both targets are fitted in ``--rounds`` interleaved rounds per task, the order rotated (harness.py), in this
process, pinned to its CPUs (all, or the first ``--threads``) with as many torch/OpenMP threads for both; every
figure is the median over the rounds with min-max, the fit-time ratio the median of per-round ratios. The suite's
test metric is taken in every round (its fit is seeded: the range shows any drift); the baseline's pipeline is
fitted once (it is deterministic).
``--pipeline-rounds N`` adds ``kfops run`` on the same file through kfp.local (ingest, validation, training,
evaluation, gate and registration) N times per task, tasks rotated round by round; off by default, since
``bench_local_run.py`` measures the pipeline's wall time.

    python benchmarks/bench_tasks.py [--rows 100000] [--rounds 5] [--tasks binary,multiclass,regression]
                                     [--pipeline-rounds 0] [--threads 0] [--no-write]

Goal (issue "every tabular task"): the suite's test metric within 1% (relative) of the baseline's, or better.
Appends a section to benchmarks/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:
    import harness
except ImportError:  # python -m benchmarks.bench_tasks
    from benchmarks import harness

TARGETS = ("kfops", "sklearn")
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


def pipeline_seconds(frame: pd.DataFrame, task: str, work: Path, number: int) -> float:
    path = work / f"{task}.csv"
    if not path.exists():
        frame.to_csv(path, index=False)
    command = [sys.executable, "-m", "kfops", "run", "--data", str(path), "--target", "target", "--task", task]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--workspace", str(work / f"ws-{task}-{number}")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"kfops run ({task}) failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


def fit_target(target: str, task: str, spec, matrices) -> tuple[float, dict[str, float] | None]:
    """(fit seconds, the suite's test metrics or None) of one target on the suite's matrices."""
    (x, y), (xt, yt) = matrices["train"], matrices["test"]
    if target == "kfops":
        model, seconds = fit_kfops(spec, matrices)
        threshold = 0.5
        if task == "binary":  # the decision threshold `kfops run` chooses: F1 on validation
            from kfops.components.scoring import choose_threshold

            xv, yv = matrices["validation"]
            threshold = choose_threshold(yv, kfops_outputs(spec, model, xv), "f1")
        return seconds, score(task, yt, kfops_outputs(spec, model, xt), threshold)
    estimator = sklearn_estimator(task)
    labels = y if task == "regression" else y.astype(np.int64)
    started = time.perf_counter()
    estimator.fit(x, labels)
    return time.perf_counter() - started, None


def baseline_metrics(task: str, schema, splits, spec, matrices) -> dict[str, float]:
    """The baseline's test metrics from the pipeline a user writes (its own preprocessing on the raw rows)."""
    pipeline = sklearn_pipeline(task, schema)
    pipeline.fit(splits["train"], splits["train"]["target"])
    raw_out = baseline_outputs(task, pipeline, splits["test"])
    if task == "multiclass":  # scikit-learn orders classes as sorted labels, as the spec does
        assert list(pipeline.classes_) == spec.labels
    if task == "binary":
        positive = list(pipeline.classes_).index(int(spec.positive_class))
        raw_out = pipeline.predict_proba(splits["test"])[:, positive]
    return score(task, matrices["test"][1], raw_out)


def run(args: argparse.Namespace, scratch: Path, pinning: harness.Pinning) -> dict:
    harness.pin_in_process(pinning)
    tasks = args.tasks.split(",")
    frames, results = {}, {}
    for task in tasks:
        frame = generate(task, args.rows)
        schema, splits, spec, matrices = prepare(frame, task)
        fits: dict[str, list[float]] = {t: [] for t in TARGETS}
        ours: list[dict[str, float]] = []
        for number, order in harness.rounds(TARGETS, args.rounds):
            for target in order:
                seconds, metrics = fit_target(target, task, spec, matrices)
                fits[target].append(seconds)
                if metrics is not None:
                    ours.append(metrics)
                print(f"{task} round {number + 1} {target:>8}: fit {seconds:.2f} s", flush=True)
        theirs = baseline_metrics(task, schema, splits, spec, matrices)
        results[task] = {"fits": fits, "kfops": ours, "sklearn": theirs, "pipeline": []}
        print(task, HEADLINE[task], round(ours[0][HEADLINE[task]], 4), round(theirs[HEADLINE[task]], 4), flush=True)
        if args.pipeline_rounds:
            frames[task] = frame
    for number, order in harness.rounds(list(frames), max(1, args.pipeline_rounds)) if frames else ():
        for task in order:
            seconds = pipeline_seconds(frames[task], task, scratch, number)
            results[task]["pipeline"].append(seconds)
            print(f"kfops run {task} round {number + 1}: {seconds:.1f} s", flush=True)
    return results


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    pipeline = bool(args.pipeline_rounds)
    lines = [
        "",
        f"## Every task against scikit-learn · {time.strftime('%Y-%m-%d', time.gmtime())} ({args.rows:,} rows)",
        "",
        harness.provenance(
            None,
            before,
            after,
            f"This process pinned to CPUs {pinning.server_cpus} with {pinning.threads} torch/OpenMP thread(s) for both "
            "targets. Same split (the suite's, 70/15/15), same test rows. kfops: the feature spec's transform and "
            "the torch MLP with its defaults (64-32, 12 epochs, early stopping). scikit-learn: a Pipeline of median "
            "imputation and scaling, one-hot encoding, and LogisticRegression(class_weight='balanced') or Ridge "
            "(its metric: fitted once on the raw rows). Fit time: both fitted on the same transformed matrix in "
            f"{args.rounds} rounds, the order rotated; median over rounds (min-max); ratio = kfops / scikit-learn "
            "per round (below 1 is faster)."
            + (
                f" `kfops run` wall time: {args.pipeline_rounds} round(s) per task, the tasks rotated."
                if pipeline
                else ""
            ),
        ),
        "",
        "| task | metric | kfops | scikit-learn | relative | second metric (kfops / sklearn) | fit s kfops | "
        "fit s sklearn | fit ratio, per round |" + (" `kfops run` wall s |" if pipeline else ""),
        "|---|---|---:|---:|---:|---|---:|---:|---:|" + ("---:|" if pipeline else ""),
    ]
    for task, result in results.items():
        head, second = HEADLINE[task], SECOND[task]
        ours = harness.Spread.of([m[head] for m in result["kfops"]])
        theirs = result["sklearn"][head]
        ours_second = harness.Spread.of([m[second] for m in result["kfops"]]).median
        fits = {target: harness.Spread.of(seconds) for target, seconds in result["fits"].items()}
        ratio = harness.Spread.of(harness.per_round_ratios(result["fits"]["kfops"], result["fits"]["sklearn"]))
        wall = f" {harness.Spread.of(result['pipeline']).text(0)} |" if pipeline else ""
        lines.append(
            f"| {task} | {head} | {ours.text(4)} | {theirs:.4f} | {(ours.median - theirs) / abs(theirs):+.2%} | "
            f"{second} {ours_second:.4g} / {result['sklearn'][second]:.4g} | {fits['kfops'].text(2)} | "
            f"{fits['sklearn'].text(2)} | {ratio.text(2, 'x')} |{wall}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--pipeline-rounds", type=int, default=0, help="`kfops run` wall times: rounds per task")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    harness.measure_and_record("tasks", args, harness.Pinning.whole_machine(args.threads), run, report)


if __name__ == "__main__":
    main()
