"""Where sample configurations come from: the clips of each region and the source drawer.

A sample configuration (``docs/SAMPLE_CONTRACT.md``) names, per source, a patch of
regions (centre first), the weight of each patch region, the clip that drives the
source, its scale and the sensor SNR. Two places draw them, through this module:

- the metadata generator (:func:`esikit.simulate.metadata.generate_metadata`), once, into
  DeepSIF metadata files;
- the dynamic dataset (:class:`esikit.data.DynamicSpikeEEGDataset`), per
  ``(seed, epoch, index)``.

Both draw a source's patch, its second source and its weights with one
:class:`SourceDrawer`, and its clip from one :class:`ClipIndex`. They differ in their
options, in where clips come from (a clip folder or a user mapping for the generator,
the dataset's clip store for the dynamic one) and in their random streams: each keeps
the generators and the order of draws it has always had, so that files and samples
made with a seed stay what they were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_option
from .layout import CLIP_FIELD, CLIP_FILE, REGION_DIR, clip_relpath
from .patches import CandidatePatches, as_adjacency, gaussian_magnitude, grow_patch, pick_second_patch

logger = logging.getLogger(__name__)

__all__ = ["ClipIndex", "SourceDrawer", "PATCH_MODES", "read_clip_file", "source_counts"]

#: How patches are made: grown to a drawn size, or one of DeepSIF's candidate patches.
PATCH_MODES = ("grow", "deepsif")


def source_counts(n_sources: int | Sequence[int]) -> tuple[int, ...]:
    """The numbers of sources a configuration may have: 1, 2 or a sequence of them.

    A sequence keeps its order and repeats (a configuration draws one entry uniformly).

    Raises
    ------
    ValueError
        When a value is not 1 or 2, or the sequence is empty.
    """
    options = (n_sources,) if np.isscalar(n_sources) or n_sources is None else tuple(n_sources)  # type: ignore[arg-type]
    if not options or any(v not in (1, 2) for v in options):
        raise ValueError(f"Invalid value for 'n_sources': expected 1, 2 or a sequence of them, got {n_sources!r}.")
    return tuple(int(v) for v in options)


def read_clip_file(path: str | os.PathLike, field: str = CLIP_FIELD) -> np.ndarray:
    """One clip file's ``T x R`` array (float64).

    Raises
    ------
    ValueError
        When the file has no ``field`` or it is not two-dimensional (the message names
        the file and the field).
    """
    from ..io import load_mat_file

    content = load_mat_file(path, variable_names=[field])
    if field not in content:  # name what the file holds (read in full only on this error)
        raise ValueError(f"{path}: no field '{field}' (fields: {sorted(load_mat_file(path))})")
    arr = np.asarray(content[field], dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{path}: field '{field}' has shape {arr.shape}, expected (T, R)")
    return arr


class ClipIndex:
    """The clips of each region, ``(region, k)`` sorted by region then ``k``.

    Parameters
    ----------
    regions, ks : array of int, shape (n_clips,)
        Region (0-based) and clip number (from 1) of every clip.
    ids : array of int, shape (n_clips,) | None
        The caller's id of every clip (e.g. its id in a clip store); default its row in
        the sorted index.
    root : path-like | None
        The ``nmm_spikes`` folder the clips are files of (:meth:`load`), if any.

    Attributes
    ----------
    regions, ks, ids : arrays of int64, shape (n_clips,)
        Sorted by ``(region, k)``.
    centres : array of int64
        The regions that have clips, sorted.
    """

    def __init__(self, regions: Sequence[int] | np.ndarray, ks: Sequence[int] | np.ndarray,
                 ids: Sequence[int] | np.ndarray | None = None, root: str | os.PathLike | None = None):
        regions = np.asarray(regions, dtype=np.int64).reshape(-1)
        ks = np.asarray(ks, dtype=np.int64).reshape(-1)
        order = np.lexsort((ks, regions))
        self.regions, self.ks = regions[order], ks[order]
        self.ids = np.arange(order.size, dtype=np.int64) if ids is None else np.asarray(ids, np.int64).reshape(-1)[order]
        self.root = None if root is None else Path(root)
        self.centres, self._first, self._count = np.unique(self.regions, return_index=True, return_counts=True)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> ClipIndex:
        """Index a folder of ``a{region}/nmm_{k}.mat`` files without reading them.

        Raises
        ------
        FileNotFoundError
            When the folder does not exist or holds no clip file.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Clip folder not found: {root}. Run 'esikit simulate' or set NMM_SPIKES_DIR.")
        regions, ks = [], []
        with os.scandir(root) as it:
            for entry in it:
                m = REGION_DIR.match(entry.name)
                if not m or not entry.is_dir():
                    continue
                with os.scandir(entry.path) as files:
                    found = [int(mk.group(1)) for f in files if (mk := CLIP_FILE.match(f.name))]
                regions += [int(m.group(1))] * len(found)
                ks += found
        if not regions:
            raise FileNotFoundError(
                f"No clip files under {root} (looked for a*/nmm_*.mat). Run 'esikit simulate' or set NMM_SPIKES_DIR."
            )
        return cls(regions, ks, root=root)

    @classmethod
    def from_mapping(cls, clips: Mapping[int, Sequence[int]]) -> ClipIndex:
        """From ``{region: clip numbers k}`` (repeated numbers count once)."""
        pairs = {(int(r), int(k)) for r, ks in clips.items() for k in np.asarray(ks).reshape(-1)}
        regions, ks = (np.array(v, dtype=np.int64) for v in zip(*pairs)) if pairs else (np.zeros(0), np.zeros(0))
        return cls(regions, ks)

    def __len__(self) -> int:
        return int(self.regions.size)

    def __repr__(self) -> str:
        where = f", root='{self.root}'" if self.root is not None else ""
        return f"ClipIndex(clips={len(self)}, regions={self.centres.size}{where})"

    def select(self, keep: np.ndarray) -> ClipIndex:
        """The clips where ``keep`` (bool, shape (n_clips,)) is True."""
        keep = np.asarray(keep, dtype=bool)
        return ClipIndex(self.regions[keep], self.ks[keep], self.ids[keep], self.root)

    def as_dict(self) -> dict[int, np.ndarray]:
        """``{region: sorted clip numbers k}`` of the regions that have clips."""
        return {int(r): self.ks[f:f + c] for r, f, c in zip(self.centres, self._first, self._count)}

    def draw(self, centre: int, rng: np.random.Generator) -> int:
        """The row of a clip of ``centre``, uniformly (one ``rng.integers`` draw)."""
        j = int(np.searchsorted(self.centres, centre))
        return int(self._first[j] + rng.integers(self._count[j]))

    def pick(self, centres: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Rows of one clip per entry of ``centres`` from uniforms ``u`` in [0, 1) (vectorized).

        Entry ``i`` takes clip ``floor(u[i] * n)`` of the ``n`` clips of ``centres[i]``.
        """
        j = np.searchsorted(self.centres, np.asarray(centres, dtype=np.int64))
        count = self._count[j]
        return self._first[j] + np.minimum((np.asarray(u) * count).astype(np.int64), count - 1)

    def load(self, region: int, k: int, field: str = CLIP_FIELD) -> np.ndarray:
        """Clip ``k`` of ``region`` from :attr:`root`, ``(T, R)`` float64 (:func:`read_clip_file`)."""
        if self.root is None:
            raise ValueError(f"{self!r} has no clip folder")
        return read_clip_file(self.root / clip_relpath(region, k), field)


class SourceDrawer:
    """Draws source patches and their weights on one anatomy: every configuration's sources.

    Parameters
    ----------
    anatomy : Anatomy
        Anything with ``adjacency`` and ``centres`` (mm) (:func:`~esikit.head.patches.as_adjacency`).
    allowed_centres : array of bool, shape (n_regions,) | array of int
        Regions a second source may be centred on (those with clips).
    patch_mode : {'grow', 'deepsif'}
        Grow a patch to a size drawn from ``size_range``
        (:func:`~esikit.head.patches.grow_patch`), or take one of DeepSIF's candidate
        patches (:class:`~esikit.head.patches.CandidatePatches`).
    size_range : (int, int)
        Inclusive patch sizes, ``'grow'`` mode.
    max_size : int
        Largest patch (candidates and the cut second patch).
    min_centre_distance_mm : float
        Smallest distance between the centres of two sources (:meth:`second`).
    distances : array, shape (n_regions, n_regions) | None
        Region distances (mm) for the weights; None: between the anatomy's centres.
    symmetrize : bool
        Symmetrize the adjacency (False: DeepSIF's neighbour lists as given).
    seed : int
        Seed of the candidate patches.
    """

    def __init__(self, anatomy: Any, allowed_centres: np.ndarray, *, patch_mode: str = "grow",
                 size_range: tuple[int, int] = (1, 70), max_size: int = 70, min_centre_distance_mm: float = 0.0,
                 distances: np.ndarray | None = None, symmetrize: bool = True, seed: int = 0):
        self.patch_mode = check_option("patch_mode", patch_mode, PATCH_MODES)
        self.adjacency, self.centres = as_adjacency(anatomy, symmetrize=symmetrize)
        n = self.adjacency.shape[0]
        allowed = np.asarray(allowed_centres)
        if allowed.dtype != bool:
            mask = np.zeros(n, dtype=bool)
            mask[allowed.astype(np.int64)] = True
            allowed = mask
        self.allowed = allowed
        self.size_range = (int(size_range[0]), int(size_range[1]))
        self.max_size = int(max_size)
        self.min_centre_distance_mm = float(min_centre_distance_mm)
        self.distances = distances
        self.symmetrize = bool(symmetrize)
        self.seed = int(seed)
        self._candidates: CandidatePatches | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_candidates"] = None  # rebuilt lazily in each worker
        return state

    @property
    def candidates(self) -> CandidatePatches:
        """DeepSIF's candidate patches (made lazily, cached)."""
        if self._candidates is None:
            self._candidates = CandidatePatches(self.adjacency, self.centres, seed=self.seed, max_size=self.max_size,
                                                symmetrize=self.symmetrize)
        return self._candidates

    def patch(self, centre: int, rng: np.random.Generator, variation: int | None = None) -> np.ndarray:
        """A patch centred on ``centre`` (array of int64, centre first).

        ``'deepsif'`` mode: candidate ``variation`` while the centre has that many (how
        DeepSIF's training files enumerate them), else a random one.
        """
        centre = int(centre)
        if self.patch_mode == "deepsif":
            count = self.candidates.count(centre)
            j = variation if (variation is not None and variation < count) else int(rng.integers(count))
            return self.candidates.get(centre, j)
        lo, hi = self.size_range
        return grow_patch(self.adjacency, self.centres, centre, int(rng.integers(lo, hi + 1)), rng)

    def second(self, first: np.ndarray, rng: np.random.Generator, partner: int | None = None) -> np.ndarray | None:
        """The second source's patch: on ``partner`` when given (DeepSIF's draw, overlap
        allowed), else neither overlapping nor touching ``first``
        (:func:`~esikit.head.patches.pick_second_patch`; None when no centre is left)."""
        if partner is not None:
            return self.patch(partner, rng)
        return pick_second_patch(
            self.adjacency, self.centres, first, self.allowed, rng,
            candidates=self.candidates if self.patch_mode == "deepsif" else None,
            size_range=self.size_range, min_centre_distance_mm=self.min_centre_distance_mm, max_size=self.max_size,
        )

    def weights(self, patch: np.ndarray, half_max_mm: float) -> np.ndarray:
        """``mag_change`` of a patch: :func:`~esikit.head.patches.gaussian_magnitude`, 1 at the centre."""
        return gaussian_magnitude(self.centres, patch, half_max_mm, self.distances)
