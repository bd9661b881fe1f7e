"""Checkpoints: written atomically, read without running code, one writer per run folder.

A checkpoint is written (:mod:`esikit.io.atomic`) to a temporary file in the same folder, flushed
and fsynced, then renamed over the old one (``os.replace`` is atomic on POSIX and Windows), and the
folder is fsynced so the rename itself survives a crash. A reader therefore sees either
the previous complete checkpoint or the new complete one, never half of one. Each file
also carries a format marker and the keys it must have, checked on load.

A checkpoint holds only plain data (tensors, numbers, strings, None, lists, tuples and
dicts): :func:`save_checkpoint` converts numpy values and paths and refuses anything
else, and :func:`load_checkpoint` reads with ``torch.load(..., weights_only=True)``, so
a crafted ``.pt`` file cannot run code when it is loaded. Checkpoints written before
this rule (their RNG state held numpy arrays) still load: the restricted unpickler is
allowed to rebuild plain numpy arrays, and nothing else.

:class:`RunLock` holds an OS file lock on ``<run>/.lock`` while a run trains, so two
runs with the same ``RUN_NAME`` cannot overwrite each other; the OS releases it when
the process exits or is killed.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import format_bytes
from ..io.atomic import atomic_write_bytes, free_bytes, is_disk_full

logger = logging.getLogger(__name__)

FORMAT = "esikit-checkpoint-v1"
REQUIRED_KEYS = ("format", "model_state", "model_config", "epoch", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or not one of ours."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint (or run file) could not be written; the previous file is intact.

    ``errno`` is the operating system's error number (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


class RunLockedError(RuntimeError):
    """Another live process is training into the same run folder."""


# -- plain data --------------------------------------------------------------------------------


def to_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` as data that ``torch.load(..., weights_only=True)`` reads back.

    Tensors, bool, int, float, str, None, lists, tuples and dicts (string or integer
    keys) are kept; numpy arrays become lists, numpy scalars Python numbers, paths
    strings.

    Raises
    ------
    TypeError
        Naming where in the state (``state['config']['X']``) a value of another type is.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj.tolist())]
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoint keys must be str or int")
            out[k] = to_plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a checkpoint "
                    "(expected tensors, numbers, strings, None, lists, tuples or dicts)")


# -- writing -----------------------------------------------------------------------------------


def _write_error(path: Path, exc: OSError, size: int, what: str) -> CheckpointWriteError:
    """A message naming the file, what was needed and what is free."""
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    if is_disk_full(exc):
        free = free_bytes(path.parent)
        free_text = f"{format_bytes(free)} free" if free is not None else "free space unknown"
        return CheckpointWriteError(
            f"{path}: no space left on the device while writing the {what}: it needs {format_bytes(size)}, "
            f"{free_text} in {path.parent}; {kept}. Free some space or set CHECKPOINT_DIR to another disk, "
            "then continue with --resume.", exc.errno)
    return CheckpointWriteError(f"{path}: cannot write the {what} ({exc.strerror or exc}); {kept}.", exc.errno)


def write_run_file(path: str | PathLike, payload: bytes | memoryview | str, what: str = "file") -> Path:
    """Write ``payload`` (bytes, or text as UTF-8) to ``path`` atomically (:mod:`esikit.io.atomic`).

    Raises
    ------
    CheckpointWriteError
        When the write fails (disk full, permissions): names the file, what was needed
        and what is free; the temporary file is removed and the previous ``path`` is left
        as it was.
    """
    path = Path(path)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    try:
        return atomic_write_bytes(path, payload)
    except OSError as exc:
        raise _write_error(path, exc, len(payload), what) from exc


def save_checkpoint(state: dict[str, Any], path: str | PathLike) -> Path:
    """Write ``state`` to ``path`` atomically, as plain data.

    The state is converted (:func:`to_plain`) and serialized to memory first, so a
    serialization error leaves the disk untouched; a write error (disk full) removes the
    temporary file and leaves the previous checkpoint in place.

    Raises
    ------
    ValueError
        When the state lacks a required key.
    TypeError
        When the state holds something other than plain data (names where).
    CheckpointWriteError
        When the file cannot be written (names the file, the size needed, the free space).
    """
    path = Path(path)
    state = dict(state)
    state["format"] = FORMAT
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    state = to_plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    write_run_file(path, payload, "checkpoint")
    logger.debug("checkpoint written: %s (%d bytes)", path, len(payload))
    return path


# -- reading -----------------------------------------------------------------------------------


def _legacy_numpy_globals() -> list[Any]:
    """What an old checkpoint's numpy RNG state needs: plain numpy arrays and dtypes only."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    numeric = [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", None))
               if name.endswith("DType") and name.startswith(("Bool", "Int", "UInt", "Float", "Complex"))]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *numeric]


_LEGACY_NAMES = {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype"}


def _load_restricted(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - decide below whether it is an old checkpoint
        first = exc
    try:
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not even a readable archive
        needed = set()
    if needed and needed <= _LEGACY_NAMES:
        # A checkpoint from before the plain-data rule: its numpy RNG state is the only
        # non-plain part. Still weights_only: only these array constructors are allowed.
        try:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - e.g. an old checkpoint cut short
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
        logger.info("%s: checkpoint written by an older esikit (numpy RNG state); read safely", path)
        return state
    if needed:
        raise CheckpointError(
            f"{path}: refused: the file asks to run or build {sorted(needed)}, which an esikit checkpoint never "
            "does (it holds tensors, numbers, strings, lists and dicts). Do not load files from untrusted "
            "sources; if this is an old checkpoint of yours, retrain or convert it to plain data.") from first
    raise CheckpointError(f"{path}: not a readable checkpoint ({type(first).__name__}: {first})") from first


def load_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, without running any code in it.

    Raises
    ------
    FileNotFoundError
        When there is no file.
    CheckpointError
        When the file is truncated, corrupt, holds anything but plain data, or lacks the
        keys of a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    state = _load_restricted(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an esikit checkpoint (format marker missing)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


# -- one writer per run folder -----------------------------------------------------------------

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_HELD: dict[Path, list[Any]] = {}  # lock path -> [file object, depth]: re-entrant within a process


class RunLock:
    """An exclusive OS lock on ``<run_dir>/.lock`` while a run writes into ``run_dir``.

    Re-entrant within one process; the lock file records the holder's PID for the
    message another process gets. The OS releases the lock when the holder exits or is
    killed, so a stale lock file never blocks a new run.

    Raises
    ------
    RunLockedError
        On ``__enter__``, when another live process holds the folder.
    """

    def __init__(self, run_dir: str | PathLike):
        self.run_dir = Path(run_dir)
        self.path = (self.run_dir / ".lock").resolve()

    def __enter__(self) -> RunLock:
        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        if fcntl is None:  # pragma: no cover
            logger.warning("no OS file locks on this platform: nothing stops two runs writing into %s", self.run_dir)
            _HELD[self.path] = [None, 1]
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(
                f"{self.run_dir}: another training run (PID {holder}) is writing into this folder; wait for it to "
                "finish or stop it, or choose another RUN_NAME") from exc
        f.seek(0)
        f.truncate()
        f.write(json.dumps(os.getpid()))
        f.flush()
        _HELD[self.path] = [f, 1]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        held = _HELD.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.path]
            if held[0] is not None:
                fcntl.flock(held[0].fileno(), fcntl.LOCK_UN)
                held[0].close()
