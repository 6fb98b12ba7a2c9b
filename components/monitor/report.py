"""What the monitor hands on: the drift result (JSON), a Markdown summary, and, with ``--report evidently``,
Evidently's HTML report (kfops's own, the default, is html_report.py).

``DriftResult`` is the contract: per feature its name, kind, test, score, threshold and ``drift_detected``, plus
the dataset-level share of drifted features and the verdict. Evidently's report (DataDriftPreset and
DataSummaryPreset) runs on a bounded stratified sample of both sides; Evidently is imported only there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from kfops.components.contracts import KfopsError
from kfops.components.contracts.monitoring import (
    STATUS_OK,
    DriftResult,
    FeatureDrift,
)

# Our test names and Evidently's (for the HTML report's per-column methods). `kl` is the reference document's
# histogram KL divergence; Evidently's nearest is kl_div (binned differently).
EVIDENTLY_METHODS = {
    "ks": "ks",
    "chisquare": "chisquare",
    "z": "z",
    "wasserstein": "wasserstein",
    "jensenshannon": "jensenshannon",
    "psi": "psi",
    "kl": "kl_div",
}


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3g}"


def _feature_rows(items: Iterable[FeatureDrift]) -> list[str]:
    rows = [
        "| feature | kind | test | score | threshold | drift | rows (ref / cur) | note |",
        "|---|---|---|---:|---:|:---:|---:|---|",
    ]
    for f in items:
        mark = "**yes**" if f.drift_detected else ("n/a" if f.status != STATUS_OK else "no")
        note = f.message or ("" if f.exact else "streaming bound straddles the threshold")
        rows.append(
            f"| {f.name} | {f.kind} | {f.test_label or f.test} | {_fmt(f.score)} | {_fmt(f.threshold)} | {mark} "
            f"| {f.reference_rows:,} / {f.current_rows:,} | {note} |"
        )
    return rows


def to_markdown(result: DriftResult, html_name: str = "", html_kind: str = "kfops") -> str:
    """A Markdown summary: verdict, per-feature table, prediction drift, and every problem with the input."""
    lines = [f"# Drift: {result.verdict.replace('_', ' ')}", "", result.headline(), ""]
    lines += [
        f"- reference: `{result.reference}` ({result.reference_rows:,} rows)",
        f"- current: `{result.current}` ({result.current_rows:,} rows)",
    ]
    if result.model:
        lines.append(f"- model: {result.model}" + (f" version {result.model_version}" if result.model_version else ""))
    lines.append(f"- tests: {result.stattest} · dataset drift when the drifted share >= {result.drift_share_threshold}")
    lines.append("")
    if result.features:
        lines += ["## Features", "", *_feature_rows(result.features), ""]
    if result.prediction_drift:
        lines += ["## Prediction drift", "", *_feature_rows(result.prediction_drift), ""]
    if result.left_out:
        lines += ["## Left out (no features)", "", *[f"- `{c}`: {why}" for c, why in result.left_out.items()], ""]
    problems = list(result.messages)
    if result.missing_columns:
        problems.append("columns missing from the current window: " + ", ".join(result.missing_columns))
    if result.extra_columns:
        problems.append("columns the reference does not have (not tested): " + ", ".join(result.extra_columns))
    for name, why in result.skipped_columns.items():
        problems.append(f"`{name}` not tested: {why}")
    if problems:
        lines += ["## Input problems", "", *[f"- {p}" for p in dict.fromkeys(problems)], ""]
    if result.notifications:
        lines += ["## Notifications", "", *[f"- {k}: {v}" for k, v in result.notifications.items()], ""]
    if html_name and html_kind == "evidently":
        lines += [
            f"The HTML report (`{html_name}`) is Evidently's own run on a stratified sample of both sides; the "
            "decisions above come from all rows.",
            "",
        ]
    elif html_name:
        lines += [f"The HTML report (`{html_name}`) draws both sides from the statistics behind these decisions.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ sampling
class StratifiedSample:
    """A bounded random sample of a stream of chunks, stratified: up to ``rows`` rows kept per stratum
    (bottom-k by random key, so each stratum's sample is uniform), then allocated in proportion to the strata's
    sizes with at least a few rows from every stratum. Memory: ``rows`` per stratum, at most ``max_strata``
    strata (later ones share one)."""

    OTHER = "(other)"

    def __init__(self, rows: int = 20_000, seed: int = 0, max_strata: int = 32) -> None:
        if rows <= 0:
            raise KfopsError(f"sample rows must be positive, got {rows}")
        self.rows = rows
        self.max_strata = max_strata
        self.rng = np.random.default_rng(seed)
        self.kept: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
        self.seen: dict[str, int] = {}

    def add(self, chunk: pd.DataFrame, strata: pd.Series | str) -> None:
        if not len(chunk):
            return
        labels = pd.Series(strata, index=chunk.index) if isinstance(strata, str) else strata.astype(str)
        for label, part in chunk.groupby(labels.to_numpy(), sort=False):
            label = str(label)
            if label not in self.kept and len(self.kept) >= self.max_strata:
                label = self.OTHER
            self.seen[label] = self.seen.get(label, 0) + len(part)
            keys = self.rng.random(len(part))
            old_keys, old = self.kept.get(label, (np.empty(0), part.iloc[:0]))
            if old_keys.size + keys.size > self.rows:
                # Only rows that can still make the cut are copied.
                cutoff = np.partition(np.concatenate([old_keys, keys]), self.rows - 1)[self.rows - 1]
                mask = keys <= cutoff
                keys, part = keys[mask], part[mask]
            all_keys = np.concatenate([old_keys, keys])
            frame = pd.concat([old, part], ignore_index=True) if len(old) else part.reset_index(drop=True)
            if all_keys.size > self.rows:
                keep = np.argpartition(all_keys, self.rows - 1)[: self.rows]
                all_keys, frame = all_keys[keep], frame.iloc[keep].reset_index(drop=True)
            self.kept[label] = (all_keys, frame)

    def frame(self) -> pd.DataFrame:
        """At most ``rows`` rows: each stratum's share of the rows seen, and at least min(its size, 2% of
        ``rows``) rows, so rare strata (e.g. the fraud class) are shown."""
        total = sum(self.seen.values())
        if not total:
            return pd.DataFrame()
        floor = max(1, self.rows // 50)
        quotas = {s: max(min(n, floor), int(self.rows * n / total)) for s, n in self.seen.items()}
        over = sum(quotas.values()) - self.rows
        for s in sorted(quotas, key=lambda s: -quotas[s]):  # trim the largest strata first
            if over <= 0:
                break
            cut = min(over, quotas[s] - min(self.seen[s], floor))
            quotas[s] -= max(cut, 0)
            over -= max(cut, 0)
        parts = []
        for s, (keys, frame) in self.kept.items():
            order = np.argsort(keys)[: quotas.get(s, 0)]
            parts.append(frame.iloc[np.sort(order)])
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ------------------------------------------------------------------------------------------------ html
def write_html(
    result: DriftResult,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: str | Path,
) -> Path:
    """Evidently's DataDriftPreset and DataSummaryPreset on the two samples, with the same test and threshold
    per column as ``result`` chose on all rows, saved as one self-contained HTML file."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    tested = [f for f in [*result.features, *result.prediction_drift] if f.name in reference and f.name in current]
    tested = [f for f in tested if reference[f.name].notna().any() and current[f.name].notna().any()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not tested or not len(reference) or not len(current):
        return write_html_page(path, "No drift report", result.headline())
    numeric = [f.name for f in tested if f.kind == "numeric"]
    categorical = [f.name for f in tested if f.kind == "categorical"]
    columns = numeric + categorical
    ref = _for_evidently(reference[columns], numeric, categorical)
    cur = _for_evidently(current[columns], numeric, categorical)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    # Evidently registers chisquare and z for categorical columns only (its automatic choice still gives them to
    # numeric columns with few values): those columns keep Evidently's own choice, which is the same test.
    methods = {
        f.name: EVIDENTLY_METHODS[f.test] for f in tested if not (f.kind == "numeric" and f.test in ("chisquare", "z"))
    }
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                drift_share=result.drift_share_threshold,
                per_column_method=methods,
                per_column_threshold={f.name: float(f.threshold) for f in tested},
            ),
            DataSummaryPreset(columns=columns),
        ],
        metadata={"kfops.verdict": result.verdict, "kfops.reference": result.reference},
    )
    snapshot = report.run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    snapshot.save_html(str(path))
    return path


def write_html_page(path: str | Path, title: str, text: str) -> Path:
    """A plain page in place of the report (nothing to show, or Evidently failed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>kfops drift</title><h1>{_escape(title)}</h1>"
        f"<p>{_escape(text)}</p>",
        encoding="utf-8",
    )
    return path


def _for_evidently(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    out = frame.copy()
    for name in numeric:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    for name in categorical:
        out[name] = out[name].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return out


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_outputs(result: DriftResult, output_dir: str | Path, html_kind: str = "") -> dict[str, Path]:
    """drift.json and drift.md in ``output_dir``; returns their paths (and the HTML's when ``html_kind``, the
    report written, is not empty: ``kfops`` or ``evidently``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "drift.json", "markdown": out / "drift.md"}
    paths["json"].write_text(result.to_json() + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(result, "drift.html" if html_kind else "", html_kind), encoding="utf-8")
    if html_kind:
        paths["html"] = out / "drift.html"
    return paths


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
