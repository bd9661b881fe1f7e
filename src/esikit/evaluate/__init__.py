"""Evaluation of source estimates: DeepSIF's metrics, classical inverse baselines, plots."""

from .metrics import (
    METRIC_NAMES,
    assign_to_patches,
    auc_score,
    evaluate_sample,
    identify_regions,
    patches_from_activity,
    spatial_dispersion,
    summarize,
)

__all__ = [
    "METRIC_NAMES",
    "assign_to_patches",
    "auc_score",
    "evaluate_sample",
    "identify_regions",
    "patches_from_activity",
    "spatial_dispersion",
    "summarize",
]
