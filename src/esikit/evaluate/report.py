"""Results tables (Markdown) and files (``results.json``, ``results.md``) from a summary."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Columns of the results tables, in this order, when present in the summary.
TABLE_METRICS = (
    "le_mm",
    "precision",
    "recall",
    "spatial_dispersion_mm",
    "corr",
    "auc",
    "mse_normalized",
    "detected",
)

_HEADERS = {
    "le_mm": "LE (mm)",
    "precision": "precision",
    "recall": "recall",
    "spatial_dispersion_mm": "SD (mm)",
    "corr": "corr",
    "corr_identified": "corr (identified)",
    "auc": "AUC",
    "mse": "MSE",
    "mse_normalized": "MSE (normalized)",
    "n_identified": "identified regions",
    "detected": "detected",
}

_NOTES = """\
Cells: median [first quartile - third quartile] over test samples; `n` is the number of
samples. Undefined values (e.g. precision or LE of a sample where nothing was
identified) are left out of the statistics; `detected` is the fraction of samples with
at least one identified region (a mean, since the median of a 0/1 value would hide
it).

- LE: mean distance (mm) from each identified region to the nearest true region.
- precision / recall: identified regions inside a true patch / identified; true regions
  identified / true regions (regions identified by DeepSIF's Otsu rule).
- SD: spatial dispersion, energy-weighted RMS distance of the identified regions to the
  true patches (mm).
- corr: Pearson correlation of true and estimated time courses at the patch centres.
- AUC: region-wise `max |estimate|` against true-patch membership.
- MSE (normalized): mean squared error after scaling both maps to max |.| = 1.
"""


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.3g}"


def _cell(stats: Mapping[str, Any] | None, metric: str) -> str:
    if not stats or stats.get("n", 0) == 0:
        return "-"
    if metric == "detected":
        return _fmt(stats["mean"])
    return f"{_fmt(stats['median'])} [{_fmt(stats['q1'])} - {_fmt(stats['q3'])}]"


def _table(rows: list[tuple[str, Mapping[str, Any]]], metrics: Sequence[str]) -> list[str]:
    head = ["method", "n"] + [_HEADERS.get(m, m) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for label, block in rows:
        cells = [label, str(block["n_samples"])] + [_cell(block["stats"].get(m), m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _level_label(key: str, value: Any) -> str:
    if key == "snr_db":
        return f"SNR {value:g} dB" if isinstance(value, (int, float)) else f"SNR {value}"
    return f"{key} = {value}"


def results_table_markdown(summary: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """Markdown tables of a summary: methods as rows, metrics as columns.

    One table per SNR level (when the summary was grouped by ``snr_db``) with a row per
    method and, when the summary was also grouped by other fields (e.g. ``n_sources``),
    extra rows ``method (n_sources=2)``; then one table over all samples.

    Parameters
    ----------
    summary : dict
        From :func:`esikit.evaluate.metrics.summarize`.
    metrics : sequence of str, optional
        Columns; default :data:`TABLE_METRICS` that the summary has.

    Returns
    -------
    markdown : str
    """
    available = list(summary.get("metrics", []))
    cols = [m for m in (metrics if metrics is not None else TABLE_METRICS) if m in available]
    if not cols:
        raise ValueError(f"no metric to tabulate: the summary has {available}, asked for {list(metrics or TABLE_METRICS)}")
    by = list(summary.get("by", []))
    methods = summary["methods"]
    out: list[str] = []
    split = "snr_db" if "snr_db" in by else None
    others = [k for k in by if k != split]
    if split is not None:
        levels = []
        for res in methods.values():
            for g in res["marginals"].get(split, []):
                if g["key"][split] not in levels:
                    levels.append(g["key"][split])
        levels.sort(key=lambda v: (isinstance(v, str), v))
        for level in levels:
            rows = []
            for name, res in methods.items():
                marg = [g for g in res["marginals"][split] if g["key"][split] == level]
                if marg:
                    rows.append((name, marg[0]))
                for g in res["groups"]:
                    if others and g["key"].get(split) == level:
                        extra = ", ".join(f"{k}={g['key'][k]}" for k in others)
                        rows.append((f"{name} ({extra})", g))
            out += [f"### {_level_label(split, level)}", ""] + _table(rows, cols) + [""]
    else:
        for key in others:
            for name, res in methods.items():
                rows = [(f"{name} ({key}={g['key'][key]})", g) for g in res["marginals"].get(key, [])]
                if rows:
                    out += [f"### {name} by {key}", ""] + _table(rows, cols) + [""]
    overall = [(name, res["overall"]) for name, res in methods.items()]
    out += ["### All samples", ""] + _table(overall, cols) + [""]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy types become Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_results(
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    out_dir: str | Path,
    title: str = "Source imaging results",
) -> dict[str, Path]:
    """Write ``results.json`` (summary and per-sample records) and ``results.md``.

    Parameters
    ----------
    summary : dict
        From :func:`esikit.evaluate.metrics.summarize`.
    records : list of dict, or dict of method -> list of dict
        The per-sample records the summary was made from.
    out_dir : str or Path
        Created if needed.
    title : str
        Heading of ``results.md``.

    Returns
    -------
    paths : dict
        ``{"json": Path, "markdown": Path}``.

    Notes
    -----
    In ``results.json`` undefined values (NaN) are written as ``null`` so that the file
    is strict JSON.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    payload = {"summary": _jsonable(summary), "records": _jsonable(records)}
    json_path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    md = f"# {title}\n\n" + results_table_markdown(summary) + "\n" + _NOTES
    md_path.write_text(md)
    logger.info("Wrote %s and %s", json_path, md_path)
    return {"json": json_path, "markdown": md_path}
