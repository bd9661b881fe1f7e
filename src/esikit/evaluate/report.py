"""Results tables (Markdown), the method comparison, and the files of an evaluation.

:func:`comparison` computes, per SNR level and per number of sources, the median (or,
for 0/1 values, the mean) of each headline metric with a 95 % percentile-bootstrap
interval over samples, for every method; :func:`comparison_markdown` prints it side by
side and :func:`verdict_text` states which method wins each metric and where the
network loses. :func:`write_results` writes ``results.md``, ``results.json`` and the
per-sample ``results_samples.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_output, atomic_write_text
from .metrics import LOWER_IS_BETTER

logger = logging.getLogger(__name__)

#: Columns of the results tables, in this order, when present in the summary.
TABLE_METRICS = (
    "peak_in_patch",
    "peak_distance_mm",
    "le_mm",
    "precision",
    "recall",
    "sources_found",
    "spatial_dispersion_mm",
    "corr",
    "auc",
    "ap",
    "emd_mm",
    "mse_normalized",
    "detected",
)

#: Headline columns of the comparison: (metric, header, statistic).
COMPARISON_COLUMNS = (
    ("peak_in_patch", "peak in patch", "mean"),
    ("peak_distance_mm", "peak dist (mm)", "median"),
    ("precision", "precision", "median"),
    ("recall", "recall", "median"),
    ("auc", "AUC", "median"),
    ("ap", "AP", "median"),
    ("corr", "corr", "median"),
)
#: Further columns in ``results.md``.
EXTRA_COLUMNS = (
    ("le_mm", "LE (mm)", "median"),
    ("sources_found", "sources found", "mean"),
    ("hm_precision", "half-max precision", "median"),
    ("hm_recall", "half-max recall", "median"),
    ("dice", "Dice", "median"),
    ("hd95_mm", "HD95 (mm)", "median"),
    ("emd_mm", "EMD (mm)", "median"),
)

N_BOOT = 1000
CI_LEVEL = 0.95

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
    "peak_in_patch": "peak in patch",
    "peak_distance_mm": "peak dist (mm)",
    "sources_found": "sources found",
    "ap": "AP",
    "emd_mm": "EMD (mm)",
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "hm_precision": "half-max precision",
    "hm_recall": "half-max recall",
}

COMPARISON_NOTES = """\
How to read: each cell is the median over samples (for `peak in patch` and `sources
found`, which are 0/1 per sample or fractions, the mean) with its 95 % percentile
bootstrap interval over samples ({n_boot} resamples). Samples where a value is undefined
(e.g. precision when nothing was identified) are left out of that cell.

- peak in patch / peak dist: the region of maximum |estimate| at the EEG's
  global-field-power peak lies in a true patch / its distance (mm) to the nearest true
  region. No threshold.
- precision / recall / LE / sources found: regions identified by the method's rule
  (below), each source scored against its own patch as DeepSIF's
  `eval_calculate_sim_results.m` does, averaged over the sample's sources; a missed
  source is left out (as in DeepSIF) and counted in `sources found`.
- AUC / AP: region map `max_t |estimate|` against true-patch membership (AP as in
  invertmeeg's evaluation). No threshold.
- corr: Pearson correlation of true and estimated time courses at the patch centres.
- half-max precision / recall: regions at or above half the peak at the GFP peak.
- Dice / HD95: the rule's identified set against all true regions (CANDLE).
- EMD: earth mover's distance (mm) between the mean |activity| maps (invertmeeg's).
"""

_NOTES = """\
Cells: median [first quartile - third quartile] over test samples; `n` is the number of
samples. Undefined values (e.g. precision or LE of a sample where nothing was
identified) are left out of the statistics; `detected` (a sample with at least one
identified region), `peak in patch` and `sources found` are means, since the median of
a 0/1 value would hide them. Metric definitions: see the notes of the comparison above
and `esikit.evaluate.metrics`. SD: spatial dispersion, energy-weighted RMS distance of
the identified regions to the true patches (mm). MSE (normalized): mean squared error
after scaling both activity arrays to max |.| = 1.
"""


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.3g}"


def _cell(stats: Mapping[str, Any] | None, metric: str) -> str:
    if not stats or stats.get("n", 0) == 0:
        return "-"
    if metric in ("detected", "peak_in_patch", "sources_found"):
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
    *,
    comp: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    rules: Mapping[str, str] | None = None,
    regularization: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (for per-method records) ``results_samples.csv``.

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
    comp : dict, optional
        From :func:`comparison`: adds the side-by-side tables and the verdict.
    model_name : str, optional
        The network's method name (for the verdict).
    rules, regularization : dict of method -> str, optional
        Each method's region rule and how its regularization was chosen (listed).

    Returns
    -------
    paths : dict
        ``{"json": Path, "markdown": Path}`` and ``"csv"`` when written.

    Notes
    -----
    In ``results.json`` undefined values (NaN) are written as ``null`` so that the file
    is strict JSON. Every file is written under a temporary name, then renamed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    payload = {"summary": _jsonable(summary), "records": _jsonable(records)}
    if comp is not None:
        payload["comparison"] = _jsonable(comp)
    if rules:
        payload["rules"] = dict(rules)
    if regularization:
        payload["regularization"] = dict(regularization)
    atomic_write_text(json_path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    parts = [f"# {title}", ""]
    if rules or regularization:
        parts += ["## Methods", ""]
        for m in (comp["methods"] if comp else list(rules or regularization)):
            rule = (rules or {}).get(m, "?")
            reg = (regularization or {}).get(m, "the trained network" if m == model_name else "")
            parts.append(f"- `{m}`: region rule `{rule}`" + (f"; {reg}" if reg else ""))
        parts.append("")
    if comp is not None:
        parts += ["## Comparison", "", comparison_markdown(comp, COMPARISON_COLUMNS, "marginal", rules), ""]
        if model_name:
            parts += [verdict_text(comp, model_name), ""]
        parts += ["## By SNR and number of sources", "", comparison_markdown(comp, COMPARISON_COLUMNS, "joint"), ""]
        extra = [c for c in EXTRA_COLUMNS if list(c) in comp["columns"]]
        if extra:
            parts += ["## Further metrics", "", comparison_markdown(comp, extra, "marginal"), ""]
        parts += [COMPARISON_NOTES.format(n_boot=N_BOOT), ""]
    parts += ["## All metrics, median [quartiles]", "", results_table_markdown(summary), _NOTES]
    atomic_write_text(md_path, "\n".join(parts))
    paths = {"json": json_path, "markdown": md_path}
    if isinstance(records, Mapping):
        paths["csv"] = write_samples_csv(records, out_dir / "results_samples.csv")
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


# --------------------------------------------------------------------------- comparison
def bootstrap_ci(values: Sequence[float], stat: str = "median", n_boot: int = N_BOOT, level: float = CI_LEVEL,
                 seed: int = 0) -> dict[str, float]:
    """A statistic of the finite values with a percentile-bootstrap interval.

    Parameters
    ----------
    values : sequence of float
        Per-sample values; NaN (undefined) ones are left out and counted.
    stat : {"median", "mean"}
    n_boot : int
        Resamples (with replacement, of the finite values).
    level : float
        Interval coverage (0.95).
    seed : int
        Resampling seed (the same numbers for the same values).

    Returns
    -------
    dict
        ``value``, ``lo``, ``hi``, ``n`` (finite values), ``n_nan``.
    """
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": int(finite.size), "n_nan": int(v.size - finite.size)}
    if finite.size == 0:
        return out
    fn = np.median if stat == "median" else np.mean
    out["value"] = float(fn(finite))
    if finite.size == 1:
        out["lo"] = out["hi"] = out["value"]
        return out
    rng = np.random.default_rng(seed)
    boots = fn(finite[rng.integers(0, finite.size, (int(n_boot), finite.size))], axis=1)
    alpha = (1.0 - level) / 2.0
    out["lo"], out["hi"] = (float(x) for x in np.quantile(boots, [alpha, 1.0 - alpha]))
    return out


def _level_key(value: Any) -> Any:
    return (isinstance(value, str), value)


def comparison(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    columns: Sequence[tuple[str, str, str]] = COMPARISON_COLUMNS + EXTRA_COLUMNS,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Per group of samples and method, each column's statistic with a bootstrap interval.

    Groups: ``"all"``, each SNR level (``"snr=5"``), each number of sources
    (``"sources=2"``) and each pair (``"snr=5, sources=2"``).

    Parameters
    ----------
    records : dict of method -> list of records
        Records from :func:`esikit.evaluate.metrics.evaluate_sample` with ``snr_db`` and
        ``n_sources``.
    columns : sequence of (metric, header, statistic)
    n_boot : int

    Returns
    -------
    dict
        ``{"methods": [...], "columns": [...], "groups": [{"label", "snr_db", "n_sources",
        "n_samples", "cells": {method: {metric: bootstrap_ci dict}}}, ...]}``.
    """
    methods = list(records)
    snrs = sorted({r["snr_db"] for recs in records.values() for r in recs if "snr_db" in r}, key=_level_key)
    sources = sorted({r["n_sources"] for recs in records.values() for r in recs if "n_sources" in r},
                     key=_level_key)
    specs: list[tuple[str, Any, Any]] = [("all", None, None)]
    specs += [(f"snr={_fmt_level(s)}", s, None) for s in snrs]
    specs += [(f"sources={n}", None, n) for n in sources]
    specs += [(f"snr={_fmt_level(s)}, sources={n}", s, n) for s in snrs for n in sources]
    groups = []
    for label, snr, n_src in specs:
        cells: dict[str, dict[str, dict[str, float]]] = {}
        n_samples = 0
        for m in methods:
            sel = [r for r in records[m] if (snr is None or r.get("snr_db") == snr)
                   and (n_src is None or r.get("n_sources") == n_src)]
            n_samples = max(n_samples, len(sel))
            cells[m] = {metric: bootstrap_ci([r.get(metric, math.nan) for r in sel], stat, n_boot)
                        for metric, _, stat in columns}
        if n_samples:
            groups.append({"label": label, "snr_db": snr, "n_sources": n_src, "n_samples": n_samples,
                           "cells": cells})
    return {"methods": methods, "columns": [list(c) for c in columns], "groups": groups}


def _fmt_level(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float, np.integer, np.floating)) else str(x)


def _ci_cell(c: Mapping[str, float]) -> str:
    if not c or c.get("n", 0) == 0:
        return "-"
    if c["lo"] == c["hi"] == c["value"]:
        return _fmt(c["value"])
    return f"{_fmt(c['value'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]"


def comparison_markdown(comp: Mapping[str, Any], columns: Sequence[tuple[str, str, str]] = COMPARISON_COLUMNS,
                        groups: str = "marginal", rules: Mapping[str, str] | None = None) -> str:
    """The comparison as one Markdown table: a row per (group, method), a column per metric.

    Parameters
    ----------
    comp : dict
        From :func:`comparison`.
    columns : sequence of (metric, header, statistic)
        Columns to show (must be in ``comp``).
    groups : {"marginal", "joint", "all"}
        ``"marginal"``: all samples, each SNR level, each number of sources;
        ``"joint"``: each (SNR, number of sources) pair; ``"all"``: both.
    rules : dict of method -> rule name, optional
        Shown after the method name (``deepsif`` or ``normalized``).

    Returns
    -------
    markdown : str
    """
    head = ["samples", "method"] + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for g in comp["groups"]:
        joint = g["snr_db"] is not None and g["n_sources"] is not None
        if (groups == "marginal" and joint) or (groups == "joint" and not joint):
            continue
        for m in comp["methods"]:
            name = m if not rules or m not in rules else f"{m} ({rules[m]})"
            label = f"{g['label']} (n={g['n_samples']})"
            cells = [label, name] + [_ci_cell(g["cells"][m].get(metric, {})) for metric, _, _ in columns]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _best(group: Mapping[str, Any], methods: Sequence[str], metric: str) -> list[str]:
    vals = {m: group["cells"][m][metric]["value"] for m in methods}
    finite = {m: v for m, v in vals.items() if v is not None and math.isfinite(v)}
    if not finite:
        return []
    best = min(finite.values()) if metric in LOWER_IS_BETTER else max(finite.values())
    return [m for m, v in finite.items() if v == best]


def verdict_text(comp: Mapping[str, Any], model_name: str,
                 columns: Sequence[tuple[str, str, str]] = COMPARISON_COLUMNS) -> str:
    """Plain sentences: who wins each metric over all samples, and where the network loses.

    A win is the best median (or mean); against each baseline the network is "better",
    "worse", or "level" when the two 95 % intervals overlap.
    """
    methods = comp["methods"]
    groups = {g["label"]: g for g in comp["groups"]}
    overall = groups.get("all")
    if overall is None:
        return "No samples were evaluated."
    lines = ["Winners over all samples: " + "; ".join(
        f"{header}: {', '.join(_best(overall, methods, metric)) or 'none'} "
        f"({_fmt(overall['cells'][(_best(overall, methods, metric) or [model_name])[0]][metric]['value'])})"
        for metric, header, _ in columns) + "."]
    if model_name in methods:
        losses = []
        for metric, header, _ in columns:
            where = []
            for g in comp["groups"]:
                if g["snr_db"] is not None and g["n_sources"] is not None:
                    continue
                best = _best(g, methods, metric)
                if best and model_name not in best:
                    label = "all samples" if g["label"] == "all" else g["label"]
                    where.append(f"{label} (best: {', '.join(best)})")
            if where:
                losses.append(f"{header} at {'; '.join(where)}")
        lines.append(f"Where {model_name} is not the best: " + (". ".join(losses) if losses else "nowhere") + ".")
        for other in methods:
            if other == model_name:
                continue
            verdict: dict[str, list[str]] = {"better": [], "worse": [], "level": []}
            for metric, header, _ in columns:
                a, b = overall["cells"][model_name][metric], overall["cells"][other][metric]
                if not (a["n"] and b["n"]):
                    continue
                if a["lo"] <= b["hi"] and b["lo"] <= a["hi"]:
                    verdict["level"].append(header)
                elif _better(metric, a["value"], b["value"]):
                    verdict["better"].append(header)
                else:
                    verdict["worse"].append(header)
            parts = [f"{k} on {', '.join(v)}" for k, v in verdict.items() if v]
            lines.append(f"{model_name} vs {other}: " + ("; ".join(parts) if parts else "no comparable metric") + ".")
    return "\n".join(lines)


def write_samples_csv(records: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> Path:
    """One row per (method, sample): every scalar field of the records (lists joined by ``;``).

    Written to a temporary name first, then renamed (a killed run leaves no half file).
    """
    path = Path(path)
    rows = [dict(r, method=m) for m, recs in records.items() for r in recs]
    keys: list[str] = ["method"]
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)

    def cell(v: Any) -> Any:
        if isinstance(v, (list, tuple, np.ndarray)):
            return ";".join(_plain(x) for x in v)
        return _plain(v)

    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            w.writerow([cell(r.get(k, "")) for k in keys])
    return path


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    return str(v)
