"""The packed clip cache: every clip of a store in one memory-mapped float32 file.

Reading a compressed ``.mat`` clip costs tens of milliseconds, and each DataLoader
worker would otherwise decompress (and cache) its own copies. The packed cache is built
automatically the first time a store is used (there is no separate extraction step).

Layout of a store's cache folder::

    lock                 held while a process builds (two never build at once)
    current              the name of the committed generation, replaced by one rename
    gen-<id>/            one build, complete before ``current`` names it:
        clips.f32        raw float32 (n_clips, R, T), region-major so a patch's time
                         courses are contiguous; memory-mapped read-only, so every
                         process shares the same page-cache pages
        manifest.json    the clips' (path, size, mtime_ns), CRC32 of each packed clip and
                         of each source clip file, which clips could not be read, shapes
        proj_<hash>.f32  (n_clips, T, C): each clip's sensor projection clip @ F.T,
                         computed once per forward matrix; proj_<hash>.json its CRC32s
        inuse            every process that opened this generation holds a shared lock

Why generations: a build writes a new ``gen-<id>`` folder next to the old one and then
renames the ``current`` pointer, so a kill at any moment leaves either the old complete
cache or the new complete cache, never a data file with another build's manifest. An
open cache (and the DataLoader workers it is pickled to) keeps reading the generation it
opened even when another process builds a new one; a generation is deleted by the next
build (or when its last user closes it) once no process holds its ``inuse`` lock.

Checks. Every open (cheap, no per-sample cost): the pointer and manifest parse, the
clips' paths, sizes and mtimes match the store (added, removed or changed clip files are
noticed and only those are read again), ``clips.f32`` and each projection file have the
expected size, the first, middle and last rows match their CRC32, and clips that could
not be read last time are tried again (errors are never cached). ``verify=True`` (the
data check's ``--verify-clips``) adds the CRC32 of every packed row and projection row and
of every source clip file's bytes, which catches corruption and a clip rewritten with
its size and mtime kept. Anything found is rebuilt, reading only the clips in doubt.

Where: ``$ESIKIT_CACHE_DIR/<key>`` when that variable is set, else ``.esikit_cache``
beside the clips when that folder is writable, else ``~/.cache/esikit/<key>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import format_bytes
from ..io.atomic import (atomic_output, atomic_write_json, atomic_write_text, free_bytes, fsync_dir, is_disk_full,
                         remove_stale_temporaries)
from .clips import ClipReadError, ClipStore, FolderClipStore, H5ClipStore

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
_CLIPS_FILE = "clips.f32"
_MANIFEST = "manifest.json"
_POINTER = "current"
_INUSE = "inuse"
_LOCK = "lock"
_GEN = re.compile(r"^gen-[0-9a-f]{12}$")
#: Space left free beyond the bytes a build needs (file-system metadata, the manifest).
_FREE_MARGIN = 16 * 2**20
_FIX_SPACE = ("set CACHE_DIR in configs/config.py (or $ESIKIT_CACHE_DIR) to a folder with enough free space, "
              "or SYNTHESIS='reference' to read the clips without a cache")
_FIX_WRITE = ("set CACHE_DIR in configs/config.py (or $ESIKIT_CACHE_DIR) to a writable folder, "
              "or SYNTHESIS='reference' to read the clips without a cache")


class CacheError(OSError):
    """The packed cache cannot be built or opened; the message names the folder and the fix.

    Attributes
    ----------
    problem : str
        What went wrong, naming the folder.
    fix : str or None
        What to do about it (also at the end of the message).
    """

    def __init__(self, message: str, fix: str | None = None):
        self.problem = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)

    def __reduce__(self):  # one argument, like DataLoader's re-raise of worker errors
        return (CacheError, (str(self),))


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


def forward_key(fwd: np.ndarray) -> str:
    """A short hash of a forward matrix's values and shape (names its projection file)."""
    arr = np.ascontiguousarray(fwd, dtype=np.float32)
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


# -- small file-system steps (module functions so tests can interrupt between them) --------


@contextlib.contextmanager
def _locked(folder: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``folder``; yields False when ``blocking`` is False and it is taken."""
    import fcntl

    try:
        fh = open(folder / _LOCK, "a")
    except OSError as exc:
        raise CacheError(f"{folder}: cannot lock the packed clip cache folder to build in it ({exc})",
                         _FIX_WRITE) from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                yield False
                return
            logger.info("Waiting for another process that is building the packed clip cache in %s", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _reserve(fh: Any, nbytes: int) -> None:
    """Reserve ``nbytes`` for ``fh`` up front so a full disk fails here, not halfway."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fh.fileno(), 0, nbytes)
    except OSError as exc:
        if is_disk_full(exc):
            raise
        # EOPNOTSUPP/EINVAL where the file system cannot: the ordinary writes below still
        # fail with ENOSPC (an exception, never SIGBUS: nothing is written through a map).


def _write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, durably (one build step: :mod:`esikit.io.atomic`)."""
    atomic_write_json(path, obj, indent=None)


def _write_pointer(folder: Path, name: str) -> None:
    """Make generation ``name`` the current one (one atomic rename of the pointer file)."""
    atomic_write_text(folder / _POINTER, name + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _commit_folder(tmp: Path, final: Path) -> None:
    os.rename(tmp, final)
    fsync_dir(final.parent)


def _read_pointer(folder: Path) -> str | None:
    try:
        name = (folder / _POINTER).read_text().strip()
    except OSError:
        return None
    return name if _GEN.match(name) else None


def _discard(path: Path) -> None:
    """Remove a partial build (a folder or a file); never raises."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_if_unused(gen: Path) -> bool:
    """Delete generation folder ``gen`` when no process holds its ``inuse`` lock."""
    import fcntl

    try:
        fd = os.open(gen / _INUSE, os.O_RDONLY)
    except FileNotFoundError:
        _discard(gen)  # never committed (a killed build)
        return True
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # pinned by an open dataset (or its workers)
        # Deleted while the lock is held: an opener that got the file before sees it gone.
        _discard(gen)
        return True
    finally:
        os.close(fd)


def _collect(folder: Path, keep: str | None) -> None:
    """Remove unused old generations, partial builds and the files of cache version 1."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return
    for name in names:
        path = folder / name
        if name == keep or name in (_LOCK, _POINTER):
            continue
        if name.startswith("gen-"):
            if name.endswith(".tmp"):
                _discard(path)
            elif _GEN.match(name) and _remove_if_unused(path):
                logger.info("Removed unused packed cache generation %s", path)
        elif name in (_CLIPS_FILE, _MANIFEST) or name.startswith(("proj_", "clips.f32.", "manifest.json.",
                                                                  f"{_POINTER}.", f".{_POINTER}.")):
            _discard(path)  # cache version 1 files and interrupted writes (io.atomic's temporaries)


def _check_space(folder: Path, needed: int, what: str) -> int:
    """Free bytes at ``folder``; raises :class:`CacheError` when ``needed`` does not fit."""
    free = free_bytes(folder)
    if free is None:
        return -1
    if free < needed + _FREE_MARGIN:
        raise CacheError(
            f"{folder}: not enough free disk space for the {what}: it needs {format_bytes(needed)} ({needed} bytes), "
            f"{format_bytes(free)} ({free} bytes) are free",
            _FIX_SPACE,
        )
    return free


def _write_error(folder: Path, what: str, needed: int, exc: OSError) -> CacheError:
    """The message for a failed write (the partial files are already removed)."""
    if is_disk_full(exc):
        free = free_bytes(folder)
        free = -1 if free is None else free
        return CacheError(
            f"{folder}: the disk filled up while writing the {what} ({needed} bytes needed, {free} bytes free "
            "now); the partial files were removed",
            _FIX_SPACE,
        )
    return CacheError(f"{folder}: cannot write the {what} ({exc}); the partial files were removed", _FIX_WRITE)


def _spot_rows(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1}) if n else []


def _row_crc(path: Path, row: int, row_bytes: int) -> int | None:
    """CRC32 of row ``row`` of a raw file (None when it cannot be read whole)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(row * row_bytes)
            data = fh.read(row_bytes)
    except OSError:
        return None
    return zlib.crc32(data) if len(data) == row_bytes else None


def _bad_rows(path: Path, shape: tuple[int, ...], crcs: list[int]) -> list[int]:
    """Rows of a raw float32 file of ``shape`` whose CRC32 differs from ``crcs``."""
    from tqdm.auto import tqdm

    if not shape[0]:
        return []
    arr = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
    bad = [i for i in tqdm(range(shape[0]), desc=f"checking {path.name}", unit="clip", disable=shape[0] < 256)
           if zlib.crc32(arr[i]) != crcs[i]]
    del arr
    return bad


def _read_clip(store: ClipStore, cid: int, n_times: int, n_regions: int) -> tuple[np.ndarray, int]:
    """Clip ``cid`` as a packed ``(R, T)`` row and its source checksum."""
    arr, src_crc = store.read_with_checksum(cid)
    if arr.shape != (n_times, n_regions):
        raise ClipReadError(f"{store.describe(cid)}: clip has shape {arr.shape}, "
                            f"expected {(n_times, n_regions)} like the other clips")
    return np.ascontiguousarray(arr.T, dtype=np.float32), src_crc


class PackedClipCache:
    """The clips of a store in one memory-mapped ``(n_clips, R, T)`` float32 file.

    Use :meth:`open` (builds or refreshes the cache as needed). The object is pinned to
    the generation it opened (see the module docstring); pickling sends the file names,
    not the arrays: each worker maps the same files of the same generation.

    Attributes
    ----------
    folder : Path
        The cache folder of the store.
    generation : Path
        The generation folder this object reads (inside ``folder``).
    n_clips, n_regions, n_times : int
    valid : array of bool, shape (n_clips,)
        False for clips that could not be read (their rows hold zeros).
    errors : dict of int to str
        Why each invalid clip could not be read.
    repairs : list of str
        What :meth:`open` found wrong and rebuilt (damage, or with ``verify=True``
        anything the full check found); empty when the cache was sound.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], generation: Path):
        self.folder = Path(folder)
        self.generation = Path(generation)
        self.n_clips = int(manifest["n_clips"])
        self.n_times = int(manifest["n_times"])
        self.n_regions = int(manifest["n_regions"])
        self.valid = np.ones(self.n_clips, dtype=bool)
        self.errors = {int(k): str(v) for k, v in manifest.get("errors", {}).items()}
        for cid in self.errors:
            self.valid[cid] = False
        self.repairs: list[str] = []
        self._clips: np.ndarray | None = None
        self._proj: dict[str, np.ndarray] = {}
        self._pin_fd: int | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return (f"PackedClipCache(folder='{self.folder}', generation='{self.generation.name}', "
                f"clips={self.n_clips}, regions={self.n_regions}, times={self.n_times}, "
                f"unreadable={int((~self.valid).sum())})")

    # -- pinning --------------------------------------------------------------------------------
    def _pin(self) -> bool:
        """Hold a shared lock on the generation; False when it was removed meanwhile."""
        import fcntl

        inuse = self.generation / _INUSE
        try:
            fd = os.open(inuse, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:  # a read-only cache someone else built: nothing can remove it under us
            logger.debug("cannot pin %s (%s)", self.generation, exc)
            return (self.generation / _MANIFEST).is_file()
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a collector is deleting it
        try:
            same = os.fstat(fd).st_ino == os.stat(inuse).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._pin_fd = fd
        return True

    def close(self) -> None:
        """Drop the maps and the pin; remove this generation when it is superseded and unused."""
        fd, self._pin_fd = self._pin_fd, None
        self._clips = None
        self._proj = {}
        if fd is None:
            return
        # No LOCK_UN: a forked worker shares the lock with its parent; closing our
        # descriptor releases nothing the parent still holds.
        os.close(fd)
        if os.getpid() == self._pid and _read_pointer(self.folder) != self.generation.name:
            with contextlib.suppress(OSError), _locked(self.folder, blocking=False) as got:
                if got and _read_pointer(self.folder) != self.generation.name:
                    _remove_if_unused(self.generation)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit module globals may be gone
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_clips"] = None
        state["_proj"] = {}
        state["_pin_fd"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self._pin():
            raise CacheError(f"{self.generation}: the packed cache generation this dataset opened was removed "
                             "while the dataset was open", "start the run again (it opens the current cache)")

    # -- reading ---------------------------------------------------------------------------------
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
                self._clips = np.memmap(self.generation / _CLIPS_FILE, dtype=np.float32, mode="r",
                                        shape=(self.n_clips, self.n_regions, self.n_times))
        return self._clips

    def projections(self, fwd: np.ndarray) -> np.ndarray:
        """``(n_clips, T, C)`` float32 memory map of ``clip @ fwd.T``, built on first use.

        Parameters
        ----------
        fwd : array, shape (C, R)

        Raises
        ------
        CacheError
            When the projection file cannot be written (no space, no permission).
        """
        fwd = np.ascontiguousarray(fwd, dtype=np.float32)
        key = forward_key(fwd)
        hit = self._proj.get(key)
        if hit is not None:
            return hit
        path = self.generation / f"proj_{key}.f32"
        shape = (self.n_clips, self.n_times, fwd.shape[0])
        if self._projection_problem(path, shape):
            with _locked(self.folder):
                problem = self._projection_problem(path, shape)
                if problem:
                    if problem != "not built yet":
                        logger.warning("Rebuilding the clip projections %s: %s", path, problem)
                        self.repairs.append(f"{path}: {problem}")
                    self._build_projections(fwd, path, shape)
        arr = np.memmap(path, dtype=np.float32, mode="r", shape=shape) if self.n_clips else np.zeros(shape, np.float32)
        self._proj[key] = arr
        return arr

    @staticmethod
    def _projection_problem(path: Path, shape: tuple[int, ...], full: bool = False) -> str:
        """Why the projection file at ``path`` cannot be used ('' when it can).

        Size and the first, middle and last rows' CRC32 always; every row when ``full``.
        """
        side = _read_json(path.with_suffix(".json"))
        if not isinstance(side, dict):
            return "not built yet"  # (also after a kill between the data and its checksums)
        want = int(np.prod(shape)) * 4
        size = path.stat().st_size if path.is_file() else -1
        crcs = side.get("crc")
        if size != want or side.get("shape") != list(shape) or not isinstance(crcs, list) or len(crcs) != shape[0]:
            return f"has {size} bytes, expected {want} for shape {list(shape)} (truncated or damaged)"
        if full:
            bad = _bad_rows(path, shape, crcs)
        else:
            row_bytes = want // shape[0] if shape[0] else 0
            bad = [i for i in _spot_rows(shape[0]) if _row_crc(path, i, row_bytes) != crcs[i]]
        if bad:
            return f"{len(bad)} row(s) do not match their checksums (first: clip {bad[0]}; damaged)"
        return ""

    def _build_projections(self, fwd: np.ndarray, path: Path, shape: tuple[int, int, int]) -> None:
        from tqdm.auto import tqdm

        needed = int(np.prod(shape)) * 4
        side = path.with_suffix(".json")
        _check_space(self.generation, needed, "clip projections")
        remove_stale_temporaries(self.generation, path.name)  # a killed build's (we hold the lock)
        crcs: list[int] = []
        try:
            # io.atomic: a temporary beside ``path``, fsynced and renamed on success, removed on error.
            with atomic_output(path, keep_suffix=False) as tmp:
                with open(tmp, "wb") as fh:
                    _reserve(fh, needed)
                    clips = self.clips
                    ft = fwd.T.copy()
                    step = 16
                    for a in tqdm(range(0, self.n_clips, step), desc="projecting clips", unit="x16 clips",
                                  disable=self.n_clips < 256):
                        b = min(a + step, self.n_clips)
                        # (n, R, T) -> (n, T, R) @ (R, C): one BLAS call per chunk.
                        chunk = np.ascontiguousarray(np.matmul(clips[a:b].transpose(0, 2, 1), ft),
                                                     dtype=np.float32)
                        crcs.extend(zlib.crc32(row) for row in chunk)
                        fh.write(chunk)
                with contextlib.suppress(FileNotFoundError):
                    side.unlink()  # the old checksums never describe the new data
            _write_json(side, {"shape": list(shape), "crc": crcs, "forward_shape": list(fwd.shape)})
        except OSError as exc:
            if not isinstance(exc, CacheError):
                raise _write_error(self.generation, "clip projections", needed, exc) from exc
            raise
        logger.info("Projected %d clips through a %s forward matrix into %s", self.n_clips, fwd.shape, path)

    # -- opening and building ---------------------------------------------------------------------
    @classmethod
    def open(cls, store: ClipStore, cache_dir: str | PathLike | None = None, *,
             verify: bool = False) -> PackedClipCache:
        """The packed cache of ``store``, built or refreshed when its clips changed.

        Parameters
        ----------
        store : FolderClipStore or H5ClipStore
        cache_dir : path-like, optional
            Folder of this store's cache (default: :func:`default_cache_dir`).
        verify : bool
            Also check the CRC32 of every packed clip, every projection and every source
            clip file (reads all of them); anything wrong is rebuilt and listed in
            :attr:`repairs`.

        Raises
        ------
        CacheError
            When the cache cannot be built (no space, not writable); the message names
            the folder and the fix.
        """
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(store)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"{folder}: cannot create the packed clip cache folder ({exc})", _FIX_WRITE) from exc
        entries = store_entries(store)
        n_times, n_regions = store.shape
        repairs: list[str] = []
        for _ in range(8):
            name, manifest, reason = cls._load(folder)
            damaged, distrust = reason.endswith("(damaged)"), set()
            if not reason:
                reason, damaged = cls._check(manifest, entries, n_times, n_regions, folder / name)
            if not reason:
                reason = cls._retry_errors(store, manifest, n_times, n_regions)
            if not reason and verify:
                problems, distrust = cls._verify(store, folder / name, manifest)
                if problems:
                    reason, damaged = "; ".join(problems), True
            if not reason:
                cache = cls(folder, manifest, folder / name)
                if cache._pin():
                    cache.repairs = repairs
                    cls._tidy(folder, name)
                    logger.info("%r", cache)
                    return cache
                continue  # superseded and removed between reading the pointer and pinning
            with _locked(folder):
                if _read_pointer(folder) != name:
                    continue  # another process committed a new generation meanwhile: check it
                if damaged:
                    logger.warning("Rebuilding the packed clip cache in %s: %s", folder, reason)
                    repairs.append(reason)
                else:
                    logger.info("Packing clips of %s into %s (%s)", _store_location(store), folder, reason)
                old = folder / name if name else None
                new_name, manifest = cls._build(store, folder, entries, n_times, n_regions, old, manifest, distrust)
                cache = cls(folder, manifest, folder / new_name)
                cache._pin()  # under the build lock: nobody can collect it first
                _collect(folder, keep=new_name)
            cache.repairs = repairs
            logger.info("%r", cache)
            return cache
        raise CacheError(f"{folder}: the packed clip cache changed 8 times while opening it",
                         "make sure one store's cache is not rebuilt in a loop by other processes, then run again")

    @staticmethod
    def _tidy(folder: Path, current: str) -> None:
        """Remove what killed builds and closed users left (only when no build is running)."""
        try:
            extra = any(p.name not in (_LOCK, _POINTER, current) for p in folder.iterdir())
        except OSError:
            return
        if extra:
            with contextlib.suppress(OSError), _locked(folder, blocking=False) as got:
                if got:
                    _collect(folder, keep=_read_pointer(folder))

    @staticmethod
    def _load(folder: Path) -> tuple[str | None, dict[str, Any] | None, str]:
        """The current generation's name and manifest, or the reason there is none."""
        name = _read_pointer(folder)
        if name is None:
            if (folder / _POINTER).exists():
                return None, None, f"{folder / _POINTER} does not name a generation (damaged)"
            if (folder / _MANIFEST).exists():
                return None, None, "cache of an older esikit version"
            return None, None, "no cache yet"
        manifest = _read_json(folder / name / _MANIFEST)
        if not isinstance(manifest, dict):
            return name, None, f"{folder / name / _MANIFEST} is missing or unreadable (damaged)"
        return name, manifest, ""

    @staticmethod
    def _check(manifest: dict[str, Any], entries: list[list[Any]], n_times: int, n_regions: int,
               gen: Path) -> tuple[str, bool]:
        """Why the cache must be (re)built ('' when it is up to date) and whether it is damaged."""
        if manifest.get("version") != CACHE_VERSION:
            return f"cache version {manifest.get('version')} != {CACHE_VERSION}", False
        if (manifest.get("n_times"), manifest.get("n_regions")) != (n_times, n_regions):
            return f"clip shape changed to {(n_times, n_regions)}", False
        old = manifest.get("entries", [])
        if old != entries:
            old_set = {tuple(e) for e in old}
            new_set = {tuple(e) for e in entries}
            old_paths = {e[0] for e in old}
            new_paths = {e[0] for e in entries}
            added = len(new_paths - old_paths)
            removed = len(old_paths - new_paths)
            changed = len({e[0] for e in new_set - old_set} & old_paths)
            return f"{added} clip(s) added, {removed} removed, {changed} changed", False
        n = len(entries)
        row_bytes = n_times * n_regions * 4
        path = gen / _CLIPS_FILE
        size = path.stat().st_size if path.is_file() else -1
        if size != n * row_bytes:
            return f"{path} has {size} bytes, expected {n * row_bytes} (truncated or damaged)", True
        crcs = manifest.get("crc", [])
        if len(crcs) != n or len(manifest.get("source_crc", [])) != n:
            return f"{gen / _MANIFEST} lists {len(crcs)} checksums for {n} clips (damaged)", True
        bad = [i for i in _spot_rows(n) if _row_crc(path, i, row_bytes) != crcs[i]]
        if bad:
            return f"{path}: clip {bad[0]} does not match its checksum (damaged)", True
        return "", False

    @staticmethod
    def _retry_errors(store: ClipStore, manifest: dict[str, Any], n_times: int, n_regions: int) -> str:
        """Errors are not cached: clips unreadable at the last build are tried again."""
        fixed = 0
        for cid in manifest.get("errors", {}):
            try:
                _read_clip(store, int(cid), n_times, n_regions)
                fixed += 1
            except ClipReadError:
                pass
        return f"{fixed} clip(s) unreadable at the last build can be read now" if fixed else ""

    @classmethod
    def _verify(cls, store: ClipStore, gen: Path, manifest: dict[str, Any]) -> tuple[list[str], set[int]]:
        """The full check: every packed row, projection row and source file against its CRC32."""
        from tqdm.auto import tqdm

        n, n_r, n_t = int(manifest["n_clips"]), int(manifest["n_regions"]), int(manifest["n_times"])
        problems: list[str] = []
        bad_rows = _bad_rows(gen / _CLIPS_FILE, (n, n_r, n_t), manifest["crc"])
        if bad_rows:
            problems.append(f"{gen / _CLIPS_FILE}: {len(bad_rows)} packed clip(s) do not match their checksums "
                            f"(first: {store.describe(bad_rows[0])})")
        errors = {int(k) for k in manifest.get("errors", {})}
        changed = []
        src = manifest["source_crc"]
        for cid in tqdm(range(n), desc="verifying clip files", unit="clip", disable=n < 256):
            if cid in errors:
                continue
            try:
                if store.source_checksum(cid) != src[cid]:
                    changed.append(cid)
            except ClipReadError:
                changed.append(cid)
        if changed:
            problems.append(f"{len(changed)} clip file(s) changed or unreadable since packing although their size "
                            f"and mtime did not change (first: {store.describe(changed[0])})")
        for side in sorted(gen.glob("proj_*.json")):
            meta = _read_json(side)
            shape = tuple(meta.get("shape", ())) if isinstance(meta, dict) else ()
            path = side.with_suffix(".f32")
            problem = cls._projection_problem(path, shape, full=True) if len(shape) == 3 else "not built yet"
            if problem == "not built yet":
                problem = "its checksum file is missing or damaged"
            if problem:
                problems.append(f"{path}: {problem}")
        return problems, set(bad_rows) | set(changed)

    @classmethod
    def _build(cls, store: ClipStore, folder: Path, entries: list[list[Any]], n_times: int, n_regions: int,
               old_gen: Path | None, old: dict[str, Any] | None, distrust: set[int]) -> tuple[str, dict[str, Any]]:
        """Write a new generation and make it current; returns its name and manifest."""
        from tqdm.auto import tqdm

        n = len(entries)
        row_bytes = n_times * n_regions * 4
        needed = n * row_bytes
        # Unchanged clips are copied from the previous generation instead of decoded again;
        # each copied row is checked against its CRC32 on the way (a damaged row is re-read).
        reuse: dict[tuple[Any, ...], int] = {}
        old_clips = None
        if old is not None and old_gen is not None and old.get("version") == CACHE_VERSION \
                and (old.get("n_times"), old.get("n_regions")) == (n_times, n_regions):
            n_old = len(old.get("entries", []))
            path = old_gen / _CLIPS_FILE
            if n_old and path.is_file() and path.stat().st_size == n_old * row_bytes \
                    and len(old.get("crc", [])) == n_old and len(old.get("source_crc", [])) == n_old:
                old_err = {int(k) for k in old.get("errors", {})}
                reuse = {tuple(e): i for i, e in enumerate(old["entries"])
                         if i not in old_err and i not in distrust and e[1] >= 0}
                if reuse:
                    old_clips = np.memmap(path, dtype=np.float32, mode="r", shape=(n_old, n_regions, n_times))
        free = _check_space(folder, needed, "packed clip cache")
        name = f"gen-{uuid.uuid4().hex[:12]}"
        tmp = folder / f"{name}.tmp"
        errors: dict[int, str] = {}
        crcs: list[int] = []
        src_crcs: list[int | None] = []
        n_reused = 0
        try:
            tmp.mkdir()
            (tmp / _INUSE).touch()
            with open(tmp / _CLIPS_FILE, "wb") as fh:
                _reserve(fh, needed)
                zeros = np.zeros((n_regions, n_times), dtype=np.float32)
                for cid in tqdm(range(n), desc="packing clips", unit="clip", disable=n < 64):
                    j = reuse.get(tuple(entries[cid]))
                    row = None
                    if j is not None and old_clips is not None:
                        row = old_clips[j]
                        crc = zlib.crc32(row)
                        if crc == old["crc"][j]:  # type: ignore[index]
                            src_crc = old["source_crc"][j]  # type: ignore[index]
                            n_reused += 1
                        else:
                            logger.warning("%s: packed copy of %s is damaged; reading it again",
                                           old_gen, store.describe(cid))
                            row = None
                    if row is None:
                        try:
                            row, src_crc = _read_clip(store, cid, n_times, n_regions)
                            crc = zlib.crc32(row)
                        except ClipReadError as exc:
                            errors[cid] = str(exc)
                            row, src_crc, crc = zeros, None, zlib.crc32(zeros)
                    fh.write(row)
                    crcs.append(crc)
                    src_crcs.append(src_crc)
                fh.flush()
                os.fsync(fh.fileno())
            del old_clips
            manifest = {
                "version": CACHE_VERSION,
                "generation": name,
                "store": repr(store),
                "kind": "h5" if isinstance(store, H5ClipStore) else "folder",
                "n_clips": n,
                "n_times": n_times,
                "n_regions": n_regions,
                "errors": {str(k): v for k, v in errors.items()},
                "entries": entries,
                "crc": crcs,
                "source_crc": src_crcs,
            }
            _write_json(tmp / _MANIFEST, manifest)
            _commit_folder(tmp, folder / name)
            _write_pointer(folder, name)
        except BaseException as exc:
            # A partial generation is never named by the pointer; remove it at once.
            _discard(tmp)
            if _read_pointer(folder) != name:
                _discard(folder / name)
            if isinstance(exc, OSError) and not isinstance(exc, (CacheError, ClipReadError)):
                raise _write_error(folder, "packed clip cache", needed, exc) from exc
            raise
        logger.info("Packed %d clips (%d reused, %d unreadable) into %s (%s free before)", n, n_reused,
                    len(errors), folder / name, format_bytes(free) if free >= 0 else "?")
        return name, manifest


__all__ = ["PackedClipCache", "CacheError", "default_cache_dir", "store_entries", "forward_key"]
