"""Each model family against default HistGradientBoosting and the linear baseline, same split, same run.

For each task the data of ``bench_tasks.py`` (numeric and categorical features, blanks, a non-linear signal) is
split with the suite's split and transformed by the suite's feature spec; then, on those same matrices, in rounds
that alternate the order of the targets:

- ``mlp``: the suite's torch MLP with its defaults (``loop.fit``);
- ``gbdt``: the suite's gbdt family with its defaults (``train.gbdt.fit_gbdt``, stopping on the validation split);
- ``hgb-default``: scikit-learn's ``HistGradientBoostingClassifier``/``Regressor()`` as a user writes it, defaults;
- ``linear``: ``LogisticRegression(class_weight='balanced')`` or ``Ridge``, as in ``bench_tasks.py``.

Reported per task and target: the test metric (balanced accuracy, R²) and its relative gap to the best baseline,
fit seconds (median of the rounds) and each family's fit-time ratio to ``hgb-default`` (median, range), and the
scoring speed of one-row requests through the model format's serving path (``LoadedModel.predict_columns``:
the feature transform and the model, in process, no HTTP) as requests/s and p99 latency; the baselines score the
same one-row matrices with their own ``predict_proba``/``predict``.

    python benchmarks/bench_families.py [--rows 100000] [--rounds 3] [--requests 2000] [--no-write]

Goal (issue "any model"): the default family within 1% relative of the best baseline, fitting no slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tasks import HEADLINE, RESULTS, TASKS, fit_kfops, generate, kfops_outputs, prepare, score

TARGETS = ("mlp", "gbdt", "hgb-default", "linear")
BASELINES = ("hgb-default", "linear")


def fit(target: str, spec, matrices):
    """(fitted model, fit seconds) of one target on the suite's matrices."""
    from kfops.components.contracts import TrainConfig
    from kfops.components.train.gbdt import fit_gbdt

    (x, y), (xv, yv) = matrices["train"], matrices["validation"]
    if target == "mlp":
        return fit_kfops(spec, matrices)
    if target == "gbdt":
        if spec.task == "regression":  # standardised, as train_model gives it
            y, yv = (y - spec.target_mean) / spec.target_std, (yv - spec.target_mean) / spec.target_std
        started = time.perf_counter()
        config = TrainConfig(model_family="gbdt", device="cpu")
        result = fit_gbdt(x, y, xv, yv, config, task=spec.task, outputs=spec.output_width)
        return result.model, time.perf_counter() - started
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    regression = spec.task == "regression"
    if target == "hgb-default":
        model = HistGradientBoostingRegressor() if regression else HistGradientBoostingClassifier()
    else:
        model = Ridge(alpha=1.0) if regression else LogisticRegression(max_iter=1000, class_weight="balanced")
    started = time.perf_counter()
    model.fit(x, y if regression else y.astype(np.int64))
    return model, time.perf_counter() - started


def outputs(target: str, spec, model, x):
    """Test outputs in the scoring functions' terms (probabilities, or values in the target's units)."""
    if target == "mlp":
        return kfops_outputs(spec, model, x)
    if target == "gbdt":
        from kfops.components.train.gbdt import class_scores

        out = class_scores(model, x, spec.task, spec.output_width)
        return out * spec.target_std + spec.target_mean if spec.task == "regression" else out
    if spec.task == "regression":
        return model.predict(x)
    proba = model.predict_proba(x)
    return proba[:, 1] if spec.task == "binary" else proba


def threshold_for(target: str, spec, model, matrices) -> float:
    """The suite's families use the threshold `kfops run` chooses (F1 on validation); the baselines 0.5."""
    if spec.task != "binary" or target not in ("mlp", "gbdt"):
        return 0.5
    from kfops.components.scoring import choose_threshold

    xv, yv = matrices["validation"]
    return choose_threshold(yv, outputs(target, spec, model, xv), "f1")


def one_row_speed(target: str, spec, model, rows, requests: int) -> tuple[float, float]:
    """(requests/s, p99 ms) scoring ``requests`` one-row requests: the suite's families through the model
    format's serving path (transform + model), the baselines through the transform and their own predict."""
    from kfops.components.model_store import LoadedModel
    from kfops.components.train.pyfunc import TabularClassifier, TreeModel
    from kfops.components.transform import transform_columns

    columns = [{c.name: [rows[c.name].iloc[i]] for c in spec.columns} for i in range(min(len(rows), requests))]
    if target in ("mlp", "gbdt"):
        scorer = TreeModel() if target == "gbdt" else TabularClassifier()
        scorer.spec, scorer.threshold = spec, 0.5
        if target == "gbdt":
            scorer.estimator, scorer.width = model, spec.output_width
        else:
            scorer.network = model
        loaded = LoadedModel("bench", "1", scorer, spec, 0.5, "", "")

        def call(cols):
            return loaded.predict_columns(cols, 1)
    else:
        method = model.predict if spec.task == "regression" else model.predict_proba

        def call(cols):
            return method(transform_columns(spec, cols, 1))

    from threadpoolctl import threadpool_limits

    # One OpenMP thread, as the serving worker sets it on a 2-CPU machine (serving/batching.py), for every target.
    with threadpool_limits(limits=1, user_api="openmp"):
        for cols in columns[:50]:  # warm up
            call(cols)
        latencies = []
        started = time.perf_counter()
        for i in range(requests):
            t = time.perf_counter()
            call(columns[i % len(columns)])
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    return requests / elapsed, float(np.percentile(latencies, 99) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # one-row scoring as a serving worker does it; fits use what they set themselves
    load_before = os.getloadavg()
    table = []
    for task in args.tasks.split(","):
        frame = generate(task, args.rows)
        _, splits, spec, matrices = prepare(frame, task)
        xt, yt = matrices["test"]
        fits = {t: [] for t in TARGETS}
        metric, speed = {}, {}
        for r in range(args.rounds):
            order = TARGETS if r % 2 == 0 else tuple(reversed(TARGETS))
            for target in order:
                model, seconds = fit(target, spec, matrices)
                fits[target].append(seconds)
                if r == 0:
                    threshold = threshold_for(target, spec, model, matrices)
                    metric[target] = score(task, yt, outputs(target, spec, model, xt), threshold)[HEADLINE[task]]
                    speed[target] = one_row_speed(target, spec, model, splits["test"], args.requests)
        best = max(metric[b] for b in BASELINES)
        for target in TARGETS:
            ratios = [f / h for f, h in zip(fits[target], fits["hgb-default"], strict=True)]
            gap = (metric[target] - best) / abs(best) * 100
            median_fit = statistics.median(fits[target])
            ratio = statistics.median(ratios)
            spread = (min(ratios), max(ratios))
            table.append((task, target, metric[target], gap, median_fit, ratio, *spread, *speed[target]))
            print(table[-1], flush=True)
    load_after = os.getloadavg()
    lines = [
        f"## Model families · {datetime.now(UTC):%Y-%m-%d} ({args.rows:,} rows)",
        "",
        f"`python benchmarks/bench_families.py --rows {args.rows} --rounds {args.rounds} --requests {args.requests}`, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}; 1-minute load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. Same split and matrices (the suite's feature spec) "
        "for every target; rounds alternate the order. Metric: balanced accuracy (binary, multiclass; the suite's "
        "binary families at the threshold `kfops run` chooses, the baselines at 0.5) or R² (regression), on the test "
        "rows; gap: relative to the best baseline (hgb-default, linear). Fit ratio: to hgb-default, median (range). "
        "One-row scoring: in process through the model format's serving path (no HTTP), one torch and one OpenMP "
        "thread, as the serving worker sets them.",
        "",
        "| task | target | metric | gap to best baseline | fit s (median) | fit ratio to hgb-default | one-row req/s | "
        "p99 ms |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for task, target, value, gap, seconds, ratio, low, high, rps, p99 in table:
        lines.append(
            f"| {task} | {target} | {value:.4f} | {gap:+.2f}% | {seconds:.2f} | {ratio:.2f} ({low:.2f}-{high:.2f}) | "
            f"{rps:,.0f} | {p99:.2f} |"
        )
    print("\n".join(lines))
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
