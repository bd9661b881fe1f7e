"""The sample contract as pure functions over arrays: the reference synthesis.

One training sample (``docs/SAMPLE_CONTRACT.md``, DeepSIF's definition): the
clips of the sample's sources, each with its patch replaced by the centre's waveform
scaled to a peak amplitude and weighted per region, are summed into source activity
``X``; the EEG is ``X @ F.T`` plus white sensor noise at the sample's SNR, re-referenced
and normalized; the target keeps ``X`` at the labelled regions only.

Where sample configurations come from (a metadata file, the dynamic drawer) and how
samples are made meet in one place: a :class:`SampleSpecs` batch (arrays: regions and
weights per source, clip ids, scale options, SNR, the recorded-noise choice). This module
makes one spec row into a sample (:func:`synthesize_spec`, readable NumPy);
:mod:`esikit.data.fast` makes a whole batch in one compiled call and must give the same
samples for the same draws from :func:`draw_sample_randomness`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class SampleSpecs:
    """A batch of B sample configurations: everything but the per-sample draws of the contract.

    Attributes
    ----------
    index : array of int64, shape (B,)
        Sample index; with the seed and the epoch it seeds every draw.
    regions : array of int32, shape (B, S, P)
        Region ids of each source patch, centre first; -1 at padded positions. A source
        whose centre is -1 is absent.
    weights : array of float32 or float64, shape (B, S, P)
        Weight of each patch region (``mag_change``); ignored at padding.
    clip_ids : array of int64, shape (B, S)
        Clip of each source in the dataset's clip store; -1: missing (the source then
        contributes nothing).
    scale_ratio : array of float64, shape (B, S, K)
        K candidate peak amplitudes per source (one is drawn per sample).
    snr_db : array of float64, shape (B,)
        Sensor SNR in dB.
    noise_segment : array of int64, shape (B,)
        Recorded-noise segment of each sample, -1 for white noise (see
        :mod:`esikit.data.noise`).
    noise_offset : array of int64, shape (B,)
        First time point of the recorded segment used.
    """

    index: np.ndarray
    regions: np.ndarray
    weights: np.ndarray
    clip_ids: np.ndarray
    scale_ratio: np.ndarray
    snr_db: np.ndarray
    noise_segment: np.ndarray | None = None
    noise_offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.asarray(self.index).shape[0]
        if self.noise_segment is None:
            self.noise_segment = np.full(n, -1, dtype=np.int64)
        if self.noise_offset is None:
            self.noise_offset = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return int(np.asarray(self.index).shape[0])

    @property
    def n_sources(self) -> int:
        """S, source slots per sample (absent ones included)."""
        return int(self.regions.shape[1])

    @property
    def n_scale_options(self) -> int:
        return int(self.scale_ratio.shape[2])

    def contiguous(self) -> SampleSpecs:
        """The same specs as C-contiguous arrays of the kernel's integer types."""
        kw = {f.name: np.ascontiguousarray(getattr(self, f.name)) for f in fields(self)}
        for name in ("index", "clip_ids", "noise_segment", "noise_offset"):
            kw[name] = kw[name].astype(np.int64, copy=False)
        kw["regions"] = kw["regions"].astype(np.int32, copy=False)
        kw["scale_ratio"] = kw["scale_ratio"].astype(np.float64, copy=False)
        kw["snr_db"] = kw["snr_db"].astype(np.float64, copy=False)
        return SampleSpecs(**kw)

    @classmethod
    def from_sources(cls, index: Sequence[int], patches: Sequence[Sequence[np.ndarray]],
                     weights: Sequence[Sequence[np.ndarray]], clip_ids: Sequence[Sequence[int]],
                     scales: Sequence[Sequence[float]], snr_db: Sequence[float], n_sources: int) -> SampleSpecs:
        """Pack per-sample lists (one entry per present source) into arrays; one scale option each."""
        n = len(index)
        width = max([len(p) for ps in patches for p in ps] or [1])
        regions = np.full((n, n_sources, width), -1, dtype=np.int32)
        w = np.zeros((n, n_sources, width), dtype=np.float64)
        cids = np.full((n, n_sources), -1, dtype=np.int64)
        scale = np.zeros((n, n_sources, 1), dtype=np.float64)
        for b in range(n):
            for s, (p, ws, c, a) in enumerate(zip(patches[b], weights[b], clip_ids[b], scales[b])):
                regions[b, s, :len(p)] = p
                w[b, s, :len(p)] = ws
                cids[b, s] = c
                scale[b, s, 0] = a
        return cls(np.asarray(index, dtype=np.int64), regions, w, cids, scale, np.asarray(snr_db, dtype=np.float64))


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


def add_recorded_noise(eeg: np.ndarray, snr_db: float, segment: np.ndarray) -> np.ndarray:
    """Add a recorded noise segment per channel at ``snr_db`` (in place), as DeepSIF's evaluation does.

    Channel ``c`` of ``segment`` (T x C, in the forward matrix's channel order) is scaled
    to the power ``10**(-snr/10) * mean_t(eeg[:, c]**2)`` (no ``/ 2``: DeepSIF's
    realistic-noise branch with all of the noise recorded). A flat channel adds nothing.
    """
    power = np.mean(np.square(eeg, dtype=np.float64), axis=0)
    rec = np.mean(np.square(segment, dtype=np.float64), axis=0)
    gain = np.sqrt(np.divide(10.0 ** (-float(snr_db) / 10.0) * power, rec, out=np.zeros_like(rec), where=rec > 0))
    eeg += segment * gain.astype(eeg.dtype)[None, :]
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
    recorded: np.ndarray | None = None,
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
    recorded : array, shape (T, C), optional
        A recorded noise segment: added by :func:`add_recorded_noise` instead of the
        white noise.

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
    if recorded is None:
        add_sensor_noise(eeg, snr_db, np.asarray(noise, dtype=np.float32))
    else:
        add_recorded_noise(eeg, snr_db, np.asarray(recorded, dtype=np.float32))
    source = np.zeros_like(x)
    if labelled:
        regions = np.unique(np.concatenate(labelled))
        source[:, regions] = x[:, regions]
    if normalize:
        normalize_eeg(eeg)
        normalize_source(source)
    return eeg.astype(np.float32, copy=False), source


def synthesize_spec(
    specs: SampleSpecs,
    b: int,
    clip: Callable[[int], np.ndarray | None],
    fwd: np.ndarray,
    seed: int,
    epoch: int,
    n_times: int,
    normalize: bool = True,
    noise_bank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``b`` of a spec batch: its draws, its clips, then :func:`synthesize_sample`.

    Parameters
    ----------
    specs : SampleSpecs
    b : int
        Row of ``specs``.
    clip : callable
        ``clip(clip_id) -> (T, R) array``, or None when the clip cannot be read (the
        source then contributes nothing).
    fwd : array, shape (C, R)
    seed, epoch : int
        With ``specs.index[b]``, seed the draws (:func:`draw_sample_randomness`).
    n_times : int
        T.
    normalize : bool
    noise_bank : array, shape (n_segments, L, C), optional
        Recorded noise segments (needed when ``specs.noise_segment[b] >= 0``).
    """
    regions, weights = specs.regions[b], specs.weights[b]
    choice, noise = draw_sample_randomness(seed, epoch, int(specs.index[b]), specs.n_sources,
                                           specs.n_scale_options, n_times, fwd.shape[0])
    clips, patches, ws, scales = [], [], [], []
    for s in range(specs.n_sources):
        cid = int(specs.clip_ids[b, s])
        if regions[s, 0] < 0 or cid < 0:
            continue
        x = clip(cid)
        if x is None:
            continue
        mask = regions[s] >= 0
        clips.append(x)
        patches.append(regions[s][mask])
        ws.append(weights[s][mask])
        scales.append(specs.scale_ratio[b, s, choice[s]])
    recorded = None
    segment = int(specs.noise_segment[b])
    if segment >= 0:
        start = int(specs.noise_offset[b])
        recorded = noise_bank[segment, start:start + n_times]  # type: ignore[index]
    return synthesize_sample(clips, patches, ws, scales, fwd, specs.snr_db[b], noise, normalize, recorded)
