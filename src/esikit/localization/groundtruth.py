"""Ground truth on real EEG: known spikes added to recorded resting EEG, localized and scored.

Synthetic spikes in synthetic noise say little about real recordings; real recordings
have no ground truth. In between: real resting EEG (DeepSIF's ``realistic_noise.mat``,
or segments cut by ``esikit noise-bank``) with spikes of known regions added through the
leadfield at chosen SNRs, written as an EDF file with channel names, localized by
:func:`esikit.localize` exactly as a user's file would be, and each event scored against
the truth with the evaluation's metrics, next to the classical baselines on the same
windows.

The recording (:func:`make_ground_truth_recording`)
    One block of ``L`` samples per event, each a resting segment (``K x L x C``), with
    a spike in the middle: the spike's source activity (an NMM clip of its region, or
    the default waveform, :func:`~esikit.localization.synthetic.spike_source`) placed
    with its peak at the block centre, cut to the ``window`` samples the network will
    see and tapered (Tukey, 20 %) so it starts and ends at zero there, projected through
    the leadfield. Consecutive blocks of one segment alternate forward and time-reversed
    so that the recording is continuous at the joins (the band-pass then sees no steps);
    a padding block at each end keeps filter edges away from the first and last window.
    The recorded EEG is left as it is (not rescaled per channel): the spike is scaled.
SNR (the project's definition, ``docs/SAMPLE_CONTRACT.md``, summed over channels)
    ``10 log10(sum_c P_c / sum_c N_c)`` with ``P_c`` the spike's and ``N_c`` the
    resting EEG's power on channel ``c`` over the event's window, both average
    referenced (the leadfield's reference is arbitrary, the recording's is not).
    :func:`~esikit.data.noise` adds recorded noise at ``N_c = 10^(-snr/10) P_c`` per
    channel; summed over channels that is the same ratio. Scaling the spike instead of
    each noise channel keeps the real EEG's spatial structure.
Scoring (:func:`score_events`)
    Every localized window is matched to its spike by time; the network's output is
    scored with the checkpoint's region rule, the baselines (on the same normalized,
    average-referenced windows the network saw) with the ``"normalized"`` rule, by
    :func:`esikit.evaluate.metrics.evaluate_sample` against the one-region truth: peak
    localization (``peak_in_patch``, ``peak_distance_mm``), the rule's precision,
    recall and localization error (``le_mm``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SFREQ_HZ
from .preprocess import WINDOW
from .synthetic import spike_raw, spike_source, spike_taper

logger = logging.getLogger(__name__)

__all__ = [
    "GroundTruthRecording",
    "TABLE_METRICS",
    "evaluate_ground_truth",
    "load_resting_segments",
    "make_ground_truth_recording",
    "resting_background",
    "score_events",
    "snr_table_markdown",
]

#: Metrics of the ground-truth table: (record field, column title, statistic).
TABLE_METRICS = (
    ("peak_distance_mm", "peak error (mm), median", "median"),
    ("peak_in_patch", "peak exact", "mean"),
    ("detected", "rule found any", "mean"),
    ("le_mm", "LE (mm), median", "median"),
    ("precision", "precision, mean", "mean"),
    ("recall", "recall, mean", "mean"),
)


@dataclass
class GroundTruthRecording:
    """A real-background recording with spikes of known regions.

    Attributes
    ----------
    raw : mne.io.RawArray
        EEG in volts with one ``spike`` annotation per event (at the spike peak).
    regions : ndarray of int, shape (K,)
        Spiking region of each event.
    times : ndarray, shape (K,)
        Spike peak times (s from the first sample).
    snr_db : ndarray, shape (K,)
        Requested SNR of each event (dB).
    snr_measured_db : ndarray, shape (K,)
        SNR of each event's window as built (dB; equals ``snr_db`` up to rounding).
    segment : ndarray of int, shape (K,)
        Resting segment under each event.
    reversed : ndarray of bool, shape (K,)
        Whether that segment was time-reversed there.
    path : Path | None
        The EDF file, when written.
    """

    raw: Any
    regions: np.ndarray
    times: np.ndarray
    snr_db: np.ndarray
    snr_measured_db: np.ndarray
    segment: np.ndarray
    reversed: np.ndarray
    path: Path | None = None


def load_resting_segments(path: str | PathLike, *, field: str = "data", unit: float = 1e-6) -> np.ndarray:
    """Resting EEG segments from DeepSIF's ``realistic_noise.mat`` (or ``esikit noise-bank`` output).

    Parameters
    ----------
    path : str | PathLike
        MAT file with ``field`` of shape ``(K, L, C)`` (segments x time x channels).
    field : str
    unit : float
        Volts per stored unit (DeepSIF's file and ``esikit noise-bank`` store microvolts).

    Returns
    -------
    ndarray, shape (K, L, C), float64, volts
    """
    from ..io import load_mat_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected field '{field}', K x L x C resting EEG)")
    data = load_mat_file(path).get(field)
    if data is None:
        raise ValueError(f"{path}: no field '{field}' (expected K x L x C resting EEG)")
    data = np.asarray(data)
    problems = []
    if data.ndim != 3:
        problems.append(f"has shape {data.shape}, expected (K, L, C)")
    elif not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        problems.append(f"has dtype {data.dtype}, expected real numbers")
    else:
        if not np.isfinite(data).all():
            problems.append(f"has {int((~np.isfinite(data)).sum())} non-finite values")
        flat = np.argwhere(np.ptp(data, axis=1) == 0)
        if len(flat):
            problems.append(f"has constant channels (segment, channel): {flat[:10].tolist()}")
    if problems:
        raise ValueError(f"{path}: field '{field}' " + "; ".join(problems))
    return data.astype(np.float64) * unit


def _block_plan(seg_of_block: Sequence[int]) -> np.ndarray:
    """Time reversal per block: consecutive blocks of one segment alternate, so joins are continuous."""
    flip = np.zeros(len(seg_of_block), dtype=bool)
    for i in range(1, len(seg_of_block)):
        flip[i] = (not flip[i - 1]) if seg_of_block[i] == seg_of_block[i - 1] else False
    return flip


def resting_background(segments: np.ndarray, seg_of_block: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate resting segments block by block (``N = n_blocks * L``, C).

    Consecutive blocks of the same segment alternate forward and time-reversed, so the
    signal is continuous at their joins.

    Returns
    -------
    eeg : ndarray, shape (n_blocks * L, C)
    flipped : ndarray of bool, shape (n_blocks,)
    """
    segments = np.asarray(segments, dtype=np.float64)
    seg_of_block = [int(s) for s in seg_of_block]
    bad = [s for s in seg_of_block if not 0 <= s < len(segments)]
    if bad:
        raise ValueError(f"segment indices {sorted(set(bad))} outside [0, {len(segments)})")
    flip = _block_plan(seg_of_block)
    blocks = [segments[s][::-1] if f else segments[s] for s, f in zip(seg_of_block, flip)]
    return np.concatenate(blocks, axis=0), flip


def _avg_ref(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


def make_ground_truth_recording(
    fwd: np.ndarray,
    ch_names: Sequence[str],
    segments: np.ndarray,
    regions: Sequence[int],
    snr_db: Sequence[float] | float,
    *,
    clips: Mapping[int, np.ndarray] | None = None,
    use_segments: Sequence[int] | None = None,
    sfreq: float = SFREQ_HZ,
    window: int = WINDOW,
    ch_pos: np.ndarray | None = None,
    path: str | PathLike | None = None,
    overwrite: bool = False,
) -> GroundTruthRecording:
    """Build (and optionally write as EDF) resting EEG with spikes of known regions at set SNRs.

    Parameters
    ----------
    fwd : ndarray, shape (C, R)
        Leadfield, rows in the order of ``ch_names`` and of the segments' channels.
    ch_names : sequence of str, length C
    segments : ndarray, shape (K_seg, L, C)
        Resting EEG in volts (:func:`load_resting_segments`), ``L >= window``.
    regions : sequence of int, length K
        Spiking region of each event.
    snr_db : float or sequence of float, length K
        SNR of each event (dB, see the module docstring).
    clips : mapping region -> ndarray (T, R), optional
        NMM clips per region (:func:`~esikit.localization.synthetic.clips_from_folder`);
        default: :func:`~esikit.localization.synthetic.spike_waveform` in the region alone.
    use_segments : sequence of int, optional
        Segments to use (default all); events take them in equal consecutive runs.
    sfreq : float
        Rate of the segments (Hz; DeepSIF's file: 500).
    window : int
        Samples of the analysis window (500, the network's).
    ch_pos : ndarray, shape (C, 3), optional
        Channel positions (m, head frame) stored in the recording; default MNE's 10-05.
    path : str | PathLike, optional
        EDF file to write.
    overwrite : bool

    Returns
    -------
    GroundTruthRecording
    """
    fwd = np.asarray(fwd, dtype=np.float64)
    segments = np.asarray(segments, dtype=np.float64)
    n_ch, n_reg = fwd.shape
    regions = np.asarray(regions, dtype=np.int64).ravel()
    n_ev = len(regions)
    snr = np.broadcast_to(np.asarray(snr_db, dtype=float), (n_ev,)).copy()
    use = np.arange(len(segments)) if use_segments is None else np.asarray(use_segments, dtype=np.int64).ravel()
    problems = []
    if segments.ndim != 3 or segments.shape[2] != n_ch:
        problems.append(f"segments have shape {segments.shape}, expected (K, L, C) with C={n_ch} like the leadfield")
    elif segments.shape[1] < window:
        problems.append(f"segments have {segments.shape[1]} samples, fewer than the window ({window})")
    if len(ch_names) != n_ch:
        problems.append(f"{len(ch_names)} channel names for a leadfield of {n_ch} channels")
    if n_ev == 0:
        problems.append("no regions given")
    if ((regions < 0) | (regions >= n_reg)).any():
        problems.append(f"regions must lie in [0, {n_reg}), got {regions[(regions < 0) | (regions >= n_reg)].tolist()}")
    if not np.isfinite(snr).all():
        problems.append(f"snr_db must be finite, got {snr.tolist()}")
    if segments.ndim == 3 and (len(use) == 0 or ((use < 0) | (use >= len(segments))).any()):
        problems.append(f"use_segments must be indices in [0, {len(segments)}), got {use.tolist()}")
    if clips is not None:
        missing = sorted(set(int(r) for r in regions) - set(int(k) for k in clips))
        if missing:
            problems.append(f"no clip for regions {missing}")
    if problems:
        raise ValueError("make_ground_truth_recording: " + "; ".join(problems))

    L = segments.shape[1]
    # events take the segments in equal consecutive runs (one jump per change of segment)
    seg_of_event = use[(np.arange(n_ev) * len(use)) // n_ev]
    seg_of_block = [seg_of_event[0], *seg_of_event, seg_of_event[-1]]  # padding block at each end
    eeg, flip = resting_background(segments, seg_of_block)
    taper = spike_taper(window)
    half = window // 2
    times = np.empty(n_ev)
    measured = np.empty(n_ev)
    for k, r in enumerate(regions):
        centre = (k + 1) * L + L // 2
        src, peak = spike_source(int(r), n_reg, None if clips is None else clips[int(r)], sfreq)
        w_src = np.zeros((window, n_reg))
        # the spike inside the window, peak at the window centre, tapered to zero at its ends
        a, b = max(peak - half, 0), min(peak - half + window, len(src))
        w_src[a - (peak - half):b - (peak - half)] = src[a:b]
        spike = (w_src * taper[:, None]) @ fwd.T  # (window, C)
        sl = slice(centre - half, centre - half + window)
        p_s = float(np.sum(_avg_ref(spike) ** 2))
        p_n = float(np.sum(_avg_ref(eeg[sl]) ** 2))
        if p_s <= 0:
            raise ValueError(f"region {int(r)}: its spike projects to zero on every channel (leadfield column)")
        alpha = math.sqrt(10 ** (snr[k] / 10) * p_n / p_s)
        eeg[sl] += alpha * spike
        measured[k] = 10 * math.log10(alpha ** 2 * p_s / p_n)
        times[k] = centre / sfreq
    raw, out = spike_raw(eeg, ch_names, times, sfreq=sfreq, ch_pos=ch_pos, path=path, overwrite=overwrite)
    logger.info("ground-truth recording: %d events on segments %s, %.1f s%s", n_ev, sorted(set(use.tolist())),
                len(eeg) / sfreq, f", written to {out}" if out else "")
    return GroundTruthRecording(raw=raw, regions=regions, times=times, snr_db=snr, snr_measured_db=measured,
                                segment=np.asarray(seg_of_event), reversed=flip[1:-1].copy(), path=out)


def score_events(
    res: Any,
    truth: GroundTruthRecording,
    *,
    fwd: np.ndarray | None = None,
    baselines: Sequence[str] = (),
    rule: str = "deepsif",
    baseline_rule: str = "normalized",
    model_name: str = "network",
    centres: np.ndarray | None = None,
    tolerance: float | None = None,
) -> list[dict[str, Any]]:
    """Score every localized event, and the baselines on the same windows, against the truth.

    Parameters
    ----------
    res : LocalizationResult
        From :func:`esikit.localize` on the truth's recording.
    truth : GroundTruthRecording
    fwd : ndarray, shape (C, R), optional
        The leadfield of the baselines, rows in the order of ``res.ch_names`` (needed
        when ``baselines`` are given).
    baselines : sequence of str
        Classical methods (:data:`esikit.evaluate.BASELINES` or invertmeeg names).
    rule, baseline_rule : str
        Region rules of the network (the checkpoint's) and of the baselines.
    model_name : str
        ``method`` of the network's records.
    centres : ndarray, shape (R, 3), optional
        Region centres (mm); default ``res.centres``.
    tolerance : float, optional
        Largest time difference (s) between an event and its spike; default half a window.

    Returns
    -------
    list of dict
        One :func:`~esikit.evaluate.metrics.evaluate_sample` record per event and method,
        with ``method``, ``snr_db``, ``region``, ``time_s``, ``event``.
    """
    from ..evaluate import Baselines, evaluate_sample

    centres = res.centres if centres is None else np.asarray(centres, dtype=np.float64)
    if centres is None:
        raise ValueError("score_events needs region centres (the checkpoint's anatomy, or centres=)")
    tol = (WINDOW / 2) / res.sfreq if tolerance is None else float(tolerance)
    match = []
    for k, t in enumerate(res.event_times):
        j = int(np.argmin(np.abs(truth.times - t)))
        if abs(truth.times[j] - t) > tol:
            raise ValueError(f"event {k} at {t:.3f} s has no spike within {tol:.3f} s")
        match.append(j)
    estimates = {model_name: np.asarray(res.sources)}
    rules = {model_name: rule}
    if baselines:
        if fwd is None:
            raise ValueError("score_events: baselines need the leadfield 'fwd' (C, R)")
        fwd = np.asarray(fwd, dtype=np.float64)
        if fwd.shape != (res.eeg.shape[2], res.n_regions):
            raise ValueError(f"'fwd' has shape {fwd.shape}, expected (C, R) = ({res.eeg.shape[2]}, {res.n_regions})")
        solver = Baselines(fwd, list(baselines), centres=centres)
        estimates.update(solver.estimate(np.asarray(res.eeg, dtype=np.float64)))
        rules.update({m: baseline_rule for m in solver.names})
    records = []
    for k, j in enumerate(match):
        info = {"event": k, "time_s": float(truth.times[j]), "region": int(truth.regions[j]),
                "snr_db": float(truth.snr_db[j])}
        for m, est in estimates.items():
            records.append(evaluate_sample(est[k], None, centres, [np.array([truth.regions[j]])], eeg=res.eeg[k],
                                           rule=rules[m], info=dict(info, method=m)))
    return records


def evaluate_ground_truth(
    truth: GroundTruthRecording,
    checkpoint: Any,
    *,
    fwd: np.ndarray | None = None,
    baselines: Sequence[str] = (),
    anatomy: Any = None,
    out: str | PathLike | None = None,
    overwrite: bool = False,
    model_name: str = "network",
) -> tuple[list[dict[str, Any]], Any]:
    """Localize the truth's EDF file with ``checkpoint`` (as ``esikit localize`` does) and score it.

    Parameters
    ----------
    truth : GroundTruthRecording
        With ``path`` (the EDF file is what is localized), else its ``raw``.
    checkpoint : str | PathLike | tuple
        ``best.pt``, or ``(model, state)``.
    fwd : ndarray, shape (C, R), optional
        Leadfield of the baselines, in the checkpoint's channel order.
    baselines : sequence of str
    anatomy : str | Anatomy, optional
        Overrides the checkpoint's anatomy (region centres).
    out : str | PathLike, optional
        Also write ``esikit localize``'s output folder here (no figures).
    overwrite : bool
    model_name : str

    Returns
    -------
    records : list of dict
        :func:`score_events`.
    res : LocalizationResult
    """
    from ..train.trainer import load_model
    from .run import localize, localize_file, region_rule

    loaded = checkpoint if isinstance(checkpoint, tuple) else load_model(checkpoint)
    rule = region_rule(dict(loaded[1].get("config") or {}))
    inst = truth.path if truth.path is not None else truth.raw
    if out is not None and truth.path is not None:
        res, _ = localize_file(truth.path, loaded, out, overwrite=overwrite, max_figures=0, anatomy=anatomy,
                               events="annotations")
    else:
        res = localize(inst, loaded, anatomy=anatomy, events="annotations")
    records = score_events(res, truth, fwd=fwd, baselines=baselines, rule=rule, model_name=model_name)
    return records, res


def snr_table_markdown(records: Sequence[Mapping[str, Any]], *, label: Mapping[str, str] | None = None,
                       metrics: Sequence[tuple[str, str, str]] = TABLE_METRICS) -> str:
    """One markdown row per (method, SNR): events and the :data:`TABLE_METRICS` statistics.

    NaN values (e.g. precision of an event where a rule identified nothing) are left out
    of each statistic; ``n/a`` when none is left.
    """
    label = dict(label or {})
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r["method"]), float(r["snr_db"])), []).append(r)
    head = "| method | SNR (dB) | events | " + " | ".join(t for _, t, _ in metrics) + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * len(metrics)]
    methods = list(dict.fromkeys(str(r["method"]) for r in records))
    for m in methods:
        for snr in sorted({s for (mm, s) in groups if mm == m}):
            recs = groups[(m, snr)]
            cells = []
            for key, _, stat in metrics:
                v = np.asarray([float(r.get(key, math.nan)) for r in recs], dtype=np.float64)
                v = v[np.isfinite(v)]
                if v.size == 0:
                    cells.append("n/a")
                else:
                    x = float(np.median(v) if stat == "median" else np.mean(v))
                    cells.append(f"{x:.1f}" if key.endswith("_mm") else f"{x:.2f}")
            lines.append(f"| {label.get(m, m)} | {snr:g} | {len(recs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
