"""kfops's own drift report: one self-contained HTML file drawn from the statistics the monitor computed on all
rows (the same state its decisions come from), so the report cannot disagree with ``drift.json``.

Per feature: its test, score, threshold and decision; both sides' counts, missing share, moments and quantiles
(numeric) or top categories; and an overlaid histogram of both sides. Numeric histograms are read off the
streamed histogram on the reference's edges (``columns._Histogram``): display bins are whole groups of those
intervals, so every count is exact, with one bin each for the current values below the reference's min and
above its max. Quantiles are interpolated within the streamed intervals (within one of ~4,000 reference-quantile
intervals on a large reference; exact where the reference has few values).

No script, no stylesheet or font from outside: inline CSS and SVG only. Every user-provided string (column
names, paths, category values, messages) is HTML-escaped. Given the same inputs the output is byte-identical
apart from the result's timestamp.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kfops import __version__
from kfops.components.contracts.monitoring import STATUS_OK, DriftResult, FeatureDrift
from kfops.components.monitor.columns import BINNED_AS_VALUES
from kfops.components.monitor.profiles import (
    CurrentColumn,
    ReferenceColumn,
    ReferenceProfile,
    WindowAccumulator,
)

DISPLAY_BINS = 40  # histogram bars over the reference's range
TOP_CATEGORIES = 12  # categories drawn one bar each; the rest share "(other)"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
OTHER = "(other)"
TAIL_SHARE = 0.005  # a long-tailed reference's bars cover its 0.5%-99.5% quantiles; the tails get a bar each


# ------------------------------------------------------------------------------------------------ views
@dataclass
class SideSummary:
    """One side of one column, as the report shows it."""

    count: int  # non-empty values
    missing: int
    stats: dict[str, float] = field(default_factory=dict)  # mean, std, min, max, p5..p95 (numeric)
    top: list[tuple[str, int]] = field(default_factory=list)  # category, count (categorical)

    @property
    def missing_share(self) -> float:
        total = self.count + self.missing
        return self.missing / total if total else 0.0


@dataclass
class Histogram:
    """Display bins of both sides. Numeric: ``edges`` has len(labels) + 1 values (the bars' x extents; with
    ``below``/``above`` the first/last bar holds the current's values beyond the reference's range, from the
    current's min/max); categorical and few values: ``edges`` is empty."""

    labels: list[str]
    reference: list[int]
    current: list[int]
    edges: list[float] = field(default_factory=list)
    below: bool = False
    above: bool = False


@dataclass
class FeatureView:
    drift: FeatureDrift
    reference: SideSummary
    current: SideSummary
    histogram: Histogram


def feature_views(result: DriftResult, profile: ReferenceProfile, window: WindowAccumulator) -> list[FeatureView]:
    """A view per tested column of ``result`` (features, then prediction drift), from the monitor's own state."""
    views = []
    for item in [*result.features, *result.prediction_drift]:
        ref, cur = profile.columns.get(item.name), window.columns.get(item.name)
        if ref is None or cur is None:
            continue
        views.append(_view(item, ref, cur))
    return views


def _view(item: FeatureDrift, ref: ReferenceColumn, cur: CurrentColumn) -> FeatureView:
    if ref.kind == "categorical":
        ref_missing, cur_missing = ref.categories.missing, cur.categories.missing
        histogram = _category_histogram(ref.categories.counts, cur.categories.counts, cur.n, cur.categories.alive)
        ref_side = SideSummary(ref.n, ref_missing, top=_top(ref.categories.counts))
        cur_side = SideSummary(cur.n, cur_missing, top=_top(cur.categories.counts))
        return FeatureView(item, ref_side, cur_side, histogram)
    ref_side = SideSummary(ref.n, ref.missing, stats=_numeric_stats(ref.edges, ref.histogram, ref.moments))
    cur_side = SideSummary(cur.n, cur.missing, stats=_numeric_stats(ref.edges, cur.histogram, cur.moments))
    few = ref.exact is not None and ref.exact.alive and 0 < ref.edges.size <= BINNED_AS_VALUES
    histogram = _value_histogram(ref, cur) if few else _binned_histogram(ref, cur)
    return FeatureView(item, ref_side, cur_side, histogram)


def _top(counts: dict[str, int], limit: int = 5) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def _category_histogram(ref: dict[str, int], cur: dict[str, int], cur_n: int, cur_alive: bool) -> Histogram:
    n_ref, n_cur = sum(ref.values()) or 1, sum(cur.values()) or 1
    keys = sorted(set(ref) | set(cur), key=lambda k: (-(ref.get(k, 0) / n_ref + cur.get(k, 0) / n_cur), k))
    shown, rest = keys[:TOP_CATEGORIES], keys[TOP_CATEGORIES:]
    labels = list(shown)
    ref_counts = [ref.get(k, 0) for k in shown]
    cur_counts = [cur.get(k, 0) for k in shown]
    if rest:
        labels.append(OTHER)
        ref_counts.append(sum(ref.get(k, 0) for k in rest))
        cur_counts.append(sum(cur.get(k, 0) for k in rest))
    if not cur_alive and cur_n:  # past the category cap: only the count is known
        labels.append("(too many distinct values to count)")
        ref_counts.append(0)
        cur_counts.append(cur_n)
    return Histogram(labels, ref_counts, cur_counts)


def _before(hist) -> np.ndarray:
    """Values below each edge (slot 0 and the edges and intervals before it)."""
    return np.cumsum(hist.inside)[: hist.k] + np.concatenate([[0], np.cumsum(hist.at)[:-1]])


def _value_histogram(ref: ReferenceColumn, cur: CurrentColumn) -> Histogram:
    """One bar per reference value, and one for the current values that are none of them."""
    labels = [_number(float(v)) for v in ref.edges]
    ref_counts = [int(c) for c in ref.histogram.at]
    cur_counts = [int(c) for c in cur.histogram.at]
    others = int(cur.histogram.inside.sum())
    if others or ref.histogram.inside.sum():
        labels.append("(other values)")
        ref_counts.append(int(ref.histogram.inside.sum()))
        cur_counts.append(others)
    return Histogram(labels, ref_counts, cur_counts)


def _binned_histogram(ref: ReferenceColumn, cur: CurrentColumn) -> Histogram:
    """Bars over groups of the reference's edges, about evenly spaced over its range; the values beyond it (the
    current's below the reference's min and above its max) in a bar at either end. Where the reference's own
    tails take most of its range (a long-tailed column), the bars cover its 0.5%-99.5% quantiles instead and the
    end bars hold both sides' tails, so the body of the distribution stays readable."""
    edges = ref.edges
    k = edges.size
    if not k:  # no reference values: the current's, in one bar
        lo, hi = cur.moments.min, cur.moments.max
        bounds = [lo, hi] if cur.n else []
        return Histogram(["all values"] if cur.n else [], [0] if cur.n else [], [cur.n] if cur.n else [], bounds)
    first, last = 0, k - 1
    if k > 2:
        ref_before = _before(ref.histogram) / max(ref.n, 1)
        ref_upto = ref_before + ref.histogram.at / max(ref.n, 1)
        body_lo = int(np.searchsorted(ref_upto, TAIL_SHARE, side="left"))
        body_hi = min(int(np.searchsorted(ref_before, 1 - TAIL_SHARE, side="right")) - 1, k - 1)
        if body_hi > body_lo and edges[body_hi] - edges[body_lo] < 0.5 * (edges[-1] - edges[0]):
            first, last = body_lo, body_hi
    targets = np.linspace(edges[first], edges[last], DISPLAY_BINS + 1)
    picks = np.unique(np.clip(np.searchsorted(edges, targets, side="left"), first, last))
    picks = np.unique(np.concatenate([[first], picks, [last]]))

    def counts(hist) -> tuple[int, list[int], int]:
        before = _before(hist)
        upto_last = int(before[last] + hist.at[last])
        if picks.size == 1:  # a constant reference: one bar at its value
            inner = [int(hist.at[first])]
        else:
            cuts = before[picks].astype(np.int64)
            cuts[-1] = upto_last  # the last bar is closed: it holds its right edge
            inner = [int(c) for c in np.diff(cuts)]
        total = int(hist.at.sum() + hist.inside.sum())
        return int(before[first]), inner, total - upto_last

    ref_below, ref_inner, ref_above = counts(ref.histogram)
    cur_below, cur_inner, cur_above = counts(cur.histogram)
    bounds = [float(edges[i]) for i in picks] if picks.size > 1 else [float(edges[first])] * 2
    labels = [f"{_number(a)} to {_number(b)}" for a, b in itertools.pairwise(bounds)]
    ref_counts, cur_counts = list(ref_inner), list(cur_inner)
    below, above = bool(cur_below or ref_below), bool(cur_above or ref_above)
    low_end = "the reference's min" if first == 0 else f"the reference's {TAIL_SHARE:.1%} quantile"
    high_end = "the reference's max" if last == k - 1 else f"the reference's {1 - TAIL_SHARE:.1%} quantile"
    if below:
        bounds.insert(0, min(cur.moments.min, ref.moments.min, bounds[0]))
        labels.insert(0, f"below {low_end}: {_number(bounds[0])} to {_number(bounds[1])}")
        ref_counts.insert(0, ref_below)
        cur_counts.insert(0, cur_below)
    if above:
        bounds.append(max(cur.moments.max, ref.moments.max, bounds[-1]))
        labels.append(f"above {high_end}: {_number(bounds[-2])} to {_number(bounds[-1])}")
        ref_counts.append(ref_above)
        cur_counts.append(cur_above)
    return Histogram(labels, ref_counts, cur_counts, bounds, below, above)


def _numeric_stats(edges: np.ndarray, hist, moments) -> dict[str, float]:
    stats = dict(moments.summary())
    if not moments.n or hist is None or not edges.size:
        return stats
    k = edges.size
    pieces = np.empty(2 * k + 1)
    pieces[0::2] = hist.inside  # slot 0 (below the first edge), intervals, slot k (above the last)
    pieces[1::2] = hist.at  # the values equal to each edge
    running = np.cumsum(pieces)
    for q in QUANTILES:
        target = q * moments.n
        j = min(int(np.searchsorted(running, target, side="left")), pieces.size - 1)
        if j % 2:  # a point mass at an edge
            value = float(edges[j // 2])
        else:  # inside an interval: linear within it
            slot = j // 2
            left = float(edges[slot - 1]) if slot > 0 else moments.min
            right = float(edges[slot]) if slot < k else moments.max
            frac = (target - (running[j] - pieces[j])) / pieces[j] if pieces[j] else 0.0
            value = left + min(max(frac, 0.0), 1.0) * (right - left)
        stats[f"p{round(q * 100)}"] = value
    return stats


# ------------------------------------------------------------------------------------------------ html
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return f"{value:.3g}"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:15px;margin:0 0 6px}
table{border-collapse:collapse;margin:6px 0} th,td{padding:3px 10px;border-bottom:1px solid #e3e6ec;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600}
.drift{background:#fde2e1;color:#9b1c1c} .no_drift{background:#dcf5e3;color:#1b6b35}
.insufficient_data{background:#fdf3d7;color:#7a5a00}
.yes{color:#b42318;font-weight:600} .feature{border:1px solid #e3e6ec;border-radius:8px;padding:12px 14px;margin:14px 0}
.feature.drifted{border-color:#f0a8a4} .grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.muted{color:#667085} .ref{fill:#3b6fd8;fill-opacity:.45} .cur{fill:#e8782a;fill-opacity:.45}
.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px} code{font-size:13px}
"""


def render_html(result: DriftResult, views: list[FeatureView], window: str = "") -> str:
    """The report as one HTML document (see the module docstring); ``window`` describes the filters applied."""
    verdict = result.verdict
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kfops drift: {_e(verdict.replace('_', ' '))}</title><style>{STYLE}</style></head><body>",
        f'<h1>Drift report <span class="verdict {_e(verdict)}">{_e(verdict.replace("_", " "))}</span></h1>',
        f"<p>{_e(result.headline())}</p>",
        _dataset_table(result, window),
    ]
    if views:
        parts += ["<h2>Features</h2>", _overview(views)]
        parts += [_feature_section(view, i) for i, view in enumerate(views)]
    parts += _problems(result)
    parts.append(
        '<p class="muted">Drawn from the statistics the decisions come from, over all rows of both sides: counts '
        "exact, quantiles interpolated within the streamed histogram's intervals. Bars show each side's share of "
        "its non-empty values per unit of width.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _dataset_table(result: DriftResult, window: str) -> str:
    share = f"{result.drifted_features} of {result.tested_features} features drifted ({result.drift_share:.0%})"
    rows = [
        ("drifted share", f"{share}; dataset drift at >= {result.drift_share_threshold:.0%}"),
        ("reference", f"{result.reference} ({result.reference_rows:,} rows)"),
        ("current", f"{result.current} ({result.current_rows:,} rows)"),
    ]
    if window:
        rows.append(("window", window))
    if result.model:
        rows.append(("model", result.model + (f" version {result.model_version}" if result.model_version else "")))
    rows += [
        ("tests", result.stattest),
        ("written by", f"kfops {__version__} at {result.created_at or '-'}"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _overview(views: list[FeatureView]) -> str:
    head = (
        "<tr><th>feature</th><th>kind</th><th>test</th><th class=n>score</th><th class=n>threshold</th>"
        "<th>drift</th><th class=n>rows (ref / cur)</th></tr>"
    )
    rows = [head]
    for i, view in enumerate(views):
        f = view.drift
        rows.append(
            f'<tr><td><a href="#f{i}">{_e(f.name)}</a></td><td>{_e(f.kind)}</td><td>{_e(f.test_label or f.test)}</td>'
            f"<td class=n>{_number(f.score)}</td><td class=n>{_number(f.threshold)}</td><td>{_decision(f)}</td>"
            f"<td class=n>{f.reference_rows:,} / {f.current_rows:,}</td></tr>"
        )
    return f'<table id="overview">{"".join(rows)}</table>'


def _decision(f: FeatureDrift) -> str:
    if f.status != STATUS_OK:
        return '<span class="muted">n/a</span>'
    return '<span class="yes">yes</span>' if f.drift_detected else "no"


def _feature_section(view: FeatureView, index: int) -> str:
    f = view.drift
    drifted = f.status == STATUS_OK and f.drift_detected
    bounds = ""
    if f.score_bounds is not None and f.score_bounds[0] != f.score_bounds[1]:
        bounds = f" (exact score within {_number(f.score_bounds[0])} to {_number(f.score_bounds[1])})"
    note = f'<p class="muted">{_e(f.message)}</p>' if f.message else ""
    return (
        f'<section class="feature{" drifted" if drifted else ""}" id="f{index}" data-feature="{_e(f.name)}" '
        f'data-drift="{"yes" if drifted else "no"}"><h3>{_e(f.name)} '
        f'<span class="muted">{_e(f.kind)}</span></h3>'
        f"<p>{_e(f.test_label or f.test)}: <b>{_number(f.score)}</b>{bounds}, threshold {_number(f.threshold)}: "
        f"drift {_decision(f)}</p>{note}"
        f'<div class="grid">{_summary_table(view)}{_svg(view.histogram)}</div></section>'
    )


def _summary_table(view: FeatureView) -> str:
    ref, cur = view.reference, view.current
    rows = [
        ("non-empty values", f"{ref.count:,}", f"{cur.count:,}"),
        ("missing", f"{ref.missing_share:.2%}", f"{cur.missing_share:.2%}"),
    ]
    if view.drift.kind == "numeric":
        for key in ("mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"):
            if key in ref.stats or key in cur.stats:
                rows.append((key, _number(ref.stats.get(key)), _number(cur.stats.get(key))))
    else:
        listed = [
            ", ".join(f"{name} {count / (side.count or 1):.1%}" for name, count in side.top) or "-"
            for side in (ref, cur)
        ]
        rows.append(("top categories", *listed))
    body = "".join(f"<tr><th>{_e(a)}</th><td class=n>{_e(b)}</td><td class=n>{_e(c)}</td></tr>" for a, b, c in rows)
    return f"<table><tr><th></th><th class=n>reference</th><th class=n>current</th></tr>{body}</table>"


def _svg(hist: Histogram, width: int = 520, height: int = 170) -> str:
    """The overlaid bars: each side's share of its values per unit of width (numeric) or per category.

    Numeric bars are to scale over the reference's range; the current's values beyond it get a narrow bar of
    their own at either end, drawn with the area of their share (so one far outlier cannot squeeze the rest)."""
    if not hist.labels:
        return '<p class="muted">no values to draw</p>'
    pad_l, pad_b, pad_t = 8, 34, 16
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    n_ref, n_cur = sum(hist.reference) or 1, sum(hist.current) or 1
    count = len(hist.labels)
    inner = hist.edges[int(hist.below) : len(hist.edges) - int(hist.above)]
    ticks = []
    if len(inner) > 1 and inner[-1] > inner[0]:
        lo, hi = inner[0], inner[-1]
        slot, gap = plot_w * 0.08, plot_w * 0.015  # an out-of-range bar, and the space that sets it apart
        x0 = pad_l + (slot + gap if hist.below else 0.0)
        x1 = pad_l + plot_w - (slot + gap if hist.above else 0.0)
        scale = (x1 - x0) / (hi - lo)
        spans = [(x0 + (a - lo) * scale, max((b - a) * scale, 0.6)) for a, b in itertools.pairwise(inner)]
        widths = [max(b - a, (hi - lo) * 1e-9) for a, b in itertools.pairwise(inner)]
        if hist.below:
            spans.insert(0, (pad_l, slot))
            widths.insert(0, slot / scale)
            ticks.append((pad_l, "start", "below"))
        if hist.above:
            spans.append((x1 + gap, slot))
            widths.append(slot / scale)
            ticks.append((width - pad_l, "end", "above"))
        ticks += [(x0, "start" if not hist.below else "middle", _number(lo))]
        ticks += [(x1, "end" if not hist.above else "middle", _number(hi))]
    else:  # categories, values, or a constant: evenly spaced bars of one width
        step = plot_w / count
        spans = [(pad_l + i * step + step * 0.1, step * 0.8) for i in range(count)]
        widths = [1.0] * count
        fits = max(3, int(step / 6.5))  # characters of an 11px label that fit under one bar
        ticks = [(x + w / 2, "middle", _clip(label, fits)) for (x, w), label in zip(spans, hist.labels, strict=True)]
    ref_h = [c / n_ref / w for c, w in zip(hist.reference, widths, strict=True)]
    cur_h = [c / n_cur / w for c, w in zip(hist.current, widths, strict=True)]
    top = max(max(ref_h), max(cur_h)) or 1.0
    bars = {"ref": [], "cur": []}
    for side, heights, counts in (("ref", ref_h, hist.reference), ("cur", cur_h, hist.current)):
        total = n_ref if side == "ref" else n_cur
        for (x, w), h, c, label in zip(spans, heights, counts, hist.labels, strict=True):
            bar_h = plot_h * h / top
            bars[side].append(
                f'<rect x="{x:.1f}" y="{pad_t + plot_h - bar_h:.1f}" width="{w:.1f}" height="{bar_h:.1f}">'
                f"<title>{_e(label)}: {'reference' if side == 'ref' else 'current'} {c:,} ({c / total:.2%})</title>"
                "</rect>"
            )
    legend = (
        f'<text x="{pad_l}" y="11" font-size="11"><tspan fill="#3b6fd8">■ reference</tspan> '
        f'<tspan fill="#e8782a">■ current</tspan></text>'
    )
    tick_text = "".join(
        f'<text x="{x:.1f}" y="{height - (2 if text in ("below", "above") else 16)}" font-size="11" '
        f'text-anchor="{anchor}">{_e(text)}</text>'
        for x, anchor, text in ticks
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" viewBox="0 0 {width} {height}">{legend}'
        f'<g class="ref" data-counts="{",".join(map(str, hist.reference))}">{"".join(bars["ref"])}</g>'
        f'<g class="cur" data-counts="{",".join(map(str, hist.current))}">{"".join(bars["cur"])}</g>'
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_l}" y2="{pad_t + plot_h}" stroke="#98a2b3"/>'
        f"{tick_text}</svg>"
    )


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _problems(result: DriftResult) -> list[str]:
    items = list(dict.fromkeys(result.messages))
    if result.missing_columns:
        items.append("columns missing from the current window: " + ", ".join(result.missing_columns))
    if result.extra_columns:
        items.append("columns the reference does not have (not tested): " + ", ".join(result.extra_columns))
    items += [f"{name} not tested: {why}" for name, why in result.skipped_columns.items()]
    parts = []
    if items:
        parts += ["<h2>Input problems</h2><ul>", *[f"<li>{_e(p)}</li>" for p in items], "</ul>"]
    if result.left_out:
        parts += ["<h2>Left out (no features)</h2><ul>"]
        parts += [f"<li><code>{_e(c)}</code>: {_e(why)}</li>" for c, why in result.left_out.items()]
        parts.append("</ul>")
    return parts


def write_report(
    result: DriftResult, profile: ReferenceProfile, window: WindowAccumulator, path: str | Path, filters: str = ""
) -> Path:
    """kfops's HTML report of ``result`` at ``path``, from the monitor's reference profile and window state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result, feature_views(result, profile, window), filters), encoding="utf-8")
    return path
