"""Synthetic recordings with known spikes: the demo's EDF file and the tests' ground truth.

A continuous recording is built in source space (background activity in every region
plus spikes at chosen regions and times), projected through a leadfield, given sensor
noise and written as EDF with one ``spike`` annotation per spike, so that
``esikit localize`` can be checked against where the spikes really were.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SFREQ_HZ

logger = logging.getLogger(__name__)

__all__ = ["SpikeRecording", "clips_from_folder", "make_spike_recording", "spike_raw", "spike_source", "spike_taper",
           "spike_waveform"]


@dataclass
class SpikeRecording:
    """A synthetic recording and its ground truth.

    Attributes
    ----------
    raw : mne.io.RawArray
        EEG in volts, average-free (as projected), annotations ``spike`` at each peak.
    regions : ndarray of int, shape (K,)
        The spiking region of each spike.
    times : ndarray, shape (K,)
        Spike peak times (s from the first sample).
    path : Path | None
        The EDF file, when written.
    """

    raw: Any
    regions: np.ndarray
    times: np.ndarray
    path: Path | None = None


def spike_waveform(sfreq: float = SFREQ_HZ, n_times: int = 500) -> np.ndarray:
    """A spike-and-wave shape peaking at sample ``n_times // 2`` (unit peak).

    Returns
    -------
    ndarray, shape (n_times,)
    """
    t = (np.arange(n_times) - n_times // 2) / sfreq
    w = np.exp(-0.5 * (t / 0.012) ** 2) - 0.35 * np.exp(-0.5 * ((t - 0.09) / 0.05) ** 2)
    return w / np.abs(w).max()


def clips_from_folder(nmm_dir: str | PathLike, regions: Sequence[int], k: int = 1) -> dict[int, np.ndarray]:
    """Clip ``k`` of each region from a DeepSIF clip folder (``a{r}/nmm_{k}.mat``, field ``data``, T x R)."""
    from ..head.layout import CLIP_FIELD, clip_relpath
    from ..io import load_mat_file

    out = {}
    for r in sorted(set(int(r) for r in regions)):
        path = Path(nmm_dir) / clip_relpath(r, k)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no clip for region {r} (expected field {CLIP_FIELD!r}, T x R)")
        out[r] = np.asarray(load_mat_file(path)[CLIP_FIELD], dtype=np.float64)
    return out


def spike_taper(n: int, frac: float = 0.2) -> np.ndarray:
    """Tukey window, shape (n,), that fades a spike clip in and out (``frac`` of it tapered)."""
    from scipy.signal.windows import tukey

    return tukey(n, frac)


def make_spike_recording(
    fwd: np.ndarray,
    ch_names: Sequence[str],
    regions: Sequence[int],
    times: Sequence[float],
    *,
    sfreq: float = SFREQ_HZ,
    duration: float | None = None,
    clips: Mapping[int, np.ndarray] | None = None,
    background: float = 0.05,
    snr_db: float | None = 20.0,
    peak_uv: float = 100.0,
    seed: int = 0,
    path: str | PathLike | None = None,
    overwrite: bool = False,
    ch_pos: np.ndarray | None = None,
) -> SpikeRecording:
    """Build (and optionally write as EDF) a recording with spikes at known regions and times.

    Parameters
    ----------
    fwd : ndarray, shape (C, R)
        Leadfield (any unit: the EEG is scaled to ``peak_uv``).
    ch_names : sequence of str, length C
    regions : sequence of int, length K
        Spiking region of each spike.
    times : sequence of float, length K
        Peak times (s).
    sfreq : float
        Sampling rate (Hz).
    duration : float, optional
        Length (s); default: last spike + 2 s.
    clips : mapping region -> ndarray (T, R), optional
        NMM clips (e.g. :func:`clips_from_folder`): each spike is its region's clip (all
        regions, mean removed, tapered at the ends) placed with the clip's peak at the
        spike time. Default: :func:`spike_waveform` in the spiking region alone.
    background : float
        Source background (smooth noise, 1-30 Hz, in every region, or in 200 random ones
        when there are more) with peaks of about this size relative to a spike's source peak.
    snr_db : float | None
        Sensor white noise relative to the mean power of the spikes' sensor signal;
        ``None``: noiseless.
    peak_uv : float
        Largest absolute spike value on any channel (microvolts).
    seed : int
    path : str | PathLike, optional
        Write an EDF file (``mne.export.export_raw``, needs ``edfio``).
    overwrite : bool
        Replace an existing ``path``.
    ch_pos : ndarray, shape (C, 3), optional
        Channel positions (m) stored in the recording; default MNE's 10-05 where known.

    Returns
    -------
    SpikeRecording
    """
    from scipy.ndimage import gaussian_filter1d

    fwd = np.asarray(fwd, dtype=np.float64)
    n_ch, n_reg = fwd.shape
    regions = np.asarray(regions, dtype=np.int64).ravel()
    times = np.asarray(times, dtype=float).ravel()
    if len(regions) != len(times):
        raise ValueError(f"regions ({len(regions)}) and times ({len(times)}) differ in length")
    if len(ch_names) != n_ch:
        raise ValueError(f"{len(ch_names)} channel names for a leadfield of {n_ch} channels")
    if ((regions < 0) | (regions >= n_reg)).any():
        raise ValueError(f"regions must lie in [0, {n_reg}), got {regions.tolist()}")
    duration = float(duration if duration is not None else times.max() + 2.0)
    n = int(round(duration * sfreq))
    rng = np.random.default_rng(seed)
    # accumulate in sensor space: a long recording never holds an (N x R) source array
    eeg_spikes = np.zeros((n, n_ch))
    on = np.zeros(n, dtype=bool)
    for r, t in zip(regions, times):
        src, peak = spike_source(int(r), n_reg, None if clips is None else clips[int(r)], sfreq)
        proj = src @ fwd.T
        src_abs = np.abs(src).max(axis=1)
        a = int(round(t * sfreq)) - peak
        lo, hi = max(a, 0), min(a + len(proj), n)
        if hi <= lo:
            raise ValueError(f"spike at {t} s lies outside the recording (0-{duration} s)")
        eeg_spikes[lo:hi] += proj[lo - a:hi - a]
        on[lo:hi] |= src_abs[lo - a:hi - a] > 0.05
    scale = peak_uv * 1e-6 / max(np.abs(eeg_spikes).max(), 1e-30)
    eeg = eeg_spikes * scale
    if background > 0:
        # smooth background (about 1-30 Hz) in every region, or in 200 random ones for large
        # parcellations (enough to make it spatially rich, at a fraction of the cost)
        bg_regions = np.arange(n_reg) if n_reg <= 200 else np.sort(rng.choice(n_reg, 200, replace=False))
        g = fwd[:, bg_regions] * (np.sqrt(n_reg / len(bg_regions)))
        chunk = int(60 * sfreq)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            bg = gaussian_filter1d(rng.standard_normal((b - a, len(bg_regions))), sfreq / (2 * np.pi * 30), axis=0)
            bg -= gaussian_filter1d(bg, sfreq / (2 * np.pi * 1.0), axis=0)
            # peaks of about `background` relative to a spike's unit source peak (4 SDs)
            bg *= background / (4 * max(float(bg.std()), 1e-30))
            eeg[a:b] += bg @ g.T * scale
    if snr_db is not None:
        power = np.mean((eeg_spikes[on] * scale) ** 2) if on.any() else np.mean(eeg ** 2)
        eeg += rng.standard_normal(eeg.shape) * np.sqrt(power * 10 ** (-snr_db / 10))
    raw, out = spike_raw(eeg, ch_names, times, sfreq=sfreq, ch_pos=ch_pos, path=path, overwrite=overwrite)
    return SpikeRecording(raw=raw, regions=regions, times=times, path=out)


def spike_source(region: int, n_regions: int, clip: np.ndarray | None = None,
                 sfreq: float = SFREQ_HZ) -> tuple[np.ndarray, int]:
    """One spike's source activity with a unit peak in ``region``.

    Parameters
    ----------
    region : int
    n_regions : int
    clip : ndarray, shape (T, R), optional
        An NMM clip: all regions, mean removed, tapered at the ends (Tukey, 20 %), divided
        by the absolute peak of ``region``. Default: :func:`spike_waveform` in ``region`` alone.
    sfreq : float
        Rate (Hz) of the default waveform.

    Returns
    -------
    src : ndarray, shape (T, R)
    peak : int
        Sample of the peak of ``|src[:, region]|``.
    """
    if clip is not None:
        clip = np.asarray(clip, dtype=np.float64)
        if clip.ndim != 2 or clip.shape[1] != n_regions:
            raise ValueError(f"clip of region {region} has shape {clip.shape}, expected (T, R) with R={n_regions}")
        clip = (clip - clip.mean(axis=0)) * spike_taper(len(clip))[:, None]
        peak = int(np.argmax(np.abs(clip[:, region])))
        return clip / max(float(np.abs(clip[peak, region])), 1e-30), peak
    w = spike_waveform(sfreq)
    src = np.zeros((len(w), n_regions))
    src[:, region] = w
    return src, len(w) // 2


def spike_raw(eeg: np.ndarray, ch_names: Sequence[str], times: Sequence[float], *, sfreq: float = SFREQ_HZ,
              ch_pos: np.ndarray | None = None, path: str | PathLike | None = None, overwrite: bool = False,
              description: str = "spike"):
    """An ``mne.io.RawArray`` of ``eeg`` (N x C, volts) with one annotation per time, optionally as EDF.

    Positions: ``ch_pos`` (C x 3, m, head frame) or MNE's 10-05 where the name is known.
    The EDF is written by ``mne.export.export_raw`` (needs ``edfio``).

    Returns
    -------
    raw : mne.io.RawArray
    path : Path | None
    """
    import mne

    from .recording import standard_positions

    info = mne.create_info(list(map(str, ch_names)), sfreq, "eeg")
    raw = mne.io.RawArray(np.asarray(eeg).T, info, verbose="error")
    pos = standard_positions(ch_names) if ch_pos is None else np.asarray(ch_pos, dtype=float)
    known = np.isfinite(pos).all(axis=1)
    if known.any():
        raw.set_montage(mne.channels.make_dig_montage(
            ch_pos={c: p for c, p, k in zip(ch_names, pos, known) if k}, coord_frame="head"), on_missing="ignore")
    times = np.asarray(times, dtype=float).ravel()
    raw.set_annotations(mne.Annotations(times, np.zeros(len(times)), [description] * len(times)))
    out = None
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        mne.export.export_raw(out, raw, fmt="edf", overwrite=overwrite, verbose="error")
    return raw, out
