"""DeepSIF training/test metadata without MATLAB (``generate_sythetic_source.m`` in Python).

A metadata file lists, for every sample, its source patches and how to synthesize them
from neural-mass clips (``docs/SAMPLE_CONTRACT.md``). Patches, second sources, weights
and clips are drawn through :mod:`esikit.head.configs`, as the dynamic dataset draws
them. DeepSIF's recipe, ported:

* every region that has clips is a centre; each centre gets ``n_variations`` variations
  (DeepSIF: 48 for training, 3 for testing) and each variation appears once per sensor
  SNR level (5, 10, 15, 20 dB: ``current_snr``), so ``N = centres x variations x 4``,
  ordered centre, variation, SNR level (DeepSIF's order);
* the patch of a variation is one of the centre's candidate patches
  (:class:`~esikit.head.patches.CandidatePatches`: two- and three-ring patches
  grown along random axes); for training, variation ``v`` takes candidate ``v`` while
  there are candidates and a random one after (DeepSIF), for testing a random one.
  ``patch_mode='grow'`` instead draws a size from ``patch_size_range`` and grows a patch
  of that size (:func:`~esikit.head.patches.grow_patch`);
* two-source samples add a second centre, drawn among the other regions with clips,
  whose patch neither overlaps nor touches the first (DeepSIF drew it without
  constraint);
* ``random_samples`` is the clip number ``k`` (from 1, as the clip files are numbered;
  DeepSIF's script draws 0 .. nper-1) in ``a{centre}/``, drawn per sample and source;
  ``nmm_idx = (centre + 1) * nper + k + 1`` (the sample contract's formula);
* ``mag_change`` is a Gaussian of the distance from the centre that halves at
  ``d_half`` mm (DeepSIF draws one integer ``d_half`` in [40, 60] per file, sigma =
  0.8493 d_half), 1 at the centre;
* ``scale_ratio[i, s, :]`` are the peak amplitudes that give the source the target SNRs
  (DeepSIF: 10, 12, ..., 20 dB for training, 10 and 15 for testing) against the
  background of the rest of its clip (:func:`~esikit.head.snr.find_alpha`). DeepSIF
  computes them with every patch region at weight 1; by default here the
  ``mag_change`` weights are included, so that a sample synthesized by the contract
  reaches exactly the target SNR (``alpha_uses_weights=False`` gives DeepSIF's values);
* padding is 15213 in ``selected_region`` and ``mag_change`` (also for the absent second
  source of a one-source sample, whose ``nmm_idx``, ``random_samples`` and
  ``scale_ratio`` are 0).

Two presets (:data:`PRESETS`, ``esikit simulate --preset``)
-----------------------------------------------------------
``'deepsif'`` reproduces the choices of DeepSIF's script on its template (checked against
``forward/generate_sythetic_source.m`` and ``loaders.py`` of DeepSIF's public repository):

* neighbour lists as given (``neighbours='as_given'``; the template's ``nbs`` has 212
  one-way pairs), with the script's literal ring and smoothing rules
  (:mod:`esikit.head.patches`);
* the second source drawn as the script draws it (``second_source='deepsif'``): for each
  variation a random permutation of the centres gives every first centre its second
  one, whose patch is a random candidate; it may overlap or touch the first, or even
  share its centre (on the template, 4,000 samples: 5.4 % overlap, 3.3 % touch;
  DeepSIF's own code, issue 14: 7.5 % and 3.5 %);
* ``scale_ratio`` with every patch region at weight 1 (``alpha_uses_weights=False``);
* ``mag_change`` from DeepSIF's region distance matrix (``dis_matrix_fs_20k.mat`` when the
  anatomy folder has it, else folded-cortex centroid distances:
  :mod:`esikit.head.deepsif_template`);
* clip numbers ``k`` as in the esikit preset (from 1, as clip files are numbered; DeepSIF's
  script draws 0 .. nper-1, which names a clip ``nmm_0`` its own ``process_raw_nmm.m``
  never writes), so ``nmm_idx = (centre + 1) * nper + k + 1`` follows the sample contract;
* one file per number of sources, every row with that many sources:
  ``{train,test}_sample_source1.mat`` and ``..._source2.mat``, DeepSIF's names; the sensor
  SNR is written as ``sensor_snr`` (what DeepSIF's ``loaders.py`` reads) and
  ``current_snr`` (what its MATLAB wrote). DeepSIF's loader indexes every source slot of
  every row (``curr_lb[0]``), so a file mixing one- and two-source rows cannot be read by
  it; esikit's own reader accepts both layouts.

``'esikit'`` (the default for anything but DeepSIF's template folder, e.g. the 76-region
demo) keeps esikit's choices, each made for a reason:

* symmetric neighbours: a parcellation made from a mesh or a connectome has no reason to
  list a pair one way only, and patches are then connected from both sides (DeepSIF's
  one-way pairs make its patches 4.6 % smaller on average);
* a second source neither overlapping nor touching the first, so that the two sources of
  a sample are two sources (an overlapping pair is one larger, oddly weighted source that
  the target still calls two);
* ``scale_ratio`` including ``mag_change``, so that a sample synthesized by the contract
  reaches exactly the target source SNR (DeepSIF's weight-1 values are higher: median
  +0.6 dB on the template with folded-cortex distances, +1.1 dB in issue 14);
* distances from the anatomy's region centres (on DeepSIF's template: the inflated-surface
  centres its patches grow from);
* one file per split holding one- and two-source rows (padding marks the absent source),
  read by esikit's dataset.

Training on both DeepSIF files: :class:`~esikit.data.SpikeEEGMetadataDataset` reads one
file and ``TRAIN_METADATA_PATH`` names one file (the config has no list of metadata
files). Train on ``..._source2.mat`` (DeepSIF's own default), or, from Python, join the two
datasets with ``torch.utils.data.ConcatDataset`` and call ``set_epoch`` on each part
every epoch (the concatenation does not pass it on, so draws would repeat).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_option
from ..head.configs import PATCH_MODES, ClipIndex, SourceDrawer, source_counts
from ..head.layout import DEEPSIF_PADDING
from ..head.patches import as_adjacency, gaussian_magnitude, grow_patch
from ..head.snr import deepsif_spike_window, find_alpha

logger = logging.getLogger(__name__)

__all__ = [
    # re-exported here as the agreed interface names them under esikit.simulate.metadata
    "grow_patch",
    "find_alpha",
    "NAN_NUMBER",
    "SNR_LEVELS_DB",
    "TRAIN_SOURCE_SNR_DB",
    "TEST_SOURCE_SNR_DB",
    "index_clips",
    "gaussian_magnitude",
    "scale_ratios_for_clip",
    "generate_metadata",
    "write_metadata",
    "make_metadata_files",
    "make_deepsif_metadata_files",
    "resolve_preset",
    "MetadataFiles",
    "PRESETS",
]

#: DeepSIF's padding value in ``selected_region`` and ``mag_change`` (:mod:`esikit.head.layout`).
NAN_NUMBER = DEEPSIF_PADDING
#: Sensor SNR levels of ``current_snr`` (dB); every configuration appears once per level.
SNR_LEVELS_DB = (5.0, 10.0, 15.0, 20.0)
#: Source-to-background SNRs (dB) giving the ``scale_ratio`` options of training files.
TRAIN_SOURCE_SNR_DB = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0)
#: The same for test files.
TEST_SOURCE_SNR_DB = (10.0, 15.0)
#: DeepSIF's range of the distance (mm) at which ``mag_change`` falls to one half.
HALF_MAX_DISTANCE_MM = (40, 60)

_CONFIG_TAG = 0xC0F
_PERMUTATION_TAG = 0x5EC2

#: Metadata presets: their :func:`generate_metadata` settings (module docstring: why).
PRESETS: dict[str, dict[str, Any]] = {
    "esikit": {},
    "deepsif": {
        "patch_mode": "deepsif",
        "neighbours": "as_given",
        "second_source": "deepsif",
        "alpha_uses_weights": False,
        "half_max_mm": HALF_MAX_DISTANCE_MM,
        "max_size": 70,
        "min_centre_distance_mm": 0.0,
    },
}
#: Source counts of the DeepSIF preset's files (``..._source1.mat``, ``..._source2.mat``).
DEEPSIF_SOURCE_COUNTS = (1, 2)

ClipLoader = Callable[[int, int], np.ndarray]


def index_clips(nmm_spikes_dir: str | os.PathLike) -> dict[int, np.ndarray]:
    """List the clips of an ``nmm_spikes`` folder without reading them.

    Parameters
    ----------
    nmm_spikes_dir : path-like
        Folder holding ``a{region}/nmm_{k}.mat``.

    Returns
    -------
    clips : dict
        Region (0-based) -> sorted array of the clip numbers ``k`` (from 1) it has;
        regions without clips are left out.
    """
    return _scan_clips(nmm_spikes_dir).as_dict()


def _scan_clips(nmm_spikes_dir: str | os.PathLike) -> ClipIndex:
    index = ClipIndex.scan(nmm_spikes_dir)
    index = index.select(index.ks >= 1)  # clip files are numbered from 1
    if not len(index):
        raise FileNotFoundError(f"No clip files under {index.root} (looked for a*/nmm_{{k}}.mat with k >= 1). "
                                "Run 'esikit simulate' or set NMM_SPIKES_DIR.")
    return index


def scale_ratios_for_clip(
    clip: np.ndarray,
    fwd: np.ndarray,
    patches: Sequence[np.ndarray],
    weights: Sequence[np.ndarray] | None,
    target_snr_db: Sequence[float] | np.ndarray,
    gram_fwd: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`~esikit.head.snr.find_alpha` for many patches sharing one clip.

    The clip's sensor projection and spike window are computed once; each patch then
    costs one small product. Every patch must have the same centre (the clip's region).

    Parameters
    ----------
    clip : array, shape (n_times, n_regions)
    fwd : array, shape (n_channels, n_regions)
    patches : list of arrays of int
        Patches, centre first, all with the same centre.
    weights : list of arrays of float | None
        Weight of each patch region (None: all 1, DeepSIF).
    target_snr_db : array, shape (K,)
    gram_fwd : array, shape (n_regions, n_regions) | None
        ``fwd.T @ fwd``, to reuse across clips (computed when None).

    Returns
    -------
    alpha : array of float64, shape (n_patches, K)
        Peak amplitudes of the centre waveform reaching each target; 0 for every patch
        when the centre waveform has no positive peak (nothing to scale).
    """
    x = np.asarray(clip, dtype=np.float64)
    f = np.asarray(fwd, dtype=np.float64)
    targets = np.asarray(target_snr_db, dtype=np.float64).reshape(-1)
    out = np.zeros((len(patches), targets.size))
    if not patches:
        return out
    centre = int(patches[0][0])
    wave = x[:, centre]
    peak = wave.max()
    if not peak > 0:
        return out
    wave = wave / peak
    win = deepsif_spike_window(wave)
    n_win = win.size
    wc = wave - wave.mean()
    sig_energy = float(np.dot(wc[win], wc[win]))
    # Background power = ||(E - M_p)[win]||^2 with E the whole clip's centred EEG and
    # M_p the patch's part: expand it so that the clip-sized products happen once per
    # clip and each patch only costs |p| x |p| work.
    xw_t = np.ascontiguousarray((x[win] - x.mean(axis=0)).T)  # (R, n_win), temporal mean removed
    ew = xw_t.T @ f.T  # (n_win, C): EEG of the whole clip in the window
    e_energy = float(np.sum(ew * ew))
    cross = np.sum((xw_t @ ew) * f.T, axis=1)  # (R,): <E, EEG of region r alone>
    # The patches of one clip share its centre, so they live in a small set of regions
    # U: one |U| x |U| block of the window Gram matrix serves them all, and patch i's
    # own energy is ind_i^T (G_U * F_U^T F_U) ind_i with ind_i its indicator over U.
    flat = [np.asarray(p, dtype=np.int64) for p in patches]
    starts = np.array([int(p[0]) for p in flat])
    if (starts != centre).any():
        bad = int(np.flatnonzero(starts != centre)[0])
        raise ValueError(f"all patches must share the clip's centre {centre}, patch {bad} starts at {starts[bad]}")
    union, inverse = np.unique(np.concatenate(flat), return_inverse=True)
    rows = np.repeat(np.arange(len(flat)), [p.size for p in flat])
    ind = np.zeros((len(flat), union.size))
    ind[rows, inverse] = 1.0
    wts = np.zeros((len(flat), union.size))
    wts[rows, inverse] = 1.0 if weights is None else np.concatenate([np.asarray(w, np.float64) for w in weights])
    xu = xw_t[union]
    gram_u = (f[:, union].T @ f[:, union]) if gram_fwd is None else gram_fwd[np.ix_(union, union)]
    q = (xu @ xu.T) * gram_u
    patch_energy = np.einsum("iu,iu->i", ind @ q, ind)
    pn = np.maximum(e_energy - 2.0 * (ind @ cross[union]) + patch_energy, 0.0) / n_win
    topo = wts @ f[:, union].T  # (n_patches, C): weighted topography of each patch
    ps = sig_energy * np.einsum("ic,ic->i", topo, topo) / n_win
    gain = 10.0 ** (targets / 10.0)
    ok = ps > 0
    out[ok] = np.sqrt(gain[None, :] * (pn[ok] / ps[ok])[:, None])
    return out


def _resolve_anatomy(anatomy: Any):
    if isinstance(anatomy, (str, os.PathLike)):
        from ..head.anatomy import load_anatomy

        anatomy = load_anatomy(anatomy)
    return anatomy


def _draw_half_max(half_max_mm: float | Sequence[float], rng: np.random.Generator) -> float:
    if np.isscalar(half_max_mm):
        return float(half_max_mm)  # type: ignore[arg-type]
    lo, hi = (int(v) for v in half_max_mm)  # type: ignore[union-attr]
    return float(rng.integers(lo, hi + 1))  # DeepSIF: randi([40, 60]) once per file


def generate_metadata(
    anatomy: Any,
    clips: str | os.PathLike | Mapping[int, Sequence[int]],
    *,
    n_samples: int | None = None,
    n_variations: int = 48,
    n_sources: int | Sequence[int] = 2,
    snr_levels_db: Sequence[float] = SNR_LEVELS_DB,
    source_snr_db: Sequence[float] = TRAIN_SOURCE_SNR_DB,
    patch_mode: str = "deepsif",
    enumerate_candidates: bool = True,
    patch_size_range: tuple[int, int] = (1, 70),
    max_size: int = 70,
    nper: int | None = None,
    half_max_mm: float | Sequence[float] = HALF_MAX_DISTANCE_MM,
    min_centre_distance_mm: float = 0.0,
    alpha_uses_weights: bool = True,
    neighbours: str = "symmetric",
    second_source: str = "apart",
    distances: np.ndarray | None = None,
    fwd: np.ndarray | None = None,
    clip_loader: ClipLoader | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Make DeepSIF metadata for the regions that have clips.

    Parameters
    ----------
    anatomy : Anatomy | str | Path
        Head model (``adjacency``, ``centres`` in mm, ``fwd``), or a spec for
        :func:`~esikit.head.anatomy.load_anatomy`.
    clips : path-like | dict
        The ``nmm_spikes`` folder (clips are counted by listing ``a{r}/nmm_{k}.mat``
        and read only for ``scale_ratio``), or a dict region -> clip numbers ``k``
        (then ``clip_loader`` is required).
    n_samples : int | None
        Number of samples. None: every centre x ``n_variations`` x SNR level in
        DeepSIF's order. Otherwise ``n_variations`` becomes
        ``ceil(n_samples / (n_centres * n_levels))`` and a random subset of
        ``n_samples`` rows (kept in order) is made.
    n_variations : int
        Variations per centre (DeepSIF: 48 training, 3 testing).
    n_sources : int | sequence of int
        1, 2, or e.g. ``(1, 2)`` to draw the count per configuration; S = the largest.
    snr_levels_db : sequence of float
        Sensor SNR levels, one sample per level and configuration (``current_snr``).
    source_snr_db : sequence of float
        Source-to-background SNRs giving the K ``scale_ratio`` options.
    patch_mode : {'deepsif', 'grow'}
        DeepSIF candidate patches, or patches grown to a size drawn uniformly from
        ``patch_size_range``.
    enumerate_candidates : bool
        ``'deepsif'`` mode: variation ``v`` takes candidate ``v`` while there are
        candidates (DeepSIF's training files); False draws every patch at random (its
        test files).
    patch_size_range : (int, int)
        Inclusive size range for ``'grow'`` mode.
    max_size : int
        P, the padded patch width (DeepSIF: 70).
    nper : int | None
        Clips per region used (``k <= nper``; enters ``nmm_idx``). None: the largest
        ``k`` present.
    half_max_mm : float | (int, int)
        Distance at which ``mag_change`` halves, or DeepSIF's integer range to draw it
        from once.
    min_centre_distance_mm : float
        Smallest distance between the two centres of a two-source sample (their
        patches are also kept disjoint and non-adjacent); ``second_source='apart'`` only.
    alpha_uses_weights : bool
        Include ``mag_change`` in the SNR of ``scale_ratio`` (exact SNR of the
        synthesized sample) or use weight 1 everywhere (DeepSIF).
    neighbours : {'symmetric', 'as_given'}
        Symmetrize the anatomy's adjacency, or use its rows as DeepSIF's neighbour lists
        with DeepSIF's literal rules (``patch_mode='deepsif'`` only).
    second_source : {'apart', 'deepsif'}
        ``'apart'``: a second centre among the other regions with clips, its patch
        neither overlapping nor touching the first. ``'deepsif'``: DeepSIF's draw, a
        random permutation of the centres per variation maps each first centre to its
        second one, whose patch is a random candidate (or a grown patch in ``'grow'``
        mode); overlap allowed.
    distances : array, shape (n_regions, n_regions) | None
        Region distances (mm) for ``mag_change``; None: Euclidean between the anatomy's
        centres.
    fwd : array, shape (n_channels, n_regions) | None
        Leadfield for ``scale_ratio`` (default ``anatomy.fwd``).
    clip_loader : callable | None
        ``clip_loader(region, k) -> (T, R)`` array; default reads the folder's files.
        Each clip is read once.
    seed : int
        Seed of every random draw (patch candidates use it too).
    progress : bool
        Show progress bars.

    Returns
    -------
    meta : dict of str to array
        ``selected_region`` int32 (N, S, P), ``nmm_idx`` int64 (N, S),
        ``random_samples`` int64 (N, S), ``scale_ratio`` float64 (N, S, K),
        ``mag_change`` float64 (N, S, P), ``current_snr`` float64 (N, 1).
    """
    from tqdm.auto import tqdm

    anatomy = _resolve_anatomy(anatomy)
    check_option("neighbours", neighbours, ("symmetric", "as_given"))
    check_option("second_source", second_source, ("apart", "deepsif"))
    if neighbours == "as_given" and patch_mode != "deepsif":
        raise ValueError("neighbours='as_given' needs patch_mode='deepsif' (grown patches use a symmetric adjacency)")
    n_regions = as_adjacency(anatomy)[0].shape[0]
    if distances is not None:
        distances = np.asarray(distances, dtype=np.float64)
        if distances.shape != (n_regions, n_regions):
            raise ValueError(
                f"distances has shape {distances.shape}, expected ({n_regions}, {n_regions}) to match the anatomy"
            )
    fwd = np.asarray(anatomy.fwd if fwd is None else fwd, dtype=np.float64)
    if fwd.ndim != 2 or fwd.shape[1] != n_regions:
        raise ValueError(f"fwd has shape {fwd.shape}, expected (n_channels, {n_regions}) to match the anatomy")
    check_option("patch_mode", patch_mode, PATCH_MODES)
    source_options = source_counts(n_sources)
    n_src = max(source_options)
    levels = np.asarray(snr_levels_db, dtype=np.float64).reshape(-1)
    targets = np.asarray(source_snr_db, dtype=np.float64).reshape(-1)
    if levels.size == 0 or targets.size == 0:
        raise ValueError("snr_levels_db and source_snr_db must hold at least one value each")
    lo_size, hi_size = (int(v) for v in patch_size_range)
    if not 1 <= lo_size <= hi_size <= max_size:
        raise ValueError(
            f"Invalid value for 'patch_size_range': expected 1 <= low <= high <= max_size={max_size}, "
            f"got {patch_size_range!r}."
        )

    # -- clips --------------------------------------------------------------------------
    if isinstance(clips, (str, os.PathLike)):
        index = _scan_clips(clips)
        loader = clip_loader or index.load
    else:
        if clip_loader is None:
            raise ValueError("clip_loader is needed when clips is a dict of region -> clip numbers")
        index, loader = ClipIndex.from_mapping(clips), clip_loader
    inside = (index.regions >= 0) & (index.regions < n_regions)
    outside = np.unique(index.regions[~inside]).tolist()
    if outside:
        logger.warning("Ignoring clip folders of %d region(s) outside [0, %d): %s", len(outside), n_regions, outside[:5])
    if not inside.any():
        raise ValueError(f"no clip of a region in [0, {n_regions})")
    nper = int(index.ks[inside].max()) if nper is None else int(nper)
    index = index.select(inside & (index.ks <= nper))
    if not len(index):
        raise ValueError(f"no region has a clip numbered 1..{nper}")
    centre_list = index.centres
    n_centres = centre_list.size
    n_levels = levels.size

    ss = np.random.SeedSequence(int(seed))
    rng_k, rng_misc, rng_rows = (np.random.default_rng(s) for s in ss.spawn(3))
    half_max = _draw_half_max(half_max_mm, rng_misc)
    logger.info("mag_change halves at %.1f mm from the centre", half_max)

    if n_samples is not None:
        n_samples = int(n_samples)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': expected an integer >= 1, got {n_samples}.")
        n_variations = int(np.ceil(n_samples / (n_centres * n_levels)))
    n_variations = int(n_variations)
    if n_variations < 1:
        raise ValueError(f"Invalid value for 'n_variations': expected an integer >= 1, got {n_variations}.")
    n_total = n_centres * n_variations * n_levels
    if n_samples is None or n_samples >= n_total:
        rows = np.arange(n_total)
    else:
        rows = np.sort(rng_rows.choice(n_total, size=n_samples, replace=False))
    n = rows.size
    cfg_of_row = rows // n_levels  # configuration = (centre, variation)
    level_of_row = rows % n_levels
    cfgs = np.unique(cfg_of_row)

    # -- patches per configuration ------------------------------------------------------
    drawer = SourceDrawer(anatomy, centre_list, patch_mode=patch_mode, size_range=(lo_size, hi_size), max_size=max_size,
                          min_centre_distance_mm=min_centre_distance_mm, distances=distances,
                          symmetrize=neighbours == "symmetric", seed=seed)
    perms: dict[int, np.ndarray] = {}
    cfg_patches: dict[int, list[np.ndarray]] = {}
    n_fallback = 0
    for cfg in tqdm(cfgs.tolist(), desc="patches", disable=not progress, leave=False):
        c = int(centre_list[cfg // n_variations])
        v = cfg % n_variations
        # one generator per configuration (4 entropy words: never the stream of a candidate patch)
        rng = np.random.default_rng([int(seed), _CONFIG_TAG, cfg, 0])
        patches = [drawer.patch(c, rng, variation=v if enumerate_candidates else None)]
        k_src = source_options[int(rng.integers(len(source_options)))] if len(source_options) > 1 else source_options[0]
        partner = None
        if k_src == 2 and second_source == "deepsif":
            # DeepSIF: per variation, a permutation of the centres gives each its partner
            if v not in perms:
                perms[v] = np.random.default_rng([int(seed), _PERMUTATION_TAG, v, 1]).permutation(n_centres)
            partner = int(centre_list[perms[v][cfg // n_variations]])
        p2 = drawer.second(patches[0], rng, partner) if k_src == 2 else None
        n_fallback += int(k_src == 2 and p2 is None)
        cfg_patches[cfg] = patches if p2 is None else [*patches, p2]
    if n_fallback:
        logger.warning(
            "%d of %d two-source configurations found no second patch disjoint from and not touching the first; "
            "they hold one source", n_fallback, cfgs.size)

    # -- fields ------------------------------------------------------------------------
    selected = np.full((n, n_src, max_size), NAN_NUMBER, dtype=np.int32)
    mag = np.full((n, n_src, max_size), float(NAN_NUMBER), dtype=np.float64)
    present = np.zeros((n, n_src), dtype=bool)
    cfg_weights = {cfg: [drawer.weights(p, half_max) for p in ps] for cfg, ps in cfg_patches.items()}
    for i, cfg in enumerate(cfg_of_row.tolist()):
        for s, (p, w) in enumerate(zip(cfg_patches[cfg], cfg_weights[cfg])):
            selected[i, s, : p.size] = p
            mag[i, s, : p.size] = w
            present[i, s] = True
    centre_of = np.where(present, selected[:, :, 0], -1).astype(np.int64)
    # k uniformly among the clips of each source's centre, drawn for all sources at once
    c_present = centre_of[present]
    random_samples = np.zeros((n, n_src), dtype=np.int64)
    random_samples[present] = index.ks[index.pick(c_present, rng_k.random(c_present.size))]
    nmm_idx = np.where(present, (centre_of + 1) * nper + random_samples + 1, 0)

    # -- scale_ratio, one clip read per (region, k) -----------------------------------------
    scale = np.zeros((n, n_src, targets.size), dtype=np.float64)
    pairs_i, pairs_s = np.nonzero(present)
    order = np.lexsort((random_samples[pairs_i, pairs_s], centre_of[pairs_i, pairs_s]))
    pairs_i, pairs_s = pairs_i[order], pairs_s[order]
    keys = centre_of[pairs_i, pairs_s] * (nper + 1) + random_samples[pairs_i, pairs_s]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    groups = np.split(np.arange(keys.size), bounds)
    n_flat = 0
    gram_fwd = fwd.T @ fwd
    for g in tqdm(groups, desc="scale_ratio", disable=not progress, leave=False):
        gi, gs = pairs_i[g], pairs_s[g]
        region, k = int(centre_of[gi[0], gs[0]]), int(random_samples[gi[0], gs[0]])
        clip = np.asarray(loader(region, k), dtype=np.float64)
        if clip.ndim != 2 or clip.shape[1] != n_regions:
            raise ValueError(
                f"clip a{region}/nmm_{k}: shape {clip.shape}, expected (T, {n_regions}) to match the leadfield"
            )
        pts = [cfg_patches[int(cfg_of_row[i])][s] for i, s in zip(gi, gs)]
        wts = [cfg_weights[int(cfg_of_row[i])][s] for i, s in zip(gi, gs)] if alpha_uses_weights else None
        alpha = scale_ratios_for_clip(clip, fwd, pts, wts, targets, gram_fwd)
        if not alpha.any():
            n_flat += len(g)
        scale[gi, gs] = alpha
    if n_flat:
        logger.warning("%d source(s) use a clip whose centre waveform has no positive peak: scale_ratio 0", n_flat)

    return {
        "selected_region": selected,
        "nmm_idx": nmm_idx.astype(np.int64),
        "random_samples": random_samples,
        "scale_ratio": scale,
        "mag_change": mag,
        "current_snr": levels[level_of_row].reshape(n, 1),
    }


def write_metadata(path: str | os.PathLike, meta: Mapping[str, np.ndarray], format: str = "auto") -> Path:
    """Write metadata to a MAT file.

    Parameters
    ----------
    path : path-like
        Output file (e.g. ``train_sample_source1.mat``).
    meta : dict of str to array
        As returned by :func:`generate_metadata`.
    format : {'auto', 'v5', 'v7.3'}
        ``'auto'``: MAT v5 (what DeepSIF's MATLAB writes by default) unless a field is
        too large for it (2 GiB), then v7.3.

    Returns
    -------
    path : Path
    """
    from esikit.io import fits_in_mat_v5, save_mat_file

    check_option("format", format, ("auto", "v5", "v7.3"))
    path = Path(path)
    if format == "auto":
        format = "v5" if fits_in_mat_v5(meta) else "v7.3"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mat_file(path, dict(meta), format=format)
    logger.info("Wrote %s (%s, %d samples)", path, format, len(next(iter(meta.values()))))
    return path


class MetadataFiles(tuple):
    """``(train_path, test_path)`` as a tuple, plus every file written, by source count.

    Attributes
    ----------
    by_sources : dict of int to (Path, Path)
        ``{n_sources: (train, test)}``; ``{0: (train, test)}`` for the esikit preset's
        files, which mix source counts.
    preset : str
    """

    by_sources: dict[int, tuple[Path, Path]]
    preset: str

    def __new__(cls, train: Path, test: Path, by_sources: dict[int, tuple[Path, Path]], preset: str):
        obj = super().__new__(cls, (train, test))
        obj.by_sources = dict(by_sources)
        obj.preset = preset
        return obj


def resolve_preset(preset: str, anatomy: Any) -> str:
    """The metadata preset ``'auto'`` stands for, or ``preset`` checked.

    Parameters
    ----------
    preset : {'auto', 'esikit', 'deepsif'}
    anatomy : Anatomy | str | Path
        The anatomy spec: ``'auto'`` gives ``'deepsif'`` for a folder holding DeepSIF's
        template files (:func:`~esikit.head.deepsif_template.missing_template_files`),
        ``'esikit'`` for anything else (the built-in 76-region anatomy, saved ``.npz``).

    Returns
    -------
    str
        ``'esikit'`` or ``'deepsif'``.
    """
    check_option("preset", preset, ("auto", *PRESETS))
    if preset != "auto":
        return preset
    from ..head.deepsif_template import DeepSIFTemplate, missing_template_files

    if isinstance(anatomy, DeepSIFTemplate):
        return "deepsif"
    builtin = isinstance(anatomy, str) and anatomy.lower() in ("default", "tvb76")
    if isinstance(anatomy, (str, os.PathLike)) and not builtin:
        folder = Path(anatomy)
        if folder.is_dir() and not (folder / "anatomy.npz").exists() and not missing_template_files(folder):
            return "deepsif"
    return "esikit"


def make_deepsif_metadata_files(
    template: Any,
    nmm_spikes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_train: int | None,
    n_test: int | None,
    seed: int = 0,
    n_sources: Sequence[int] = DEEPSIF_SOURCE_COUNTS,
    **kw: Any,
) -> MetadataFiles:
    """DeepSIF's metadata files: one train/test pair per number of sources.

    Writes ``{train,test}_sample_source{n}.mat`` for each ``n`` in ``n_sources``, every
    row with ``n`` sources, with the ``'deepsif'`` preset's choices (module docstring) and
    both ``sensor_snr`` and ``current_snr``. Training files enumerate candidates with 6
    source SNR options, test files draw them with 2, as DeepSIF's script does.

    Parameters
    ----------
    template : str | Path | DeepSIFTemplate
        DeepSIF's anatomy folder (:func:`~esikit.head.deepsif_template.load_deepsif_template`).
    nmm_spikes_dir : path-like
    out_dir : path-like
    n_train, n_test : int | None
        Samples per file (None: DeepSIF's full design, 48 and 3 variations per centre x 4).
    seed : int
        The pair for ``n`` sources uses seeds ``seed + 2 (n - 1)`` (train) and ``+ 1`` (test).
    n_sources : sequence of int
        Source counts, one pair of files each (DeepSIF: 1 and 2).
    **kw
        More :func:`generate_metadata` arguments (``nper``, ``clip_loader``, ``progress``,
        ``format``; ``train_kw``/``test_kw`` per split); they override the preset.

    Returns
    -------
    MetadataFiles
        Unpacks as the pair of the largest source count (``..._source2.mat``, DeepSIF's
        training default); ``by_sources`` has them all.

    Raises
    ------
    FileNotFoundError
        When the folder lacks a file the preset needs (each one named).
    """
    from ..head.anatomy import Anatomy
    from ..head.deepsif_template import DeepSIFTemplate, load_deepsif_template

    if isinstance(template, Anatomy):
        raise ValueError(
            "the 'deepsif' preset needs DeepSIF's anatomy folder (its neighbour lists as given and its region "
            f"distances), got an Anatomy ({template.name}); pass the folder, or use preset 'esikit'"
        )
    if not isinstance(template, DeepSIFTemplate):
        if isinstance(template, str) and template.lower() in ("default", "tvb76"):
            raise ValueError(
                "the 'deepsif' preset needs DeepSIF's anatomy folder, got the built-in anatomy "
                f"{template!r}; use preset 'esikit' (or 'auto')"
            )
        template = load_deepsif_template(template)
    counts = tuple(sorted(set(source_counts(n_sources))))
    logger.info("DeepSIF preset on %r", template)
    out_dir = Path(out_dir)
    train_kw = dict(kw.pop("train_kw", {}) or {})
    test_kw = dict(kw.pop("test_kw", {}) or {})
    fmt = kw.pop("format", "auto")
    base = {**PRESETS["deepsif"], "distances": template.distances}
    by_sources: dict[int, tuple[Path, Path]] = {}
    for n in counts:
        pair = []
        for split, n_samples, split_seed, split_args in (
            ("train", n_train, seed + 2 * (n - 1),
             {"n_variations": 48, "source_snr_db": TRAIN_SOURCE_SNR_DB, "enumerate_candidates": True, **train_kw}),
            ("test", n_test, seed + 2 * (n - 1) + 1,
             {"n_variations": 3, "source_snr_db": TEST_SOURCE_SNR_DB, "enumerate_candidates": False, **test_kw}),
        ):
            meta = generate_metadata(template, nmm_spikes_dir, n_samples=n_samples, seed=split_seed,
                                     **{**base, **split_args, **kw, "n_sources": n})
            meta["sensor_snr"] = meta["current_snr"].copy()  # the name DeepSIF's loaders.py reads
            pair.append(write_metadata(out_dir / f"{split}_sample_source{n}.mat", meta, fmt))
            del meta
        by_sources[n] = (pair[0], pair[1])
    train, test = by_sources[counts[-1]]
    return MetadataFiles(train, test, by_sources, "deepsif")


def make_metadata_files(
    anatomy: Any,
    nmm_spikes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_train: int | None,
    n_test: int | None,
    seed: int = 0,
    preset: str = "esikit",
    **kw: Any,
) -> MetadataFiles:
    """Write ``train_sample_source1.mat`` and ``test_sample_source1.mat`` (DeepSIF's pair).

    With ``preset='deepsif'`` (or ``'auto'`` on DeepSIF's template folder) this is
    :func:`make_deepsif_metadata_files`: one pair per source count, DeepSIF's choices.

    The training file enumerates each centre's candidate patches with 6 source SNR
    options (10..20 dB); the test file draws random candidates with 2 options (10, 15
    dB) and another seed (DeepSIF does not keep test centres apart from training ones:
    both use every centre).

    Parameters
    ----------
    anatomy : Anatomy | str | Path
    nmm_spikes_dir : path-like
    out_dir : path-like
        Created if needed.
    n_train, n_test : int | None
        Number of samples in each file; None gives DeepSIF's full design (48 and 3
        variations per centre, x 4 SNR levels).
    seed : int
        Training seed; the test file uses ``seed + 1``.
    preset : {'esikit', 'deepsif', 'auto'}
        Which choices (module docstring, :data:`PRESETS`); ``'auto'``: :func:`resolve_preset`.
    **kw
        Passed to :func:`generate_metadata` for both files (e.g. ``n_sources``,
        ``patch_mode``, ``nper``, ``clip_loader``, ``progress``); ``train_kw`` and
        ``test_kw`` dicts override per file. ``template``: DeepSIF's folder or
        :class:`~esikit.head.deepsif_template.DeepSIFTemplate` for the ``'deepsif'``
        preset when ``anatomy`` is the :class:`~esikit.head.anatomy.Anatomy` simulated on.

    Returns
    -------
    MetadataFiles
        Unpacks as ``train_path, test_path``.
    """
    template = kw.pop("template", None)
    if resolve_preset(preset, template if template is not None else anatomy) == "deepsif":
        # ``template``: DeepSIF's geometry when ``anatomy`` is the Anatomy simulated on
        template = anatomy if template is None else template
        return make_deepsif_metadata_files(template, nmm_spikes_dir, out_dir, n_train, n_test, seed=seed, **kw)
    anatomy = _resolve_anatomy(anatomy)
    out_dir = Path(out_dir)
    train_kw = dict(kw.pop("train_kw", {}) or {})
    test_kw = dict(kw.pop("test_kw", {}) or {})
    fmt = kw.pop("format", "auto")
    train_args = {"n_variations": 48, "source_snr_db": TRAIN_SOURCE_SNR_DB, "enumerate_candidates": True, **kw, **train_kw}
    test_args = {"n_variations": 3, "source_snr_db": TEST_SOURCE_SNR_DB, "enumerate_candidates": False, **kw, **test_kw}
    train = generate_metadata(anatomy, nmm_spikes_dir, n_samples=n_train, seed=seed, **train_args)
    train_path = write_metadata(out_dir / "train_sample_source1.mat", train, fmt)
    del train
    test = generate_metadata(anatomy, nmm_spikes_dir, n_samples=n_test, seed=seed + 1, **test_args)
    test_path = write_metadata(out_dir / "test_sample_source1.mat", test, fmt)
    return MetadataFiles(train_path, test_path, {0: (train_path, test_path)}, "esikit")
