"""Sensor noise of the samples: DeepSIF's white noise, or segments of recorded EEG.

``NOISE`` (the datasets' ``noise``) chooses, per dataset (``docs/SAMPLE_CONTRACT.md``):

- ``'white'`` (default): DeepSIF's training noise, white per channel at
  ``sigma_c**2 = 10**(-snr/10) * mean_t(E[:, c]**2) / 2``;
- ``'recorded'``: a segment of recorded EEG from a noise bank, each channel scaled to
  the power ``10**(-snr/10) * mean_t(E[:, c]**2)`` (DeepSIF's evaluation with realistic
  noise, ``utils.add_white_noise`` with all of the noise recorded: no ``/ 2``);
- ``'mixed'``: per sample, recorded with probability 1/2, else white.

A noise bank is DeepSIF's ``realistic_noise.mat`` layout: field ``data``, ``K x L x C``
(segments x time x channels, ``L >= T``), or what ``esikit noise-bank`` writes (the same
plus ``ch_names``). Its channels are matched to the forward matrix's by name when both
have names, else taken in order (then C must equal the forward matrix's).

The choices (white or recorded, which segment, where it starts) come from a generator
seeded by ``(seed, epoch, index, 0x4015E)``: like every draw of a sample, the same in
any process or order, and apart from the contract's stream, so white samples stay the
same whatever ``NOISE`` is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from .._validation import check_option
from ..io import mat_strings

logger = logging.getLogger(__name__)

NOISE_MODES = ("white", "recorded", "mixed")


class NoiseBankError(ValueError):
    """A noise bank that cannot be used (missing file, bad field, shape, channels or values)."""

#: Tag of the noise-choice stream (kept apart from the contract's ``(seed, epoch, index)``).
_NOISE_STREAM = 0x4015E


def forward_channel_names(fwd_path: str | PathLike) -> list[str] | None:
    """``ch_names`` stored beside ``fwd`` in a leadfield file (esikit writes them), or None."""
    from ..io import load_mat_file

    try:
        names = load_mat_file(fwd_path, variable_names=["ch_names"]).get("ch_names")
    except (OSError, ValueError):
        return None
    return None if names is None else mat_strings(names)


def load_noise_bank(path: str | PathLike, n_channels: int, n_times: int,
                    channel_names: Sequence[str] | None = None) -> np.ndarray:
    """Read, check and reorder a noise bank for a forward matrix.

    Parameters
    ----------
    path : path-like
        ``.mat`` (any version) or ``.npz`` file with field ``data`` (K x L x C) and,
        optionally, ``ch_names`` (C names).
    n_channels : int
        C of the forward matrix.
    n_times : int
        T of the samples (each segment needs ``L >= T`` time points).
    channel_names : sequence of str, optional
        The forward matrix's channel names, in its row order.

    Returns
    -------
    bank : array of float32, shape (K, L, n_channels)
        Segments in the forward matrix's channel order.

    Raises
    ------
    NoiseBankError
        A ValueError naming the file, the field and every problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise NoiseBankError(f"Noise bank not found: {path} (set NOISE_BANK_PATH to a file made by "
                                "'esikit noise-bank' or DeepSIF's anatomy/realistic_noise.mat)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    else:
        from ..io import load_mat_file

        raw = load_mat_file(path, variable_names=["data", "ch_names"])
    if "data" not in raw:
        from ..io import list_mat_variables

        present = sorted(raw) if path.suffix == ".npz" else sorted(list_mat_variables(path))
        raise NoiseBankError(f"{path}: no field 'data' (fields: {present}); expected K x L x C noise segments")
    data = np.asarray(raw["data"])
    if data.ndim == 2:  # one segment saved without its leading axis
        data = data[None]
    if data.ndim != 3 or data.dtype.kind not in "fiu" or 0 in data.shape:
        raise NoiseBankError(f"{path}: field 'data' has shape {np.shape(raw['data'])} ({data.dtype}), "
                         "expected (K, L, C) numbers: segments x time x channels")
    problems: list[str] = []
    n_seg, n_len, n_ch = data.shape
    order = np.arange(n_ch)
    names = mat_strings(raw["ch_names"]) if "ch_names" in raw else None
    if names is not None and len(names) != n_ch:
        problems.append(f"field 'ch_names' has {len(names)} names, field 'data' {n_ch} channels")
    elif names is not None and channel_names is not None:
        index = {n.lower(): i for i, n in enumerate(names)}
        missing = [c for c in channel_names if c.strip().lower() not in index]
        if missing:
            problems.append(f"field 'ch_names' lacks {len(missing)} of the forward matrix's {len(channel_names)} "
                            f"channels: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        else:
            order = np.array([index[c.strip().lower()] for c in channel_names])
    elif n_ch != n_channels:
        problems.append(f"field 'data' has shape {data.shape}, expected (K, L, C) with C={n_channels} (the "
                        "forward matrix's channels, in its order; add 'ch_names' to match by name)")
    if n_len < n_times:
        problems.append(f"field 'data' has shape {data.shape}: segments of L={n_len} time points, expected L >= "
                        f"T={n_times}")
    finite = np.isfinite(data)
    if not finite.all():
        problems.append(f"field 'data' holds {int((~finite).sum())} non-finite value(s); expected finite values")
    else:
        flat = np.ptp(data[:, :, order], axis=1) == 0
        if flat.any():
            seg, ch = np.nonzero(flat)
            problems.append(f"field 'data': {flat.sum()} flat (constant) channel(s) in segment(s) "
                            f"{sorted(set(seg.tolist()))[:8]}, e.g. channel {int(order[ch[0]])}; expected "
                            "recorded noise in every channel")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise NoiseBankError(f"{path}: {len(problems)} problem(s) in the noise bank:\n{lines}")
    bank = np.ascontiguousarray(data[:, :, order], dtype=np.float32)
    logger.info("%s: %d noise segments of %d time points, %d channels (%s)", path, n_seg, n_len, len(order),
                "matched by name" if names is not None and channel_names is not None else "in order")
    return bank


def draw_noise_choice(mode: str, seed: int, epoch: int, indices: np.ndarray,
                      bank: np.ndarray | None, n_times: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: recorded segment (-1: white noise) and its first time point.

    Parameters
    ----------
    mode : {'white', 'recorded', 'mixed'}
    seed, epoch : int
    indices : array of int, shape (B,)
        Sample indices.
    bank : array, shape (K, L, C), or None for 'white'
    n_times : int
        T; the segment starts uniformly in ``[0, L - T]``.

    Returns
    -------
    segment, offset : arrays of int64, shape (B,)
    """
    check_option("noise", mode, NOISE_MODES)
    n = len(indices)
    segment = np.full(n, -1, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    if mode == "white":
        return segment, offset
    assert bank is not None
    n_seg, n_start = bank.shape[0], bank.shape[1] - n_times + 1
    for b, g in enumerate(indices):
        rng = np.random.default_rng([int(seed), int(epoch), int(g), _NOISE_STREAM])
        recorded = rng.random() < 0.5 if mode == "mixed" else True
        k, start = int(rng.integers(n_seg)), int(rng.integers(n_start))
        if recorded:
            segment[b], offset[b] = k, start
    return segment, offset


__all__ = ["NOISE_MODES", "NoiseBankError", "load_noise_bank", "draw_noise_choice", "forward_channel_names"]
