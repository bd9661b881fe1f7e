"""Checkpoints written atomically: a kill or a full disk mid-save never leaves a corrupt file.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced,
then renamed over the old one (``os.replace`` is atomic on POSIX and Windows), and the
folder is fsynced so the rename itself survives a crash. A reader therefore sees either
the previous complete checkpoint or the new complete one, never half of one. Each file
also carries a format marker and the keys it must have, checked on load.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT = "esikit-checkpoint-v1"
REQUIRED_KEYS = ("format", "model_state", "model_config", "epoch", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or not one of ours."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not allow it
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | PathLike) -> Path:
    """Write ``state`` to ``path`` atomically.

    The state is serialized to memory first, so a serialization error leaves the disk
    untouched; a write error (disk full) removes the temporary file and leaves the
    previous checkpoint in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state["format"] = FORMAT
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    logger.debug("checkpoint written: %s (%d bytes)", path, len(payload))
    return path


def load_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking it is complete.

    Raises
    ------
    FileNotFoundError
        When there is no file.
    CheckpointError
        When the file is truncated, corrupt, or lacks the keys of a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an esikit checkpoint (format marker missing)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


def cleanup_stale_temporaries(folder: str | PathLike) -> int:
    """Remove temporary files left by a save that was killed; return how many."""
    n = 0
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            n += 1
        except OSError:  # pragma: no cover
            pass
    return n
