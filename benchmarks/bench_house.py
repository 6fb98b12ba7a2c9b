"""The house issue's guard: serving and the router after a refactor against the code before it, in one run.

Two source trees of the suite, each installed on its own (``pip install --no-deps --target``) so that each
server imports only its own code: ``before`` (a git revision, checked out in a scratch worktree) and ``after``
(this working tree). For each, in rounds that alternate which tree goes first:

- ``serving``: ``python -m kfops.serving`` on one trained model folder, batch-1 V1 requests from 32 clients
  (requests/s, p99) and 256-row requests from 4 clients (rows/s); metrics on, payload log to a local folder;
- ``router``: ``python -m kfops.serving route --mode canary --split 0`` in front of a predictor of the same tree,
  batch-1 requests from 8 clients (requests/s, p50).

The model is trained by the ``before`` tree (the newer code must read models the older one wrote). The
ratio after/before is taken per round and reported as the median with its range (min-max). The client is
bench_serving's aiohttp loop, the same for both trees, sharing the machine's CPUs with the servers.

    python benchmarks/bench_house.py --before dd17115 [--rounds 5] [--seconds 4]

Goal (issue "The house"): a median ratio of at least 0.97 on every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

try:
    from bench_serving import RESULTS, free_port, load, wait_ready
except ImportError:  # python -m benchmarks.bench_house
    from benchmarks.bench_serving import RESULTS, free_port, load, wait_ready

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "fraud"
TREES = ("before", "after")
# figure: (what, higher is better)
FIGURES = {
    "serving batch-1 x 32 req/s": True,
    "serving batch-1 x 32 p99 ms": False,
    "serving 256-row x 4 rows/s": True,
    "router batch-1 x 8 req/s": True,
    "router batch-1 x 8 p50 ms": False,
}


def install_tree(source: Path, target: Path) -> None:
    """The suite's code alone (its dependencies are this environment's), importable from ``target``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )


def spawn(site: Path, args: list[str], log: Path) -> subprocess.Popen:
    # PYTHONPATH's entries come before the editable install's finder, so the tree under ``site`` is imported; the
    # working directory is a scratch one (``python -m`` puts it first on sys.path, and the repository's root has a
    # ``kfops`` folder of its own)
    env = {**os.environ, "PYTHONPATH": str(site)}
    handle = open(log, "w")  # noqa: SIM115 - the server process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "kfops.serving", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=site.parent,
        start_new_session=True,
    )


def train_with(source: Path, site: Path, root: Path) -> tuple[Path, list[dict]]:
    """The benchmark's model, trained by the ``before`` tree (its own bench_serving.train_model_dir), so that both
    trees serve it: a model of the older format, which the newer code must keep reading. Returns the model folder
    and the raw test rows."""
    root.mkdir(parents=True, exist_ok=True)
    script = (
        "import json, sys; from pathlib import Path; "
        f"sys.path.insert(0, {str(source / 'benchmarks')!r}); "
        "from bench_serving import train_model_dir; "
        f"model, raw, _ = train_model_dir(Path({str(root)!r})); "
        f"Path({str(root / 'trained.json')!r}).write_text(json.dumps({{'model': str(model), 'raw': raw}}))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-c", script], env=env, cwd=site.parent, check=True, capture_output=True)
    trained = json.loads((root / "trained.json").read_text())
    return Path(trained["model"]), trained["raw"]


def check_tree(site: Path) -> None:
    """A server spawned for ``site`` imports the suite from ``site`` (not the editable install)."""
    out = subprocess.run(
        [sys.executable, "-c", "import kfops.serving.router as r; print(r.__file__)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=site.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out.startswith(str(site)):
        raise RuntimeError(f"a server for {site} would import {out}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def measure(tree: str, site: Path, model_dir: Path, raw: list[dict], seconds: float, work: Path) -> dict[str, float]:
    predictor_port, router_port = free_port(), free_port()
    predictor = spawn(
        site,
        [
            "--model",
            str(model_dir),
            "--name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(predictor_port),
            "--payload-log",
            str(work / f"payloads-{tree}"),
            "--log-level",
            "WARNING",
        ],
        work / f"{tree}-predictor.log",
    )
    base = f"http://127.0.0.1:{predictor_port}"
    router = None
    try:
        asyncio.run(wait_ready(f"{base}/v2/models/{MODEL_NAME}/ready"))
        url = f"{base}/v1/models/{MODEL_NAME}:predict"
        single = [{"instances": [row]} for row in raw]
        big = [{"instances": raw[i : i + 256]} for i in range(0, len(raw) - 256, 256)]
        asyncio.run(load(url, single, 32, 1.0))  # warm-up
        one = asyncio.run(load(url, single, 32, seconds))
        rows = asyncio.run(load(url, big, 4, seconds))
        router = spawn(
            site,
            [
                "route",
                "--stable",
                base,
                "--challenger",
                base,
                "--name",
                MODEL_NAME,
                "--mode",
                "canary",
                "--split",
                "0",
                "--port",
                str(router_port),
                "--log-level",
                "WARNING",
            ],
            work / f"{tree}-router.log",
        )
        router_url = f"http://127.0.0.1:{router_port}"
        asyncio.run(wait_ready(f"{router_url}/v2/models/{MODEL_NAME}/ready"))
        asyncio.run(load(f"{router_url}/v1/models/{MODEL_NAME}:predict", single, 8, 1.0))
        routed = asyncio.run(load(f"{router_url}/v1/models/{MODEL_NAME}:predict", single, 8, seconds))
        errors = one["errors"] + rows["errors"] + routed["errors"]
        if errors:
            raise RuntimeError(f"{tree}: {errors} request(s) failed; see {work}")
        return {
            "serving batch-1 x 32 req/s": one["rps"],
            "serving batch-1 x 32 p99 ms": one["p99_ms"],
            "serving 256-row x 4 rows/s": rows["rps"] * 256,
            "router batch-1 x 8 req/s": routed["rps"],
            "router batch-1 x 8 p50 ms": routed["p50_ms"],
        }
    finally:
        if router is not None:
            stop(router)
        stop(predictor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kfops-bench-house-") as tmp:
        work = Path(tmp)
        worktree = work / "before-src"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.before],
            check=True,
            capture_output=True,
        )
        try:
            sites = {"before": work / "before-site", "after": work / "after-site"}
            install_tree(worktree, sites["before"])
            install_tree(REPO, sites["after"])
            for site in sites.values():
                check_tree(site)
            model_dir, raw = train_with(worktree, sites["before"], work / "model-work")
            load_before = os.getloadavg()
            rounds: list[dict[str, dict[str, float]]] = []
            for r in range(args.rounds):
                order = TREES if r % 2 == 0 else TREES[::-1]
                results = {tree: measure(tree, sites[tree], model_dir, raw, args.seconds, work) for tree in order}
                rounds.append(results)
                print(f"round {r + 1}: " + "; ".join(f"{f} {ratio(results, f):.3f}" for f in FIGURES), flush=True)
            load_after = os.getloadavg()
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    lines = report(rounds, args, load_before, load_after)
    print("\n".join(lines))
    if not args.no_write:
        with RESULTS.open("a") as out:
            out.write("\n" + "\n".join(lines) + "\n")


def ratio(results: dict[str, dict[str, float]], figure: str) -> float:
    """after vs before, oriented so that above 1 is better."""
    after, before = results["after"][figure], results["before"][figure]
    return after / before if FIGURES[figure] else before / after


def report(rounds, args, load_before, load_after) -> list[str]:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = [
        f"## House refactor guard: serving and router, after ({head.stdout.strip() or 'working tree'}) vs before "
        f"({args.before})",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; `python benchmarks/bench_house.py --before {args.before} --rounds "
        f"{args.rounds} --seconds {args.seconds:g}`; 1-minute load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Each tree installed on its own; rounds alternate which goes first. A ratio is "
        "after/before for figures where higher is better, before/after where lower is (so above 1 is better).",
        "",
        "| figure | before (median) | after (median) | ratio median | ratio range |",
        "|---|---|---|---|---|",
    ]
    for fig in FIGURES:
        before = [r["before"][fig] for r in rounds]
        after = [r["after"][fig] for r in rounds]
        ratios = [ratio(r, fig) for r in rounds]
        lines.append(
            f"| {fig} | {statistics.median(before):,.1f} | {statistics.median(after):,.1f} | "
            f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    return lines


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - started:.0f} s")
