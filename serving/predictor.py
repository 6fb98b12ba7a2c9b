"""The KServe predictor for the suite's models: V1 and V2 (Open Inference Protocol) over one TabularClassifier.

V1  ``POST /v1/models/NAME:predict``::

        {"instances": [{"amount": 12.5, "merchant_category": "grocery", ...}, ...]}
        {"instances": [[12.5, "grocery", ...], ...]}          # values in FeatureSpec.feature_names order
    ->  {"predictions": [{"prediction": "1", "probability": 0.93, "model_version": "3"}, ...]}

    A multiclass model's answers add ``"probabilities": {"setosa": 0.01, ...}`` (every class's); ``probability`` is
    the predicted class's. A regression model answers ``{"prediction": 151.2, "model_version": "3"}``.

V2  ``POST /v2/models/NAME/infer``: one named input per feature, as MLServer's pandas codec does: BYTES for
    categorical features, FP64/FP32/INT64 (any numeric type) for numeric ones, shape ``[n]`` or ``[n, 1]``.
    Outputs ``prediction`` (BYTES) and ``probability`` (FP64), and for a multiclass model ``probability_<class>``
    (FP64) per class; a regression model's ``prediction`` is FP64. ``model_version`` is set on the response and
    in its parameters. ``GET /v2/models/NAME`` lists one input per feature with its datatype and shape [-1].

Besides the features, a row (V1 object) or a request (V2 input) may carry the training data's other columns (ids,
timestamps, entity keys: ``FeatureSpec.passthrough_columns``), which are not scored but written to the payload log
beside the features, and the target, which is ignored (``validation.py``).

Every malformed request is a ``kserve.errors.InvalidInput`` (HTTP 400) whose message names the field: a body
that is not a JSON object, fields the training data never had (unless ``allow_extra_fields``), missing features,
a list instance of the wrong length, strings where numbers belong, NaN or infinite numbers (or beyond float32,
|x| > 1e38), an empty batch, more rows than ``max_request_rows``. ``null`` is a missing value (the model imputes
it) for either kind of feature. Where the protocol has no null (V2 over gRPC, and the binary tensor extension over
REST) NaN in a float input (FP16/FP32/FP64) is the missing value, as MLServer's pandas codec reads it; in JSON it
stays a 400 (send null). Infinities are a 400 everywhere.

Rows are scored by the dynamic batcher (``batching.py``) in one worker thread, never on the event loop (except in
a process limited to one CPU, where the batcher scores inline: see its module doc). Served
through ``kfops.serving.app.build_app``, the app's middleware counts this model's scoring requests on their way
to the batcher (``arrivals``: arrived, not yet queued) so that an idle batcher waits ``max_wait_ms`` for rows only
while some are coming; registered in a plain KServe ModelServer instead, it never waits and merges only what
queues while the model is busy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import kserve
import pandas as pd
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from kfops.components.contracts import (
    PAYLOAD_LOG_FORMAT_VERSION,
    PAYLOAD_META_COLUMNS,
    PROBABILITY_PREFIX,
    TASK_MULTICLASS,
    TASK_REGRESSION,
)
from kfops.components.model_store import LoadedModel, load_model
from kfops.serving import metrics
from kfops.serving.batching import Arrivals, BatchTimings, DynamicBatcher
from kfops.serving.payload_columns import PayloadColumns
from kfops.serving.validation import FeatureValidator

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 256
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_REQUEST_ROWS = 10_000
BINARY_HEADER = "inference-header-content-length"  # the V2 binary tensor extension's JSON-length header
VARIANT = "default"
SMALL_LOG_ROWS = 32  # fewer rows than this are logged as records, more as columns (see _log_payload)


def _values(result, name: str) -> list:
    """A result column as a list, whether the batcher returned a DataFrame or columns."""
    column = result[name]
    return column if isinstance(column, list) else column.tolist()


@dataclass
class ParsedRequest:
    """What preprocess hands to predict: validated raw feature rows and where they came from."""

    columns: dict[str, list]  # validated rows as columns; the batcher makes one frame per batch, in its thread
    protocol: str  # "v1" or "v2"
    request_id: str
    started: float  # perf_counter at the start of preprocess
    extras: dict[str, list] | None = None  # raw non-feature columns (ids, timestamps) for the payload log only


def _new_request_id() -> str:
    """A random 128-bit id as 32 hex digits (uuid4().hex's shape), without uuid4's system call per request."""
    return f"{random.getrandbits(128):032x}"


class TabularPredictor(kserve.Model):
    """A KServe predictor for one TabularClassifier, loaded from the registry or a model folder."""

    def __init__(
        self,
        name: str,
        model_ref: str = "",
        tracking_uri: str = "",
        *,
        loaded: LoadedModel | None = None,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS,
        payload_logger: Any = None,
        variant: str = VARIANT,
        torch_threads: int | None = None,
        feature_lookup: Any = None,
        allow_extra_fields: bool = False,
    ) -> None:
        super().__init__(name)
        if not model_ref and loaded is None:
            raise ValueError("TabularPredictor needs a model_ref or a LoadedModel")
        if max_request_rows < 1:
            raise ValueError(f"max_request_rows must be >= 1, got {max_request_rows}")
        self.model_ref = model_ref
        self.tracking_uri = tracking_uri
        self.loaded: LoadedModel | None = loaded
        self.max_batch_rows = max_batch_rows
        self.max_wait_ms = max_wait_ms
        self.max_request_rows = max_request_rows
        self.payload_logger = payload_logger
        self.variant = variant
        self.torch_threads = torch_threads  # None: batching.serving_threads()
        # Online features for V1 instances that carry an entity id (kfops.serving.feature_lookup.FeatureLookup).
        self.feature_lookup = feature_lookup
        # Fields the training data never had: a 400 naming them (typo guard), or, with this, ignored.
        self.allow_extra_fields = allow_extra_fields
        self.validator: FeatureValidator | None = None
        # Requests to this model's predict/infer endpoints on their way to the batcher, counted by the app's
        # middleware (kfops.serving.app.ErrorCounter): the batcher waits for more rows only while some are coming.
        self.arrivals = Arrivals()
        self.batcher: DynamicBatcher | None = None
        self.ready = False

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def version(self) -> str:
        return self.loaded.version if self.loaded is not None else ""

    def load(self) -> bool:
        if self.ready:
            return True
        if self.loaded is None:
            self.loaded = load_model(self.model_ref, self.tracking_uri)
        self.validator = FeatureValidator(self.loaded, self.max_request_rows, self.allow_extra_fields)
        if self.feature_lookup is not None:  # opens the feature store; checks the model takes its features
            self.feature_lookup.load(self.loaded.spec.feature_names, self.name)
            # An entity key the training data had goes on to the validator, and so into the payload log.
            self.feature_lookup.keep_key = self.feature_lookup.entity_key in self.validator.passthrough
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch_rows=self.max_batch_rows,
            max_wait_ms=self.max_wait_ms,
            on_batch=lambda rows, requests: metrics.observe_batch(rows),
            name=self.name,
            in_flight=self.arrivals,
            torch_threads=self.torch_threads,
        )
        # Series that exist from the start: PromQL's increase() cannot count a series' first sample, so a 5xx
        # series born during a canary window would undercount the canary's errors.
        metrics.init_request_series(self.name, self.version)
        self.ready = True
        log.info(
            "model %s ready: %s version %s (%d features)",
            self.name,
            self.loaded.name or self.loaded.path,
            self.loaded.version or "?",
            len(self.loaded.spec.columns),
        )
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()
        if self.feature_lookup is not None:
            self.feature_lookup.close()
        if self.payload_logger is not None:
            try:
                self.payload_logger.close()
            except Exception:
                log.exception("closing the payload logger failed")

    def _run_batch(self, batch: pd.DataFrame | dict[str, list]):
        """Runs in the batcher's worker thread (inline with one CPU). The validator already typed the columns as
        ``model_input_frame`` would (numeric float64 with NaN, categorical str or None), so they go to the
        model's transform as they are, with no DataFrame: building one costs more than the model for small
        batches. Columns in, a dict of result arrays out; a frame in, a frame out."""
        if isinstance(batch, dict):
            rows = len(next(iter(batch.values()), ()))
            return self.loaded.predict_columns(batch, rows)
        return self.loaded.predict(batch)

    # ------------------------------------------------------------------------------------------ metadata
    def get_input_types(self) -> list[dict]:
        if self.loaded is None:
            return []
        return [
            {"name": c.name, "datatype": "FP64" if c.kind == "numeric" else "BYTES", "shape": [-1]}
            for c in self.loaded.spec.columns
        ]

    def get_output_types(self) -> list[dict]:
        spec = self.loaded.spec if self.loaded is not None else None
        if spec is not None and spec.task == TASK_REGRESSION:
            return [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
        outputs = [
            {"name": "prediction", "datatype": "BYTES", "shape": [-1]},
            {"name": "probability", "datatype": "FP64", "shape": [-1]},
        ]
        if spec is not None and spec.task == TASK_MULTICLASS:
            outputs += [{"name": PROBABILITY_PREFIX + c, "datatype": "FP64", "shape": [-1]} for c in spec.labels]
        return outputs

    # ------------------------------------------------------------------------------------------ handlers
    def validate(self, payload):
        # KServe's check assumes a dict or InferRequest; preprocess has already validated everything.
        return payload

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> ParsedRequest:
        started = time.perf_counter()
        if not self.ready or self.validator is None:
            from kserve.errors import ModelNotReady

            raise ModelNotReady(self.name)
        header_id = (headers or {}).get("x-request-id", "")
        if isinstance(payload, InferRequest):
            # gRPC's typed contents and REST's binary tensor extension (announced by this header) have no null.
            no_null = bool(payload.from_grpc) or BINARY_HEADER in (headers or {})
            columns, extras = self.validator.v2(payload, nan_is_missing=no_null)
            protocol = "v2"
            request_id = payload.id or header_id
        else:
            # --- online features: an instance's entity id fetches the rest of its features (feature_lookup.py)
            if self.feature_lookup is not None:
                payload = await self.feature_lookup.enrich_v1(payload)
            # ---
            columns, extras = self.validator.v1(payload)
            protocol = "v1"
            request_id = header_id
        parsed = ParsedRequest(columns, protocol, request_id or _new_request_id(), started, extras)
        metrics.observe_latency(self.name, self.version, "parse", time.perf_counter() - started)
        return parsed

    async def predict(self, payload: ParsedRequest, headers=None, response_headers=None):
        if not isinstance(payload, ParsedRequest):  # preprocess always makes one; defensive
            raise InvalidInput("request could not be parsed")
        try:
            result, timings = await self.batcher.submit(payload.columns)
        except InferenceError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as err:  # anything else from the batcher is still a server-side failure with a message
            raise InferenceError(f"prediction failed: {type(err).__name__}: {err}") from err
        self._observe(payload, result, timings)
        if self.payload_logger is not None:
            self._log_payload(payload, result)
        return self._respond(payload, result)

    # ------------------------------------------------------------------------------------------ helpers
    def _observe(self, payload: ParsedRequest, result: pd.DataFrame, timings: BatchTimings) -> None:
        version = self.version
        metrics.observe_latency(self.name, version, "queue", timings.queue_seconds)
        metrics.observe_latency(self.name, version, "predict", timings.predict_seconds)
        metrics.observe_latency(self.name, version, "total", time.perf_counter() - payload.started)
        predictions = _values(result, "prediction")
        if self.loaded.spec.task == TASK_REGRESSION:  # values, not classes: one series, not one per value
            predictions = [""] * len(predictions)
        metrics.count_predictions(self.name, version, predictions)

    def _respond(self, payload: ParsedRequest, result: pd.DataFrame):
        version = self.version
        spec = self.loaded.spec
        if spec.task == TASK_REGRESSION:
            values = [float(v) for v in _values(result, "prediction")]
            if payload.protocol == "v1":
                return {"predictions": [{"prediction": v, "model_version": version} for v in values]}
            return InferResponse(
                response_id=payload.request_id,
                model_name=self.name,
                model_version=version or None,
                infer_outputs=[InferOutput(name="prediction", shape=[len(values)], datatype="FP64", data=values)],
                parameters={"model_version": version},
            )
        labels = [str(v) for v in _values(result, "prediction")]
        probabilities = [float(v) for v in _values(result, "probability")]
        per_class = (
            {c: [float(v) for v in _values(result, PROBABILITY_PREFIX + c)] for c in spec.labels}
            if spec.task == TASK_MULTICLASS
            else {}
        )
        if payload.protocol == "v1":
            if per_class:
                return {
                    "predictions": [
                        {
                            "prediction": label,
                            "probability": p,
                            "probabilities": {c: values[i] for c, values in per_class.items()},
                            "model_version": version,
                        }
                        for i, (label, p) in enumerate(zip(labels, probabilities, strict=True))
                    ]
                }
            return {
                "predictions": [
                    {"prediction": label, "probability": p, "model_version": version}
                    for label, p in zip(labels, probabilities, strict=True)
                ]
            }
        n = len(labels)
        return InferResponse(
            response_id=payload.request_id,
            model_name=self.name,
            model_version=version or None,
            infer_outputs=[
                InferOutput(name="prediction", shape=[n], datatype="BYTES", data=labels),
                InferOutput(name="probability", shape=[n], datatype="FP64", data=probabilities),
                *(
                    InferOutput(name=PROBABILITY_PREFIX + c, shape=[n], datatype="FP64", data=values)
                    for c, values in per_class.items()
                ),
            ],
            parameters={"model_version": version},
        )

    def _log_payload(self, payload: ParsedRequest, result: pd.DataFrame) -> None:
        """The request's rows to the payload logger (non-blocking): as columns (``payload_columns.py``), whose
        records the writer thread makes off the event loop, or for a request of a few rows its records. Never
        fails the request."""
        try:
            labels = _values(result, "prediction")
            # a regression's prediction is the value, and it has no probability (logged as null)
            if self.loaded.spec.task == TASK_REGRESSION:
                predictions, probabilities = list(map(float, labels)), [None] * len(labels)
            else:
                predictions, probabilities = list(map(str, labels)), list(map(float, _values(result, "probability")))
            meta = (
                payload.request_id,
                dt.datetime.now(dt.UTC).isoformat(),
                self.name,
                self.version,
                self.variant,
                PAYLOAD_LOG_FORMAT_VERSION,
            )
            # The contract's meta columns first, then the raw ids and timestamps (where a request sent them), the
            # features (missing numerics, NaN, are written as null) and the answer: a record's field order.
            fields = dict(zip(PAYLOAD_META_COLUMNS, meta, strict=True))
            fields.update(payload.extras or {})
            fields.update(payload.columns)
            fields["prediction"] = predictions
            fields["probability"] = probabilities
            logged = PayloadColumns(len(predictions), fields, shared=PAYLOAD_META_COLUMNS)
            # A request of a few rows goes as its records, made here: a dict or two per request cost the loop
            # microseconds, while the writer building thousands of them in one go held the GIL for milliseconds
            # at a time (the batch-1 p99, benchmarks/bench_serving.py).
            self.payload_logger.log(logged.records() if logged.rows < SMALL_LOG_ROWS else logged)
        except Exception:
            log.exception("payload logging failed for request %s", payload.request_id)
