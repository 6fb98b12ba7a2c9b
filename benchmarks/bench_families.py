"""Each model family against default HistGradientBoosting and the linear baseline, same split, same run.

For each task the data of ``bench_tasks.py`` (numeric and categorical features, blanks, a non-linear signal) is
split with the suite's split and transformed by the suite's feature spec; then, on those same matrices, in
``--rounds`` interleaved rounds, the order rotated (harness.py), each target is fitted, scored and timed:

- ``mlp``: the suite's torch MLP with its defaults (``loop.fit``);
- ``gbdt``: the suite's gbdt family with its defaults (``train.gbdt.fit_gbdt``, stopping on the validation split);
- ``hgb-default``: scikit-learn's ``HistGradientBoostingClassifier``/``Regressor()`` as a user writes it, defaults;
- ``linear``: ``LogisticRegression(class_weight='balanced')`` or ``Ridge``, as in ``bench_tasks.py``.

Reported per task and target, each the median over the rounds with min-max: the test metric (balanced accuracy,
R²) and its relative gap to the best baseline, fit seconds and the fit-time ratio to ``hgb-default`` (the median
of per-round ratios), and the scoring speed of one-row requests through the model format's serving path
(``LoadedModel.predict_columns``: the feature transform and the model, in process, no HTTP) as requests/s and p99
latency; the baselines score the same one-row matrices with their own ``predict_proba``/``predict``. This process
is pinned to its CPUs (all, or the first ``--threads``); every fit gets as many torch/OpenMP threads, every
one-row scoring one of each (as a serving worker on 2 CPUs sets them).

    python benchmarks/bench_families.py [--rows 100000] [--rounds 5] [--requests 1000] [--threads 0] [--no-write]

Goal (issue "any model"): the default family within 1% relative of the best baseline, fitting no slower.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

try:
    import harness
    from bench_tasks import HEADLINE, TASKS, fit_kfops, generate, kfops_outputs, prepare, score
except ImportError:  # python -m benchmarks.bench_families
    from benchmarks import harness
    from benchmarks.bench_tasks import HEADLINE, TASKS, fit_kfops, generate, kfops_outputs, prepare, score

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

    import torch
    from threadpoolctl import threadpool_limits

    # One torch and one OpenMP thread, as the serving worker sets them on a 2-CPU machine (serving/batching.py),
    # for every target; the fits' own count is restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    finally:
        torch.set_num_threads(threads)
    return requests / elapsed, float(np.percentile(latencies, 99) * 1000)


def run(args: argparse.Namespace, scratch: Path, pinning: harness.Pinning) -> dict:
    import torch

    harness.pin_in_process(pinning)
    results = {}
    for task in args.tasks.split(","):
        frame = generate(task, args.rows)
        _, splits, spec, matrices = prepare(frame, task)
        xt, yt = matrices["test"]
        measured: dict[str, dict[str, list[float]]] = {
            t: {"metric": [], "fit": [], "rps": [], "p99": []} for t in TARGETS
        }
        for number, order in harness.rounds(TARGETS, args.rounds):
            for target in order:
                torch.set_num_threads(pinning.threads)  # every fit the same count (the MLP's sets it so too)
                model, seconds = fit(target, spec, matrices)
                threshold = threshold_for(target, spec, model, matrices)
                metric = score(task, yt, outputs(target, spec, model, xt), threshold)[HEADLINE[task]]
                rps, p99 = one_row_speed(target, spec, model, splits["test"], args.requests)
                for key, value in (("metric", metric), ("fit", seconds), ("rps", rps), ("p99", p99)):
                    measured[target][key].append(value)
                print(
                    f"{task} round {number + 1} {target:>11}: {HEADLINE[task]} {metric:.4f} fit {seconds:.2f} s "
                    f"one-row {rps:,.0f} req/s p99 {p99:.2f} ms",
                    flush=True,
                )
        results[task] = measured
    return results


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    lines = [
        "",
        f"## Model families · {time.strftime('%Y-%m-%d', time.gmtime())} ({args.rows:,} rows)",
        "",
        harness.provenance(
            None,
            before,
            after,
            f"This process pinned to CPUs {pinning.server_cpus}; every fit with {pinning.threads} torch/OpenMP "
            "thread(s), every one-row scoring with one of each, as the serving worker sets them. Same split and "
            f"matrices (the suite's feature spec) for every target; {args.rounds} rounds, the order rotated; median "
            "over rounds (min-max). Metric: balanced accuracy (binary, multiclass; the suite's binary families at "
            "the threshold `kfops run` chooses, the baselines at 0.5) or R² (regression), on the test rows; gap: "
            "relative to the best baseline (hgb-default, linear), at the medians. Fit ratio: to hgb-default, per "
            f"round. One-row scoring: {args.requests:,} requests in process through the model format's serving path "
            "(no HTTP).",
        ),
        "",
        "| task | target | metric | gap to best baseline | fit s | fit ratio to hgb-default, per round | "
        "one-row req/s | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, measured in results.items():
        spread = {t: {k: harness.Spread.of(v) for k, v in figures.items()} for t, figures in measured.items()}
        best = max(spread[b]["metric"].median for b in BASELINES)
        for target in TARGETS:
            ratio = harness.Spread.of(harness.per_round_ratios(measured[target]["fit"], measured["hgb-default"]["fit"]))
            s = spread[target]
            gap = (s["metric"].median - best) / abs(best) * 100
            lines.append(
                f"| {task} | {target} | {s['metric'].text(4)} | {gap:+.2f}% | {s['fit'].text(2)} | "
                f"{ratio.text(2, 'x')} | {s['rps'].text(0)} | {s['p99'].text(2)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--tasks", default=",".join(TASKS))
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    harness.measure_and_record("families", args, harness.Pinning.whole_machine(args.threads), run, report)


if __name__ == "__main__":
    main()
