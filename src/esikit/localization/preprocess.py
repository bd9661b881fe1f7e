"""Preprocessing a recording the way the training data imply, and cutting event windows.

The training samples (``docs/SAMPLE_CONTRACT.md``) are 500-sample windows at the
simulation's rate, each normalized as ``E -= mean over time; E -= mean over channels;
E /= max |E|``. A recording is brought to the same form: channels matched to the
montage, average reference, a band-pass (configurable), resampling to the checkpoint's
rate, windows around events, then that normalization.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .recording import MAX_MISSING, ChannelMatch, Montage, conform_channels

logger = logging.getLogger(__name__)

__all__ = [
    "WINDOW",
    "check_band",
    "check_signal",
    "events_from_annotations",
    "events_from_csv",
    "events_from_gfp",
    "extract_windows",
    "normalize_windows",
    "prepare",
    "robust_threshold",
]

#: Samples per window (the training clips' length).
WINDOW = 500
#: Default band-pass (Hz): drifts and line noise out, the spikes' band kept.
L_FREQ, H_FREQ = 1.0, 40.0
#: A channel constant for at least this long (s) is reported as flat.
FLAT_SECONDS = 1.0


def _spans(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Runs of True in ``mask`` at least ``min_len`` long, as [start, stop)."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = stops - starts >= min_len
    return list(zip(starts[keep].tolist(), stops[keep].tolist()))


def check_signal(data: np.ndarray, ch_names: Sequence[str], sfreq: float, *, source: str = "recording",
                 t0: float = 0.0, flat_seconds: float = FLAT_SECONDS, ignore: np.ndarray | None = None) -> None:
    """Fail on NaN/infinite values or flat stretches, naming channels and times.

    Parameters
    ----------
    data : ndarray, shape (C, N)
        Channels x samples (volts).
    ch_names : sequence of str
        Names of the rows.
    sfreq : float
        Sampling rate (Hz), for the times in the message.
    t0 : float
        Time (s) of the first sample.
    flat_seconds : float
        A channel constant for at least this long is flat.
    ignore : ndarray of bool, shape (N,), optional
        Samples where flat stretches are allowed (inside ``BAD_`` annotations).

    Raises
    ------
    ValueError
        Listing every NaN and flat channel with its time spans (first 5 per channel).
    """
    problems = []
    min_len = max(2, int(round(flat_seconds * sfreq)))

    def fmt(spans):
        shown = ", ".join(f"{t0 + a / sfreq:.2f}-{t0 + b / sfreq:.2f} s" for a, b in spans[:5])
        return shown + (f" (+{len(spans) - 5} more)" if len(spans) > 5 else "")

    for name, x in zip(ch_names, data):
        bad = ~np.isfinite(x)
        if bad.any():
            problems.append(f"{name}: NaN/inf at {fmt(_spans(bad, 1))}")
            continue
        same = np.concatenate([[False], x[1:] == x[:-1]])
        if ignore is not None:
            same &= ~ignore
        # a run of k equal differences is k + 1 constant samples
        flat = [(max(a - 1, 0), b) for a, b in _spans(same, min_len - 1)]
        if flat:
            problems.append(f"{name}: flat at {fmt(flat)}")
    if problems:
        raise ValueError(f"{source}: {len(problems)} channels have NaN or flat stretches; mark them bad "
                         "(info['bads'], to be interpolated) or, for flat stretches, annotate them BAD_:\n  "
                         + "\n  ".join(problems))


def check_band(rec_sfreq: float, target_sfreq: float, l_freq: float | None, h_freq: float | None,
               source: str = "recording") -> None:
    """Fail when a sampling rate is too low for the band-pass (``h_freq`` must be below Nyquist)."""
    if l_freq is not None and h_freq is not None and l_freq >= h_freq:
        raise ValueError(f"Invalid band-pass: l_freq={l_freq} Hz must be below h_freq={h_freq} Hz")
    if h_freq is None:
        return
    for what, sf in ((f"{source}: sampling rate", rec_sfreq), ("the checkpoint's sampling rate", target_sfreq)):
        if h_freq >= sf / 2:
            raise ValueError(f"{what} {sf:g} Hz is too low for the band-pass upper edge {h_freq:g} Hz "
                             f"(it must be below the Nyquist frequency {sf / 2:g} Hz); lower h_freq "
                             f"(--h-freq) or use a recording sampled above {2 * h_freq:g} Hz")


def _bad_mask(raw: Any) -> np.ndarray:
    """Samples of a Raw inside ``BAD_``/``EDGE`` annotations."""
    mask = np.zeros(len(raw.times), dtype=bool)
    ann = raw.annotations
    offset = raw.first_time if ann.orig_time is not None else 0.0
    sf = raw.info["sfreq"]
    for onset, dur, desc in zip(ann.onset, ann.duration, ann.description):
        if desc.lower().startswith(("bad", "edge")):
            a = max(int(np.floor((onset - offset) * sf)), 0)
            mask[a:int(np.ceil((onset - offset + dur) * sf)) + 1] = True
    return mask


def prepare(inst: Any, montage: Montage, *, l_freq: float | None = L_FREQ, h_freq: float | None = H_FREQ,
            max_missing: float = MAX_MISSING, source: str = "recording", copy: bool = True) -> tuple[Any, ChannelMatch]:
    """Match channels, check the signal, re-reference, band-pass and resample.

    Parameters
    ----------
    inst : mne.io.Raw | mne.Epochs | mne.Evoked
        The recording (preloaded).
    montage : Montage
        The network's channels and rate.
    l_freq, h_freq : float | None
        Band-pass edges (Hz); ``None`` leaves that side open. Applied to continuous
        recordings only (epochs are too short for a 1 Hz high-pass; they are taken as
        already filtered).
    max_missing : float
        Share of montage channels that may be interpolated.

    Returns
    -------
    inst : same type
        Montage channels in order, average reference, at ``montage.sfreq``.
    match : ChannelMatch
    """
    import mne

    if copy:
        inst = inst.copy()
    if isinstance(inst, mne.io.BaseRaw) and not inst.preload:
        inst.load_data()
    is_raw = isinstance(inst, mne.io.BaseRaw)
    check_band(inst.info["sfreq"], montage.sfreq, l_freq if is_raw else None, h_freq if is_raw else None, source)
    inst, match = conform_channels(inst, montage, max_missing=max_missing, source=source)
    data = inst.get_data() if not isinstance(inst, mne.BaseEpochs) else np.concatenate(list(inst.get_data()), axis=1)
    check_signal(data, inst.ch_names, inst.info["sfreq"], source=source,
                 t0=float(inst.times[0]) if not is_raw else 0.0, ignore=_bad_mask(inst) if is_raw else None)
    del data
    inst.set_eeg_reference("average", projection=False, verbose="error")
    if is_raw and (l_freq is not None or h_freq is not None):
        inst.filter(l_freq, h_freq, verbose="error")
    elif not is_raw and (l_freq is not None or h_freq is not None):
        logger.info("%s: epochs/evoked input is not band-passed (taken as filtered)", source)
    if abs(inst.info["sfreq"] - montage.sfreq) > 1e-6:
        logger.info("%s: resampling %g Hz -> %g Hz", source, inst.info["sfreq"], montage.sfreq)
        kw = {"method": "polyphase"} if is_raw else {}
        inst.resample(montage.sfreq, verbose="error", **kw)
    return inst, match


# ----------------------------------------------------------------------------- events
def events_from_annotations(raw: Any, pattern: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Event times (s from the first sample) and labels from a recording's annotations.

    Parameters
    ----------
    raw : mne.io.Raw
    pattern : str, optional
        Regular expression the description must match (case-insensitive). Default: every
        annotation except ``BAD_*`` and ``EDGE*`` ones.

    Returns
    -------
    times : ndarray, shape (K,)
        Onsets (plus half the duration for annotations with a duration), seconds from
        the recording's first sample.
    labels : list of str
    """
    ann = raw.annotations
    times, labels = [], []
    rx = re.compile(pattern, re.IGNORECASE) if pattern else None
    # annotation onsets count from the measurement start, raw.times from the first sample
    offset = raw.first_time if ann.orig_time is not None else 0.0
    for onset, dur, desc in zip(ann.onset, ann.duration, ann.description):
        if rx is not None:
            if not rx.search(desc):
                continue
        elif desc.lower().startswith(("bad", "edge")):
            continue
        times.append(onset - offset + dur / 2)
        labels.append(str(desc))
    order = np.argsort(times, kind="stable")
    return np.asarray(times, dtype=float)[order], [labels[i] for i in order]


def events_from_csv(path: str | PathLike) -> tuple[np.ndarray, list[str]]:
    """Event times from a CSV file: a column ``time`` (or ``onset``/``latency``, seconds), optional ``label``.

    A file without a header is read as one time per row (first column), optional label
    in the second.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such events file")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no events (expected a column 'time' in seconds)")
    head = [c.strip().lower() for c in rows[0]]

    def num(x):
        try:
            return float(x)
        except ValueError:
            return None

    if num(head[0]) is None:  # header row
        tcol = next((head.index(k) for k in ("time", "onset", "latency", "time_s", "seconds") if k in head), None)
        if tcol is None:
            raise ValueError(f"{path}: header {rows[0]} has no column 'time' (or 'onset', 'latency'), seconds")
        lcol = next((head.index(k) for k in ("label", "description", "type", "name") if k in head), None)
        rows, first = rows[1:], 2
    else:
        tcol, lcol, first = 0, (1 if len(head) > 1 else None), 1
    times, labels, bad = [], [], []
    for i, r in enumerate(rows, start=first):
        t = num(r[tcol]) if tcol < len(r) else None
        if t is None or not np.isfinite(t):
            bad.append(f"row {i}: {r}")
            continue
        times.append(t)
        labels.append(r[lcol].strip() if lcol is not None and lcol < len(r) else "event")
    if bad:
        raise ValueError(f"{path}: {len(bad)} rows without a time in seconds: " + "; ".join(bad[:10]))
    order = np.argsort(times, kind="stable")
    return np.asarray(times, dtype=float)[order], [labels[i] for i in order]


def robust_threshold(x: np.ndarray, k: float) -> float:
    """``median + k * robust SD`` (the SD estimated as 1.4826 x the median absolute deviation)."""
    med = float(np.median(x))
    return med + k * 1.4826 * float(np.median(np.abs(x - med)))


def global_field_power(data: np.ndarray) -> np.ndarray:
    """GFP: the standard deviation across channels at each sample; ``data`` is (C, N)."""
    return np.std(data, axis=0)


def events_from_gfp(data: np.ndarray, sfreq: float, *, min_spacing: float = 1.0, k: float = 5.0,
                    max_events: int | None = None, n_times: int = WINDOW) -> np.ndarray:
    """Times (s) of global-field-power peaks: above ``median + k`` robust SDs, at least ``min_spacing`` apart.

    Parameters
    ----------
    data : ndarray, shape (C, N)
        Average-referenced, filtered data.
    sfreq : float
    min_spacing : float
        Minimum time between two events (s).
    k : float
        Height threshold in robust SDs of the GFP above its median.
    max_events : int, optional
        Keep the highest peaks only.
    n_times : int
        Window length: peaks whose window would leave the recording are not returned.

    Returns
    -------
    times : ndarray, shape (K,), sorted
    """
    from scipy.signal import find_peaks

    gfp = global_field_power(data)
    peaks, props = find_peaks(gfp, height=robust_threshold(gfp, k), distance=max(1, int(round(min_spacing * sfreq))))
    half = n_times // 2
    ok = (peaks - half >= 0) & (peaks - half + n_times <= gfp.size)
    peaks, heights = peaks[ok], props["peak_heights"][ok]
    if max_events is not None and len(peaks) > max_events:
        peaks = np.sort(peaks[np.argsort(heights)[::-1][:max_events]])
    return peaks / sfreq


# ---------------------------------------------------------------------------- windows
def extract_windows(data: np.ndarray, sfreq: float, times: np.ndarray, *, n_times: int = WINDOW,
                    centred: bool = True, source: str = "recording") -> tuple[np.ndarray, np.ndarray]:
    """Cut ``n_times``-sample windows around (or starting at) event times.

    Parameters
    ----------
    data : ndarray, shape (C, N)
    sfreq : float
    times : ndarray, shape (K,)
        Seconds from the first sample.
    centred : bool
        Window centred on each time (``n_times // 2`` samples before), else starting there.

    Returns
    -------
    windows : ndarray, shape (K', T, C), float32
        Events whose window runs past the recording are skipped (one warning with the
        count).
    kept : ndarray of int, shape (K',)
        Indices into ``times`` of the windows returned.
    """
    times = np.asarray(times, dtype=float).ravel()
    starts = np.round(times * sfreq).astype(np.int64) - (n_times // 2 if centred else 0)
    ok = (starts >= 0) & (starts + n_times <= data.shape[1])
    if (~ok).any():
        bad = times[~ok]
        logger.warning("%s: %d of %d events skipped: their %d-sample window runs past the recording "
                       "(0-%.2f s): at %s", source, int((~ok).sum()), len(times), n_times,
                       data.shape[1] / sfreq, ", ".join(f"{t:.2f} s" for t in bad[:10]))
    kept = np.flatnonzero(ok)
    idx = starts[kept][:, None] + np.arange(n_times)[None, :]
    windows = data[:, idx].transpose(1, 2, 0).astype(np.float32)  # (K, T, C)
    return windows, kept


def normalize_windows(windows: np.ndarray) -> np.ndarray:
    """The training normalization, per window: remove the time mean, the channel mean, divide by max |E|.

    Parameters
    ----------
    windows : ndarray, shape (K, T, C)

    Returns
    -------
    ndarray, shape (K, T, C), float32; an all-zero window stays zero.
    """
    w = np.asarray(windows, dtype=np.float64)
    w = w - w.mean(axis=1, keepdims=True)
    w = w - w.mean(axis=2, keepdims=True)
    peak = np.abs(w).max(axis=(1, 2), keepdims=True)
    w = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)
    return w.astype(np.float32)
