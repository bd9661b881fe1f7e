"""``esikit noise-bank``: spike-free segments of a recording, in DeepSIF's ``realistic_noise.mat`` layout.

DeepSIF trained with recorded background EEG as noise (``realistic_noise.mat``: field
``data``, K x T x C with T = 500, and ``npower``, K x C, the sum of squares of each
segment's channels). This cuts such segments from any recording: its channels matched
to a leadfield's by name (the same matching as ``esikit localize``), average reference,
band-pass, resampled, then non-overlapping 500-sample windows, keeping those that

- do not overlap a ``BAD_`` annotation,
- lie at least ``event_margin`` seconds from any other annotation (marked spikes), and
- whose global-field-power peak stays below ``median + k`` robust SDs of the
  recording's GFP (unmarked spikes and artefacts stand out there).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SFREQ_HZ
from .preprocess import H_FREQ, L_FREQ, WINDOW, global_field_power, prepare, robust_threshold
from .recording import MAX_MISSING, Montage, montage_from_spec, read_recording

logger = logging.getLogger(__name__)

__all__ = ["NoiseBank", "make_noise_bank", "write_noise_bank"]


@dataclass
class NoiseBank:
    """Background segments in a leadfield's channel order.

    Attributes
    ----------
    data : ndarray, shape (K, T, C), float64
        Segments in microvolts, average reference.
    ch_names : list of str, length C
    sfreq : float
    starts : ndarray, shape (K,)
        Start time (s) of each segment in the recording.
    rejected : dict
        How many candidate windows each rule removed.
    """

    data: np.ndarray
    ch_names: list[str]
    sfreq: float
    starts: np.ndarray
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def npower(self) -> np.ndarray:
        """Sum of squares over time of each segment's channels, shape (K, C) (DeepSIF's ``npower``)."""
        return np.sum(self.data ** 2, axis=1)


def make_noise_bank(
    recording: Any,
    montage: Any,
    *,
    sfreq: float | None = None,
    n_times: int = WINDOW,
    k: float = 4.0,
    event_margin: float = 1.0,
    max_segments: int | None = None,
    l_freq: float | None = L_FREQ,
    h_freq: float | None = H_FREQ,
    max_missing: float = MAX_MISSING,
) -> NoiseBank:
    """Cut spike-free segments from a recording.

    Parameters
    ----------
    recording : mne.io.Raw | str | PathLike
        A continuous recording or a file MNE reads.
    montage : Montage | str | PathLike | list of str
        The target channels: a leadfield file with ``ch_names`` (``--forward``), a
        :class:`Montage`, or names (see :func:`~esikit.localization.recording.montage_from_spec`).
    sfreq : float, optional
        Output rate (Hz); default the montage's (500 for a leadfield file).
    n_times : int
        Samples per segment (500).
    k : float
        GFP rejection threshold in robust SDs above the median.
    event_margin : float
        Seconds kept clear around every non-BAD annotation.
    max_segments : int, optional
        Keep at most this many (the lowest GFP peaks).
    l_freq, h_freq : float | None
        Band-pass (Hz).
    max_missing : float
        Share of channels that may be interpolated.

    Returns
    -------
    NoiseBank
    """
    import mne

    mont = montage_from_spec(montage, sfreq=sfreq or SFREQ_HZ)
    if sfreq is not None:
        mont = Montage(mont.ch_names, mont.ch_pos, sfreq, mont.source)
    source = str(recording) if isinstance(recording, (str, os.PathLike)) else "recording"
    raw = read_recording(recording) if isinstance(recording, (str, os.PathLike)) else recording
    if not isinstance(raw, mne.io.BaseRaw):
        raise ValueError(f"{source}: a noise bank needs a continuous recording, got {type(raw).__name__}")
    raw, _ = prepare(raw, mont, l_freq=l_freq, h_freq=h_freq, max_missing=max_missing, source=source,
                     copy=not isinstance(recording, (str, os.PathLike)))
    sf = float(raw.info["sfreq"])
    data = raw.get_data()
    n_win = data.shape[1] // n_times
    if n_win == 0:
        raise ValueError(f"{source}: {data.shape[1] / sf:.2f} s recorded, shorter than one segment "
                         f"({n_times} samples at {sf:g} Hz)")
    starts = np.arange(n_win) * n_times
    keep = np.ones(n_win, dtype=bool)
    rejected = {}
    # annotations: BAD_ ones exclude their span, others (events) their span +- margin
    ann = raw.annotations
    offset = raw.first_time if ann.orig_time is not None else 0.0
    win_t0, win_t1 = starts / sf, (starts + n_times) / sf
    near_bad = np.zeros(n_win, dtype=bool)
    near_event = np.zeros(n_win, dtype=bool)
    for onset, dur, desc in zip(ann.onset, ann.duration, ann.description):
        a, b = onset - offset, onset - offset + dur
        if desc.lower().startswith(("bad", "edge")):
            near_bad |= (win_t0 < b) & (win_t1 > a)
        else:
            near_event |= (win_t0 < b + event_margin) & (win_t1 > a - event_margin)
    rejected["bad_annotation"] = int((keep & near_bad).sum())
    keep &= ~near_bad
    rejected["near_event"] = int((keep & near_event).sum())
    keep &= ~near_event
    gfp = global_field_power(data)
    thr = robust_threshold(gfp, k)
    peaks = gfp[: n_win * n_times].reshape(n_win, n_times).max(axis=1)
    rejected["gfp_peak"] = int((keep & (peaks > thr)).sum())
    keep &= peaks <= thr
    idx = np.flatnonzero(keep)
    if max_segments is not None and len(idx) > max_segments:
        idx = np.sort(idx[np.argsort(peaks[idx], kind="stable")[:max_segments]])
    if len(idx) == 0:
        raise ValueError(f"{source}: no spike-free segment found among {n_win} windows of {n_times} samples "
                         f"(rejected: {rejected}); raise k (GFP threshold, now {k}) or lower event_margin")
    segs = np.stack([data[:, s:s + n_times].T for s in starts[idx]]) * 1e6  # V -> uV
    logger.info("%s: %d of %d windows kept as noise (rejected %s)", source, len(idx), n_win, rejected)
    return NoiseBank(data=segs, ch_names=list(mont.ch_names), sfreq=sf, starts=starts[idx] / sf, rejected=rejected)


def write_noise_bank(bank: NoiseBank, path: str | PathLike, *, overwrite: bool = False) -> Path:
    """Write DeepSIF's ``realistic_noise.mat`` layout: ``data`` (K x T x C), ``npower`` (K x C), ``ch_names``.

    Also ``sfreq`` (Hz) and ``starts`` (s). Written to a temporary name, then renamed.
    """
    from ..io import atomic_output, fits_in_mat_v5, save_mat_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.empty(len(bank.ch_names), dtype=object)
    names[:] = bank.ch_names
    mat = {"data": bank.data, "npower": bank.npower, "ch_names": names, "sfreq": float(bank.sfreq),
           "starts": bank.starts}
    with atomic_output(path) as tmp:
        save_mat_file(tmp, mat, format="v5" if fits_in_mat_v5(mat) else "v7.3")
    return path
