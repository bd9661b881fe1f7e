"""The metadata dataset: DeepSIF training samples synthesized on the fly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_option, format_indices
from .clips import (
    MISSING_CLIP_POLICIES,
    ClipMapping,
    ClipReadError,
    ClipStore,
    FolderClipStore,
    H5ClipStore,
    open_clip_store,
    resolve_clip_ids,
)
from ._base import EpochIndexedDataset
from .metadata import SampleMetadata, read_metadata
from .synthesis import SampleSpecs

logger = logging.getLogger(__name__)


def resolve_forward(fwd: np.ndarray | str | PathLike, n_regions: int | None = None) -> tuple[np.ndarray, str]:
    """A ``(C, R)`` float32 forward matrix from an array (either orientation) or a file.

    ``n_regions`` (R of the clips, when known) decides the orientation; see
    :func:`esikit.io.orient_forward_matrix`.
    """
    from ..io import load_forward_matrix, orient_forward_matrix

    if isinstance(fwd, (str, PathLike)):
        return np.asarray(load_forward_matrix(fwd, n_regions=n_regions), dtype=np.float32), str(fwd)
    if isinstance(fwd, torch.Tensor):
        fwd = fwd.detach().cpu().numpy()
    return np.asarray(orient_forward_matrix(np.asarray(fwd), n_regions=n_regions), dtype=np.float32), "<array>"


def learn_clip_shape(store: ClipStore, n_probe: int = 3) -> tuple[int, int]:
    """``(T, R)`` of a store's clips, learnt afresh (:meth:`~esikit.data.clips.FolderClipStore.learn_shape`)."""
    return store.learn_shape(n_probe)


def find_clip_location(metadata_path: Path) -> Path:
    """Where clips for ``metadata_path`` are when nothing says: ``nmm_spikes`` beside it,
    else a ``*_nmm.h5`` file beside it (DeepSIF's consolidated store)."""
    folder = metadata_path.parent / "nmm_spikes"
    if folder.is_dir():
        return folder
    h5 = metadata_path.with_name(metadata_path.stem + "_nmm.h5")
    if h5.is_file():
        return h5
    candidates = sorted(metadata_path.parent.glob("*_nmm.h5"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"No clips found for {metadata_path}: looked for {folder}/a*/nmm_*.mat and {h5}. "
        "Run 'esikit simulate' or set NMM_SPIKES_DIR."
    )


class SpikeEEGMetadataDataset(EpochIndexedDataset):
    """EEG/source pairs synthesized on the fly from DeepSIF metadata.

    Sample ``i`` is metadata row ``i`` as a :class:`~esikit.data.synthesis.SampleSpecs`
    row, made by the fast kernel or the reference function, with every random draw
    seeded by ``(seed, epoch, i)``: the same in any worker, process or order.

    Parameters
    ----------
    metadata_path : path-like
        ``*_sample_source*.mat`` file (MAT v5/v7, v7.3 or Octave text).
    fwd : array of shape (C, R) or (R, C), or path-like
        Forward matrix, or a file holding it (keys ``fwd``, ``forward``, ``leadfield``, ``L``).
    nmm_spikes_dir : path-like, optional
        Folder of clips (``a{region}/nmm_{k}.mat``) or a DeepSIF ``*_nmm.h5`` file.
        Default: ``nmm_spikes`` beside the metadata file.
    dataset_len : int, optional
        Use only the first ``dataset_len`` samples (default: all).
    normalize : bool
        Normalize EEG (re-reference, max |.| = 1) and source (max = 1).
    seed : int
        Seed of every random draw.
    clip_resolution : {'auto', 'random_samples', 'formula', 'h5', 'mapping'}
        How a source finds its clip (see ``docs/SAMPLE_CONTRACT.md``).
    nper : int, optional
        Clips per region used when the metadata was made (``formula`` only); inferred
        when None.
    clip_mapping : callable, optional
        ``clip_mapping(i, s, centre) -> (region, k)`` (or an index for an HDF5 store):
        overrides the other resolutions.
    missing_clips : {'zeros', 'error', 'drop'}
        A referenced clip that is missing or unreadable: the source contributes nothing
        (one warning at start-up), raise, or drop the samples that use it.
    cache_mb : float
        Size of the per-process clip cache, in MiB.
    verify_clips : bool
        Read every referenced clip at start-up (finds unreadable files and centre
        waveforms that never rise above zero before training starts).
    synthesis : {'fast', 'reference'}
        ``fast`` (default): batches made in one compiled call from the packed clip cache
        (:mod:`esikit.data.fast`; built on first use, it also finds unreadable clips at
        start-up); ``reference``: one :func:`~esikit.data.synthesis.synthesize_sample`
        call per sample from the clip files. Both give the same samples up to float32
        rounding.
    target : {'dense', 'compact'}
        ``compact`` (fast path only): batches carry the source as ``(regions (B, L),
        values (B, L, T))``, expanded on the device by
        :func:`esikit.data.fast.expand_compact_target`; single samples stay dense.
    cache_dir : path-like, optional
        Folder of the packed clip cache (default: see :mod:`esikit.data.packed`).
    noise : {'white', 'recorded', 'mixed'}
        Sensor noise (:mod:`esikit.data.noise`): DeepSIF's white noise, segments of
        recorded EEG from ``noise_bank_path``, or either with probability 1/2.
    noise_bank_path : path-like, optional
        Noise bank file (``data`` K x L x C, optional ``ch_names``).
    channel_names : sequence of str, optional
        Names of the forward matrix's channels (to match the noise bank's by name).

    Examples
    --------
    >>> ds = SpikeEEGMetadataDataset("source/train_sample_source1.mat",
    ...                              "anatomy/leadfield_75_20k.mat")  # doctest: +SKIP
    >>> eeg, source = ds[0]  # (500, 75), (500, 994) float32 tensors  # doctest: +SKIP
    """

    def __init__(
        self,
        metadata_path: str | PathLike,
        fwd: np.ndarray | str | PathLike,
        nmm_spikes_dir: str | PathLike | None = None,
        dataset_len: int | None = None,
        normalize: bool = True,
        seed: int = 0,
        *,
        clip_resolution: str = "auto",
        nper: int | None = None,
        clip_mapping: ClipMapping | None = None,
        missing_clips: str = "zeros",
        cache_mb: float = 512,
        verify_clips: bool = False,
        clip_store: ClipStore | None = None,
        synthesis: str = "fast",
        target: str = "dense",
        cache_dir: str | PathLike | None = None,
        noise: str = "white",
        noise_bank_path: str | PathLike | None = None,
        channel_names: Sequence[str] | None = None,
    ):
        from .fast import SYNTHESIS_MODES, TARGET_MODES

        check_option("missing_clips", missing_clips, MISSING_CLIP_POLICIES)
        check_option("synthesis", synthesis, SYNTHESIS_MODES)
        check_option("target", target, TARGET_MODES if synthesis == "fast" else ("dense",))  # compact: fast only
        self.synthesis_mode = synthesis
        self.target = target
        self.metadata_path = Path(metadata_path)
        if clip_store is None:
            location = Path(nmm_spikes_dir) if nmm_spikes_dir is not None else find_clip_location(self.metadata_path)
            clip_store = open_clip_store(location, cache_bytes=int(cache_mb * 2**20))
        self.store: ClipStore = clip_store
        # The clips' R decides the forward matrix's orientation (a 128 x 76 leadfield is
        # C x R), and R decides which labels are regions: clips first, then the rest.
        self.fwd, self.fwd_source = self._resolve_forward(fwd)
        self.normalize = bool(normalize)
        self.seed = int(seed)
        self.missing_clips = missing_clips
        n_channels, n_regions = self.fwd.shape

        self.metadata: SampleMetadata = read_metadata(
            self.metadata_path, n_regions, require_clip_field=clip_mapping is None
        )
        ids, missing_where, self.clip_resolution = resolve_clip_ids(
            self.metadata, self.store, clip_resolution, nper=nper, mapping=clip_mapping
        )
        if verify_clips:
            missing_where += self._verify_clips(ids)
        self._init_noise(noise, noise_bank_path, channel_names)
        if synthesis == "fast":
            missing_where += self._pack_clips(ids, cache_dir)
        self.clip_ids = ids
        keep = self._apply_missing_policy(ids, missing_where)

        if dataset_len is not None:
            dataset_len = int(dataset_len)
            if dataset_len < 1 or dataset_len > keep.size:
                raise ValueError(
                    f"Invalid value for 'dataset_len': expected 1 to {keep.size} (samples available in "
                    f"{self.metadata_path}), got {dataset_len}"
                )
            keep = keep[:dataset_len]
        self._init_indexing(keep)
        self.metadata.share_memory()
        self._clip_ids_shared = torch.from_numpy(np.ascontiguousarray(self.clip_ids)).share_memory_()
        self.clip_ids = self._clip_ids_shared.numpy()
        logger.info("%r", self)

    # -- start-up checks --------------------------------------------------------------------
    def _resolve_forward(self, fwd: np.ndarray | str | PathLike) -> tuple[np.ndarray, str]:
        try:
            n_times, n_regions = learn_clip_shape(self.store)
        except ClipReadError as exc:
            raise ClipReadError(f"cannot learn T and R from the clips: {exc}") from exc
        try:
            return resolve_forward(fwd, n_regions=n_regions)
        except ValueError as exc:
            if "neither dimension is" not in str(exc):  # a defect of the matrix itself
                raise
            raise ValueError(f"{exc} (the clips of {self.store} are {n_times} x {n_regions}: the forward matrix and "
                             "the clips must come from the same anatomy)") from exc

    def _verify_clips(self, ids: np.ndarray) -> list[str]:
        """Read each referenced clip once; unreadable ones become missing (-1 in ``ids``)."""
        from tqdm.auto import tqdm

        meta = self.metadata
        unreadable: list[str] = []
        bad_peak: list[int] = []
        present = ids >= 0
        uniq = np.unique(ids[present])
        failed = set()
        for cid in tqdm(uniq, desc="verifying clips", unit="clip", disable=uniq.size < 200):
            try:
                self.store.get(int(cid))
            except ClipReadError as exc:
                failed.add(int(cid))
                unreadable.append(str(exc))
        for i, s in zip(*np.nonzero(present)):
            cid = int(ids[i, s])
            if cid in failed:
                ids[i, s] = -1
                continue
            if self.store.get(cid)[:, meta.centres[i, s]].max() <= 0:
                bad_peak.append(int(i))
        if bad_peak:
            from .metadata import MetadataError

            raise MetadataError(
                str(self.metadata_path),
                [
                    f"{len(bad_peak)} source(s) have a centre waveform whose maximum is <= 0 (cannot be scaled "
                    f"to a peak) in samples {format_indices(sorted(set(bad_peak)))}"
                ],
            )
        return [u.split(": cannot read")[0] for u in unreadable]

    def _pack_clips(self, ids: np.ndarray, cache_dir: str | PathLike | None) -> list[str]:
        """Open (or build) the packed clip cache; referenced unreadable clips become missing."""
        cache = self._open_fast_path(cache_dir)
        bad = (ids >= 0) & ~cache.valid[np.clip(ids, 0, None)]
        where = [cache.errors[int(c)].split(": cannot read")[0] for c in ids[bad]]
        ids[bad] = -1
        return where

    def _apply_missing_policy(self, ids: np.ndarray, missing_where: list[str]) -> np.ndarray:
        present = self.metadata.present
        missing = present & (ids < 0)
        affected = np.nonzero(missing.any(axis=1))[0]
        n_all = self.metadata.n_samples
        self.missing_clip_report = ""  # what the data check shows (it fails on missing clips)
        if affected.size == 0:
            return np.arange(n_all, dtype=np.int64)
        paths = list(dict.fromkeys(missing_where))
        head = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        text = (
            f"{self.metadata_path}: {missing.sum()} source(s) in {affected.size} of {n_all} samples reference "
            f"{len(paths)} missing or unreadable clip(s): {head}"
        )
        self.missing_clip_report = text
        if self.missing_clips == "error":
            raise FileNotFoundError(text + " (missing_clips='error')")
        if self.missing_clips == "drop":
            logger.warning("%s; dropping those samples (missing_clips='drop')", text)
            keep = np.setdiff1d(np.arange(n_all), affected)
            if keep.size == 0:
                raise FileNotFoundError(text + ": no sample is left after dropping them")
            return keep.astype(np.int64)
        logger.warning("%s; those sources contribute nothing (missing_clips='zeros')", text)
        return np.arange(n_all, dtype=np.int64)

    def __repr__(self) -> str:
        meta = self.metadata
        n_missing = int((meta.present & (self.clip_ids < 0)).sum())
        return (
            f"{type(self).__name__}(metadata='{self.metadata_path}', samples={len(self)} of {meta.n_samples}, "
            f"source_slots={meta.n_sources}, regions={self.n_regions}, channels={self.n_channels}, "
            f"times={self.n_times}, clips={self.store!r}, clip_resolution='{self.clip_resolution}', "
            f"missing_clip_sources={n_missing}, seed={self.seed}, epoch={self.epoch})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["clip_ids"] = None  # rebuilt from the shared tensor
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["clip_ids"] = state["_clip_ids_shared"].numpy()
        self.__dict__.update(state)

    # -- epochs ----------------------------------------------------------------------------------
    def sample_info(self, i: int) -> dict[str, Any]:
        """Labels and SNR of sample ``i`` without synthesizing it (for evaluation)."""
        g = self.sample_index(i)
        meta = self.metadata
        patches = meta.patches(g)
        return {
            "index": g,
            "patches": patches,
            "centres": [int(p[0]) for p in patches],
            "weights": meta.patch_weights(g),
            "snr_db": float(meta.snr_db[g]),
            "n_sources": len(patches),
        }

    def specs(self, positions: Sequence[int] | np.ndarray, epoch: int) -> SampleSpecs:
        """The metadata rows behind ``positions`` as a spec batch (rows seed the draws)."""
        rows = np.array([self.sample_index(int(i)) for i in positions], dtype=np.int64)
        meta = self.metadata
        return SampleSpecs(rows, meta.regions[rows], meta.weights[rows], self.clip_ids[rows], meta.scale_ratio[rows],
                           meta.snr_db[rows])


__all__ = ["SpikeEEGMetadataDataset", "resolve_forward", "find_clip_location", "FolderClipStore", "H5ClipStore"]
