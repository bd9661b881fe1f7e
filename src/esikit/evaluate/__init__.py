"""Evaluation of source estimates: DeepSIF's metrics, classical inverse baselines, plots."""

from .baselines import (
    BASELINES,
    apply_inverse,
    clear_kernel_cache,
    estimate_sources,
    lambda2_from_snr,
    make_inverse_kernel,
)
from .metrics import (
    METRIC_NAMES,
    assign_to_patches,
    auc_score,
    evaluate_batch,
    evaluate_sample,
    identify_regions,
    patches_from_activity,
    region_centres_from_mesh,
    spatial_dispersion,
    summarize,
)
from .plots import (
    plot_cortex_activity,
    plot_metric_distributions,
    plot_time_courses,
    plot_training_curves,
)
from .report import TABLE_METRICS, results_table_markdown, write_results

__all__ = [
    "BASELINES",
    "apply_inverse",
    "clear_kernel_cache",
    "estimate_sources",
    "lambda2_from_snr",
    "make_inverse_kernel",
    "METRIC_NAMES",
    "assign_to_patches",
    "auc_score",
    "evaluate_batch",
    "evaluate_sample",
    "identify_regions",
    "patches_from_activity",
    "region_centres_from_mesh",
    "spatial_dispersion",
    "summarize",
    "plot_cortex_activity",
    "plot_metric_distributions",
    "plot_time_courses",
    "plot_training_curves",
    "TABLE_METRICS",
    "results_table_markdown",
    "write_results",
]
