"""A serving change, before and after, in one run: the working tree's predictor against the same predictor at a
git revision (default HEAD), beside the reference FastAPI app, through the harness.

Targets, each its own process on 127.0.0.1, all pinned alike with the same thread count (``harness.Pinning``),
serving the same trained model folder (``bench_serving.train_model_dir``):

- ``baseline``: bench_serving's reference FastAPI app (one pre-encoded row a request, no validation or logging);
- ``kfops@REV``: ``python -m kfops.serving`` with the revision's ``serving/`` and ``components/`` code (``git
  archive``; the rest of the package, and every library, from this checkout's environment);
- ``kfops``: the same command on the working tree.

Both kfops targets log payloads (JSONL to a local folder) with metrics on, as served by default. Load: batch-1
V1 requests from 32 wrk connections (``--clients python`` adds our aiohttp client), the client pinned apart;
rounds interleave the targets, the order rotated; each ratio is the median of per-round ratios with min-max.

    python benchmarks/bench_serving_change.py [--revision HEAD] [--rounds 5] [--seconds 4] [--no-write]

What it is for: a change to the serving path shows its effect on the same machine, in the same minutes, as the
code it replaces (a quick check; bench_serving.py gives the release figures against the other servers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

try:
    import harness
    from bench_serving import MODEL_NAME, bodies_for, train_model_dir
except ImportError:  # python -m benchmarks.bench_serving_change
    from benchmarks import harness
    from benchmarks.bench_serving import MODEL_NAME, bodies_for, train_model_dir

REPO = Path(__file__).resolve().parents[1]
BENCH_SERVING = Path(__file__).resolve().parent / "bench_serving.py"
CONNECTIONS = 32


def extract(revision: str, folder: Path) -> Path:
    """The revision's serving/ and components/ folders under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", revision, "serving", "components"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def serve_revision(tree: str, argv: list[str]) -> int:
    """``python -m kfops.serving`` with kfops.serving and kfops.components loaded from ``tree``."""
    import kfops.components
    import kfops.serving

    kfops.serving.__path__[:] = [str(Path(tree) / "serving")]
    kfops.components.__path__[:] = [str(Path(tree) / "components")]
    from kfops.serving.cli import main as serving_main

    return serving_main(argv)


def servers(revision: str, tree: Path, model_dir: Path, work: Path) -> dict[str, tuple[harness.Server, str, str]]:
    made = {}
    for target in ("baseline", f"kfops@{revision}", "kfops"):
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        if target == "baseline":
            command = [sys.executable, str(BENCH_SERVING), "serve-baseline", "--model-dir", str(model_dir)]
            command += ["--port", str(port)]
            ready, predict = f"{base}/health", f"{base}/predict"
        else:
            serving = ["--model", str(model_dir), "--name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port)]
            serving += ["--log-level", "WARNING", "--payload-log", str(work / f"payloads-{len(made)}")]
            if target == "kfops":
                command = [sys.executable, "-m", "kfops.serving", *serving]
            else:
                command = [sys.executable, __file__, "serve-revision", str(tree), *serving]
            ready, predict = f"{base}/v2/models/{MODEL_NAME}/ready", f"{base}/v1/models/{MODEL_NAME}:predict"
        made[target] = (harness.Server(target, command, work / f"server-{len(made)}.log", cwd=work), ready, predict)
    return made


def run(args: argparse.Namespace, work: Path, pinning: harness.Pinning) -> dict:
    (work / "model").mkdir()
    model_dir, raw, encoded = train_model_dir(work / "model")
    tree = extract(args.revision, work / "revision")
    made = servers(args.revision, tree, model_dir, work)
    clients = args.clients.split(",")
    results: dict = {client: {target: [] for target in made} for client in clients}
    try:
        for server, ready, _ in made.values():
            server.start(pinning)
            server.wait_ready(ready)
        bodies = {
            target: harness.BodyFile(
                bodies_for("baseline" if target == "baseline" else "kfops", 1, raw, encoded), work / "bodies"
            )
            for target in made
        }
        for target, (_, _, predict) in made.items():  # warm-up: connections, caches, the first batches
            harness.wrk_load(predict, bodies[target], CONNECTIONS, 1, pinning)
        for number, order in harness.rounds(list(made), args.rounds):
            for target in order:
                for client in clients:
                    load = harness.CLIENTS[client]
                    results[client][target].append(
                        load(made[target][2], bodies[target], CONNECTIONS, args.seconds, pinning)
                    )
            print(f"round {number + 1}/{args.rounds} done", flush=True)
    finally:
        for server, _, _ in made.values():
            server.stop()
    return results


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    revision = f"kfops@{args.revision}"
    lines = [
        f"\n## Serving change, before and after · batch-1 x {CONNECTIONS}\n",
        harness.provenance(pinning, before, after) + "\n",
        "| client | target | req/s | p50 (ms) | p99 (ms) | errors |\n|---|---|---:|---:|---:|---:|",
    ]
    for client, by_target in results.items():
        for target, runs in by_target.items():
            rps = harness.Spread.of([r.rps for r in runs]).text(0)
            p50 = harness.Spread.of([r.p50_ms for r in runs]).text(2)
            p99 = harness.Spread.of([r.p99_ms for r in runs]).text(2)
            lines.append(f"| {client} | {target} | {rps} | {p50} | {p99} | {sum(r.errors for r in runs)} |")
    lines.append("")
    for client, by_target in results.items():
        now, then, base = by_target["kfops"], by_target[revision], by_target["baseline"]

        def ratio(a, b, key):
            return harness.Spread.of(harness.per_round_ratios([key(r) for r in a], [key(r) for r in b])).text(2, "x")

        lines.append(
            f"- {client}: kfops / {revision}: req/s {ratio(now, then, lambda r: r.rps)}, "
            f"p99 {ratio(now, then, lambda r: r.p99_ms)}. Against the baseline: kfops req/s "
            f"{ratio(now, base, lambda r: r.rps)}, p99 {ratio(now, base, lambda r: r.p99_ms)}; {revision} req/s "
            f"{ratio(then, base, lambda r: r.rps)}, p99 {ratio(then, base, lambda r: r.p99_ms)} (medians of "
            f"per-round ratios, min-max)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", default="wrk", help="wrk, python, or both (comma-separated)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    pinning = harness.Pinning.default()
    harness.measure_and_record("change", args, pinning, run, report)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "serve-revision":
        sys.exit(serve_revision(sys.argv[2], sys.argv[3:]))
    main()
