"""Per-sample source-imaging metrics (pure numpy, plus POT for the earth mover's distance).

Conventions
-----------
- ``est`` and ``true`` are activity arrays of shape ``(T, R)`` (time x regions).
- ``patches`` is the list of true source patches of one sample, each an int array of
  region ids with the patch centre first (as in DeepSIF's ``selected_region``).
- ``centres`` is ``(R, 3)`` region centres in mm; distances between regions are the
  Euclidean distances between centres unless a full ``(R, R)`` distance matrix is given
  (DeepSIF used a precomputed matrix, ``dis_matrix_fs_20k.mat``, not distributed).

Region rules (:data:`RULES`), i.e. which regions an estimate "identifies":

- ``"deepsif"``: DeepSIF's ``utils.get_otsu_regions`` exactly. The Otsu threshold
  (skimage ``threshold_otsu``, ``nbins=100`` as DeepSIF passes it; skimage's default
  would be 256) is computed on ``(|out| - min|out|) / max|out|`` over the whole window,
  and the *raw, signed* output is compared with it: a region is identified when
  ``out > thr`` at more than 7 time points. Right for the network, whose output is in
  the units of the (normalized, mostly non-negative) training target.
- ``"normalized"``: the same Otsu rule on ``|est| / max|est|`` on both sides, so that
  estimates of any sign and unit (dSPM statistics, beamformer outputs) are treated alike.

Scoring against the truth follows DeepSIF's ``misc_scripts/eval_calculate_sim_results.m``:
every identified region is assigned to the source whose patch holds its nearest true
region, and each source is scored against its own patch (precision, recall, localization
error, correlation of the mean assigned time course with the source's centre time
course). A source with no assigned region is missed: its metrics are NaN, as in that
code, and left out of the means; ``sources_found`` (the fraction of a sample's sources
with at least one assigned region) keeps the misses visible. The per-sample values are
the means over the sample's scored sources.

Threshold-free metrics: the region of maximum ``|est|`` at the EEG's global-field-power
peak (inside a true patch or not, and its distance to the nearest true region); the
regions above half of that maximum (their precision and recall); AUC and average
precision of the region map ``max_t |est|`` against true-patch membership (AP as in
invertmeeg's evaluation); the earth mover's distance between the estimated and true
amplitude maps (invertmeeg's definition); and, on the rule's identified set, CANDLE's
Dice coefficient and 95th-percentile Hausdorff distance.

Degenerate cases never raise and never give a silently wrong number: undefined values
are NaN (as in DeepSIF, where ``0/0`` gives NaN); :func:`summarize` reports how many
values were NaN next to each median. Statistics of a constant time course (Pearson
correlation) and AUC without both classes are NaN as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from skimage.filters import threshold_otsu

from .._validation import check_option

logger = logging.getLogger(__name__)

#: DeepSIF's rule: a region is active when above threshold at more than this many samples.
MIN_ACTIVE_SAMPLES = 7
#: Histogram bins of the Otsu threshold (DeepSIF uses 100).
OTSU_NBINS = 100

#: Region rules understood by :func:`identify_regions_by_rule` and :func:`evaluate_sample`.
RULES = ("deepsif", "normalized")
#: Fraction of the peak amplitude above which a region counts in the half-maximum set.
HALF_MAX = 0.5
#: invertmeeg's EMD drops map values below this fraction of the map maximum.
EMD_FLOOR = 0.25

#: Metrics computed by :func:`evaluate_sample` (numeric values of a record).
METRIC_NAMES = (
    "peak_in_patch",
    "peak_distance_mm",
    "hm_precision",
    "hm_recall",
    "precision",
    "recall",
    "le_mm",
    "corr_identified",
    "sources_found",
    "spatial_dispersion_mm",
    "dice",
    "hd95_mm",
    "corr",
    "auc",
    "ap",
    "emd_mm",
    "mse",
    "mse_normalized",
    "n_identified",
    "detected",
)

#: Metrics where a lower value is better (all others: higher is better).
LOWER_IS_BETTER = frozenset({"peak_distance_mm", "le_mm", "spatial_dispersion_mm", "hd95_mm", "emd_mm",
                             "mse", "mse_normalized"})


# --------------------------------------------------------------------------- helpers
def _as_2d(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"'{name}' has shape {arr.shape}, expected (T, R)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"'{name}' contains {int(np.sum(~np.isfinite(arr)))} non-finite values")
    return arr


def _clean_patches(patches: Sequence[Any], n_regions: int) -> list[np.ndarray]:
    """Integer patches with padding (anything outside [0, R)) removed; empty ones dropped."""
    out = []
    for k, p in enumerate(patches):
        p = np.asarray(p, dtype=np.float64).ravel()
        keep = np.isfinite(p) & (p >= 0) & (p < n_regions) & (p == np.round(p))
        p = p[keep].astype(np.int64)
        if p.size:
            # keep the order (centre first) but drop repeated ids
            _, first = np.unique(p, return_index=True)
            out.append(p[np.sort(first)])
        elif k == 0 and len(patches) == 1:
            logger.debug("the only patch is empty after removing padding")
    return out


def patches_from_activity(true: np.ndarray) -> list[np.ndarray]:
    """True patch list from a target activity array when the patches are not known.

    All regions with nonzero activity form one patch whose centre is the region with the
    largest peak ``max_t |true|``. Use the real patch list when available: with several
    sources this cannot separate them.

    Parameters
    ----------
    true : array, shape (T, R)

    Returns
    -------
    patches : list of int arrays
        One array (centre first), or an empty list when ``true`` is all zeros.
    """
    true = _as_2d("true", true)
    peak = np.max(np.abs(true), axis=0)
    regions = np.flatnonzero(peak > 0)
    if regions.size == 0:
        return []
    centre = regions[np.argmax(peak[regions])]
    return [np.concatenate([[centre], regions[regions != centre]])]


def region_centres_from_mesh(vertices: np.ndarray, vertex_region: np.ndarray, n_regions: int) -> np.ndarray:
    """Region centres as the mean position of each region's mesh vertices.

    Use the folded (not inflated) cortex for anatomical distances in mm: DeepSIF's
    ``fs_cortex_20k_inflated.mat`` ``centre`` field is the mean of the *inflated*
    surface's vertices, whose distances are about 1.3 times the folded-cortex ones
    (median ratio on the 994-region template) and only loosely related to them.

    Parameters
    ----------
    vertices : array, shape (V, 3)
        Mesh vertices in mm.
    vertex_region : int array, shape (V,)
        Region of each vertex, -1 for none.
    n_regions : int
        Number of regions ``R``.

    Returns
    -------
    centres : array, shape (R, 3)
        NaN rows for regions without vertices.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    vertex_region = np.asarray(vertex_region, dtype=np.int64)
    if vertex_region.shape != (vertices.shape[0],):
        raise ValueError(f"'vertex_region' has shape {vertex_region.shape}, expected (V,) with V={vertices.shape[0]}")
    keep = (vertex_region >= 0) & (vertex_region < n_regions)
    counts = np.bincount(vertex_region[keep], minlength=n_regions).astype(np.float64)
    sums = np.stack([np.bincount(vertex_region[keep], weights=vertices[keep, k], minlength=n_regions)
                     for k in range(3)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def _distances(
    rows: np.ndarray, cols: np.ndarray, centres: np.ndarray | None, distances: np.ndarray | None
) -> np.ndarray:
    if distances is not None:
        return np.asarray(distances)[np.ix_(rows, cols)]
    diff = centres[rows][:, None, :] - centres[cols][None, :, :]
    return np.sqrt(np.sum(diff**2, axis=-1))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    # a constant time course has no correlation: NaN rather than a division warning
    if den <= 1e-300:
        return math.nan
    return float(np.dot(a, b) / den)


# --------------------------------------------------------------------------- metrics
def identify_regions(
    est: np.ndarray,
    min_active_samples: int = MIN_ACTIVE_SAMPLES,
    nbins: int = OTSU_NBINS,
) -> tuple[np.ndarray, float]:
    """Regions identified by the ``"normalized"`` rule (Otsu on the normalized magnitude).

    ``a = |est| / max |est|`` (so estimates of any sign and scale, e.g. dSPM values,
    are treated alike); ``thr = threshold_otsu(a, nbins)``; region ``r`` is identified
    when ``a[t, r] > thr`` for more than ``min_active_samples`` time points. DeepSIF's
    own rule (:func:`identify_regions_deepsif`) compares the raw signed output instead.

    Parameters
    ----------
    est : array, shape (T, R)
        Estimated activity.
    min_active_samples : int
        A region must exceed the threshold at more than this many samples (7).
    nbins : int
        Histogram bins of the Otsu threshold (100).

    Returns
    -------
    regions : int array, shape (n_identified,)
        Sorted region ids; empty when ``est`` is all zeros or constant.
    threshold : float
        The Otsu threshold on the normalized magnitude (NaN when undefined).
    """
    est = _as_2d("est", est)
    mag = np.abs(est)
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0.0:
        return np.zeros(0, dtype=np.int64), math.nan
    norm = mag / peak
    if float(norm.min()) == 1.0:  # constant magnitude: nothing stands out
        return np.zeros(0, dtype=np.int64), math.nan
    thr = float(threshold_otsu(norm, nbins=nbins))
    counts = np.sum(norm > thr, axis=0)
    return np.flatnonzero(counts > min_active_samples).astype(np.int64), thr


def identify_regions_deepsif(
    out: np.ndarray,
    min_active_samples: int = MIN_ACTIVE_SAMPLES,
    nbins: int = OTSU_NBINS,
) -> tuple[np.ndarray, float]:
    """Regions identified by DeepSIF's ``utils.get_otsu_regions``, line for line.

    ``a = (|out| - min|out|) / max|out|``; ``thr = threshold_otsu(a, nbins=100)``;
    region ``r`` is identified when the raw, signed ``out[t, r] > thr`` at more than 7
    time points. Negative output never counts, and the threshold is on a ``[0, 1]``
    scale, so the rule is only meaningful for outputs in the units of DeepSIF's
    normalized target (the network's own output).

    Parameters
    ----------
    out : array, shape (T, R)
        The network's output for one sample.
    min_active_samples : int
        A region must exceed the threshold at more than this many samples (7).
    nbins : int
        Histogram bins of the Otsu threshold (DeepSIF passes 100).

    Returns
    -------
    regions : int array, shape (n_identified,)
        Sorted region ids; empty when ``out`` is all zeros (where DeepSIF's code divides
        by zero and nothing exceeds the NaN threshold). A constant magnitude gives a
        threshold of 0 (skimage's value for a constant image), as in DeepSIF.
    threshold : float
        The Otsu threshold (NaN when undefined).
    """
    out = _as_2d("out", out)
    mag = np.abs(out)
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0.0:
        return np.zeros(0, dtype=np.int64), math.nan
    thr = float(threshold_otsu((mag - mag.min()) / peak, nbins=nbins))
    counts = np.sum(out > thr, axis=0)
    return np.flatnonzero(counts > min_active_samples).astype(np.int64), thr


def identify_regions_by_rule(
    est: np.ndarray,
    rule: str,
    min_active_samples: int = MIN_ACTIVE_SAMPLES,
    nbins: int = OTSU_NBINS,
) -> tuple[np.ndarray, float]:
    """:func:`identify_regions_deepsif` (``rule="deepsif"``) or :func:`identify_regions` (``"normalized"``)."""
    rule = check_rule(rule)
    fn = identify_regions_deepsif if rule == "deepsif" else identify_regions
    return fn(est, min_active_samples, nbins)


def check_rule(rule: str) -> str:
    """Validate a region-rule name (one of :data:`RULES`)."""
    return check_option("rule", rule, RULES)


def assign_to_patches(
    identified: np.ndarray,
    patches: Sequence[np.ndarray],
    centres: np.ndarray | None = None,
    distances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each identified region to the patch holding its nearest true region.

    Parameters
    ----------
    identified : int array, shape (n,)
        Identified region ids.
    patches : list of int arrays
        True patches (centre first), padding already removed.
    centres : array, shape (R, 3), optional
        Region centres in mm (used when ``distances`` is None).
    distances : array, shape (R, R), optional
        Region-to-region distances in mm.

    Returns
    -------
    patch_index : int array, shape (n,)
        Index into ``patches`` for each identified region (ties: first patch).
    distance_mm : float array, shape (n,)
        Distance from each identified region to the nearest true region (0 inside a patch).
    """
    identified = np.asarray(identified, dtype=np.int64)
    if identified.size == 0 or not patches:
        return np.zeros(identified.size, dtype=np.int64) - 1, np.full(identified.size, np.nan)
    labels = np.concatenate(patches)
    owner = np.concatenate([np.full(len(p), k) for k, p in enumerate(patches)])
    d = _distances(identified, labels, centres, distances)
    nearest = np.argmin(d, axis=1)
    return owner[nearest].astype(np.int64), d[np.arange(identified.size), nearest]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata``, numpy only)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new_group) - 1]
    return ranks


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula.

    ``AUC = (sum of ranks of positives - P (P + 1) / 2) / (P N)`` with average ranks
    for ties, i.e. the probability that a random positive scores above a random
    negative, ties counting one half.

    Parameters
    ----------
    scores : array, shape (n,)
        Higher means more likely positive.
    labels : bool array, shape (n,)

    Returns
    -------
    auc : float
        NaN when there are no positives or no negatives.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores have shape {scores.shape}, labels {labels.shape}: expected equal")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spatial_dispersion(
    est: np.ndarray,
    regions: np.ndarray,
    distance_mm: np.ndarray,
) -> float:
    """Amplitude-weighted spread of the identified regions around the true patches.

    ``SD = sqrt( sum_j d_j^2 E_j / sum_j E_j )`` over the identified regions ``j``, where
    ``d_j`` is the distance (mm) from region ``j`` to the nearest true region (0 inside a
    true patch) and ``E_j = sum_t est[t, j]^2`` its energy (Molins et al. 2008; Grova et
    al. 2006, restricted to the identified regions as DeepSIF restricts its metrics).
    0 when all the energy lies inside the true patches.

    Parameters
    ----------
    est : array, shape (T, R)
    regions : int array, shape (n,)
        Identified regions.
    distance_mm : array, shape (n,)
        Their distances to the nearest true region.

    Returns
    -------
    sd : float
        In mm; NaN when no region is identified or their energy is zero.
    """
    regions = np.asarray(regions, dtype=np.int64)
    if regions.size == 0:
        return math.nan
    energy = np.sum(np.asarray(est, dtype=np.float64)[:, regions] ** 2, axis=0)
    total = float(energy.sum())
    if total <= 0.0:
        return math.nan
    return float(math.sqrt(float(np.sum(np.asarray(distance_mm) ** 2 * energy)) / total))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of a ranking, as invertmeeg's evaluation computes it.

    Regions are sorted by decreasing score; with ``P_k`` and ``R_k`` the precision and
    recall of the top ``k``, ``AP = sum_k (R_k - R_{k-1}) P_k`` (``R_0 = 0``), i.e. the
    mean over positives of the precision at their rank (invertmeeg's
    ``precision_recall_curve`` + ``compute_average_precision``). Ties are ranked by
    region index (a stable sort; invertmeeg's default sort leaves their order open).

    Parameters
    ----------
    scores : array, shape (n,)
        Higher means more likely positive (e.g. ``max_t |est|``).
    labels : bool array, shape (n,)
        True-patch membership.

    Returns
    -------
    ap : float
        In [0, 1]; NaN without positives.

    Examples
    --------
    >>> average_precision([0.9, 0.8, 0.7], [True, False, True])  # (1/1 + 2/3) / 2
    0.8333333333333333
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores have shape {scores.shape}, labels {labels.shape}: expected equal")
    n_pos = int(labels.sum())
    if n_pos == 0:
        return math.nan
    ranked = labels[np.argsort(-scores, kind="mergesort")]
    tp = np.cumsum(ranked)
    precision = tp / np.arange(1, ranked.size + 1)
    return float(np.sum(precision[ranked]) / n_pos)


def earth_movers_distance(
    est_map: np.ndarray, true_map: np.ndarray, ground_mm: np.ndarray, floor: float = EMD_FLOOR
) -> float:
    """Earth mover's distance between two region amplitude maps (invertmeeg's ``eval_emd``).

    Each map loses its values below ``floor`` times its maximum (invertmeeg: "noise-floor
    removal", 0.25), is normalized to sum 1, and the optimal transport cost between them
    is solved exactly (POT's ``ot.emd2``) with the region distances as ground cost.

    Parameters
    ----------
    est_map, true_map : array, shape (R,)
        Non-negative amplitudes (invertmeeg uses ``mean_t |.|``).
    ground_mm : array, shape (R, R)
        Region-to-region distances in mm.
    floor : float
        Relative floor (0.25).

    Returns
    -------
    emd : float
        In mm (the mean distance the estimated amplitude must move); NaN when a map is
        all zeros.
    """
    import ot  # POT: an invertmeeg dependency

    maps = []
    for m in (np.asarray(est_map, dtype=np.float64), np.asarray(true_map, dtype=np.float64)):
        m = np.where(np.abs(m) < floor * m.max(), 0.0, m)
        total = float(m.sum())
        if not total > 0.0:
            return math.nan
        maps.append(m / total)
    return float(ot.emd2(maps[0], maps[1], np.ascontiguousarray(ground_mm, dtype=np.float64)))


def dice_hd95(
    found: np.ndarray,
    true_regions: np.ndarray,
    centres: np.ndarray | None,
    distances: np.ndarray | None = None,
) -> tuple[float, float]:
    """Dice coefficient and 95th-percentile Hausdorff distance of two region sets (CANDLE).

    ``Dice = 2 |A n B| / (|A| + |B|)``; ``HD95 = max(P95_a d(a, B), P95_b d(b, A))`` with
    ``d(x, S)`` the distance (mm) from region ``x`` to the nearest region of ``S`` and
    ``P95`` numpy's linearly interpolated 95th percentile (MONAI's convention).

    Parameters
    ----------
    found : int array
        Estimated regions (e.g. those a region rule identified).
    true_regions : int array
        True regions (all patches).
    centres : array, shape (R, 3) or None
    distances : array, shape (R, R), optional

    Returns
    -------
    dice : float
        NaN when both sets are empty.
    hd95_mm : float
        NaN when either set is empty.
    """
    found = np.unique(np.asarray(found, dtype=np.int64))
    true_regions = np.unique(np.asarray(true_regions, dtype=np.int64))
    n = found.size + true_regions.size
    dice = 2.0 * np.intersect1d(found, true_regions).size / n if n else math.nan
    if found.size == 0 or true_regions.size == 0:
        return dice, math.nan
    d = _distances(found, true_regions, centres, distances)
    hd = max(float(np.percentile(d.min(axis=1), 95)), float(np.percentile(d.min(axis=0), 95)))
    return dice, hd


def gfp_peak(eeg: np.ndarray) -> int:
    """Time index of the maximum global field power ``std over channels`` of ``eeg (T, C)``."""
    eeg = _as_2d("eeg", eeg)
    return int(np.argmax(eeg.std(axis=1)))


def score_sources(
    identified: np.ndarray,
    patches: Sequence[np.ndarray],
    est: np.ndarray,
    true: np.ndarray | None,
    centres: np.ndarray | None,
    distances: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Each source scored against its own patch, as DeepSIF's MATLAB evaluation does.

    ``eval_calculate_sim_results.m``: every identified region goes to the source whose
    patch holds its nearest true region (ties: the first source); for each source with
    assigned regions ``recon``: ``precision = |recon n patch| / |recon|``, ``recall =
    |recon n patch| / |patch|``, ``le = mean_recon min_patch distance`` and ``corr`` the
    Pearson correlation between the mean estimated time course over ``recon`` and the
    true time course at the patch centre. A source without assigned regions is missed:
    all four are NaN (as in that code).

    Parameters
    ----------
    identified : int array
    patches : list of int arrays (centre first, padding removed)
    est : array, shape (T, R)
    true : array, shape (T, R) or None (then ``corr`` is NaN)
    centres : array, shape (R, 3) or None
    distances : array, shape (R, R), optional

    Returns
    -------
    per_source : list of dict
        ``precision``, ``recall``, ``le_mm``, ``corr``, ``found`` (1.0 or 0.0) per source.
    """
    identified = np.asarray(identified, dtype=np.int64)
    owner, _ = assign_to_patches(identified, patches, centres, distances)
    out = []
    for k, p in enumerate(patches):
        mine = identified[owner == k]
        if mine.size == 0:
            out.append({"precision": math.nan, "recall": math.nan, "le_mm": math.nan, "corr": math.nan,
                        "found": 0.0})
            continue
        hit = np.intersect1d(mine, p).size
        le = float(np.mean(_distances(mine, p, centres, distances).min(axis=1)))
        corr = _pearson(est[:, mine].mean(axis=1), true[:, p[0]]) if true is not None else math.nan
        out.append({"precision": hit / mine.size, "recall": hit / np.unique(p).size, "le_mm": le, "corr": corr,
                    "found": 1.0})
    return out


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan


def evaluate_sample(
    est: np.ndarray,
    true: np.ndarray | None,
    centres: np.ndarray | None,
    patches: Sequence[Any] | None = None,
    *,
    eeg: np.ndarray | None = None,
    rule: str = "deepsif",
    distances: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
    min_active_samples: int = MIN_ACTIVE_SAMPLES,
    nbins: int = OTSU_NBINS,
) -> dict[str, Any]:
    """All metrics of one sample.

    Parameters
    ----------
    est : array, shape (T, R)
        Estimated activity.
    true : array, shape (T, R) or None
        True activity (the training target). None when only ``patches`` is known: then
        the correlations, MSEs and EMD are NaN.
    centres : array, shape (R, 3) or None
        Region centres in mm (required unless ``distances`` is given).
    patches : list of int arrays, optional
        True patches, centre first; padding (ids outside ``[0, R)``, e.g. 15213) is
        dropped. Default: :func:`patches_from_activity` of ``true`` (one patch).
    eeg : array, shape (T, C), optional
        The sample's EEG: the peak metrics use its global-field-power peak. Without it
        they use the time of the largest ``||est[t]||``.
    rule : str
        Region rule (:data:`RULES`): ``"deepsif"`` for the network's output,
        ``"normalized"`` for estimates in other units.
    distances : array, shape (R, R), optional
        Region-to-region distances in mm replacing the Euclidean centre distances.
    info : mapping, optional
        Extra fields copied into the record (e.g. ``snr_db``, ``n_sources``, ``method``).
    min_active_samples, nbins : int
        Region rule settings (7 and 100, DeepSIF's).

    Returns
    -------
    record : dict
        Rule-based, each source scored against its own patch (:func:`score_sources`),
        then averaged over the sample's scored sources: ``precision``, ``recall``,
        ``le_mm``, ``corr_identified``; ``sources_found`` (fraction of sources with an
        assigned region); ``precision_by_source`` etc. (lists, NaN for a missed source).
        On the identified set: ``spatial_dispersion_mm`` (:func:`spatial_dispersion`),
        ``dice``, ``hd95_mm`` (:func:`dice_hd95`), ``n_identified``, ``detected``.
        Threshold-free: ``peak_in_patch`` (1.0 when the region of maximum ``|est|`` at
        the GFP peak lies in a true patch), ``peak_distance_mm`` (its distance to the
        nearest true region), ``hm_precision``/``hm_recall`` (regions at or above half
        that maximum), ``auc`` and ``ap`` (region map ``max_t |est|`` against patch
        membership), ``emd_mm`` (:func:`earth_movers_distance` of the ``mean_t |.|``
        maps), ``corr`` (mean over sources of the correlation of true and estimated
        time courses at the patch centre), ``mse`` and ``mse_normalized`` (each array
        divided by its maximum absolute value first). Also ``rule``, ``peak_time``,
        ``peak_region``, ``n_sources``, ``n_true_regions``, ``threshold``,
        ``identified`` and the ``info`` fields.

    Examples
    --------
    >>> est = np.zeros((20, 4)); est[:, 1] = 1.0; est[:, 2] = 0.1
    >>> centres = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0.]])
    >>> rec = evaluate_sample(est, None, centres, patches=[np.array([1])])
    >>> rec["le_mm"], rec["precision"], rec["recall"], rec["peak_in_patch"]
    (0.0, 1.0, 1.0, 1.0)
    """
    rule = check_rule(rule)
    est = _as_2d("est", est)
    n_times, n_regions = est.shape
    if true is not None:
        true = _as_2d("true", true)
        if true.shape != est.shape:
            raise ValueError(f"'true' has shape {true.shape}, expected the shape of 'est' {est.shape}")
    if eeg is not None:
        eeg = _as_2d("eeg", eeg)
        if eeg.shape[0] != n_times:
            raise ValueError(f"'eeg' has shape {eeg.shape}, expected (T, C) with T={n_times} like 'est'")
    if distances is None:
        if centres is None:
            raise ValueError("evaluate_sample needs 'centres' (R, 3) or 'distances' (R, R)")
        centres = np.asarray(centres, dtype=np.float64)
        if centres.shape != (n_regions, 3):
            raise ValueError(f"'centres' has shape {centres.shape}, expected (R, 3) with R={n_regions}")
    elif np.shape(distances) != (n_regions, n_regions):
        raise ValueError(f"'distances' has shape {np.shape(distances)}, expected (R, R) with R={n_regions}")

    if patches is None:
        if true is None:
            raise ValueError("evaluate_sample needs 'true' activity or the true 'patches'")
        patch_list = patches_from_activity(true)
    else:
        patch_list = _clean_patches(patches, n_regions)
    true_regions = np.unique(np.concatenate(patch_list)) if patch_list else np.zeros(0, np.int64)
    member = np.zeros(n_regions, dtype=bool)
    member[true_regions] = True

    rec: dict[str, Any] = {"rule": rule}
    # -- rule-based: DeepSIF's per-source scoring
    identified, thr = identify_regions_by_rule(est, rule, min_active_samples, nbins)
    n_id = int(identified.size)
    rec["n_identified"] = float(n_id)
    rec["detected"] = float(n_id > 0)
    rec["n_true_regions"] = int(true_regions.size)
    rec["n_sources"] = len(patch_list)
    rec["threshold"] = thr
    per_source = score_sources(identified, patch_list, est, true, centres, distances)
    for key, name in (("precision", "precision"), ("recall", "recall"), ("le_mm", "le_mm"),
                      ("corr", "corr_identified")):
        values = [ps[key] for ps in per_source]
        rec[name] = _nanmean(values)
        rec[f"{name}_by_source"] = values
    rec["sources_found"] = float(np.mean([ps["found"] for ps in per_source])) if per_source else math.nan
    _, dist = assign_to_patches(identified, patch_list, centres, distances)
    rec["spatial_dispersion_mm"] = spatial_dispersion(est, identified, dist) if patch_list else math.nan
    rec["dice"], rec["hd95_mm"] = dice_hd95(identified, true_regions, centres, distances)

    # -- threshold-free
    t_peak = gfp_peak(eeg) if eeg is not None else int(np.argmax(np.sum(est**2, axis=1)))
    frame = np.abs(est[t_peak])
    rec["peak_time"] = t_peak
    if frame.max() > 0 and true_regions.size:
        top = int(np.argmax(frame))
        half = np.flatnonzero(frame >= HALF_MAX * frame.max())
        rec["peak_region"] = top
        rec["peak_in_patch"] = float(member[top])
        rec["peak_distance_mm"] = float(_distances(np.array([top]), true_regions, centres, distances).min())
        n_hit = int(member[half].sum())
        rec["hm_precision"] = n_hit / half.size
        rec["hm_recall"] = n_hit / true_regions.size
    else:
        rec["peak_region"] = -1
        for key in ("peak_in_patch", "peak_distance_mm", "hm_precision", "hm_recall"):
            rec[key] = math.nan
    region_map = np.max(np.abs(est), axis=0)
    rec["auc"] = auc_score(region_map, member)
    rec["ap"] = average_precision(region_map, member)
    corr = [_pearson(true[:, p[0]], est[:, p[0]]) for p in patch_list] if true is not None else []
    rec["corr"] = float(np.mean(corr)) if corr and not np.isnan(corr).all() else math.nan

    if true is not None:
        ground = distances if distances is not None else _distances(np.arange(n_regions), np.arange(n_regions),
                                                                    centres, None)
        rec["emd_mm"] = (earth_movers_distance(np.abs(est).mean(axis=0), np.abs(true).mean(axis=0), ground)
                         if np.isfinite(ground).all() else math.nan)
        rec["mse"] = float(np.mean((est - true) ** 2))
        e_max, t_max = np.max(np.abs(est)), np.max(np.abs(true))
        e_n = est / e_max if e_max > 0 else est
        t_n = true / t_max if t_max > 0 else true
        rec["mse_normalized"] = float(np.mean((e_n - t_n) ** 2))
    else:
        rec["emd_mm"] = rec["mse"] = rec["mse_normalized"] = math.nan
    rec["identified"] = identified.tolist()
    if info:
        rec.update(dict(info))
    return rec


def evaluate_batch(
    est: np.ndarray,
    true: np.ndarray | None,
    centres: np.ndarray | None,
    patches: Sequence[Sequence[Any]] | None = None,
    *,
    infos: Sequence[Mapping[str, Any]] | None = None,
    eeg: np.ndarray | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`evaluate_sample` over a batch.

    Parameters
    ----------
    est : array, shape (B, T, R)
        Estimates (a torch tensor on the CPU works too).
    true : array, shape (B, T, R) or None
    centres : array, shape (R, 3) or None
    patches : list of B patch lists, optional
        ``patches[b]`` is the patch list of sample ``b`` (centre first).
    infos : list of B mappings, optional
        Extra fields per sample (``snr_db``, ``n_sources``, ``method``, ``index``...).
    eeg : array, shape (B, T, C), optional
        The EEG, for the peak metrics.
    **kwargs
        Passed to :func:`evaluate_sample` (``rule``, ``distances``, ``min_active_samples``,
        ``nbins``).

    Returns
    -------
    records : list of dict
    """
    est = np.asarray(est)
    if est.ndim != 3:
        raise ValueError(f"'est' has shape {est.shape}, expected (B, T, R)")
    n = est.shape[0]
    for name, seq in (("true", true), ("patches", patches), ("infos", infos), ("eeg", eeg)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"'{name}' has {len(seq)} samples, expected {n} like 'est'")
    return [
        evaluate_sample(
            est[b],
            None if true is None else np.asarray(true[b]),
            centres,
            None if patches is None else patches[b],
            info=None if infos is None else infos[b],
            eeg=None if eeg is None else np.asarray(eeg[b]),
            **kwargs,
        )
        for b in range(n)
    ]


# --------------------------------------------------------------------------- summary
def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "iqr": math.nan,
                "mean": math.nan, "n": 0, "n_nan": int(v.size)}
    q1, med, q3 = np.percentile(finite, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "mean": float(finite.mean()),
        "n": int(finite.size),
        "n_nan": int(v.size - finite.size),
    }


def _metric_names(records: Sequence[Mapping[str, Any]], by: Sequence[str]) -> list[str]:
    names = [m for m in METRIC_NAMES if any(m in r for r in records)]
    skip = set(by) | set(names) | {"method", "index", "identified", "n_true_regions", "threshold", "snr_db", "n_sources",
                                   "peak_time", "peak_region", "rule"}
    # numeric extra fields (e.g. a per-sample loss) are summarized too
    for r in records:
        for k, v in r.items():
            if k not in skip and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                names.append(k)
                skip.add(k)
    return names


def _group_value(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return v if isinstance(v, str) else str(v)


def _summarize_one(records: Sequence[Mapping[str, Any]], metrics: Sequence[str], by: Sequence[str]) -> dict:
    def block(recs: Sequence[Mapping[str, Any]]) -> dict:
        return {
            "n_samples": len(recs),
            "stats": {m: _stats(r.get(m, math.nan) for r in recs) for m in metrics},
        }

    def grouped(keys: Sequence[str]) -> list[dict]:
        groups: dict[tuple, list] = {}
        for r in records:
            if all(k in r for k in keys):
                groups.setdefault(tuple(_group_value(r[k]) for k in keys), []).append(r)
        out = []
        for key in sorted(groups, key=lambda t: tuple((isinstance(x, str), x) for x in t)):
            out.append({"key": dict(zip(keys, key)), **block(groups[key])})
        return out

    return {
        "overall": block(records),
        "groups": grouped(by) if by else [],
        "marginals": {k: grouped([k]) for k in by},
    }


def summarize(
    records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    by: Sequence[str] = ("snr_db", "n_sources"),
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Median and interquartile range of each metric, overall and per group.

    Parameters
    ----------
    records : list of dict, or dict of method name -> list of dict
        Records from :func:`evaluate_sample`. A plain list is split by each record's
        ``"method"`` field (records without one go to method ``"model"``).
    by : sequence of str
        Record fields to group by (jointly, and each one alone in ``"marginals"``).
        Records missing a field are left out of that grouping (not of ``overall``).
    metrics : sequence of str, optional
        Metrics to summarize; default: those of :data:`METRIC_NAMES` present, plus any
        other numeric field.

    Returns
    -------
    summary : dict
        ``{"by": [...], "metrics": [...], "methods": {method: {"overall": B,
        "groups": [{"key": {...}, **B}, ...], "marginals": {field: [{"key": ...,
        **B}, ...]}}}}`` where ``B = {"n_samples": n, "stats": {metric: {"median",
        "q1", "q3", "iqr", "mean", "n", "n_nan"}}}``. NaN values (undefined metrics) are
        left out of the statistics and counted in ``n_nan``.
    """
    by = list(by)
    if isinstance(records, Mapping):
        per_method = {str(k): list(v) for k, v in records.items()}
    else:
        per_method = {}
        for r in records:
            per_method.setdefault(str(r.get("method", "model")), []).append(r)
    all_records = [r for recs in per_method.values() for r in recs]
    names = list(metrics) if metrics is not None else _metric_names(all_records, by)
    return {
        "by": by,
        "metrics": names,
        "methods": {m: _summarize_one(recs, names, by) for m, recs in per_method.items()},
    }
