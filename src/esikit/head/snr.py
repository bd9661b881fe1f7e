"""Source-to-background SNR and DeepSIF's source scaling factor (``find_alpha``).

DeepSIF (Sun et al., PNAS 2022) scales the activity of a source patch so that, at the
sensors, the patch's signal stands out from the EEG produced by every other region of
the same neural-mass clip by a chosen SNR. Both of its MATLAB scripts use the same
definition, ported here:

* the patch regions are given the centre region's waveform (times a per-region weight,
  1 in DeepSIF), everything else keeps the clip's activity ("background");
* signal EEG ``E_s = (F[:, p] @ X[:, p].T).T`` and background EEG
  ``E_n = (F[:, q] @ X[:, q].T).T`` (``q``: every region not in the patch), each with
  its temporal mean (over the whole clip) removed per channel;
* power = squared Frobenius norm over a set of time samples divided by their count;
* ``SNR = 10 log10(Ps / Pn)`` and the scaling ``alpha = sqrt(10^(SNR/10) Pn / Ps)``.

The time samples differ between the two scripts:

* ``generate_sythetic_source.m`` (metadata): with the waveform normalised to a unit
  peak, from 50 samples before the peak to the end of the clip (the script writes
  ``max(peak-50, 0):max(peak+50, 500)``, which for 500-sample clips always ends at the
  clip end): :func:`deepsif_spike_window`.
* ``process_raw_nmm.m`` (clip cutting): the raw waveform, 200 samples around every
  spike peak (-99 .. +100), clipped to the recording: :func:`peak_windows`.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "deepsif_spike_window",
    "peak_windows",
    "source_background_power",
    "sensor_snr_db",
    "find_alpha",
]


def deepsif_spike_window(waveform: np.ndarray, before: int = 50, after: int | None = None) -> np.ndarray:
    """Time samples DeepSIF's metadata script measures a source's SNR over.

    Parameters
    ----------
    waveform : array, shape (n_times,)
        The source centre's waveform; its maximum defines the spike peak.
    before : int
        Samples kept before the peak (DeepSIF: 50).
    after : int | None
        Samples kept after the peak, or None for "to the end of the clip", which is what
        DeepSIF's ``max(peak+50, 500)`` gives for 500-sample clips.

    Returns
    -------
    index : array of int, shape (n_window,)
        0-based time indices, ``max(peak - before, 0) .. min(peak + after, n_times - 1)``.
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"waveform must be a non-empty 1-D array, got shape {waveform.shape}")
    n_times = waveform.shape[0]
    peak = int(np.argmax(waveform))
    start = max(peak - int(before), 0)
    stop = n_times if after is None else min(peak + int(after) + 1, n_times)
    return np.arange(start, stop)


def peak_windows(peak_times: Sequence[int] | np.ndarray, n_times: int, before: int = 99, after: int = 100) -> np.ndarray:
    """Concatenated windows around spike peaks (DeepSIF's ``process_raw_nmm.m``).

    Parameters
    ----------
    peak_times : array of int, shape (n_spikes,)
        0-based sample indices of the spike peaks.
    n_times : int
        Length of the recording; indices are clipped to ``[0, n_times - 1]``.
    before, after : int
        Window ``peak - before .. peak + after`` (DeepSIF: -99 .. +100, 200 samples).

    Returns
    -------
    index : array of int, shape (n_spikes * (before + after + 1),)
        Window indices, spike after spike; clipped indices repeat, as in DeepSIF, so
        every spike weighs the same in the power.
    """
    peaks = np.asarray(peak_times, dtype=np.int64).reshape(-1)
    offsets = np.arange(-int(before), int(after) + 1)
    index = (peaks[:, None] + offsets[None, :]).reshape(-1)
    return np.clip(index, 0, int(n_times) - 1)


def _check_inputs(data: np.ndarray, fwd: np.ndarray, patch: np.ndarray, weights: np.ndarray | None):
    data = np.asarray(data, dtype=np.float64)
    fwd = np.asarray(fwd, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"data must be (n_times, n_regions), got shape {data.shape}")
    if fwd.ndim != 2 or fwd.shape[1] != data.shape[1]:
        raise ValueError(
            f"fwd must be (n_channels, n_regions) with n_regions={data.shape[1]} (the columns of data), "
            f"got shape {fwd.shape}"
        )
    patch = np.asarray(patch, dtype=np.int64).reshape(-1)
    if patch.size == 0:
        raise ValueError("patch must hold at least one region (its centre)")
    n_regions = data.shape[1]
    if patch.min() < 0 or patch.max() >= n_regions:
        raise ValueError(f"patch regions must lie in [0, {n_regions}), got {patch.min()} .. {patch.max()}")
    if np.unique(patch).size != patch.size:
        raise ValueError(f"patch has duplicate regions: {patch.tolist()}")
    if weights is None:
        weights = np.ones(patch.size)
    else:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weights.shape != patch.shape:
            raise ValueError(f"weights has shape {weights.shape}, expected {patch.shape} (one per patch region)")
    return data, fwd, patch, weights


def source_background_power(
    data: np.ndarray,
    fwd: np.ndarray,
    patch: Sequence[int] | np.ndarray,
    time_index: np.ndarray | slice | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    normalize_peak: bool = True,
) -> tuple[float, float]:
    """Sensor power of a source patch and of the rest of the brain (DeepSIF's definition).

    The patch regions are given the centre's waveform ``x = data[:, patch[0]]``
    (divided by its maximum when ``normalize_peak``) times ``weights``; the background
    is every other region of ``data`` as it is.

    Parameters
    ----------
    data : array, shape (n_times, n_regions)
        Neural-mass activity of one clip (all regions).
    fwd : array, shape (n_channels, n_regions)
        Region leadfield.
    patch : array of int, shape (n_patch,)
        0-based regions of the source, centre first.
    time_index : array of int | slice | None
        Time samples the power is averaged over; None uses
        :func:`deepsif_spike_window` of the (normalised) centre waveform (the metadata
        script's window). For clip cutting pass :func:`peak_windows` of the spike peaks.
    weights : array, shape (n_patch,) | None
        Amplitude of each patch region relative to the centre waveform (default 1,
        as in DeepSIF's ``find_alpha``; ``mag_change`` gives the synthesized ones).
    normalize_peak : bool
        Divide the centre waveform by its maximum first (DeepSIF's metadata script:
        True; clip cutting, where the raw waveform is rescaled: False).

    Returns
    -------
    ps : float
        Mean over ``time_index`` of the squared sensor signal of the patch summed over
        channels (temporal mean removed per channel), in (leadfield x activity units)^2.
    pn : float
        The same for the background EEG.
    """
    data, fwd, patch, weights = _check_inputs(data, fwd, patch, weights)
    wave = data[:, patch[0]].copy()
    if normalize_peak:
        peak = wave.max()
        if not peak > 0:
            raise ValueError(f"centre waveform of region {patch[0]} has maximum {peak}; cannot normalise its peak")
        wave /= peak
    if time_index is None:
        time_index = deepsif_spike_window(wave)
    # signal EEG is rank one: waveform (T,) times the patch's weighted topography (C,)
    topo = fwd[:, patch] @ weights
    wave_c = wave - wave.mean()
    w = wave_c[time_index]
    n_win = w.shape[0]
    ps = float(np.dot(w, w) * np.dot(topo, topo) / n_win)
    rest = np.ones(data.shape[1], dtype=bool)
    rest[patch] = False
    noise = data[:, rest] @ fwd[:, rest].T
    noise -= noise.mean(axis=0, keepdims=True)
    nw = noise[time_index]
    pn = float(np.sum(nw * nw) / n_win)
    return ps, pn


def sensor_snr_db(
    data: np.ndarray,
    fwd: np.ndarray,
    patch: Sequence[int] | np.ndarray,
    time_index: np.ndarray | slice | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    normalize_peak: bool = True,
) -> float:
    """SNR in dB of a source patch against the background, ``10 log10(Ps / Pn)``.

    Same parameters as :func:`source_background_power`. With ``normalize_peak=False``
    and ``weights`` the patch amplitudes, this is the SNR of a clip as synthesized.
    """
    ps, pn = source_background_power(data, fwd, patch, time_index, weights, normalize_peak)
    if pn <= 0:
        return float("inf") if ps > 0 else float("nan")
    return float(10.0 * np.log10(ps / pn)) if ps > 0 else float("-inf")


def find_alpha(
    data: np.ndarray,
    fwd: np.ndarray,
    patch: Sequence[int] | np.ndarray,
    target_snr_db: float | Sequence[float] | np.ndarray,
    time_index: np.ndarray | slice | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    normalize_peak: bool = True,
) -> np.ndarray:
    """Scaling of a source waveform that reaches a target SNR against the background.

    Port of DeepSIF's ``find_alpha``: ``alpha = sqrt(10^(snr/10) * Pn / Ps)`` with
    ``Ps, Pn`` from :func:`source_background_power`. Giving the patch regions
    ``alpha * weights * x`` (``x`` the centre waveform, divided by its peak when
    ``normalize_peak``) and leaving every other region as it is yields a sensor SNR of
    exactly ``target_snr_db`` over ``time_index``. With ``normalize_peak`` (DeepSIF's
    metadata), ``alpha`` is the peak amplitude of the centre waveform, i.e. a
    ``scale_ratio`` value of the sample contract.

    Parameters
    ----------
    data, fwd, patch, time_index, weights, normalize_peak
        As in :func:`source_background_power`.
    target_snr_db : float | array, shape (n_targets,)
        Wanted SNR(s) in dB (DeepSIF: 10, 12, ..., 20 for training, 10 and 15 for
        testing, 15 when cutting clips).

    Returns
    -------
    alpha : array, shape (n_targets,) (or a 0-d array for a scalar target)
        Scaling factors, dimensionless relative to the (normalised) waveform. ``inf``
        when the patch projects nothing to the sensors.

    Examples
    --------
    >>> import numpy as np
    >>> data = np.zeros((4, 2)); data[:, 0] = [0, 1, 0, 0]; data[:, 1] = [1, -1, 1, -1]
    >>> fwd = np.array([[1.0, 1.0]])
    >>> alpha = find_alpha(data, fwd, [0], [0.0], time_index=np.arange(4))
    >>> float(np.round(alpha[0], 6))  # Ps = 0.1875 alpha^2, Pn = 1 -> alpha = sqrt(1 / 0.1875)
    2.309401
    """
    ps, pn = source_background_power(data, fwd, patch, time_index, weights, normalize_peak)
    target = np.asarray(target_snr_db, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ratio = pn / ps if ps > 0 else np.inf
    return np.sqrt(10.0 ** (target / 10.0) * ratio)
