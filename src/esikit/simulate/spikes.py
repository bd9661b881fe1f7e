"""Spike clips from simulated neural-mass activity (DeepSIF's ``process_raw_nmm.m``).

For each region ``r`` DeepSIF simulates the network with ``r`` excitable, then keeps the
500-sample (1 s at 500 Hz) blocks in which ``r`` fires an isolated spike:

1. drop the first 1000 raw samples (500 ms transient), keep every 4th sample
   (2000 Hz -> 500 Hz), map simulated nodes to forward-model regions;
2. spike peaks (``find_spike_time``): values below 8 mV set to zero, strict local
   maxima of what remains, at least 249 samples after the start and 250 before the end
   (1-based ``t - 249 > 0`` and ``t + 250 < T``), and more than 100 samples after the
   previous peak of any region (peaks sorted by time, ties by region);
3. a peak of ``r`` is kept when no peak of another region falls in
   ``floor(t/500)*500 + 1 + (-200 .. 699)`` (1-based); the clip is the 500-sample block
   ``floor(t/500)*500 + 1 .. + 500`` (aligned to the block grid, not centred);
4. ``r``'s channel is rescaled around each kept spike so that the spike reaches 15 dB
   against the rest of the brain at the sensors (``find_alpha`` over 200 samples around
   every kept peak, then ``rescale_nmm_channel``);
5. each clip is written to ``nmm_spikes/a{r}/nmm_{k}.mat`` (field ``data``, T x R
   float32, ``k`` from 1, continuing across the noise settings).

These rules hold here once, for a recording that arrives in pieces
(:class:`ClipStream`) as for a whole one (:func:`find_spike_times`,
:func:`select_clips`, the test oracle). Which recording is simulated, and when a run
stops, is decided by the one task function (:mod:`esikit.simulate.harvest`) and its
driver (:mod:`esikit.simulate.distributed`).

Indices in this module are 0-based; docstrings give DeepSIF's 1-based rules.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..head.snr import find_alpha, peak_windows
from ..io.atomic import atomic_output, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_LENGTH",
    "CONTEXT_BEFORE",
    "ClipStream",
    "DECIDE_AFTER",
    "DISCARD_RAW",
    "DOWNSAMPLE",
    "RAW_SFREQ",
    "RegionClipResult",
    "find_spike_times",
    "plain_json",
    "rescale_spike_channel",
    "save_clip",
    "scale_clip",
    "select_clips",
    "spike_alpha",
    "write_json",
]

#: Samples per clip (1 s at 500 Hz).
CLIP_LENGTH = 500

#: Sampling rate of the simulated activity [Hz] (integration step 0.5 ms).
RAW_SFREQ = 2000.0
#: Raw samples dropped at the start of every simulation (500 ms at 2000 Hz).
DISCARD_RAW = 1000
#: Downsampling factor of the simulated activity (2000 Hz -> 500 Hz).
DOWNSAMPLE = 4


# --------------------------------------------------------------------------- rules
def find_spike_times(nmm: np.ndarray, threshold: float = 8.0, min_gap: int = 100,
                     start_margin: int = 249, end_margin: int = 250
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Spike peaks of all regions (DeepSIF's ``find_spike_time``).

    Parameters
    ----------
    nmm : ndarray, shape (n_times, n_regions)
        Downsampled activity in mV.
    threshold : float
        Values below it are set to zero before looking for maxima (8 mV).
    min_gap : int
        A peak is kept only if more than ``min_gap`` samples after the previous peak of
        any region, kept or not (100).
    start_margin, end_margin : int
        1-based peak time ``t`` must satisfy ``t - start_margin > 0`` and
        ``t + end_margin < n_times`` (249, 250).

    Returns
    -------
    times : ndarray of int, shape (n_peaks,)
        0-based sample of each kept peak, sorted.
    regions : ndarray of int, shape (n_peaks,)
        Region of each peak.
    """
    x = np.where(nmm < threshold, 0.0, nmm)
    is_max = np.zeros(x.shape, dtype=bool)
    # strict local maxima; the first and last samples never are (MATLAB islocalmax)
    is_max[1:-1] = (x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])
    times, regions = np.nonzero(is_max)  # row-major: by time, ties by region
    t1 = times + 1  # DeepSIF's 1-based times
    gap_ok = np.ones(len(times), dtype=bool)
    gap_ok[1:] = np.diff(times) > min_gap
    keep = (t1 - start_margin > 0) & (t1 + end_margin < nmm.shape[0]) & gap_ok
    return times[keep].astype(np.int64), regions[keep].astype(np.int64)


def select_clips(times: np.ndarray, regions: np.ndarray, region: int, n_times: int,
                 clip_length: int = CLIP_LENGTH, window: tuple[int, int] = (-200, 699)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of ``region`` isolated from other regions' peaks, and their clip starts.

    Parameters
    ----------
    times, regions : ndarray of int, shape (n_peaks,)
        Output of :func:`find_spike_times` (0-based times).
    region : int
        The excited region.
    n_times : int
        Length of the recording (clips must fit in it).
    clip_length : int
        Block length (500).
    window : (int, int)
        Offsets from the 1-based block start ``floor(t/500)*500 + 1`` inside which no
        other region may peak (-200 .. 699 inclusive).

    Returns
    -------
    spike_times : ndarray of int, shape (n_clips,)
        0-based peak time of each kept spike.
    clip_starts : ndarray of int, shape (n_clips,)
        0-based first sample of each clip, ``floor((t0 + 1) / 500) * 500``. As in
        DeepSIF a peak at 1-based ``t = 500 m`` gets the block after it.
    """
    times = np.asarray(times, dtype=np.int64)
    regions = np.asarray(regions, dtype=np.int64)
    own = regions == region
    starts = ((times[own] + 1) // clip_length) * clip_length  # 0-based block starts
    others = np.sort(times[~own])
    lo = starts + window[0]
    hi = starts + window[1]
    # count other-region peaks in [lo, hi]
    n_in = np.searchsorted(others, hi, side="right") - np.searchsorted(others, lo, side="left")
    keep = (n_in == 0) & (starts + clip_length <= n_times)
    return times[own][keep], starts[keep]


def spike_alpha(nmm: np.ndarray, fwd: np.ndarray, region: int, spike_times: np.ndarray,
                target_snr_db: float = 15.0) -> float:
    """DeepSIF's scaling of the region's spikes to ``target_snr_db`` (``find_alpha``).

    Power over 200 samples around every kept peak (-99 .. +100), signal = the region's
    own channel through its leadfield column, noise = every other region.

    Parameters
    ----------
    nmm : ndarray, shape (n_times, n_regions)
    fwd : ndarray, shape (n_channels, n_regions)
    region : int
    spike_times : ndarray of int, shape (n_spikes,)
        0-based kept peaks.
    target_snr_db : float

    Returns
    -------
    float
        ``alpha``; NaN when there is no spike.
    """
    if len(spike_times) == 0:
        return float("nan")
    index = peak_windows(spike_times, nmm.shape[0], before=99, after=100)
    alpha = find_alpha(nmm, fwd, [int(region)], float(target_snr_db), time_index=index,
                       normalize_peak=False)
    return float(np.asarray(alpha).reshape(-1)[0])


def _scaled_span(sig: np.ndarray) -> tuple[int, int]:
    """DeepSIF's start and end of the spike inside a 500-sample window (0-based, inclusive).

    ``sig`` is the mean-removed region channel from 249 samples before the peak to 250
    after (the peak is 1-based sample 250). Start: the last sample before the peak whose
    magnitude is below a threshold; end: the first such sample after the trough that
    follows (searched in 1-based samples 301..400); only 1-based samples 50..450 count,
    and the threshold grows from 0.1 by 0.05 until both exist.
    """
    j = np.arange(1, len(sig) + 1)  # DeepSIF's 1-based positions
    allowed = (j >= 50) & (j <= 450)
    mag = np.abs(sig)
    thre = 0.1

    def small(th):
        return j[(mag < th) & allowed]

    s = small(thre)
    while not np.any(s < 250):
        thre += 0.05
        s = small(thre)
    start = int(s[s < 250][-1])
    # DeepSIF adds 301 to the 1-based argmin of sig(301:400), one past the trough
    min_ind = int(np.argmin(sig[300:400])) + 1 + 301
    while not np.any(s > min_ind):
        thre += 0.05
        s = small(thre)
    end = int(s[s > min_ind][0])
    return start - 1, end - 1


def rescale_spike_channel(nmm: np.ndarray, region: int, spike_times: np.ndarray,
                          alpha: float) -> np.ndarray:
    """Scale the spikes of one region's channel by ``alpha`` (DeepSIF's ``rescale_nmm_channel``).

    Around each peak (249 samples before to 250 after), the mean-removed channel is
    multiplied by ``alpha`` between the spike's start and end (see
    :func:`_scaled_span`); the temporal mean is added back. Spikes are processed in
    order, on the already rescaled signal.

    Parameters
    ----------
    nmm : ndarray, shape (n_times, n_regions)
    region : int
    spike_times : ndarray of int, shape (n_spikes,)
        0-based peaks, each at least 249 samples from the start and 250 from the end.
    alpha : float

    Returns
    -------
    ndarray, shape (n_times, n_regions)
        A rescaled copy (other regions unchanged).
    """
    out = np.array(nmm, copy=True)
    mean = out[:, region].mean()
    ch = out[:, region] - mean
    for t in np.asarray(spike_times, dtype=np.int64):
        lo, hi = t - 249, t + 251
        if lo < 0 or hi > len(ch):
            raise ValueError(f"spike at sample {t} too close to the edge of {len(ch)} samples "
                             "(needs 249 before and 250 after)")
        sig = ch[lo:hi].copy()
        a, b = _scaled_span(sig)
        sig[a:b + 1] *= alpha
        ch[lo:hi] = sig
    out[:, region] = ch + mean
    return out


#: A peak's clip is decided once the recording reaches ``block + DECIDE_AFTER`` samples.
DECIDE_AFTER = 1000
#: Context of the per-clip rescaling: ``block - CONTEXT_BEFORE .. block + DECIDE_AFTER``.
CONTEXT_BEFORE = 500


# --------------------------------------------------------------------------- stream
@dataclass
class ClipStream:
    """DeepSIF's clip rules applied to a recording that arrives in pieces.

    Parameters
    ----------
    region : int
        The excited region (its isolated peaks make clips).
    threshold, min_gap, start_margin, end_margin, window : see
        :func:`find_spike_times` and
        :func:`select_clips`.

    Attributes
    ----------
    length : int
        Samples received so far.
    n_peaks : int
        Peaks of ``region`` decided so far that pass the peak rules (those
        :func:`find_spike_times` returns for it), isolated or not.
    """

    region: int
    threshold: float = 8.0
    min_gap: int = 100
    start_margin: int = 249
    end_margin: int = 250
    window: tuple[int, int] = (-200, 699)
    buf: np.ndarray | None = None
    buf_start: int = 0
    scanned_to: int = 1            # candidates decided at positions < scanned_to (0 never is)
    last_candidate: int = -(10 ** 12)
    peak_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    peak_r: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pending: list = field(default_factory=list)
    n_peaks: int = 0               # decided peaks of the region that pass the peak rules

    @property
    def length(self) -> int:
        return self.buf_start + (0 if self.buf is None else len(self.buf))

    def feed(self, rows: np.ndarray, final: bool = False) -> list[tuple[int, int, np.ndarray, int]]:
        """Append samples and return the clips decided so far.

        Parameters
        ----------
        rows : ndarray, shape (n_new, n_regions)
            Next samples of the downsampled, region-mapped activity [mV].
        final : bool
            The recording ends here: decide every remaining peak with this length.

        Returns
        -------
        list of (peak, block, context, context_start)
            For each kept clip, in time order: the 0-based peak sample, the clip's first
            sample, and the activity ``context`` (shape (n, n_regions)) from sample
            ``context_start = max(0, block - 500)`` to ``min(length, block + 1000)``.
        """
        rows = np.asarray(rows)
        if self.buf is None:
            self.buf = rows if final else rows.copy()  # a final piece is never appended to
        elif len(rows):
            self.buf = np.concatenate([self.buf, rows])
        T = self.length
        lo, hi = max(self.scanned_to, 1), T - 1  # position T - 1 needs the next sample
        if hi > lo:
            seg = self.buf[lo - 1 - self.buf_start:hi + 1 - self.buf_start]
            x = np.where(seg < self.threshold, 0.0, seg)
            is_max = (x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])
            tt, rr = np.nonzero(is_max)  # by time, ties by region (as the batch rules)
            tt = tt.astype(np.int64) + lo
            gap_ok = np.diff(np.concatenate([[self.last_candidate], tt])) > self.min_gap
            if len(tt):
                self.last_candidate = int(tt[-1])
            keep = gap_ok & (tt + 1 - self.start_margin > 0)
            self.peak_t = np.concatenate([self.peak_t, tt[keep]])
            self.peak_r = np.concatenate([self.peak_r, rr[keep].astype(np.int64)])
            self.pending.extend(int(t) for t in tt[keep & (rr == self.region)])
            self.scanned_to = hi
        decided, still = [], []
        for t in self.pending:
            block = ((t + 1) // CLIP_LENGTH) * CLIP_LENGTH
            if not final and T < block + DECIDE_AFTER:
                still.append(t)
                continue
            if not final or t + 1 + self.end_margin < T:
                self.n_peaks += 1
            if self._keep(t, block, T, final):
                c0 = max(0, block - CONTEXT_BEFORE)
                c1 = min(T, block + DECIDE_AFTER)
                decided.append((t, block, self.buf[c0 - self.buf_start:c1 - self.buf_start].copy(), c0))
        self.pending = still
        self._trim()
        return decided

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The stream's state as plain arrays (for a checkpoint; see :meth:`from_arrays`)."""
        buf = np.zeros((0, 0), np.float32) if self.buf is None else self.buf
        return {"buf": buf, "peak_t": self.peak_t, "peak_r": self.peak_r,
                "pending": np.asarray(self.pending, dtype=np.int64),
                "ints": np.array([self.buf_start, self.scanned_to, self.last_candidate,
                                  self.buf is None, self.n_peaks], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, region: int, arrays: dict[str, np.ndarray]) -> "ClipStream":
        """Inverse of :meth:`to_arrays` (the rule settings are the defaults)."""
        buf_start, scanned_to, last_candidate, no_buf, n_peaks = (int(v) for v in arrays["ints"])
        return cls(region=int(region), buf=None if no_buf else arrays["buf"], buf_start=buf_start,
                   scanned_to=scanned_to, last_candidate=last_candidate,
                   peak_t=arrays["peak_t"].astype(np.int64), peak_r=arrays["peak_r"].astype(np.int64),
                   pending=[int(t) for t in arrays["pending"]], n_peaks=n_peaks)

    def _keep(self, t: int, block: int, T: int, final: bool) -> bool:
        if final and not (t + 1 + self.end_margin < T and block + CLIP_LENGTH <= T):
            return False
        lo, hi = block + self.window[0], block + self.window[1]
        other = (self.peak_r != self.region) & (self.peak_t >= lo) & (self.peak_t <= hi)
        if final:  # peaks too close to the end of the recording do not count
            other &= self.peak_t + 1 + self.end_margin < T
        return not other.any()

    def _trim(self) -> None:
        # keep what a pending or future peak can still need
        keep_from = self.scanned_to - 1 - (CLIP_LENGTH - 2) - CONTEXT_BEFORE
        for t in self.pending:
            keep_from = min(keep_from, ((t + 1) // CLIP_LENGTH) * CLIP_LENGTH - CONTEXT_BEFORE)
        keep_from = max(keep_from, self.buf_start)
        self.buf = self.buf[keep_from - self.buf_start:]
        self.buf_start = keep_from
        old = self.peak_t < keep_from
        if old.any():
            self.peak_t, self.peak_r = self.peak_t[~old], self.peak_r[~old]


def scale_clip(context: np.ndarray, context_start: int, peak: int, block: int, region: int,
               fwd: np.ndarray | None, target_snr_db: float = 15.0) -> tuple[np.ndarray, float]:
    """Rescale one clip's spike to ``target_snr_db`` and cut its 500 samples.

    Parameters
    ----------
    context : ndarray, shape (n, n_regions)
        Activity around the clip (from :meth:`ClipStream.feed`).
    context_start, peak, block : int
        Absolute samples of ``context[0]``, of the peak and of the clip start.
    region : int
    fwd : ndarray, shape (n_channels, n_regions) | None
        Leadfield; None keeps the clip unscaled.
    target_snr_db : float

    Returns
    -------
    clip : ndarray, shape (500, n_regions), float32
    alpha : float
        The factor applied (NaN when unscaled).
    """
    rel = np.array([peak - context_start])
    alpha = float("nan")
    scaled = context
    if fwd is not None:
        alpha = spike_alpha(context, fwd, region, rel, target_snr_db)
        if np.isfinite(alpha) and alpha > 0:
            scaled = rescale_spike_channel(context.astype(np.float64), region, rel, alpha)
        else:
            logger.warning("region %d, peak %d: scaling factor %s; clip kept unscaled",
                           region, peak, alpha)
    s = block - context_start
    return np.asarray(scaled[s:s + CLIP_LENGTH], dtype=np.float32), alpha


# --------------------------------------------------------------------------- files
def save_clip(path: str | Path, clip: np.ndarray) -> Path:
    """Write one clip to ``path`` (MAT v5, field ``data``, float32) atomically.

    The file is written under a temporary name in the same folder, then renamed, so
    readers never see half a file.
    """
    from ..io import save_mat_file

    path = Path(path)
    with atomic_output(path) as tmp:
        save_mat_file(tmp, {"data": np.asarray(clip, dtype=np.float32)}, format="v5")
    return path


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def plain_json(data):
    """``data`` as plain JSON values: what :func:`write_json` writes and ``json.load`` reads back."""
    return json.loads(json.dumps(data, default=_json_default))


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (temporary name, then one rename).

    NumPy scalars and arrays become numbers and lists, NaN becomes null, paths strings.
    """
    return atomic_write_json(path, data, default=_json_default)


@dataclass
class RegionClipResult:
    """What :func:`esikit.simulate.distributed.make_spike_clips` produced for one region.

    Attributes
    ----------
    region : int
    n_clips : int
        Clips written (``nmm_1 .. nmm_{n_clips}``).
    peaks_per_setting : list of int
        Peaks of the region passing DeepSIF's peak rules, per setting.
    clips_per_setting : list of int
        Clips kept per setting.
    alpha_per_setting : list of float
        Scaling applied per setting (NaN without clips).
    simulated_s : float
        Simulated seconds in total (all settings, transient included).
    wall_s : float
        Wall time.
    skipped : bool
        True when the region was already finished (read from its marker).
    """

    region: int
    n_clips: int
    peaks_per_setting: list[int] = field(default_factory=list)
    clips_per_setting: list[int] = field(default_factory=list)
    alpha_per_setting: list[float] = field(default_factory=list)
    simulated_s: float = 0.0
    wall_s: float = 0.0
    skipped: bool = False
