"""Call a served kfops model the way a client would, and fail unless it answers with one prediction per row.

Used by .github/workflows/e2e-kind.yaml after `kfops deploy`:

    python .github/scripts/call_model.py --url http://localhost:8081 --name fraud-detector --rows 5

Reads the model's inputs from ``GET /v2/models/NAME`` (one per feature), sends generated rows (the suite's
default data, target and ids left out) to ``POST /v1/models/NAME:predict`` and to ``POST /v2/models/NAME/infer``,
and checks the shapes of both answers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request

from kfops.datagen import generate_transactions


def _request(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the predictor's base URL")
    parser.add_argument("--name", required=True, help="the model name (the InferenceService's)")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")

    metadata = _request(f"{base}/v2/models/{args.name}")
    inputs = metadata["inputs"]
    names = [i["name"] for i in inputs]
    frame = generate_transactions(rows=max(args.rows, 10), seed=5).head(args.rows)[names]  # it makes 10 or more
    rows = [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]

    v1 = _request(f"{base}/v1/models/{args.name}:predict", {"instances": rows})
    predictions = v1["predictions"]
    assert len(predictions) == args.rows, v1
    assert all({"prediction", "probability"} <= set(p) for p in predictions), predictions[:1]

    v2_inputs = [
        {"name": i["name"], "datatype": i["datatype"], "shape": [args.rows], "data": [r[i["name"]] for r in rows]}
        for i in inputs
    ]
    v2 = _request(f"{base}/v2/models/{args.name}/infer", {"inputs": v2_inputs})
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert len(outputs["probability"]["data"]) == args.rows, v2
    print(f"{args.name} at {base}: {args.rows} rows scored over V1 and V2 (model version {metadata.get('versions')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
