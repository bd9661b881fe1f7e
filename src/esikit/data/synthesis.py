"""The sample contract as pure functions over arrays.

One training sample (``shared/docs/SAMPLE_CONTRACT.md``, DeepSIF's definition): the
clips of the sample's sources, each with its patch replaced by the centre's waveform
scaled to a peak amplitude and weighted per region, are summed into source activity
``X``; the EEG is ``X @ F.T`` plus white sensor noise at the sample's SNR, re-referenced
and normalized; the target keeps ``X`` at the labelled regions only.

Every way of making samples in this package (the metadata dataset, the dynamic
generator, batched and fast paths) must give what :func:`synthesize_sample` gives for
the same draws from :func:`draw_sample_randomness`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` at ``epoch``: the same in any process or order."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def draw_sample_randomness(
    seed: int,
    epoch: int,
    index: int,
    n_sources: int,
    n_scale_options: int,
    n_times: int,
    n_channels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every random draw of one sample, from the generator seeded by (seed, epoch, index).

    The draws are made in a fixed order (one scale option per source slot, present or
    not, then the noise), so any implementation that calls this function reproduces
    the reference sample exactly.

    Parameters
    ----------
    seed, epoch, index : int
        Non-negative integers.
    n_sources : int
        S, the number of source slots of the metadata (absent ones included).
    n_scale_options : int
        K, the number of candidate peak amplitudes per source.
    n_times, n_channels : int
        T and C of the EEG.

    Returns
    -------
    choice : array of int64, shape (S,)
        Index ``j`` into ``scale_ratio[i, s, :]`` for each source slot.
    noise : array of float32, shape (T, C)
        Standard normal draws, scaled per channel by the synthesis.
    """
    rng = sample_rng(seed, epoch, index)
    choice = rng.integers(0, n_scale_options, size=n_sources)
    noise = rng.standard_normal((n_times, n_channels), dtype=np.float32)
    return choice, noise


def scale_centre_waveform(waveform: np.ndarray, peak: float) -> np.ndarray:
    """``waveform / max(waveform) * peak``, or zeros when ``max(waveform) <= 0``.

    A centre waveform that never rises above zero cannot be scaled to a peak; the
    contract asks for no division by zero (validation flags such samples).
    """
    top = float(np.max(waveform)) if waveform.size else 0.0
    if not np.isfinite(top) or top <= 0.0:
        return np.zeros_like(waveform)
    return waveform * (peak / top)


def add_sensor_noise(eeg: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    """Add white noise per channel at ``snr_db`` (in place), DeepSIF's way.

    ``sigma_c**2 = 10**(-snr/10) * mean_t(eeg[:, c]**2) / 2``; note the ``/ 2``.
    """
    power = np.mean(np.square(eeg, dtype=np.float64), axis=0)
    sigma = np.sqrt(10.0 ** (-float(snr_db) / 10.0) * power / 2.0).astype(eeg.dtype)
    eeg += noise * sigma[None, :]
    return eeg


def normalize_eeg(eeg: np.ndarray) -> np.ndarray:
    """Remove the time mean per channel, then the channel mean per time, then scale to max |.| = 1.

    All-zero input stays zero (never NaN). Works in place and returns ``eeg``.
    """
    eeg -= eeg.mean(axis=-2, keepdims=True)
    eeg -= eeg.mean(axis=-1, keepdims=True)
    top = np.abs(eeg).max(axis=(-2, -1), keepdims=True)
    np.divide(eeg, top, out=eeg, where=top > 0)
    return eeg


def normalize_source(source: np.ndarray) -> np.ndarray:
    """Divide by ``max(source)`` when it is positive (in place)."""
    top = source.max(axis=(-2, -1), keepdims=True)
    np.divide(source, top, out=source, where=top > 0)
    return source


def synthesize_sample(
    clips: Sequence[np.ndarray],
    patches: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    scales: Sequence[float],
    fwd: np.ndarray,
    snr_db: float,
    noise: np.ndarray,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one sample from its sources, exactly as the sample contract defines it.

    Parameters
    ----------
    clips : sequence of arrays, shape (T, R)
        The clip driving each present source (not modified).
    patches : sequence of int arrays, shape (P_s,)
        Region ids of each source's patch, centre first, without padding.
    weights : sequence of float arrays, shape (P_s,)
        Weight of each patch region (``mag_change``).
    scales : sequence of float
        Peak amplitude chosen for each source (``scale_ratio[i, s, j]``).
    fwd : array, shape (C, R)
        Forward matrix.
    snr_db : float
        Sensor SNR in dB.
    noise : array, shape (T, C)
        Standard normal draws (see :func:`draw_sample_randomness`).
    normalize : bool
        Re-reference and scale the EEG to max |.| = 1 and the source to max = 1.

    Returns
    -------
    eeg : array of float32, shape (T, C)
    source : array of float32, shape (T, R)
    """
    n_times = noise.shape[0]
    n_regions = fwd.shape[1]
    x = np.zeros((n_times, n_regions), dtype=np.float32)
    labelled = []
    for clip, patch, w, peak in zip(clips, patches, weights, scales):
        patch = np.asarray(patch, dtype=np.int64)
        xs = np.array(clip, dtype=np.float32, copy=True)
        a = scale_centre_waveform(xs[:, patch[0]].astype(np.float64), float(peak))
        xs[:, patch] = (a[:, None] * np.asarray(w, dtype=np.float64)[None, :]).astype(np.float32)
        x += xs
        labelled.append(patch)
    eeg = x @ np.asarray(fwd, dtype=np.float32).T
    add_sensor_noise(eeg, snr_db, np.asarray(noise, dtype=np.float32))
    source = np.zeros_like(x)
    if labelled:
        regions = np.unique(np.concatenate(labelled))
        source[:, regions] = x[:, regions]
    if normalize:
        normalize_eeg(eeg)
        normalize_source(source)
    return eeg.astype(np.float32, copy=False), source
