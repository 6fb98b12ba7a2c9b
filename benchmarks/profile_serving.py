"""Where the microseconds of one 256-row request go: the predictor's request path, phase by phase, in-process.

Trains bench_serving's model (or takes ``--model-dir`` and ``--rows-json`` from an earlier run), then times each
phase of one V1 request (``{"instances": [...]}``, rows as objects) and one V2 request (one input per feature) the
way the server runs them: JSON parse, validation into columns, scoring (the transform, then torch), the answer,
its JSON, the payload log's part on the request path and the writer thread's part (JSONL and Parquet). Each phase
runs ``--repeat`` times; the figure is the median, with min-max over ``--rounds`` rounds. V2's own parse (FastAPI
and pydantic building KServe's InferRequest) is timed through KServe's ``InferRequest.from_inference_request``.

    python benchmarks/profile_serving.py [--rows 256] [--rounds 5] [--repeat 200]

This is a profile, not a comparison: no other server, no HTTP. bench_serving.py gives the served figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.profile_serving
    from benchmarks import harness


def _median_us(call, repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def phases(model_dir: Path, raw: list[dict], rows: int) -> dict[str, object]:
    """name -> a no-argument call doing that phase once on prepared inputs."""
    import orjson
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    from kfops.components.model_store import load_model
    from kfops.components.transform import transform_columns
    from kfops.serving.payload_columns import encode_columns_parquet
    from kfops.serving.predictor import ParsedRequest, TabularPredictor
    from kfops.serving.protocol import parse_json

    class Keep:
        def log(self, entry) -> None:
            self.entry = entry

    loaded = load_model(str(model_dir))
    predictor = TabularPredictor("fraud", loaded=loaded, payload_logger=Keep(), torch_threads=1)
    predictor.load()
    spec, validator = loaded.spec, predictor.validator
    chunk = raw[:rows]
    v1_body = orjson.dumps({"instances": chunk})
    v2_doc = {"inputs": []}
    for col in spec.columns:
        values = [row[col.name] for row in chunk]
        datatype = "FP64" if col.kind == "numeric" else "BYTES"
        v2_doc["inputs"].append({"name": col.name, "datatype": datatype, "shape": [rows], "data": values})
    v2_body = orjson.dumps(v2_doc)

    v1_doc = parse_json(v1_body)
    columns, _ = validator.v1(v1_doc)
    v2_request = InferRequest.from_inference_request(InferenceRequest.model_validate_json(v2_body), "fraud")
    result = {name: list(values) for name, values in loaded.predict_columns(columns, rows).items()}
    result = {name: [v.item() if hasattr(v, "item") else v for v in values] for name, values in result.items()}
    v1_parsed = ParsedRequest(columns, "v1", "r" * 32, time.perf_counter())
    v2_parsed = ParsedRequest(columns, "v2", "r" * 32, time.perf_counter())
    v1_answer = predictor._respond(v1_parsed, result)
    v2_answer = predictor._respond(v2_parsed, result)
    predictor._log_payload(v1_parsed, result)
    logged = predictor.payload_logger.entry
    return {
        "V1 parse JSON (orjson)": lambda: parse_json(v1_body),
        "V1 validate into columns": lambda: validator.v1(v1_doc),
        "V2 parse (pydantic InferenceRequest, KServe InferRequest)": lambda: InferRequest.from_inference_request(
            InferenceRequest.model_validate_json(v2_body), "fraud"
        ),
        "V2 validate into columns": lambda: validator.v2(v2_request),
        "score: transform to the float32 matrix": lambda: transform_columns(spec, columns, rows),
        "score: transform + torch + labels": lambda: loaded.predict_columns(columns, rows),
        "V1 answer (dicts)": lambda: predictor._respond(v1_parsed, result),
        "V1 answer to JSON (orjson)": lambda: orjson.dumps(v1_answer),
        "V2 answer (InferResponse to REST)": lambda: v2_answer.to_rest(),
        "payload log, request path (PayloadColumns)": lambda: predictor._log_payload(v1_parsed, result),
        "payload log, writer: JSONL": lambda: logged.jsonl(),
        "payload log, writer: Parquet (one request)": lambda: encode_columns_parquet([logged]),
        "payload log, writer: Parquet (20 requests a file)": lambda: encode_columns_parquet([logged] * 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--model-dir", default="", help="a model folder from an earlier run (skips training)")
    parser.add_argument("--rows-json", default="", help="raw rows (a JSON list of objects) for --model-dir")
    args = parser.parse_args()
    # Pinned as bench_serving pins its targets (one CPU, one math thread), in this process.
    cpus = harness.Pinning.default().server_cpus
    os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
    os.environ.update(harness.thread_env(1))
    with tempfile.TemporaryDirectory(prefix="kfops-profile-") as tmp:
        if args.model_dir:
            model_dir, raw = Path(args.model_dir), json.loads(Path(args.rows_json).read_text())
        else:
            from bench_serving import train_model_dir

            model_dir, raw, _ = train_model_dir(Path(tmp))
        calls = phases(model_dir, raw, args.rows)
        figures: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                figures[name].append(_median_us(call, args.repeat))
    print(
        f"`python benchmarks/profile_serving.py --rows {args.rows} --rounds {args.rounds} --repeat {args.repeat}` · "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.machine()}, Python "
        f"{platform.python_version()}, pinned to CPU(s) {cpus}, 1 math thread\n"
    )
    print(f"| phase, one {args.rows}-row request | µs (median of rounds, min-max) | µs per row |")
    print("|---|---|---:|")
    for name, values in figures.items():
        spread = harness.Spread.of(values)
        per_row = spread.median / (20 * args.rows if "20 requests" in name else args.rows)
        print(f"| {name} | {spread.text(0)} | {per_row:.2f} |")


if __name__ == "__main__":
    main()
