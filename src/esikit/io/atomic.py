"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Every writer here does the same four steps: write under a temporary name in the target's
own folder (so the rename stays on one filesystem), fsync the file, one ``os.replace``
over the target (atomic on POSIX and Windows), then fsync the folder so the rename itself
survives a power cut. A kill at any moment leaves at most a hidden temporary
``.<name>.<random>.tmp[<suffix>]``, which :func:`remove_stale_temporaries` clears and no
reader takes for the real file.

Examples
--------
>>> atomic_write_json("run/summary.json", {"loss": 0.1})        # doctest: +SKIP
>>> with atomic_output("clips/nmm_1.mat") as tmp:                # doctest: +SKIP
...     save_mat_file(tmp, {"data": clip})
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "free_bytes",
    "fsync_dir",
    "is_disk_full",
    "remove_stale_temporaries",
]

#: The errors of a full disk: no space left, or the user's quota used up.
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def free_bytes(folder: str | PathLike) -> int | None:
    """Bytes free on the file system holding ``folder``; None when that cannot be read."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or an exhausted quota (``ENOSPC``, ``EDQUOT``), for messages."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def fsync_dir(folder: str | PathLike) -> None:
    """Flush ``folder``'s entries to disk (so a rename in it survives a crash); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems (and Windows) do not allow it
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _temporary(path: Path, keep_suffix: bool) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The target's suffix is kept when asked: writers such as np.savez or save_mat_file choose
    # (or append) a format by the name they are given.
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | PathLike, payload: bytes | memoryview) -> Path:
    """Write ``payload`` to ``path`` atomically; return ``path``.

    Parameters
    ----------
    path : str | PathLike
        The file to (re)place; its folder is created when missing.
    payload : bytes | memoryview
        The complete new contents.

    Raises
    ------
    OSError
        When the write fails (disk full, permissions); the temporary file is removed and
        the previous ``path`` is left as it was.
    """
    path = Path(path)
    with atomic_output(path, keep_suffix=False) as tmp:  # fsync, rename and cleanup live there
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, payload)
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: str | PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | PathLike, data: Any, *, indent: int | None = 1,
                      default: Callable[[Any], Any] | None = None, allow_nan: bool = True) -> Path:
    """Write ``data`` as JSON (UTF-8, a final newline) to ``path`` atomically.

    ``default`` and ``allow_nan`` are :func:`json.dumps`'s; the text is built before the
    file is touched, so data that cannot be serialized leaves ``path`` unchanged.
    """
    text = json.dumps(data, indent=indent, default=default, allow_nan=allow_nan) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_output(path: str | PathLike, *, keep_suffix: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new contents to with any writer; renamed on success.

    The body writes (and closes) the file at the yielded path by any means (``np.savez``,
    ``save_mat_file``, ``csv``); when it returns, the file is fsynced and renamed over
    ``path`` and the folder fsynced. When it raises, the temporary file is removed and
    ``path`` is left as it was.

    Parameters
    ----------
    path : str | PathLike
        The file to (re)place; its folder is created when missing.
    keep_suffix : bool
        End the temporary name with ``path``'s suffix (default), for writers that pick a
        format from it or append one when it is missing.
    """
    path = Path(path)
    fd, tmp = _temporary(path, keep_suffix=keep_suffix)
    os.close(fd)  # the body opens the path itself
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_temporaries(folder: str | PathLike, name: str = "*") -> int:
    """Remove the temporaries that killed writers left in ``folder``; return how many.

    ``name`` is a glob on the target's name (``"nmm_*.mat"``): only temporaries of
    matching targets are removed. Call it where no other process writes at the same time.
    """
    n = 0
    for tmp in Path(folder).glob(f".{name}.*.tmp*"):
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                n += 1
    return n
