"""Evaluate a trained network and the classical baselines on the same test samples."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import SFREQ_HZ
from ..io.atomic import atomic_write_text
from .baselines import BASELINES, Baselines
from .metrics import check_rule, evaluate_sample, region_centres_from_mesh, summarize
from .plots import plot_cortex_activity, plot_metric_distributions, plot_time_courses, plot_training_curves
from .report import (
    COMPARISON_COLUMNS,
    N_BOOT,
    comparison,
    comparison_markdown,
    results_table_markdown,
    verdict_text,
    write_results,
)

logger = logging.getLogger(__name__)

PLOTTED_METRICS = ("peak_distance_mm", "precision", "recall", "le_mm", "corr", "auc", "ap", "emd_mm")


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
    oracle: bool = False,
    depth: float | None = None,
    rule: str = "deepsif",
    baseline_rule: str = "normalized",
    max_samples: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    history: dict[str, list[float]] | None = None,
    n_examples: int = 3,
    model_name: str = "model",
    show_progress: bool = True,
    n_boot: int = N_BOOT,
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
        Where ``results.json``, ``results.md``, ``results_samples.csv``,
        ``comparison.md`` and the PNG figures go.
    anatomy : Anatomy, optional
        Region centres (distances), adjacency (FlexChampagne) and cortex mesh (plots).
    baselines : sequence of str
        Classical methods (:func:`~esikit.evaluate.baselines.check_baselines`): the
        minimum-norm family, ``lcmv``, ``champagne``, ``flexchampagne`` or any
        invertmeeg solver name.
    oracle : bool
        Give the minimum-norm family each sample's true SNR (default: MNE's fixed
        ``lambda2 = 1/9``; the invertmeeg methods always choose from the data).
    depth : float, optional
        Depth weighting exponent of the minimum-norm family.
    rule, baseline_rule : str
        Region rule of the network (``"deepsif"``, DeepSIF's) and of the baselines
        (``"normalized"``: their units differ).
    max_samples : int, optional
        Evaluate on at most this many samples (evenly spread); default: all of them.
    n_boot : int
        Bootstrap resamples of the intervals.

    Returns
    -------
    dict
        ``summary``, ``comparison_data``, ``records`` (method -> list of per-sample
        dicts), ``paths``, ``table`` (Markdown), ``comparison`` (the printed table and
        verdict), ``n_samples``, ``rules``, ``regularization``.
    """
    from tqdm.auto import tqdm

    check_rule(rule)
    check_rule(baseline_rule)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    count = n if max_samples is None else min(n, int(max_samples))
    positions = np.unique(np.linspace(0, n - 1, count).round().astype(int))
    n_regions = fwd.shape[1]
    centres = None if anatomy is None else anatomy_centres(anatomy, n_regions)
    distances = None
    if centres is None:
        logger.warning("no anatomy: localization error and other distances are not available (NaN)")
        distances = np.full((n_regions, n_regions), np.nan)
    solvers = Baselines(fwd, baselines, oracle=oracle, depth=depth, centres=centres,
                        adjacency=None if anatomy is None else getattr(anatomy, "adjacency", None))
    names = [model_name] + [b for b in solvers.names if b != model_name]
    rules = {m: (rule if m == model_name else baseline_rule) for m in names}
    regularization = solvers.describe()
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    examples: list[dict[str, Any]] = []
    example_at = set(positions[np.linspace(0, len(positions) - 1, min(n_examples, len(positions))).astype(int)])
    example_baseline = "sloreta" if "sloreta" in solvers.names else (solvers.names[0] if solvers.names else None)
    bar = tqdm(total=len(positions), desc="evaluating", unit="sample", disable=not show_progress, leave=False)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        pairs = [dataset[int(i)] for i in chunk]
        eeg = np.stack([np.asarray(p[0]) for p in pairs])
        true = np.stack([np.asarray(p[1]) for p in pairs])
        infos = [dataset.sample_info(int(pos)) for pos in chunk]
        estimates = {model_name: predict(model, eeg, device)}
        estimates.update(solvers.estimate(eeg, [i["snr_db"] for i in infos]))
        for j, pos in enumerate(chunk):
            info = infos[j]
            meta = {"snr_db": info["snr_db"], "n_sources": info["n_sources"], "index": info["index"]}
            for m in names:
                records[m].append(evaluate_sample(estimates[m][j], true[j], centres, info["patches"], eeg=eeg[j],
                                                  rule=rules[m], distances=distances, info=dict(meta, method=m)))
            if pos in example_at:
                examples.append({"index": info["index"], "eeg": eeg[j], "true": true[j],
                                 "est": estimates[model_name][j], "centres": info["centres"],
                                 "snr_db": info["snr_db"],
                                 "baseline": None if example_baseline is None else estimates[example_baseline][j]})
        bar.update(len(chunk))
    bar.close()

    summary = summarize(records)
    comp = comparison(records, n_boot=n_boot)
    title = f"Source imaging results ({len(positions)} test samples)"
    paths = dict(write_results(summary, records, out, title=title, comp=comp, model_name=model_name, rules=rules,
                               regularization=regularization))
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
            ex["true"], ex["est"], ex["centres"], out / f"example_{k}_timecourses.png", sfreq=SFREQ_HZ)
    table = results_table_markdown(summary)
    printed = comparison_text(comp, model_name, rules, regularization)
    paths["comparison_md"] = atomic_write_text(out / "comparison.md", printed + "\n")
    return {"summary": summary, "comparison_data": comp, "records": records, "paths": paths, "table": table,
            "comparison": printed, "n_samples": len(positions), "rules": rules, "regularization": regularization}


def comparison_text(comp: dict[str, Any], model_name: str, rules: dict[str, str],
                    regularization: dict[str, str]) -> str:
    """What the evaluation prints: the side-by-side table, who wins, and how each method ran."""
    lines = [comparison_markdown(comp, COMPARISON_COLUMNS, "marginal", rules), "",
             "Median (for peak in patch: mean) [95 % bootstrap interval] over samples.",
             verdict_text(comp, model_name), "",
             f"{model_name}: region rule '{rules.get(model_name, '?')}' (DeepSIF's Otsu rule on the raw output)."]
    lines += [f"{m}: rule '{rules.get(m, '?')}'; {text}" for m, text in regularization.items()]
    return "\n".join(lines)
