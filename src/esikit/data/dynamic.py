"""The dynamic dataset: sample configurations drawn on the fly, no metadata file.

Where :class:`~esikit.data.SpikeEEGMetadataDataset` reads each sample's sources from a
DeepSIF metadata file, :class:`DynamicSpikeEEGDataset` draws them for every
``(seed, epoch, index)``: centres among the regions that have clips, a clip of each
centre, patches grown over the region adjacency
(:func:`esikit.head.patches.grow_patch` or DeepSIF's candidates), the
``mag_change``-style Gaussian weights, the sensor SNR and each source's peak amplitude
(set, by default, for a source-to-background SNR drawn from ``scale_range`` with
:func:`esikit.head.snr.find_alpha`). Everything is drawn from
generators seeded by ``(seed, epoch, index)``: the same in any worker, process or
order; a new epoch gives new configurations. Patches, second sources, weights and clips
are drawn through :mod:`esikit.head.configs`, as the metadata generator draws them.

The drawn configurations of a batch become a :class:`~esikit.data.synthesis.SampleSpecs`
(one scale option per source: the drawn peak), made by the same fast kernel or
reference function as the metadata dataset's (``synthesis``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_option, check_positive_int
from ..head.configs import PATCH_MODES, ClipIndex, SourceDrawer, source_counts
from .clips import MISSING_CLIP_POLICIES, ClipReadError, ClipStore, FolderClipStore, open_clip_store
from ._base import EpochIndexedDataset
from .synthesis import SampleSpecs

logger = logging.getLogger(__name__)

__all__ = ["DynamicSpikeEEGDataset", "SCALE_MODES", "PATCH_MODES"]

#: How ``scale_range`` is read: source-to-background SNR in dB, or peak amplitude.
SCALE_MODES = ("snr_db", "peak")

# Tag mixed into the configuration generator so its stream never coincides with the
# one of draw_sample_randomness, which is seeded by (seed, epoch, index) alone.
_CONFIG_STREAM = 0x5EED


def _pair(name: str, value: Sequence[float], kind: type = float) -> tuple[Any, Any]:
    try:
        lo, hi = (kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid value for {name!r}: expected a (low, high) pair, got {value!r}.") from None
    if lo > hi:
        raise ValueError(f"Invalid value for {name!r}: expected low <= high, got {value!r}.")
    return lo, hi


class DynamicSpikeEEGDataset(EpochIndexedDataset):
    """EEG/source pairs from sample configurations drawn on the fly.

    Parameters
    ----------
    nmm_spikes_dir : path-like
        Clip folder ``a{region}/nmm_{k}.mat`` (a consolidated ``*_nmm.h5`` store does
        not say which region each clip belongs to, so it cannot be used here).
    fwd : array, shape (C, R) or (R, C) | path-like | None
        Forward matrix or a file with it; None uses ``anatomy.fwd``.
    anatomy : Anatomy | str | Path
        Region adjacency and centres (mm) for growing patches, or a spec for
        :func:`esikit.head.anatomy.load_anatomy`.
    dataset_len : int
        Samples per epoch.
    n_sources : int | sequence of int
        Number of sources, drawn uniformly from the given values (1 and/or 2).
    snr_range_db : (float, float)
        Sensor SNR, uniform in dB.
    patch_size_range : (int, int)
        Patch size in regions, uniform integer, inclusive (``patch_mode='grow'``).
    scale_range : (float, float)
        ``scale_mode='snr_db'``: source-to-background SNR in dB, uniform; the peak
        amplitude is the :func:`~esikit.head.snr.find_alpha` value for it
        (DeepSIF's ``scale_ratio`` options span 10-20 dB). ``'peak'``: the peak
        amplitude itself, uniform.
    seed : int
        Seed of every draw.
    normalize : bool
        Normalize EEG (re-reference, max |.| = 1) and source (max = 1).
    scale_mode : {'snr_db', 'peak'}
    patch_mode : {'grow', 'deepsif'}
        Grow to a drawn size, or draw one of DeepSIF's candidate patches.
    half_max_mm : (float, float)
        Distance at which a patch region's weight halves (Gaussian in the distance from
        the centre, like ``mag_change``), uniform per source.
    min_centre_distance_mm : float
        Smallest distance between the centres of a two-source sample; the patches are
        also disjoint and not touching.
    cache_mb : float
        Per-process clip cache.
    clip_store : FolderClipStore | None
        An already opened store (then ``nmm_spikes_dir`` is only used for messages).
    synthesis, target, cache_dir, noise, noise_bank_path, channel_names
        As for :class:`~esikit.data.SpikeEEGMetadataDataset`.
    missing_clips : {'zeros', 'error', 'drop'}
        Unreadable clips (found at start-up): a source drawing one contributes nothing
        (one warning), raise, or never draw them.

    Examples
    --------
    >>> ds = DynamicSpikeEEGDataset("source/nmm_spikes", None, "anatomy/anatomy.npz",
    ...                             dataset_len=10000)  # doctest: +SKIP
    >>> eeg, source = ds[0]  # (T, C), (T, R) float32 tensors  # doctest: +SKIP
    """

    #: Keys of :func:`esikit.config.dataset_options` this dataset takes (the others are
    #: about metadata files).
    DATASET_OPTIONS = ("normalize", "synthesis", "cache_dir", "missing_clips", "noise", "noise_bank_path")

    def __init__(
        self,
        nmm_spikes_dir: str | PathLike,
        fwd: np.ndarray | str | PathLike | None,
        anatomy: Any,
        dataset_len: int,
        n_sources: int | Sequence[int] = (1, 2),
        snr_range_db: tuple[float, float] = (5.0, 20.0),
        patch_size_range: tuple[int, int] = (5, 70),
        scale_range: tuple[float, float] = (10.0, 20.0),
        seed: int = 0,
        normalize: bool = True,
        *,
        scale_mode: str = "snr_db",
        patch_mode: str = "grow",
        half_max_mm: tuple[float, float] = (40.0, 60.0),
        min_centre_distance_mm: float = 0.0,
        cache_mb: float = 512,
        clip_store: ClipStore | None = None,
        synthesis: str = "fast",
        target: str = "dense",
        cache_dir: str | PathLike | None = None,
        missing_clips: str = "zeros",
        noise: str = "white",
        noise_bank_path: str | PathLike | None = None,
        channel_names: Sequence[str] | None = None,
    ):
        from ..head.patches import as_adjacency
        from .dataset import learn_clip_shape, resolve_forward
        from .fast import SYNTHESIS_MODES, TARGET_MODES

        check_option("scale_mode", scale_mode, SCALE_MODES)
        check_option("patch_mode", patch_mode, PATCH_MODES)
        check_option("synthesis", synthesis, SYNTHESIS_MODES)
        self.target = check_option("target", target, TARGET_MODES if synthesis == "fast" else ("dense",))
        self.missing_clips = check_option("missing_clips", missing_clips, MISSING_CLIP_POLICIES)
        if isinstance(anatomy, (str, PathLike)):
            from ..head.anatomy import load_anatomy

            anatomy = load_anatomy(anatomy)
        n_anatomy = as_adjacency(anatomy)[0].shape[0]
        if fwd is None:
            fwd = getattr(anatomy, "fwd", None)
            if fwd is None:
                raise ValueError("fwd is None and the anatomy has no 'fwd'; give a forward matrix")
        # the anatomy's region count orients the leadfield, as the clips' does for metadata
        self.fwd, self.fwd_source = resolve_forward(fwd, n_regions=n_anatomy)
        self._fwd64 = self.fwd.astype(np.float64)
        n_regions = self.fwd.shape[1]
        if n_anatomy != n_regions:
            raise ValueError(
                f"anatomy has {n_anatomy} regions but the forward matrix {self.fwd_source} has "
                f"{n_regions} (shape {self.fwd.shape}); they must match"
            )
        self.dataset_len = int(check_positive_int("dataset_len", dataset_len))  # type: ignore[arg-type]
        self.n_sources_options = source_counts(n_sources)
        self.snr_range_db = _pair("snr_range_db", snr_range_db)
        self.patch_size_range = _pair("patch_size_range", patch_size_range, int)
        if self.patch_size_range[0] < 1:
            raise ValueError(f"Invalid value for 'patch_size_range': expected sizes >= 1, got {patch_size_range!r}.")
        self.scale_range = _pair("scale_range", scale_range)
        self.half_max_mm = _pair("half_max_mm", half_max_mm)
        self.scale_mode = scale_mode
        self.patch_mode = patch_mode
        self.min_centre_distance_mm = float(min_centre_distance_mm)
        self.seed = int(seed)
        self.normalize = bool(normalize)

        if clip_store is None:
            clip_store = open_clip_store(Path(nmm_spikes_dir), cache_bytes=int(cache_mb * 2**20))
        if not isinstance(clip_store, FolderClipStore):
            raise ValueError(
                f"the dynamic dataset needs an nmm_spikes folder (a{{region}}/nmm_{{k}}.mat), got {clip_store!r}"
            )
        self.store: FolderClipStore = clip_store
        n_times, clip_regions = learn_clip_shape(self.store)
        if clip_regions != n_regions:
            raise ValueError(
                f"{self.store.describe(0)}: clip has {clip_regions} regions (shape {(n_times, clip_regions)}), "
                f"but the forward matrix {self.fwd_source} has {n_regions}; they must match"
            )
        self._init_noise(noise, noise_bank_path, channel_names)
        if synthesis == "fast":
            cache = self._open_fast_path(cache_dir)
            self._valid, errors = cache.valid, cache.errors
        else:
            self._valid, errors = self._read_every_clip() if missing_clips != "zeros" else (None, {})
        self._pool = np.arange(len(self.store), dtype=np.int64)
        if errors:
            paths = [errors[c].split(": cannot read")[0] for c in sorted(errors)]
            text = (f"{self.store.root}: {len(paths)} of {len(self.store)} clips cannot be read: "
                    + ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else ""))
            if missing_clips == "error":
                raise FileNotFoundError(text + " (missing_clips='error')")
            if missing_clips == "drop":
                logger.warning("%s; never drawing them (missing_clips='drop')", text)
                self._pool = np.flatnonzero(self._valid)
            else:
                logger.warning("%s; a source drawing one contributes nothing (missing_clips='zeros')", text)
        # the clips a source may draw, by region (ids into the store)
        clips = ClipIndex(self.store.clip_regions[self._pool], self.store.clip_ks[self._pool], self._pool)
        inside = (clips.regions >= 0) & (clips.regions < n_regions)
        if not inside.all():
            logger.warning("Ignoring clips of %d region(s) outside [0, %d)", np.unique(clips.regions[~inside]).size,
                           n_regions)
        self.clips = clips.select(inside)
        self.clip_centres = self.clips.centres
        if self.clip_centres.size == 0:
            raise FileNotFoundError(f"{self.store.root}: no readable clip of a region in [0, {n_regions})")
        if 2 in self.n_sources_options and self.clip_centres.size < 2:
            raise ValueError(f"{self.store.root}: two-source samples need clips of at least two regions")
        self.drawer = SourceDrawer(anatomy, self.clip_centres, patch_mode=patch_mode, size_range=self.patch_size_range,
                                   max_size=max(70, self.patch_size_range[1]),
                                   min_centre_distance_mm=self.min_centre_distance_mm, seed=self.seed)
        self._init_indexing(np.arange(self.dataset_len, dtype=np.int64))
        logger.info("%r", self)

    def _read_every_clip(self) -> tuple[np.ndarray, dict[int, str]]:
        """Which clips can be read (reference path with missing_clips 'error' or 'drop')."""
        valid = np.ones(len(self.store), dtype=bool)
        errors: dict[int, str] = {}
        for cid in range(len(self.store)):
            try:
                self.store.get(cid)
            except ClipReadError as exc:
                valid[cid], errors[cid] = False, str(exc)
        return valid, errors

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_source_slots(self) -> int:
        """S: the most sources a sample can have."""
        return max(self.n_sources_options)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(clips={self.store!r}, samples={len(self)}, centres={self.clip_centres.size}, "
            f"n_sources={self.n_sources_options}, regions={self.n_regions}, channels={self.n_channels}, "
            f"times={self.n_times}, snr_range_db={self.snr_range_db}, patch_mode='{self.patch_mode}', "
            f"patch_size_range={self.patch_size_range}, scale_mode='{self.scale_mode}', "
            f"scale_range={self.scale_range}, seed={self.seed}, epoch={self.epoch})"
        )

    # -- configuration -------------------------------------------------------------------------
    def _clip(self, clip_id: int) -> np.ndarray | None:
        """Clip ``clip_id`` (T, R) from the packed cache (fast path) or the store; None if unreadable."""
        if self._fast is not None:
            return self._fast.cache.clips[clip_id].T if self._valid[clip_id] else None
        return self._load_clip(clip_id)

    def _peak(self, clip_id: int, patch: np.ndarray, weights: np.ndarray, value: float) -> float:
        """Peak amplitude for a drawn ``scale_range`` value."""
        if self.scale_mode == "peak":
            return value
        from ..head.snr import find_alpha

        clip = self._clip(clip_id)
        if clip is None or not clip[:, patch[0]].max() > 0:
            return 0.0  # nothing to scale: the source contributes its clip's background only
        return float(find_alpha(clip, self._fwd64, patch, value, weights=weights))

    def sample_config(self, i: int, epoch: int | None = None) -> dict[str, Any]:
        """The drawn configuration of sample ``i``: everything but the noise.

        Returns
        -------
        config : dict
            ``index``, ``epoch``, ``patches`` (list of int arrays, centre first),
            ``centres``, ``weights`` (list of float arrays), ``clip_ids``, ``clips``
            (list of ``(region, k)``), ``scales`` (peak amplitudes), ``snr_db``,
            ``n_sources``, and ``source_snr_db`` (the drawn source SNRs, ``scale_mode
            ='snr_db'``) or None.
        """
        g = self.sample_index(i)
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, g, _CONFIG_STREAM])
        n_src = self.n_sources_options[int(rng.integers(len(self.n_sources_options)))]
        snr_db = float(rng.uniform(*self.snr_range_db))
        c1 = int(self.clip_centres[rng.integers(self.clip_centres.size)])
        patches = [self.drawer.patch(c1, rng)]
        p2 = self.drawer.second(patches[0], rng) if n_src == 2 else None
        if p2 is not None:
            patches.append(p2)
        weights, clip_ids, scales, source_snr = [], [], [], []
        for p in patches:
            w = self.drawer.weights(p, float(rng.uniform(*self.half_max_mm)))
            cid = int(self.clips.ids[self.clips.draw(int(p[0]), rng)])
            value = float(rng.uniform(*self.scale_range))
            source_snr.append(value)
            scales.append(self._peak(cid, p, w, value))
            weights.append(w)
            clip_ids.append(cid)
        return {
            "index": g,
            "epoch": epoch,
            "patches": patches,
            "centres": [int(p[0]) for p in patches],
            "weights": weights,
            "clip_ids": clip_ids,
            "clips": [(int(self.store.clip_regions[c]), int(self.store.clip_ks[c])) for c in clip_ids],
            "scales": scales,
            "snr_db": snr_db,
            "n_sources": len(patches),
            "source_snr_db": source_snr if self.scale_mode == "snr_db" else None,
        }

    def sample_info(self, i: int, epoch: int | None = None) -> dict[str, Any]:
        """Labels and SNR of sample ``i`` (same keys as the metadata dataset's, and more)."""
        return self.sample_config(i, epoch)

    # -- samples -------------------------------------------------------------------------------
    def specs(self, positions: Sequence[int] | np.ndarray, epoch: int) -> SampleSpecs:
        """The drawn configurations of ``positions`` as a spec batch (one scale option: the peak)."""
        cfgs = [self.sample_config(int(i), epoch) for i in positions]
        specs = SampleSpecs.from_sources([c["index"] for c in cfgs], [c["patches"] for c in cfgs],
                                         [c["weights"] for c in cfgs], [c["clip_ids"] for c in cfgs],
                                         [c["scales"] for c in cfgs], [c["snr_db"] for c in cfgs], self.n_source_slots)
        if self._fast is not None:  # unreadable clips contribute nothing, as in the reference
            specs.clip_ids[(specs.clip_ids >= 0) & ~self._valid[np.clip(specs.clip_ids, 0, None)]] = -1
        return specs
