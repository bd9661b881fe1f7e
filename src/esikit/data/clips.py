"""Clip stores (where NMM clips live) and clip resolution (which clip drives a source).

A clip is one NMM segment, ``T x R`` (time x regions). DeepSIF keeps them as
``nmm_spikes/a{region}/nmm_{k}.mat`` (field ``data``, ``k`` from 1) or consolidated in a
``*_nmm.h5`` file (dataset ``data``, clip-major). Both stores give every clip an integer
id; resolution maps each (sample, source) of the metadata to a clip id once, at
start-up, in a vectorized pass.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np

from .._validation import check_option, format_indices
from ..head.layout import CLIP_FILE as _CLIP_FILE
from ..head.layout import REGION_DIR as _REGION_DIR
from ..head.layout import clip_relpath
from .metadata import SampleMetadata

logger = logging.getLogger(__name__)


CLIP_RESOLUTIONS = ("auto", "random_samples", "formula", "h5", "mapping")
MISSING_CLIP_POLICIES = ("zeros", "error", "drop")

#: ``mapping(sample_index, source_index, centre_region) -> (region, k)`` for a folder
#: store, or ``-> clip index`` for an HDF5 store.
ClipMapping = Callable[[int, int, int], Union[tuple[int, int], int]]


class ClipReadError(OSError):
    """A clip file that exists in the index but cannot be read as a ``T x R`` array."""


class _CachedStore:
    """Bounded LRU cache of decoded clips, shared by the concrete stores."""

    def __init__(self, cache_bytes: int):
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._shape: tuple[int, int] | None = None

    def _read(self, clip_id: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, clip_id: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        """``(T, R)`` of every clip (:meth:`learn_shape` when not known yet)."""
        if self._shape is None:
            self.learn_shape()
        return self._shape  # type: ignore[return-value]

    def learn_shape(self, n_probe: int = 3) -> tuple[int, int]:
        """``(T, R)`` of the clips: the most common shape of a few spread over the store.

        Three by default (first, middle, last): a majority outvotes one bad clip, and each
        read is ~2 % of a dataset's start-up.

        Every clip is then checked against it (:meth:`get`), so a defect of the first
        clip makes that clip unreadable (a missing clip, named) like the same defect
        anywhere else, instead of setting the shape every other clip is compared with.

        Raises
        ------
        ClipReadError
            When none of the clips read can be read.
        """
        n = len(self)
        if n == 0:
            raise ValueError(f"{self}: holds no clips")
        probe = np.unique(np.linspace(0, n - 1, min(n, n_probe)).round().astype(np.int64))
        shapes, errors = [], []
        for cid in probe:
            try:
                shapes.append(tuple(int(d) for d in self._read(int(cid)).shape))
            except ClipReadError as exc:
                errors.append(str(exc))
        if not shapes:
            raise ClipReadError(f"none of the {probe.size} clips read to learn T and R could be read: "
                                + "; ".join(errors[:3]))
        counts = Counter(shapes)
        shape = counts.most_common(1)[0][0]
        if len(counts) > 1:
            logger.warning("%s: clips of shapes %s among %d read; using %s, the most common (the others count as "
                           "unreadable)", self, dict(counts), len(shapes), shape)
        self._shape = shape  # type: ignore[assignment]  (what get and the packed cache check against)
        return shape  # type: ignore[return-value]

    @property
    def n_times(self) -> int:
        return self.shape[0]

    @property
    def n_regions(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def source_checksum(self, clip_id: int) -> int:  # pragma: no cover - abstract
        """CRC32 of what clip ``clip_id`` is made from (see the concrete stores)."""
        raise NotImplementedError

    def read_with_checksum(self, clip_id: int) -> tuple[np.ndarray, int]:
        """Clip ``clip_id`` (``(T, R)`` float32, bypassing the LRU cache) and its
        :meth:`source_checksum`, read together (the packed cache records both).

        Raises
        ------
        ClipReadError
        """
        # Checksum first: a file rewritten between the two reads then fails verification
        # (recorded checksum of the old bytes) instead of passing with stale values.
        crc = self.source_checksum(clip_id)
        return self._read(clip_id), crc

    def get(self, clip_id: int) -> np.ndarray:
        """Clip ``clip_id`` as a read-only float32 array of shape ``(T, R)``.

        Raises
        ------
        ClipReadError
            When the file cannot be read or holds an array of another shape.
        """
        clip_id = int(clip_id)
        hit = self._cache.get(clip_id)
        if hit is not None:
            self._cache.move_to_end(clip_id)
            return hit
        arr = self._read(clip_id)
        if self._shape is None:
            self._shape = tuple(arr.shape)  # type: ignore[assignment]
        elif arr.shape != self._shape:
            raise ClipReadError(
                f"{self.describe(clip_id)}: clip has shape {arr.shape}, expected {self._shape} like the other clips"
            )
        arr.setflags(write=False)
        if self.cache_bytes > 0 and arr.nbytes <= self.cache_bytes:
            self._cache[clip_id] = arr
            self._cached_bytes += arr.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return arr

    def __getstate__(self) -> dict[str, Any]:
        # Workers start with an empty cache rather than a pickled copy of the parent's.
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state["_cached_bytes"] = 0
        return state


class FolderClipStore(_CachedStore):
    """Clips laid out as ``root/a{region}/nmm_{k}.mat`` (field ``data``, ``T x R``).

    The folders are indexed once, at construction; clips are read on demand through a
    bounded LRU cache.

    Parameters
    ----------
    root : path-like
        The ``nmm_spikes`` folder.
    cache_bytes : int
        Largest number of bytes of decoded clips kept in memory per process.
    field : str
        Variable holding the clip in each file.
    """

    def __init__(self, root: str | PathLike, cache_bytes: int = 512 * 2**20, field: str = "data"):
        super().__init__(cache_bytes)
        self.root = Path(root)
        self.field = field
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Clip folder not found: {self.root}. Run 'esikit simulate' or set NMM_SPIKES_DIR."
            )
        regions, ks = [], []
        with os.scandir(self.root) as it:
            for entry in it:
                m = _REGION_DIR.match(entry.name)
                if not m or not entry.is_dir():
                    continue
                with os.scandir(entry.path) as files:
                    for f in files:
                        mk = _CLIP_FILE.match(f.name)
                        if mk:
                            regions.append(int(m.group(1)))
                            ks.append(int(mk.group(1)))
        if not regions:
            raise FileNotFoundError(
                f"No mat files found in {self.root} (looked for a*/nmm_*.mat). "
                "Run 'esikit simulate' or set NMM_SPIKES_DIR."
            )
        order = np.lexsort((np.asarray(ks), np.asarray(regions)))
        self.clip_regions = np.asarray(regions, dtype=np.int64)[order]
        self.clip_ks = np.asarray(ks, dtype=np.int64)[order]
        self._table_shape = (int(self.clip_regions.max()) + 1, int(self.clip_ks.max()) + 1)
        logger.info("Indexed %d clips of %d regions under %s", len(self), len(self.regions_with_clips()), self.root)

    def __len__(self) -> int:
        return int(self.clip_regions.size)

    def __repr__(self) -> str:
        return f"FolderClipStore(root='{self.root}', clips={len(self)}, regions={len(self.regions_with_clips())})"

    def path(self, region: int, k: int) -> Path:
        """Where clip ``k`` of ``region`` lives (whether or not it exists)."""
        return self.root / clip_relpath(region, k)

    def describe(self, clip_id: int) -> str:
        return str(self.path(self.clip_regions[clip_id], self.clip_ks[clip_id]))

    def regions_with_clips(self) -> np.ndarray:
        """Sorted region ids that have at least one clip."""
        return np.unique(self.clip_regions)

    def clips_per_region(self) -> dict[int, int]:
        r, c = np.unique(self.clip_regions, return_counts=True)
        return {int(a): int(b) for a, b in zip(r, c)}

    def lookup(self, regions: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """Clip ids of ``(regions, ks)`` pairs (any matching shapes); -1 where absent."""
        regions = np.asarray(regions, dtype=np.int64)
        ks = np.asarray(ks, dtype=np.int64)
        out = np.full(regions.shape, -1, dtype=np.int64)
        inside = (regions >= 0) & (ks >= 0) & (regions < self._table_shape[0]) & (ks < self._table_shape[1])
        if not inside.any():
            return out
        # Keys sorted by (region, k): a binary search on the combined key finds them.
        width = self._table_shape[1]
        keys = self.clip_regions * width + self.clip_ks
        want = regions[inside] * width + ks[inside]
        pos = np.searchsorted(keys, want)
        pos_c = np.minimum(pos, keys.size - 1)
        found = keys[pos_c] == want
        out[inside] = np.where(found, pos_c, -1)
        return out

    def source_checksum(self, clip_id: int) -> int:
        """CRC32 of the clip file's bytes: catches a rewrite that kept size and mtime.

        Raises
        ------
        ClipReadError
            When the file cannot be read.
        """
        path = self.describe(clip_id)
        crc = 0
        try:
            with open(path, "rb") as fh:
                # Streamed: clip files can be a few MB each, no need to hold them.
                for block in iter(lambda: fh.read(1 << 20), b""):
                    crc = zlib.crc32(block, crc)
        except OSError as exc:
            raise ClipReadError(f"{path}: cannot read clip ({exc})") from exc
        return crc

    def _read(self, clip_id: int) -> np.ndarray:
        from ..io import load_mat_file

        path = self.describe(clip_id)
        try:
            content = load_mat_file(path, variable_names=[self.field])
        except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable clip
            raise ClipReadError(f"{path}: cannot read clip ({exc})") from exc
        if self.field not in content:
            raise ClipReadError(f"{path}: no field '{self.field}' (fields: {sorted(content)})")
        arr = np.asarray(content[self.field])
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise ClipReadError(f"{path}: field '{self.field}' has shape {arr.shape}, expected (T, R)")
        return np.ascontiguousarray(arr, dtype=np.float32)


class H5ClipStore(_CachedStore):
    """DeepSIF's consolidated clip file (``*_nmm.h5``, dataset ``data``, clip-major).

    The file is opened lazily in each process (HDF5 handles do not survive fork).
    """

    def __init__(self, path: str | PathLike, cache_bytes: int = 512 * 2**20, dataset: str = "data"):
        import h5py

        super().__init__(cache_bytes)
        self.path = Path(path)
        self.dataset = dataset
        if not self.path.is_file():
            raise FileNotFoundError(f"Clip file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            if dataset not in f:
                raise ValueError(f"{self.path}: no dataset '{dataset}' (has {sorted(f.keys())})")
            shape = f[dataset].shape
        if len(shape) != 3:
            raise ValueError(f"{self.path}: dataset '{dataset}' has shape {shape}, expected (n_clips, T, R)")
        self._n = int(shape[0])
        self._shape = (int(shape[1]), int(shape[2]))
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"H5ClipStore(path='{self.path}', clips={self._n})"

    def describe(self, clip_id: int) -> str:
        return f"{self.path}[{int(clip_id)}]"

    def lookup_index(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return np.where((idx >= 0) & (idx < self._n), idx, -1)

    def source_checksum(self, clip_id: int) -> int:
        """CRC32 of the clip's float32 values as stored (the file is shared by all clips,
        so its bytes say nothing about one clip).

        Raises
        ------
        ClipReadError
        """
        return zlib.crc32(self._read(clip_id))

    def read_with_checksum(self, clip_id: int) -> tuple[np.ndarray, int]:
        arr = self._read(clip_id)  # one read for both
        return arr, zlib.crc32(arr)

    def _read(self, clip_id: int) -> np.ndarray:
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        try:
            return np.ascontiguousarray(self._file[self.dataset][clip_id], dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise ClipReadError(f"{self.describe(clip_id)}: cannot read clip ({exc})") from exc

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_file"] = None
        state["_pid"] = None
        return state


ClipStore = Union[FolderClipStore, H5ClipStore]


def open_clip_store(location: str | PathLike, **kwargs: Any) -> ClipStore:
    """A folder store for a directory, an HDF5 store for a ``.h5`` file."""
    p = Path(location)
    if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"):
        return H5ClipStore(p, **kwargs)
    return FolderClipStore(p, **kwargs)


# -- resolution ---------------------------------------------------------------------------


def infer_nper(nmm_idx: np.ndarray, centres: np.ndarray, present: np.ndarray) -> int:
    """The one ``nper`` consistent with ``nmm_idx = (centre + 1) * nper + k + 1``, 1 <= k <= nper.

    For ``m = nmm_idx - 1`` and centre ``c`` this needs
    ``ceil(m / (c + 2)) <= nper <= floor((m - 1) / (c + 1))``; intersect over all sources.

    Raises
    ------
    ValueError
        When no value, or more than one, is consistent with every sample.
    """
    use = present & (nmm_idx >= 0)
    if not use.any():
        raise ValueError("cannot infer nper: no present source has a valid nmm_idx")
    m = nmm_idx[use].astype(np.int64) - 1
    c = centres[use].astype(np.int64)
    lo = -(-m // (c + 2))
    hi = (m - 1) // (c + 1)
    lo_all, hi_all = int(lo.max()), int(hi.min())
    if lo_all > hi_all:
        raise ValueError(
            "cannot infer nper: no value is consistent with every sample's nmm_idx = (centre + 1) * nper + k + 1 "
            f"(the samples need nper >= {lo_all} and nper <= {hi_all}); set nper (config NMM_PER_REGION) "
            "or provide random_samples"
        )
    if lo_all < hi_all:
        raise ValueError(
            f"cannot infer nper: every value from {lo_all} to {hi_all} is consistent with the metadata; "
            "set nper (config NMM_PER_REGION) explicitly"
        )
    return lo_all


def decode_nmm_idx(nmm_idx: np.ndarray, centres: np.ndarray, nper: int) -> np.ndarray:
    """Clip numbers ``k`` from DeepSIF's ``nmm_idx`` (-1 where not in ``[1, nper]``)."""
    k = nmm_idx.astype(np.int64) - (centres.astype(np.int64) + 1) * int(nper) - 1
    ok = (nmm_idx >= 0) & (centres >= 0) & (k >= 1) & (k <= nper)
    return np.where(ok, k, -1)


def resolve_clip_ids(
    meta: SampleMetadata,
    store: ClipStore,
    mode: str = "auto",
    *,
    nper: int | None = None,
    mapping: ClipMapping | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """Map every (sample, source) to a clip id of ``store``.

    Parameters
    ----------
    meta : SampleMetadata
    store : FolderClipStore or H5ClipStore
    mode : {'auto', 'random_samples', 'formula', 'h5', 'mapping'}
        ``auto`` picks ``mapping`` when given, ``h5`` for an HDF5 store, else
        ``random_samples`` when present, else the ``nmm_idx`` formula.
    nper : int, optional
        Clips per region used when the metadata was made (formula only); inferred when
        None.
    mapping : callable, optional
        ``mapping(i, s, centre) -> (region, k)`` (folder) or ``-> index`` (HDF5).

    Returns
    -------
    clip_ids : array of int64, shape (N, S)
        -1 for absent sources and for clips the store does not have.
    missing : list of str
        Where each missing clip was looked for (one entry per missing source, in sample
        order), for messages.
    mode : str
        The mode used.
    """
    check_option("clip_resolution", mode, CLIP_RESOLUTIONS)
    present, centres = meta.present, meta.centres.astype(np.int64)
    is_h5 = isinstance(store, H5ClipStore)
    if mode == "auto":
        if mapping is not None:
            mode = "mapping"
        elif is_h5:
            mode = "h5"
        elif meta.random_samples is not None:
            mode = "random_samples"
        elif meta.nmm_idx is not None:
            mode = "formula"
        else:
            raise ValueError(f"{meta.path}: neither random_samples nor nmm_idx is present; cannot choose clips")
    if mode == "mapping" and mapping is None:
        raise ValueError("clip_resolution='mapping' needs a mapping function (clip_mapping=...)")
    if mode == "h5" and not is_h5:
        raise ValueError("clip_resolution='h5' needs a *_nmm.h5 clip file, not a folder")
    if mode in ("random_samples", "formula") and is_h5:
        raise ValueError(f"clip_resolution={mode!r} needs an nmm_spikes folder, not {store}")

    ids = np.full(centres.shape, -1, dtype=np.int64)
    where: list[str] = []
    if mode == "h5":
        if meta.nmm_idx is None:
            raise ValueError(f"{meta.path}: field 'nmm_idx' is needed to index {store}")
        ids = np.where(present, store.lookup_index(meta.nmm_idx), -1)  # type: ignore[union-attr]
        miss = present & (ids < 0)
        where = [f"{store.path}[{meta.nmm_idx[i, s]}]" for i, s in zip(*np.nonzero(miss))]  # type: ignore[union-attr]
        return ids, where, mode

    if mode == "mapping":
        regions = np.full(centres.shape, -1, dtype=np.int64)
        ks = np.full(centres.shape, -1, dtype=np.int64)
        for i, s in zip(*np.nonzero(present)):
            out = mapping(int(i), int(s), int(centres[i, s]))  # type: ignore[misc]
            if is_h5:
                ks[i, s] = int(out)  # type: ignore[arg-type]
            else:
                regions[i, s], ks[i, s] = (int(v) for v in out)  # type: ignore[union-attr]
        if is_h5:
            ids = np.where(present, store.lookup_index(ks), -1)  # type: ignore[union-attr]
            miss = present & (ids < 0)
            return ids, [f"{store.path}[{ks[i, s]}]" for i, s in zip(*np.nonzero(miss))], mode  # type: ignore[union-attr]
    elif mode == "random_samples":
        if meta.random_samples is None:
            raise ValueError(f"{meta.path}: clip_resolution='random_samples' but the field is not in the file")
        regions, ks = centres, meta.random_samples
    else:  # formula
        if meta.nmm_idx is None:
            raise ValueError(f"{meta.path}: clip_resolution='formula' but field 'nmm_idx' is not in the file")
        if nper is None:
            try:
                nper = infer_nper(meta.nmm_idx, centres, present)
            except ValueError as exc:
                raise ValueError(f"{meta.path}: {exc}") from None
            logger.info("%s: inferred nper=%d clips per region from nmm_idx", meta.path, nper)
        ks = decode_nmm_idx(meta.nmm_idx, centres, nper)
        bad = present & (ks < 0)
        if bad.any():
            raise ValueError(
                f"{meta.path}: field 'nmm_idx': {bad.sum()} source(s) do not decode to a clip number in "
                f"[1, {nper}] with nper={nper} in samples {format_indices(np.nonzero(bad.any(axis=1))[0])}"
            )
        regions = centres
    ids = np.where(present, store.lookup(regions, ks), -1)  # type: ignore[union-attr]
    miss = present & (ids < 0)
    where = [str(store.path(regions[i, s], ks[i, s])) for i, s in zip(*np.nonzero(miss))]  # type: ignore[union-attr]
    return ids, where, mode
