"""The packed clip cache: every clip of a store in one memory-mapped float32 file.

Reading a compressed ``.mat`` clip costs tens of milliseconds, and each DataLoader
worker would otherwise decompress (and cache) its own copies. The packed cache is built
automatically the first time a store is used (there is no separate extraction step):

- ``clips.f32``: raw float32, shape ``(n_clips, R, T)``, region-major so a patch's
  time courses are contiguous; memory-mapped read-only, so every process shares the
  same page-cache pages;
- ``proj_<hash of F>.f32``: ``(n_clips, T, C)``, each clip's sensor projection
  ``clip @ F.T``, computed once per forward matrix;
- ``manifest.json``: the store's clips with their ``(path, size, mtime_ns)``, which
  clips could not be read, and the shapes. Adding, removing or changing a clip file is
  noticed on the next start and the cache is rebuilt (unchanged clips are copied from
  the old cache rather than read again).

Where: ``$ESIKIT_CACHE_DIR/<key>`` when that variable is set, else ``.esikit_cache``
beside the clips when that folder is writable, else ``~/.cache/esikit/<key>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .clips import ClipReadError, ClipStore, FolderClipStore, H5ClipStore

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_CLIPS_FILE = "clips.f32"
_MANIFEST = "manifest.json"


def _store_location(store: ClipStore) -> Path:
    return Path(store.root if isinstance(store, FolderClipStore) else store.path).resolve()


def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def default_cache_dir(store: ClipStore) -> Path:
    """Where the packed cache of ``store`` lives (see the module docstring)."""
    location = _store_location(store)
    env = os.environ.get("ESIKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser() / _key(str(location))
    beside = location / ".esikit_cache" if location.is_dir() else location.parent / f".{location.name}.esikit_cache"
    if _writable_dir(beside):
        return beside
    return Path.home() / ".cache" / "esikit" / _key(str(location))


def store_entries(store: ClipStore) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of every clip of ``store``, in clip-id order.

    For an HDF5 store every clip shares the file's entry, tagged with its index.
    """
    if isinstance(store, FolderClipStore):
        out = []
        for cid in range(len(store)):
            path = store.describe(cid)
            try:
                st = os.stat(path)
                out.append([os.path.relpath(path, store.root), int(st.st_size), int(st.st_mtime_ns)])
            except OSError:
                out.append([os.path.relpath(path, store.root), -1, -1])
        return out
    st = os.stat(store.path)
    return [[f"{store.path.name}[{cid}]", int(st.st_size), int(st.st_mtime_ns)] for cid in range(len(store))]


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (two processes never build the same cache at once)."""
    import fcntl

    with open(folder / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def forward_key(fwd: np.ndarray) -> str:
    """A short hash of a forward matrix's values and shape (names its projection file)."""
    arr = np.ascontiguousarray(fwd, dtype=np.float32)
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


class PackedClipCache:
    """The clips of a store in one memory-mapped ``(n_clips, R, T)`` float32 file.

    Use :meth:`open` (builds or refreshes the cache as needed). Pickling sends the file
    names, not the arrays: each worker maps the same files.

    Attributes
    ----------
    folder : Path
        The cache folder.
    n_clips, n_regions, n_times : int
    valid : array of bool, shape (n_clips,)
        False for clips that could not be read (their rows hold zeros).
    errors : dict of int to str
        Why each invalid clip could not be read.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = Path(folder)
        self.n_clips = int(manifest["n_clips"])
        self.n_times = int(manifest["n_times"])
        self.n_regions = int(manifest["n_regions"])
        self.valid = np.ones(self.n_clips, dtype=bool)
        self.errors = {int(k): str(v) for k, v in manifest.get("errors", {}).items()}
        for cid in self.errors:
            self.valid[cid] = False
        self._clips: np.ndarray | None = None
        self._proj: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return (f"PackedClipCache(folder='{self.folder}', clips={self.n_clips}, regions={self.n_regions}, "
                f"times={self.n_times}, unreadable={int((~self.valid).sum())})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_clips"] = None
        state["_proj"] = {k: None for k in self._proj}
        return state

    @property
    def nbytes(self) -> int:
        return self.n_clips * self.n_regions * self.n_times * 4

    @property
    def clips(self) -> np.ndarray:
        """``(n_clips, R, T)`` read-only float32 memory map."""
        if self._clips is None:
            if self.n_clips == 0:
                self._clips = np.zeros((0, self.n_regions, self.n_times), dtype=np.float32)
            else:
                self._clips = np.memmap(self.folder / _CLIPS_FILE, dtype=np.float32, mode="r",
                                        shape=(self.n_clips, self.n_regions, self.n_times))
        return self._clips

    def projections(self, fwd: np.ndarray) -> np.ndarray:
        """``(n_clips, T, C)`` float32 memory map of ``clip @ fwd.T``, built on first use.

        Parameters
        ----------
        fwd : array, shape (C, R)
        """
        fwd = np.ascontiguousarray(fwd, dtype=np.float32)
        key = forward_key(fwd)
        hit = self._proj.get(key)
        if hit is not None:
            return hit
        n_ch = fwd.shape[0]
        path = self.folder / f"proj_{key}.f32"
        shape = (self.n_clips, self.n_times, n_ch)
        want = int(np.prod(shape)) * 4
        if not (path.is_file() and path.stat().st_size == want):
            with _locked(self.folder):
                if not (path.is_file() and path.stat().st_size == want):
                    self._build_projections(fwd, path, shape)
        arr = np.memmap(path, dtype=np.float32, mode="r", shape=shape) if self.n_clips else np.zeros(shape, np.float32)
        self._proj[key] = arr
        return arr

    def _build_projections(self, fwd: np.ndarray, path: Path, shape: tuple[int, int, int]) -> None:
        from tqdm.auto import tqdm

        tmp = path.with_suffix(".tmp")
        if self.n_clips:
            out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=shape)
            clips = self.clips
            ft = fwd.T.copy()
            step = 16
            for a in tqdm(range(0, self.n_clips, step), desc="projecting clips", unit="x16 clips",
                          disable=self.n_clips < 256):
                b = min(a + step, self.n_clips)
                # (n, R, T) -> (n, T, R) @ (R, C): one BLAS call per chunk.
                out[a:b] = np.matmul(clips[a:b].transpose(0, 2, 1), ft)
            out.flush()
            del out
        else:
            tmp.write_bytes(b"")
        os.replace(tmp, path)
        logger.info("Projected %d clips through a %s forward matrix into %s", self.n_clips, fwd.shape, path)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def open(cls, store: ClipStore, cache_dir: str | PathLike | None = None) -> PackedClipCache:
        """The packed cache of ``store``, built or refreshed when its clips changed.

        Parameters
        ----------
        store : FolderClipStore or H5ClipStore
        cache_dir : path-like, optional
            Folder of this store's cache (default: :func:`default_cache_dir`).
        """
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(store)
        folder.mkdir(parents=True, exist_ok=True)
        entries = store_entries(store)
        n_times, n_regions = store.shape
        manifest = cls._read_manifest(folder)
        reason = cls._stale(manifest, entries, n_times, n_regions, folder)
        if reason:
            with _locked(folder):
                manifest = cls._read_manifest(folder)
                reason = cls._stale(manifest, entries, n_times, n_regions, folder)
                if reason:
                    logger.info("Packing clips of %s into %s (%s)", _store_location(store), folder, reason)
                    manifest = cls._build(store, folder, entries, n_times, n_regions, manifest)
        cache = cls(folder, manifest)
        logger.info("%r", cache)
        return cache

    @staticmethod
    def _read_manifest(folder: Path) -> dict[str, Any] | None:
        try:
            return json.loads((folder / _MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(manifest: dict[str, Any] | None, entries: list[list[Any]], n_times: int, n_regions: int,
               folder: Path) -> str:
        """Why the cache must be (re)built, or '' when it is up to date."""
        if manifest is None:
            return "no cache yet"
        if manifest.get("version") != CACHE_VERSION:
            return f"cache version {manifest.get('version')} != {CACHE_VERSION}"
        if (manifest.get("n_times"), manifest.get("n_regions")) != (n_times, n_regions):
            return f"clip shape changed to {(n_times, n_regions)}"
        old = manifest.get("entries", [])
        if old != entries:
            old_set = {tuple(e) for e in old}
            new_set = {tuple(e) for e in entries}
            old_paths = {e[0] for e in old}
            new_paths = {e[0] for e in entries}
            added = len(new_paths - old_paths)
            removed = len(old_paths - new_paths)
            changed = len({e[0] for e in new_set - old_set} & old_paths)
            return f"{added} clip(s) added, {removed} removed, {changed} changed"
        size = (folder / _CLIPS_FILE).stat().st_size if (folder / _CLIPS_FILE).exists() else -1
        if len(entries) and size != len(entries) * n_times * n_regions * 4:
            return f"{_CLIPS_FILE} has {size} bytes, expected {len(entries) * n_times * n_regions * 4}"
        return ""

    @classmethod
    def _build(cls, store: ClipStore, folder: Path, entries: list[list[Any]], n_times: int, n_regions: int,
               old: dict[str, Any] | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        n = len(entries)
        # Unchanged clips are copied from the previous cache instead of decoded again.
        reuse: dict[tuple[Any, ...], int] = {}
        old_clips = None
        if old is not None and (old.get("n_times"), old.get("n_regions")) == (n_times, n_regions) \
                and old.get("version") == CACHE_VERSION and (folder / _CLIPS_FILE).exists():
            old_err = {int(k) for k in old.get("errors", {})}
            reuse = {tuple(e): i for i, e in enumerate(old.get("entries", [])) if i not in old_err and e[1] >= 0}
            if reuse:
                old_clips = np.memmap(folder / _CLIPS_FILE, dtype=np.float32, mode="r",
                                      shape=(len(old["entries"]), n_regions, n_times))
        tmp = folder / (_CLIPS_FILE + ".tmp")
        errors: dict[int, str] = {}
        n_reused = 0
        if n:
            out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(n, n_regions, n_times))
            for cid in tqdm(range(n), desc="packing clips", unit="clip", disable=n < 64):
                j = reuse.get(tuple(entries[cid]))
                if j is not None and old_clips is not None:
                    out[cid] = old_clips[j]
                    n_reused += 1
                    continue
                try:
                    arr = store._read(cid)
                    if arr.shape != (n_times, n_regions):
                        raise ClipReadError(f"{store.describe(cid)}: clip has shape {arr.shape}, "
                                            f"expected {(n_times, n_regions)} like the other clips")
                    out[cid] = arr.T
                except ClipReadError as exc:
                    errors[cid] = str(exc)
                    out[cid] = 0.0
            out.flush()
            del out
        else:
            tmp.write_bytes(b"")
        del old_clips
        os.replace(tmp, folder / _CLIPS_FILE)
        for stale in folder.glob("proj_*.f32"):  # projections of the old clips
            stale.unlink()
        manifest = {
            "version": CACHE_VERSION,
            "store": repr(store),
            "kind": "h5" if isinstance(store, H5ClipStore) else "folder",
            "n_clips": n,
            "n_times": n_times,
            "n_regions": n_regions,
            "errors": {str(k): v for k, v in errors.items()},
            "entries": entries,
        }
        tmp_m = folder / (_MANIFEST + ".tmp")
        tmp_m.write_text(json.dumps(manifest))
        os.replace(tmp_m, folder / _MANIFEST)
        logger.info("Packed %d clips (%d reused, %d unreadable) into %s", n, n_reused, len(errors), folder)
        return manifest


__all__ = ["PackedClipCache", "default_cache_dir", "store_entries", "forward_key"]
