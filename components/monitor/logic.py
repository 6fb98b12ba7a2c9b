"""The monitor stage: drift of a window of logged predictions (or any dataset) against a reference.

``monitor(...)`` reads the reference twice and the current window once, chunk by chunk (drift.py), writes
``drift.json``, ``drift.md`` and ``drift.html`` to the output folder, then pushes gauges and posts the webhook
(alerts.py) when asked. The HTML report is kfops's own (html_report.py), drawn from the same statistics as the
decisions; ``report="evidently"`` writes Evidently's instead, on a bounded stratified sample of both sides
(report.py).

The reference is a table (file or folder, local or s3://), or a registered model (``NAME@ALIAS`` or
``NAME/VERSION``): its version's ``kfops.data_sha256`` tag names the training data snapshot, found in the
artifact store (``<store>/datasets/<sha256>/data.parquet``, as ``kfops data versions`` lists them) or, when the
store does not hold it, at the run's ``kfops.data_uri`` tag. The model's feature spec then gives the features
and their kinds, and the model scores the reference sample so the current window's predictions have a
reference too (prediction drift).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kfops.components import roles, storage
from kfops.components.contracts import FeatureSpec, KfopsError
from kfops.components.contracts.monitoring import DriftResult
from kfops.components.monitor import alerts
from kfops.components.monitor.columns import PREDICTION_COLUMNS, DriftOptions
from kfops.components.monitor.html_report import write_report
from kfops.components.monitor.profiles import WindowAccumulator, left_out_of, profile_reference
from kfops.components.monitor.report import (
    StratifiedSample,
    now_iso,
    write_html,
    write_html_page,
    write_outputs,
)
from kfops.components.monitor.sources import DEFAULT_CHUNK_ROWS, Window, frame_chunks, iter_chunks, open_window

log = logging.getLogger(__name__)

REPORTS = ("kfops", "evidently")  # the HTML report: kfops's own from the statistics, or Evidently's on samples
TAG_DATA_SHA256 = "kfops.data_sha256"
TAG_DATA_URI = "kfops.data_uri"
SPEC_ARTIFACT = "artifacts/feature_spec.json"


@dataclass
class ModelReference:
    """Where a registered model's training data and feature spec are."""

    name: str
    version: str
    run_id: str
    data_sha256: str
    data_uri: str  # the snapshot (or the run's data URI when the store lacks it)
    spec: FeatureSpec | None = None
    tracking_uri: str = ""


@dataclass
class MonitorOutcome:
    result: DriftResult
    paths: dict[str, Path] = field(default_factory=dict)
    reference: ModelReference | None = None


# ------------------------------------------------------------------------------------------------ reference
def resolve_model_reference(ref: str, tracking_uri: str = "", artifact_store: str = "") -> ModelReference:
    """The training data snapshot and feature spec of a registered model version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from kfops.components.datasets import SNAPSHOT_FILE, VERSION_FILE, snapshot_uri
    from kfops.components.registry import resolve_ref

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise KfopsError(f"model {ref!r} needs an MLflow registry: set MLFLOW_TRACKING_URI or pass a tracking URI")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    try:
        version = resolve_ref(client, ref)
        run = client.get_run(version.run_id) if version.run_id else None
    except MlflowException as err:
        raise KfopsError(f"cannot look up model {ref!r} in {uri}: {err.message}") from err
    tags = dict(version.tags or {})
    run_tags = dict(run.data.tags) if run else {}
    sha = tags.get(TAG_DATA_SHA256) or run_tags.get(TAG_DATA_SHA256, "")
    tried = []
    data_uri = ""
    if sha and artifact_store:
        base = snapshot_uri(artifact_store, sha)
        if storage.exists(storage.join(base, VERSION_FILE)):
            data_uri = storage.join(base, SNAPSHOT_FILE)
        else:
            tried.append(f"snapshot {sha[:12]} in {artifact_store}")
    if not data_uri and run_tags.get(TAG_DATA_URI):
        if storage.exists(run_tags[TAG_DATA_URI]):
            data_uri = run_tags[TAG_DATA_URI]
            log.warning(
                "model %s: data snapshot %s not found%s; using the run's data URI %s (not checked against the hash)",
                ref,
                sha[:12] or "(no sha256 tag)",
                f" in {artifact_store}" if artifact_store else "",
                data_uri,
            )
        else:
            tried.append(f"the run's {TAG_DATA_URI} {run_tags[TAG_DATA_URI]}")
    if not data_uri:
        if not sha and not run_tags.get(TAG_DATA_URI):
            raise KfopsError(
                f"model {version.name} version {version.version} has no {TAG_DATA_SHA256} or {TAG_DATA_URI} tag: "
                "it was not trained by the kfops pipeline; pass the reference data instead"
            )
        raise KfopsError(
            f"the training data of model {version.name} version {version.version} is not available: tried "
            + ("; ".join(tried) or f"no artifact store given for snapshot {sha[:12]}")
            + " (pass the artifact store, or the reference data)"
        )
    spec = _model_spec(client, version, uri)
    return ModelReference(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id or "",
        data_sha256=sha,
        data_uri=data_uri,
        spec=spec,
        tracking_uri=uri,
    )


def _model_spec(client, version, tracking_uri: str) -> FeatureSpec | None:
    import mlflow.artifacts

    download_uri = client.get_model_version_download_uri(version.name, version.version)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{download_uri.rstrip('/')}/{SPEC_ARTIFACT}", dst_path=tmp, tracking_uri=tracking_uri
            )
            return FeatureSpec.load(local)
    except Exception as err:  # no spec (not a kfops model) or unreachable store: features are inferred
        log.warning(
            "model %s version %s: no feature spec (%s); features are inferred", version.name, version.version, err
        )
        return None


# ------------------------------------------------------------------------------------------------ chunks
def _strata(chunk: pd.DataFrame, partitions: dict[str, str]) -> pd.Series | str:
    """Stratum of each row: the predicted class where logged, else the date partition (else one stratum)."""
    if "prediction" in chunk.columns:
        return chunk["prediction"].astype(str).fillna("")
    return partitions.get("date", "all")


def _reference_chunks(
    reference: str | pd.DataFrame, columns: Sequence[str] | None, chunk_rows: int
) -> tuple[str, Callable[[], Iterator[tuple[pd.DataFrame, dict]]], Window | None]:
    if isinstance(reference, pd.DataFrame):
        return "(table in memory)", lambda: ((c, {}) for c in frame_chunks(reference, chunk_rows)), None
    window = open_window(reference)
    if window.empty:
        raise KfopsError(f"reference {reference} holds no CSV, Parquet or JSONL file")
    return reference, lambda: ((c, f.partitions) for c, f in iter_chunks(window, columns, chunk_rows)), window


# ------------------------------------------------------------------------------------------------ monitor
def monitor(
    current: str | pd.DataFrame,
    output_dir: str | Path,
    reference: str | pd.DataFrame = "",
    *,
    model: str = "",
    tracking_uri: str = "",
    artifact_store: str = "",
    options: DriftOptions | None = None,
    features: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    ignore: Sequence[str] = (),
    target: str = "",
    date_from: str = "",
    date_to: str = "",
    model_version: str = "",
    html: bool = True,
    report: str = "kfops",
    sample_rows: int = 20_000,
    score_reference: bool = True,
    pushgateway: str = "",
    webhook: str = "",
    job: str = alerts.DEFAULT_JOB,
    report_url: str = "",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> MonitorOutcome:
    """Compare ``current`` (a window: file, folder or table) with ``reference`` (or ``model``'s training data)
    and write drift.json, drift.md and drift.html under ``output_dir``.

    ``date_from``/``date_to``/``model_version`` filter a payload-log window (partitions ``date=``; rows of
    ``model_version``); with ``model`` the window's ``model=`` partition is filtered to it too.

    ``report``: ``kfops`` (default) draws drift.html from the statistics computed on all rows; ``evidently`` runs
    Evidently's DataDriftPreset on ``sample_rows`` rows of each side (and pays its ~8 s import).

    Features: ``features``, else the model's (its feature spec), else every column of the reference but the
    ``target``, timestamps and ids, by training's rule (components/roles.py). The result's ``left_out`` names the
    other columns and why."""
    started = time.perf_counter()
    options = options or DriftOptions()
    options.check()
    if sample_rows <= 0:
        raise KfopsError(f"sample_rows must be positive, got {sample_rows}")
    if report not in REPORTS:
        raise KfopsError(f"report must be one of {', '.join(REPORTS)}, got {report!r}")
    evidently_report = html and report == "evidently"  # the only report that needs the samples
    model_ref = None
    left_out_why: dict[str, str] = {}
    messages = []
    if model:
        model_ref = resolve_model_reference(model, tracking_uri, artifact_store)
        if not isinstance(reference, pd.DataFrame) and not reference:
            reference = model_ref.data_uri
        spec = model_ref.spec
        if spec is not None and features is None:
            features = [name for name in spec.feature_names if name not in set(ignore)]
            kinds = {c.name: c.kind for c in spec.columns} | dict(kinds or {})
            left_out_why = {c: "dropped in training" for c in spec.dropped_columns}
            left_out_why[spec.target] = roles.TARGET
            left_out_why |= {c: "ignored" for c in ignore}
    if isinstance(reference, str) and not reference:
        raise KfopsError("no reference: pass the reference data or a registered model (NAME@ALIAS)")

    read_columns = None if features is None else [*features, *PREDICTION_COLUMNS]
    reference_name, ref_factory, ref_window = _reference_chunks(reference, read_columns, chunk_rows)
    ref_sample = StratifiedSample(sample_rows, seed=options.seed)
    first_pass = [True]

    def reference_chunks() -> Iterator[pd.DataFrame]:
        sampling = first_pass[0]
        first_pass[0] = False
        for chunk, partitions in ref_factory():
            if sampling and (evidently_report or model_ref is not None):
                ref_sample.add(chunk, _strata(chunk, partitions))
            yield chunk

    profile = profile_reference(
        reference_chunks,
        options,
        features=features,
        kinds=kinds,
        ignore=ignore,
        need_kl=options.stattest == "kl",
        target=target,
    )
    if ref_window is not None:  # the columns it has but that were not read are no "extra" columns of the window
        profile.all_columns = list(dict.fromkeys([*profile.all_columns, *ref_window.columns]))
    if features is not None:  # those not read are left out too, with why where the model's feature spec says it
        why = left_out_why | ({target: roles.TARGET} if target else {})
        default = "not a feature of the model" if left_out_why else "not among the features"
        profile.left_out = left_out_of(profile.all_columns, features, why, default)
    reference_sample = ref_sample.frame()
    if model_ref is not None and score_reference and "prediction" not in profile.columns and len(reference_sample):
        scored = _score_reference(model_ref, reference_sample)
        if scored is not None:
            reference_sample = scored
            predictions = profile_reference(
                lambda: iter([scored[[c for c in PREDICTION_COLUMNS if c in scored]]]),
                options,
                features=list(PREDICTION_COLUMNS),
            )
            profile.columns.update(predictions.columns)
            messages.append(
                f"prediction drift: the reference's predictions are the model's on a sample of {len(scored):,} "
                "reference rows"
            )

    if isinstance(current, pd.DataFrame):
        current_name = "(table in memory)"
        window = None
        cur_iter = ((c, {}) for c in frame_chunks(current, chunk_rows))
    else:
        current_name = str(current)
        window = open_window(
            current,
            date_from=date_from,
            date_to=date_to,
            model_name=model_ref.name if model_ref else "",
            model_version=model_version,
        )
        if window.empty:
            messages.append(
                f"no data files in {current}"
                + (f" ({window.filtered_out} file(s) outside the date/model filters)" if window.filtered_out else "")
            )
        wanted = None if features is None else [*profile.columns]
        cur_iter = ((c, f.partitions) for c, f in iter_chunks(window, wanted, chunk_rows))
    accumulator = WindowAccumulator(profile, options)
    cur_sample = StratifiedSample(sample_rows, seed=options.seed + 1)
    for chunk, partitions in cur_iter:
        accumulator.add(chunk)
        if evidently_report:
            cur_sample.add(chunk, _strata(chunk, partitions))
    if window is not None:
        accumulator.note_columns(window.columns)  # those not read too: extra columns are named

    result = accumulator.result(reference=reference_name, current=current_name)
    result.messages = messages + result.messages
    result.created_at = now_iso()
    if model_ref is not None:
        result.model, result.model_version = model_ref.name, model_ref.version
    elif window is not None:  # a payload log of one model names it in its model= partition
        logged = {f.partitions.get("model", "") for f in window.files}
        if len(logged) == 1:
            result.model = logged.pop()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_written = False
    if html:
        try:
            if evidently_report:
                write_html(result, reference_sample, cur_sample.frame(), out / "drift.html")
            else:
                filters = _filters(date_from, date_to, model_version)
                write_report(result, profile, accumulator, out / "drift.html", filters)
        except Exception as err:  # the report is for people; the drift result must not be lost over it
            log.warning("the HTML report failed: %s", err)
            result.messages.append(f"the HTML report could not be rendered: {type(err).__name__}: {err}")
            write_html_page(out / "drift.html", "The drift report could not be rendered", str(err))
        html_written = True
    result.seconds = round(time.perf_counter() - started, 3)
    html_kind = report if html_written else ""
    paths = write_outputs(result, out, html_kind)
    if pushgateway or webhook:
        alerts.notify(result, pushgateway=pushgateway, webhook=webhook, job=job, report_url=report_url)
        paths = write_outputs(result, out, html_kind)  # with what the notifications did
    return MonitorOutcome(result=result, paths=paths, reference=model_ref)


def _filters(date_from: str, date_to: str, model_version: str) -> str:
    """The window's filters in words, for the report ("" when none)."""
    parts = []
    if date_from or date_to:
        parts.append(f"dates {date_from or 'first'} to {date_to or 'last'}")
    if model_version:
        parts.append(f"model version {model_version}")
    return ", ".join(parts)


def _score_reference(model_ref: ModelReference, sample: pd.DataFrame) -> pd.DataFrame | None:
    """The reference sample with the model's prediction and probability columns (None if it cannot be scored)."""
    from kfops.components.model_store import load_model
    from kfops.components.transform import model_input_frame

    try:
        loaded = load_model(f"{model_ref.name}/{model_ref.version}", tracking_uri=model_ref.tracking_uri)
        scored = loaded.predict(model_input_frame(loaded.spec, sample, source="reference sample"))
    except Exception as err:  # the model is an extra: drift of the features does not need it
        log.warning("cannot score the reference with model %s: %s; no prediction drift", model_ref.name, err)
        return None
    out = sample.copy()
    if "probability" in scored:  # a classifier: the class as text, as the payload log holds it
        out["prediction"] = [str(v) for v in scored["prediction"]]
        out["probability"] = pd.Series(list(scored["probability"]), index=out.index, dtype="float64")
    else:  # a regression: the predicted value
        out["prediction"] = pd.Series(list(scored["prediction"]), index=out.index, dtype="float64")
    return out


def monitor_to_paths(
    drift_path: str,
    html_path: str,
    markdown_path: str,
    current: str,
    reference: str = "",
    *,
    stattest: str = "auto",
    threshold: float = -1.0,
    drift_share: float = 0.5,
    min_rows: int = 30,
    features: Sequence[str] = (),
    ignore: Sequence[str] = (),
    **kwargs,
) -> DriftResult:
    """``monitor`` for the KFP wrappers: pipeline parameters in (a negative threshold and an empty feature
    list mean "the default"), the three files at the paths KFP gave."""
    import shutil

    options = DriftOptions(
        stattest=stattest or "auto",
        threshold=None if threshold is None or threshold < 0 else float(threshold),
        drift_share=float(drift_share),
        min_rows=int(min_rows),
    )
    with tempfile.TemporaryDirectory() as tmp:
        outcome = monitor(
            current,
            tmp,
            reference,
            options=options,
            features=list(features) or None,
            ignore=list(ignore),
            **kwargs,
        )
        for key, target in (("json", drift_path), ("html", html_path), ("markdown", markdown_path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(outcome.paths[key], target)
    return outcome.result
