"""Figures for training and evaluation (matplotlib, Agg backend, PNG files).

Every function writes one PNG and returns its path; figures are closed after saving so
long evaluation loops do not accumulate memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 100

# Light grey at zero so that inactive cortex keeps its shading, dark red at the maximum.
_ACTIVITY_CMAP = LinearSegmentedColormap.from_list(
    "esikit_activity", ["#dcdcdc", "#fdd49e", "#fc8d59", "#d7301f", "#7f0000"]
)

# Views of the cortex: (title, viewing direction, screen right, screen up) in RAS
# coordinates (x = right, y = anterior, z = superior).
_VIEWS = (
    ("left", np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    ("right", np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    ("top", np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (folders made as needed), close it; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    logger.info("Wrote %s", path)
    return path


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Plot training curves, one line per series, against the epoch.

    Series whose name contains ``"loss"`` share the left panel (log scale when all
    values are positive); any other series (learning rate, validation metrics) go to a
    second panel.

    Parameters
    ----------
    history : dict of str -> list of float
        E.g. ``{"train_loss": [...], "val_loss": [...], "lr": [...]}``, one value per
        epoch (series may have different lengths; NaN values leave gaps).
    path : str or Path
        Output PNG.

    Returns
    -------
    path : Path
    """
    if not history:
        raise ValueError("plot_training_curves: 'history' is empty, expected at least one series")
    losses = {k: v for k, v in history.items() if "loss" in k.lower()}
    others = {k: v for k, v in history.items() if k not in losses}
    panels = [p for p in (losses, others) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, series in zip(axes[0], panels):
        positive = True
        for name, values in series.items():
            y = np.asarray(values, dtype=np.float64)
            ax.plot(np.arange(1, y.size + 1), y, marker="o" if y.size < 30 else None, ms=3, label=name)
            finite = y[np.isfinite(y)]
            positive &= bool(finite.size == 0 or finite.min() > 0)
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if series is losses else "value")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0, 0].set_title("Training curves")
    fig.tight_layout()
    return save_figure(fig, path)


_AXIS_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def _to_ras(orientation: str) -> np.ndarray:
    """Matrix ``M`` with ``xyz @ M`` in RAS for an orientation code such as ``"ALS"``."""
    code = str(orientation).upper()
    m = np.zeros((3, 3))
    if len(code) == 3 and all(c in _AXIS_LETTERS for c in code):
        for i, c in enumerate(code):
            m[i, _AXIS_LETTERS[c][0]] = _AXIS_LETTERS[c][1]
    if len(code) != 3 or not np.allclose(np.abs(m).sum(axis=0), 1.0):
        raise ValueError(
            f"Invalid value for 'orientation': expected three letters naming where +x, +y, +z point, "
            f"one of R/L, A/P, S/I each (e.g. 'RAS', 'ALS'), got {orientation!r}."
        )
    return m


def _normalized(values: np.ndarray) -> np.ndarray:
    values = np.abs(np.asarray(values, dtype=np.float64))
    peak = np.nanmax(values) if values.size and np.any(np.isfinite(values)) else 0.0
    return values / peak if peak > 0 else values


def _draw_mesh(ax, vertices, triangles, tri_values, view, cmap, norm) -> None:
    _, direction, right, up = view
    tri_xyz = vertices[triangles]  # (F, 3, 3)
    # painter's algorithm: farthest triangles first, nearer ones drawn over them
    depth = tri_xyz.mean(axis=1) @ direction
    order = np.argsort(-depth)
    polys = np.stack([tri_xyz @ right, tri_xyz @ up], axis=-1)[order]
    normals = np.cross(tri_xyz[:, 1] - tri_xyz[:, 0], tri_xyz[:, 2] - tri_xyz[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shade = 0.45 + 0.55 * np.abs(normals @ direction)  # Lambert-like, orientation-free
    colors = cmap(norm(np.nan_to_num(tri_values, nan=0.0)))
    colors[np.isnan(tri_values)] = (0.75, 0.75, 0.75, 1.0)  # unlabelled vertices: grey
    colors[:, :3] *= shade[:, None]
    # edges in the face colour close the hairline gaps between antialiased triangles
    ax.add_collection(PolyCollection(polys, facecolors=colors[order], edgecolors=colors[order], linewidths=0.15))
    ax.set_xlim(polys[..., 0].min(), polys[..., 0].max())
    ax.set_ylim(polys[..., 1].min(), polys[..., 1].max())


def _draw_points(ax, centres, values, view, cmap, norm) -> None:
    _, direction, right, up = view
    order = np.argsort(-(centres @ direction))
    sizes = 15 + 60 * np.nan_to_num(values)
    ax.scatter(
        (centres @ right)[order],
        (centres @ up)[order],
        c=np.nan_to_num(values)[order],
        s=sizes[order],
        cmap=cmap,
        norm=norm,
        edgecolors="k",
        linewidths=0.3,
    )


def plot_cortex_activity(
    vertices: np.ndarray | None,
    triangles: np.ndarray | None,
    vertex_region: np.ndarray | None,
    true_region_values: np.ndarray,
    est_region_values: np.ndarray,
    path: str | Path,
    centres: np.ndarray | None = None,
    titles: tuple[str, str] = ("true", "estimate"),
    orientation: str = "RAS",
) -> Path:
    """True vs estimated region activity painted on the cortex, seen from left, right, top.

    Each map is shown as ``|value| / max |value|`` (so estimates of any scale or sign
    compare with the target) on a shared 0-1 colour scale. With a mesh, every triangle
    takes the mean value of its vertices' regions (vertices outside any region are
    grey), drawn as a 2-D projection with hidden surfaces removed by depth ordering.
    Without a mesh, region centres are drawn as dots coloured (and sized) by value.

    Parameters
    ----------
    vertices : array, shape (V, 3) or None
        Cortex mesh vertices in mm (x right, y anterior, z superior).
    triangles : int array, shape (F, 3) or None
        0-based vertex indices.
    vertex_region : int array, shape (V,) or None
        Region of each vertex, -1 for none.
    true_region_values, est_region_values : array, shape (R,)
        One value per region, e.g. ``max_t |activity|`` or activity at the peak time.
    path : str or Path
        Output PNG.
    centres : array, shape (R, 3), optional
        Region centres in mm; required when no mesh is given.
    titles : tuple of str
        Row labels.
    orientation : str
        Where the +x, +y, +z axes of ``vertices``/``centres`` point: ``"RAS"``
        (right, anterior, superior) by default, as in every esikit ``Anatomy``,
        FreeSurfer and DeepSIF's fsaverage5; ``"ALS"`` for raw tvb-data files
        (x anterior, y left).

    Returns
    -------
    path : Path
    """
    true_v = _normalized(true_region_values)
    est_v = _normalized(est_region_values)
    if true_v.shape != est_v.shape or true_v.ndim != 1:
        raise ValueError(
            f"region values have shapes {true_v.shape} and {est_v.shape}, expected (R,) both"
        )
    n_regions = true_v.size
    to_ras = _to_ras(orientation)
    have_mesh = vertices is not None and triangles is not None and vertex_region is not None
    if have_mesh:
        vertices = np.asarray(vertices, dtype=np.float64) @ to_ras
        triangles = np.asarray(triangles, dtype=np.int64)
        vertex_region = np.asarray(vertex_region, dtype=np.int64)
        if vertex_region.shape != (vertices.shape[0],):
            raise ValueError(
                f"'vertex_region' has shape {vertex_region.shape}, expected (V,) with V={vertices.shape[0]}"
            )
        if vertex_region.max() >= n_regions:
            raise ValueError(f"'vertex_region' refers to region {vertex_region.max()}, but R={n_regions}")
    elif centres is None:
        raise ValueError("plot_cortex_activity needs a mesh (vertices, triangles, vertex_region) or 'centres'")
    else:
        centres = np.asarray(centres, dtype=np.float64)
        if centres.shape != (n_regions, 3):
            raise ValueError(f"'centres' has shape {centres.shape}, expected (R, 3) with R={n_regions}")
        centres = centres @ to_ras

    cmap = _ACTIVITY_CMAP
    norm = Normalize(0.0, 1.0)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    for row, values in enumerate((true_v, est_v)):
        if have_mesh:
            vert_vals = np.where(vertex_region >= 0, values[np.clip(vertex_region, 0, None)], np.nan)
            per_tri = vert_vals[triangles]
            counts = np.sum(np.isfinite(per_tri), axis=1)
            # mean over labelled vertices; NaN (grey) when none of the three is labelled
            tri_vals = np.where(counts > 0, np.nansum(per_tri, axis=1) / np.maximum(counts, 1), np.nan)
        for col, view in enumerate(_VIEWS):
            ax = axes[row, col]
            if have_mesh:
                _draw_mesh(ax, vertices, triangles, tri_vals, view, cmap, norm)
            else:
                _draw_points(ax, centres, values, view, cmap, norm)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if row == 0:
                ax.set_title(f"{view[0]} view")
            if col == 0:
                ax.set_ylabel(titles[row], fontsize=13)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6, label="|activity| / max")
    return save_figure(fig, path)


def plot_time_courses(
    true: np.ndarray,
    est: np.ndarray,
    regions: Sequence[int],
    path: str | Path,
    sfreq: float | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """True and estimated time courses at chosen regions (e.g. the true patch centres).

    The estimate has its own y axis (right, dashed) because classical methods and
    networks use different scales.

    Parameters
    ----------
    true, est : array, shape (T, R)
    regions : sequence of int
        Regions to show, one panel each.
    path : str or Path
        Output PNG.
    sfreq : float, optional
        Sampling frequency in Hz; the x axis is then in ms, otherwise in samples.
    labels : sequence of str, optional
        Region names (``Anatomy.region_labels``) for the panel titles.

    Returns
    -------
    path : Path
    """
    true = np.asarray(true, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if true.ndim != 2 or true.shape != est.shape:
        raise ValueError(f"'true' has shape {true.shape} and 'est' {est.shape}, expected equal (T, R)")
    regions = [int(r) for r in regions]
    if not regions:
        raise ValueError("plot_time_courses: 'regions' is empty")
    bad = [r for r in regions if not 0 <= r < true.shape[1]]
    if bad:
        raise ValueError(f"regions {bad} are outside [0, {true.shape[1]})")
    t = np.arange(true.shape[0]) * (1000.0 / sfreq if sfreq else 1.0)
    fig, axes = plt.subplots(len(regions), 1, figsize=(8, 2.2 * len(regions) + 0.6), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], regions):
        (l1,) = ax.plot(t, true[:, r], color="C0", lw=1.5, label="true")
        ax.set_ylabel("true", color="C0")
        ax2 = ax.twinx()
        (l2,) = ax2.plot(t, est[:, r], color="C3", lw=1.2, ls="--", label="estimate")
        ax2.set_ylabel("estimate", color="C3")
        name = labels[r] if labels is not None else f"region {r}"
        cc = np.corrcoef(true[:, r], est[:, r])[0, 1] if true[:, r].std() > 0 and est[:, r].std() > 0 else math.nan
        ax.set_title(f"{name} (r = {cc:.2f})", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(handles=[l1, l2], loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (ms)" if sfreq else "sample")
    fig.tight_layout()
    return save_figure(fig, path)


def _snr_levels(records_by_method: Mapping[str, Sequence[Mapping[str, Any]]]) -> list:
    levels = {r["snr_db"] for recs in records_by_method.values() for r in recs if "snr_db" in r}
    return sorted(levels) if levels else [None]


def plot_metric_distributions(
    records_by_method: Mapping[str, Sequence[Mapping[str, Any]]],
    metric_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Box plots of per-sample metrics: one panel per metric, boxes per SNR and method.

    Parameters
    ----------
    records_by_method : dict of method name -> list of dict
        Records from :func:`esikit.evaluate.metrics.evaluate_sample` (with ``snr_db``
        in the records to split by SNR; otherwise one group). NaN values are left out
        and the panel title says how many.
    metric_names : sequence of str
        Metrics to show, e.g. ``["le_mm", "precision", "recall", "auc"]``.
    path : str or Path
        Output PNG.

    Returns
    -------
    path : Path
    """
    if not records_by_method or not metric_names:
        raise ValueError("plot_metric_distributions needs at least one method and one metric")
    methods = list(records_by_method)
    levels = _snr_levels(records_by_method)
    n = len(metric_names)
    width = max(4.5, 1.0 + 0.45 * len(methods) * len(levels))
    ncols = max(1, min(n, 3, int(16 // width)))  # wide panels (many methods x SNR levels) stack
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.6 * nrows), squeeze=False)
    box_w = 0.8 / len(methods)
    for i, metric in enumerate(metric_names):
        ax = axes[i // ncols, i % ncols]
        n_nan = 0
        for m, method in enumerate(methods):
            data, pos = [], []
            for j, level in enumerate(levels):
                vals = np.array(
                    [float(r.get(metric, math.nan)) for r in records_by_method[method]
                     if level is None or r.get("snr_db") == level],
                    dtype=np.float64,
                )
                n_nan += int(np.sum(~np.isfinite(vals)))
                data.append(vals[np.isfinite(vals)])
                pos.append(j + (m - (len(methods) - 1) / 2) * box_w)
            keep = [k for k, d in enumerate(data) if d.size]
            if keep:
                bp = ax.boxplot(
                    [data[k] for k in keep],
                    positions=[pos[k] for k in keep],
                    widths=box_w * 0.85,
                    patch_artist=True,
                    flierprops={"markersize": 2, "alpha": 0.4},
                    medianprops={"color": "k"},
                )
                for patch in bp["boxes"]:
                    patch.set_facecolor(f"C{m}")
                    patch.set_alpha(0.75)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(["all" if lv is None else f"{lv:g} dB" for lv in levels])
        ax.set_xlim(-0.6, len(levels) - 0.4)
        ax.set_xlabel("SNR" if levels != [None] else "")
        ax.set_title(metric + (f" ({n_nan} NaN left out)" if n_nan else ""), fontsize=10)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, axis="y", alpha=0.3)
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{m}", alpha=0.75) for m in range(len(methods))]
    fig.legend(handles, methods, loc="upper center", ncol=min(len(methods), 6), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, path)
