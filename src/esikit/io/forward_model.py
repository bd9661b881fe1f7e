"""Leadfield files with their channels: ``fwd`` plus ``ch_names`` and ``ch_pos``.

A network trained on a leadfield must know which row is which electrode. esikit's
leadfield files therefore carry, beside DeepSIF's ``fwd`` (C x R), the channel names
``ch_names`` (C strings) and positions ``ch_pos`` (C x 3, metres, MNE's head frame: x to
the right ear, y to the nasion, z up, origin between the ears). DeepSIF's plain ``fwd``
files still load: their names and positions are ``None``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esikit.io._mat import list_mat_variables, load_mat_file, mat_strings, save_mat_file
from esikit.io.atomic import atomic_output
from esikit.io.forward import load_forward_matrix

logger = logging.getLogger(__name__)

__all__ = ["ForwardModel", "load_forward_model", "montage_dict", "save_forward_model", "validate_channels"]


@dataclass
class ForwardModel:
    """A region leadfield and, when known, the channels its rows belong to.

    Parameters
    ----------
    fwd : numpy.ndarray, shape (C, R)
        Region leadfield, channels x regions (float64; V per unit source in the units of
        the file, MNE's V/(A m) for leadfields made by ``esikit forward``).
    ch_names : list of str | None
        Channel names in row order, C of them.
    ch_pos : numpy.ndarray, shape (C, 3) | None
        Electrode positions in metres, MNE's head frame.
    """

    fwd: np.ndarray
    ch_names: list[str] | None = None
    ch_pos: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.fwd = np.asarray(self.fwd, dtype=np.float64)
        if self.ch_names is not None:
            self.ch_names = [str(c) for c in self.ch_names]
        if self.ch_pos is not None:
            self.ch_pos = np.asarray(self.ch_pos, dtype=np.float64)
        problems = validate_channels(self.fwd.shape[0] if self.fwd.ndim == 2 else -1,
                                     self.ch_names, self.ch_pos)
        if self.fwd.ndim != 2:
            problems.insert(0, f"'fwd' has shape {self.fwd.shape}, expected (C, R)")
        if problems:
            raise ValueError("ForwardModel: " + "; ".join(problems))

    @property
    def n_channels(self) -> int:
        """C, the number of channels (rows of ``fwd``)."""
        return int(self.fwd.shape[0])

    @property
    def n_regions(self) -> int:
        """R, the number of regions (columns of ``fwd``)."""
        return int(self.fwd.shape[1])

    def montage_dict(self) -> dict[str, list | None]:
        """``{"ch_names": [...] | None, "ch_pos": [[x, y, z], ...] | None}`` (see :func:`montage_dict`)."""
        return montage_dict(self.ch_names, self.ch_pos)


def montage_dict(ch_names: Sequence[str] | None, ch_pos: np.ndarray | None) -> dict[str, list | None]:
    """Channel names and positions as plain Python lists (``None`` stays ``None``).

    JSON-like (no numpy), for checkpoints read with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    ch_names : sequence of str | None
    ch_pos : array-like, shape (C, 3) | None
        Metres, MNE's head frame.

    Returns
    -------
    dict
        ``{"ch_names": list[str] | None, "ch_pos": list[list[float]] | None}``.

    Raises
    ------
    ValueError
        If both are given and do not fit each other (see :func:`validate_channels`).
    """
    if ch_names is not None and ch_pos is not None:
        problems = validate_channels(len(ch_names), ch_names, ch_pos)
        if problems:
            raise ValueError("montage: " + "; ".join(problems))
    return {
        "ch_names": [str(c) for c in ch_names] if ch_names is not None else None,
        "ch_pos": np.asarray(ch_pos, dtype=np.float64).tolist() if ch_pos is not None else None,
    }


def validate_channels(n_channels: int, ch_names: Sequence[str] | None,
                      ch_pos: np.ndarray | None) -> list[str]:
    """Every problem with channel names and positions for ``n_channels`` rows.

    Parameters
    ----------
    n_channels : int
        C, the rows of the leadfield.
    ch_names : sequence of str | None
        Must hold C distinct, non-empty names.
    ch_pos : array-like, shape (C, 3) | None
        Must be finite, in metres (every coordinate under 1 m in size).

    Returns
    -------
    list of str
        One message per problem (empty when all is well).
    """
    problems = []
    if ch_names is not None:
        names = [str(c) for c in ch_names]
        if len(names) != n_channels:
            problems.append(f"field 'ch_names' has {len(names)} names, expected C={n_channels} "
                            "(one per leadfield row)")
        empty = [i for i, c in enumerate(names) if not c.strip()]
        if empty:
            problems.append(f"field 'ch_names' has empty names at rows {empty[:10]}")
        seen, dup = set(), []
        for c in names:
            if c in seen and c not in dup:
                dup.append(c)
            seen.add(c)
        if dup:
            problems.append(f"field 'ch_names' repeats {dup[:10]}, expected distinct names")
    if ch_pos is not None:
        pos = np.asarray(ch_pos)
        if pos.dtype.kind not in "biuf" or pos.shape != (n_channels, 3):
            problems.append(f"field 'ch_pos' has shape {pos.shape} (dtype {pos.dtype}), expected "
                            f"real numbers of shape (C, 3) with C={n_channels}")
        elif not np.all(np.isfinite(pos)):
            problems.append(f"field 'ch_pos' has {int((~np.isfinite(pos)).any(axis=1).sum())} "
                            "rows with NaN or Inf, expected finite positions")
        elif np.abs(pos).max() >= 1.0:
            problems.append(f"field 'ch_pos' reaches {np.abs(pos).max():.3g}, expected metres "
                            "(a head is about 0.2 m across; millimetres divided by 1000?)")
    return problems


def load_forward_model(path: str | os.PathLike, key: str | None = None, *,
                       n_regions: int | None = None) -> ForwardModel:
    """Load a leadfield with its channel names and positions when the file has them.

    Parameters
    ----------
    path : str | os.PathLike
        A file :func:`esikit.io.load_forward_matrix` reads (MAT v4/v5/v7/v7.3, HDF5,
        Octave text, ``.npz``, ``.npy``). ``ch_names`` and ``ch_pos`` are read when
        present (not from ``.npy``, which holds one array).
    key : str | None
        The leadfield variable (default: ``fwd``, ``forward``, ``leadfield``, ``L``).
    n_regions : int | None
        R when known (decides the orientation). Without it, a file with channel names
        is oriented by them (so a 128-channel, 76-region leadfield stays 128 x 76);
        a plain file as :func:`esikit.io.load_forward_matrix` does.

    Returns
    -------
    ForwardModel
        ``fwd`` (C, R); ``ch_names`` and ``ch_pos`` ``None`` for DeepSIF's plain files.

    Raises
    ------
    ValueError
        If the leadfield is invalid (see :func:`esikit.io.load_forward_matrix`) or the
        channel fields do not fit it; the message names the file and every bad field.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a forward matrix)")
    suffix = p.suffix.lower()
    fields: dict[str, object] = {}
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            fields = {k: npz[k] for k in ("ch_names", "ch_pos") if k in npz.files}
    elif suffix != ".npy":
        present = [k for k in ("ch_names", "ch_pos") if k in list_mat_variables(p)]
        if present:
            fields = load_mat_file(p, variable_names=present)
    ch_names = mat_strings(fields["ch_names"]) if "ch_names" in fields else None
    ch_pos = np.asarray(fields["ch_pos"]) if "ch_pos" in fields else None
    n_ch = len(ch_names) if ch_names is not None else (
        ch_pos.shape[0] if ch_pos is not None and ch_pos.ndim == 2 and ch_pos.shape[1] == 3 else None)
    fwd = load_forward_matrix(p, key) if n_regions is None else load_forward_matrix(p, key, n_regions=n_regions)
    if n_regions is None and n_ch is not None and fwd.shape[0] != n_ch and fwd.shape[1] == n_ch:
        # More channels than regions: the names say which side is which.
        fwd = load_forward_matrix(p, key, n_regions=fwd.shape[0])
    if ch_pos is not None and ch_pos.ndim == 2 and ch_pos.shape == (3, fwd.shape[0]) and fwd.shape[0] != 3:
        ch_pos = ch_pos.T  # written 3 x C (MATLAB habit)
    problems = validate_channels(fwd.shape[0], ch_names, ch_pos)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    logger.debug("Loaded %s x %s leadfield from %s (%s channel names)", *fwd.shape, path,
                 "with" if ch_names is not None else "without")
    return ForwardModel(fwd, ch_names, ch_pos)


def save_forward_model(path: str | os.PathLike, fwd: np.ndarray | ForwardModel,
                       ch_names: Sequence[str] | None = None, ch_pos: np.ndarray | None = None) -> Path:
    """Write a leadfield with its channel names and positions, atomically.

    Parameters
    ----------
    path : str | os.PathLike
        ``.npz`` writes a NumPy archive; any other name a MAT v5 file (fields ``fwd``
        C x R, ``ch_names`` a 1 x C cell of strings, ``ch_pos`` C x 3 in metres), which
        DeepSIF's MATLAB code and :func:`esikit.io.load_forward_matrix` read as before.
    fwd : numpy.ndarray, shape (C, R) | ForwardModel
        The leadfield (a ForwardModel brings its own names and positions).
    ch_names : sequence of str | None
        C channel names in row order.
    ch_pos : array-like, shape (C, 3) | None
        Electrode positions, metres, MNE's head frame.

    Returns
    -------
    Path
        The file written (a temporary file renamed in one step, so an interrupted write
        never leaves a file that looks valid).
    """
    if isinstance(fwd, ForwardModel):
        model = fwd
    else:
        model = ForwardModel(fwd, ch_names, ch_pos)  # C x R as given: no guessing of the orientation
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(p) as tmp:
        if p.suffix.lower() == ".npz":
            arrays = {"fwd": model.fwd}
            if model.ch_names is not None:
                arrays["ch_names"] = np.array(model.ch_names, dtype=str)
            if model.ch_pos is not None:
                arrays["ch_pos"] = model.ch_pos
            with open(tmp, "wb") as f:  # a file object: numpy adds no second suffix
                np.savez_compressed(f, **arrays)
        else:
            data: dict[str, object] = {"fwd": model.fwd}
            if model.ch_names is not None:
                cell = np.empty((1, len(model.ch_names)), dtype=object)
                cell[0, :] = model.ch_names
                data["ch_names"] = cell
            if model.ch_pos is not None:
                data["ch_pos"] = model.ch_pos
            save_mat_file(tmp, data, format="v5")
    return p
