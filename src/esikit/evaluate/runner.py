"""Evaluate a trained network and the classical baselines on the same test samples."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baselines import BASELINES, estimate_sources
from .metrics import evaluate_sample, region_centres_from_mesh, summarize
from .plots import plot_cortex_activity, plot_metric_distributions, plot_time_courses, plot_training_curves
from .report import results_table_markdown, write_results

logger = logging.getLogger(__name__)

PLOTTED_METRICS = ("le_mm", "precision", "recall", "spatial_dispersion_mm", "corr", "auc")


def find_anatomy(spec: str | os.PathLike | None, fwd_path: str | os.PathLike | None):
    """The anatomy for metrics and plots, or None.

    ``spec`` (config ``ANATOMY``) wins; otherwise ``anatomy.npz`` beside the forward
    matrix (what ``esikit simulate`` writes), then DeepSIF's template files beside it.
    """
    from ..head.anatomy import load_anatomy

    if spec is not None:
        return load_anatomy(spec)
    if fwd_path is None or not isinstance(fwd_path, (str, os.PathLike)):
        return None
    folder = Path(fwd_path).parent
    if (folder / "anatomy.npz").is_file():
        return load_anatomy(folder / "anatomy.npz")
    if (folder / "fs_cortex_20k_inflated.mat").is_file() and (folder / "fs_cortex_20k_region_mapping.mat").is_file():
        return load_anatomy(folder)
    return None


def anatomy_centres(anatomy: Any, n_regions: int) -> np.ndarray:
    """Region positions for distances, in mm: centroids of the cortex mesh when there is one.

    DeepSIF's template gives region centres on the inflated surface (used to grow
    patches), where distances are about 1.3 times the anatomical ones; localization
    error must be measured on the folded cortex.
    """
    if getattr(anatomy, "vertices", None) is not None and getattr(anatomy, "vertex_region", None) is not None:
        centres = region_centres_from_mesh(anatomy.vertices, anatomy.vertex_region, n_regions)
        # A region with no vertex keeps its given centre.
        missing = ~np.isfinite(centres).all(axis=1)
        centres[missing] = np.asarray(anatomy.centres, dtype=np.float64)[missing]
        return centres
    return np.asarray(anatomy.centres, dtype=np.float64)


@torch.no_grad()
def predict(model: torch.nn.Module, eeg: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Model output for a batch ``(B, T, C)`` as a float32 array ``(B, T, R)``."""
    model.eval()
    x = torch.as_tensor(eeg, dtype=torch.float32, device=device)
    return model(x).float().cpu().numpy()


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    fwd: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    anatomy: Any = None,
    baselines: Sequence[str] = BASELINES,
    max_samples: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    history: dict[str, list[float]] | None = None,
    n_examples: int = 3,
    model_name: str = "model",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the model and each baseline on the samples of ``dataset``.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, T, C)`` EEG to ``(B, T, R)`` sources.
    dataset : SpikeEEGMetadataDataset (or any dataset with ``sample_info``)
        Test samples (epoch 0 draws).
    fwd : array, shape (C, R)
        Forward matrix, for the baselines.
    out_dir : path-like
        Where ``results.json``, ``results.md`` and the PNG figures go.
    anatomy : Anatomy, optional
        Region centres (localization error, dispersion) and the cortex mesh (plots).
    baselines : sequence of str
        Subset of ``('mne', 'dspm', 'sloreta', 'eloreta')``.
    max_samples : int, optional
        Evaluate on at most this many samples (evenly spread over the set).

    Returns
    -------
    dict
        ``summary``, ``records`` (method -> list of per-sample dicts), ``paths``,
        ``table`` (Markdown).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    count = n if max_samples is None else min(n, int(max_samples))
    positions = np.unique(np.linspace(0, n - 1, count).round().astype(int))
    n_regions = fwd.shape[1]
    centres = None if anatomy is None else anatomy_centres(anatomy, n_regions)
    distances = None
    if centres is None:
        logger.warning("no anatomy: localization error and spatial dispersion are not available (NaN)")
        distances = np.full((n_regions, n_regions), np.nan)
    records: dict[str, list[dict[str, Any]]] = {model_name: [], **{m: [] for m in baselines}}
    examples: list[dict[str, Any]] = []
    example_at = set(positions[np.linspace(0, len(positions) - 1, min(n_examples, len(positions))).astype(int)])
    bar = tqdm(total=len(positions), desc="evaluating", unit="sample", disable=not show_progress, leave=False)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        pairs = [dataset[int(i)] for i in chunk]
        eeg = np.stack([np.asarray(p[0]) for p in pairs])
        true = np.stack([np.asarray(p[1]) for p in pairs])
        est = predict(model, eeg, device)
        for j, pos in enumerate(chunk):
            info = dataset.sample_info(int(pos))
            meta = {"snr_db": info["snr_db"], "n_sources": info["n_sources"], "index": info["index"]}
            kw = dict(patches=info["patches"], distances=distances)
            records[model_name].append(evaluate_sample(est[j], true[j], centres, info=dict(meta, method=model_name), **kw))
            baseline_est = {}
            for method in baselines:
                b_est = estimate_sources(eeg[j], fwd, method, info["snr_db"])
                baseline_est[method] = b_est
                records[method].append(evaluate_sample(b_est, true[j], centres, info=dict(meta, method=method), **kw))
            if pos in example_at:
                examples.append({"index": info["index"], "eeg": eeg[j], "true": true[j], "est": est[j],
                                 "centres": info["centres"], "snr_db": info["snr_db"],
                                 "baseline": baseline_est.get("sloreta")})
        bar.update(len(chunk))
    bar.close()

    summary = summarize(records)
    title = f"Source imaging results ({len(positions)} test samples)"
    paths = dict(write_results(summary, records, out, title=title))
    paths["metrics_png"] = plot_metric_distributions(records, list(PLOTTED_METRICS), out / "metric_distributions.png")
    if history:
        paths["curves_png"] = plot_training_curves(history, out / "training_curves.png")
    for k, ex in enumerate(examples):
        true_map = np.abs(ex["true"]).max(axis=0)
        est_map = np.abs(ex["est"]).max(axis=0)
        if anatomy is not None:  # a map needs the mesh or at least the region centres
            paths[f"cortex_{k}_png"] = plot_cortex_activity(
                anatomy.vertices, anatomy.triangles, anatomy.vertex_region, true_map, est_map,
                out / f"example_{k}_cortex.png", centres=centres,
                titles=(f"true (sample {ex['index']}, {ex['snr_db']:g} dB)", model_name))
        paths[f"timecourse_{k}_png"] = plot_time_courses(
            ex["true"], ex["est"], ex["centres"], out / f"example_{k}_timecourses.png", sfreq=500.0)
    table = results_table_markdown(summary)
    comparison, verdict = comparison_table(summary, model_name)
    (out / "comparison.md").write_text(comparison + "\n")
    return {"summary": summary, "records": records, "paths": paths, "table": table, "comparison": comparison,
            "beats_baselines": verdict, "n_samples": len(positions)}


#: Lower is better for these; higher for the others in the comparison.
_LOWER_IS_BETTER = {"le_mm", "spatial_dispersion_mm", "mse", "mse_normalized"}


def comparison_table(summary: dict[str, Any], model_name: str,
                     metrics: Sequence[str] = ("le_mm", "precision")) -> tuple[str, dict[str, bool]]:
    """Median of each metric per SNR level, the network against every baseline.

    Returns the Markdown table and, per SNR level, whether the network is better than
    every baseline on every listed metric (the demo's success criterion).
    """
    methods = list(summary["methods"])
    others = [m for m in methods if m != model_name]

    def medians(method: str) -> dict[Any, dict[str, float]]:
        rows = {"all": summary["methods"][method]["overall"]["stats"]}
        for group in summary["methods"][method].get("marginals", {}).get("snr_db", []):
            rows[group["key"]["snr_db"]] = group["stats"]
        return {k: {m: (v.get(m) or {}).get("median") for m in metrics} for k, v in rows.items()}

    table = {m: medians(m) for m in methods}
    levels = [k for k in table[model_name] if k != "all"]
    levels = sorted(levels, key=float) + ["all"]
    names = {"le_mm": "LE (mm)", "precision": "precision"}
    header = "| SNR (dB) | " + " | ".join(f"{names.get(x, x)} {m}" for x in metrics for m in methods) + " | network best |"
    lines = [header, "|" + "---|" * (2 + len(metrics) * len(methods))]
    verdict: dict[str, bool] = {}
    for level in levels:
        best = True
        cells = []
        for metric in metrics:
            own = table[model_name][level][metric]
            for m in methods:
                value = table[m][level][metric]
                cells.append("n/a" if value is None else f"{value:.3g}")
            for m in others:
                value = table[m][level][metric]
                if own is None or value is None:
                    best = False
                elif metric in _LOWER_IS_BETTER:
                    best &= own < value
                else:
                    best &= own > value
        verdict[str(level)] = bool(best)
        lines.append(f"| {level} | " + " | ".join(cells) + f" | {'yes' if best else 'no'} |")
    return "\n".join(lines), verdict
