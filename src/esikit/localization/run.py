"""``esikit.localize``: apply a trained network to a recording, event by event.

An MNE ``Raw``/``Epochs``/``Evoked`` (or a file MNE reads, or DeepSIF's ``data*.mat``
windows) goes in; per event window the network's source time courses, the regions its
checkpoint's rule calls active, the peak region and time come out, with a
:class:`mne.SourceEstimate` on the anatomy's cortex for plotting.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import (
    H_FREQ,
    L_FREQ,
    WINDOW,
    events_from_annotations,
    events_from_csv,
    events_from_gfp,
    extract_windows,
    normalize_windows,
    prepare,
)
from .recording import MAX_MISSING, ChannelMatch, Montage, montage_from_checkpoint, read_recording

logger = logging.getLogger(__name__)

__all__ = ["LocalizationResult", "active_regions", "localize", "localize_file", "region_rule"]


def region_rule(config: dict[str, Any] | None = None) -> str:
    """The checkpoint's region rule: ``config["REGION_RULE"]``, else ``"deepsif"`` (the network's own)."""
    from ..evaluate.metrics import check_rule

    return check_rule(str((config or {}).get("REGION_RULE") or "deepsif"))


def active_regions(est: np.ndarray, config: dict[str, Any] | None = None) -> np.ndarray:
    """Regions a source estimate calls active, by the checkpoint's region rule.

    Uses the evaluation's rules (:func:`esikit.evaluate.metrics.identify_regions_by_rule`;
    for a network, ``"deepsif"``: DeepSIF's Otsu threshold with 100 bins on the raw
    output, active above it at more than 7 time points), so localization and evaluation
    never disagree on what "active" means.

    Parameters
    ----------
    est : ndarray, shape (T, R)
        Network output for one window.
    config : dict, optional
        The checkpoint's training config (``REGION_RULE``, ``MIN_ACTIVE_SAMPLES``,
        ``OTSU_NBINS`` when present).

    Returns
    -------
    ndarray of int, shape (n_active,)
    """
    from ..evaluate import metrics

    kw = {}
    cfg = config or {}
    for key, arg in (("MIN_ACTIVE_SAMPLES", "min_active_samples"), ("OTSU_NBINS", "nbins")):
        if cfg.get(key) is not None:
            kw[arg] = int(cfg[key])
    regions, _ = metrics.identify_regions_by_rule(est, region_rule(cfg), **kw)
    return regions


@dataclass
class LocalizationResult:
    """What :func:`localize` found; arrays indexed by event ``k``.

    Attributes
    ----------
    sources : ndarray, shape (K, T, R), float32
        Network output per window (DeepSIF's ``all_out``).
    eeg : ndarray, shape (K, T, C), float32
        The normalized windows the network saw.
    event_times : ndarray, shape (K,)
        Event times (s from the recording's first sample).
    window_starts : ndarray, shape (K,)
        Time (s) of each window's first sample.
    labels : list of str
        Event labels (annotation descriptions, CSV labels, ``"gfp"``, ...).
    active : list of ndarray of int
        Active regions of each window.
    peak_region : ndarray of int, shape (K,)
        Region of the largest output in each window (largest ``|output|`` under the
        ``"normalized"`` rule).
    peak_time : ndarray, shape (K,)
        Time (s, recording clock) of that maximum.
    sfreq : float
        Rate of the windows (the checkpoint's, Hz).
    ch_names : list of str
        Input channels in order.
    region_labels : list of str
    centres : ndarray, shape (R, 3) | None
        Region centres in mm (anatomy), when known.
    anatomy : Anatomy | None
    match : ChannelMatch | None
        How the recording's channels were matched.
    n_skipped : int
        Events skipped because their window ran past the recording.
    checkpoint : str
    prepared : mne object | None
        The preprocessed recording (average reference, filtered, resampled), for plots.
    timings : dict
        Seconds spent per stage (wall clock), and CPU seconds of this process per stage
        (keys ending in ``_cpu``).
    """

    sources: np.ndarray
    eeg: np.ndarray
    event_times: np.ndarray
    window_starts: np.ndarray
    labels: list[str]
    active: list[np.ndarray]
    peak_region: np.ndarray
    peak_time: np.ndarray
    sfreq: float
    ch_names: list[str]
    region_labels: list[str]
    centres: np.ndarray | None = None
    anatomy: Any = None
    match: ChannelMatch | None = None
    n_skipped: int = 0
    checkpoint: str = ""
    prepared: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return int(self.sources.shape[0])

    @property
    def n_regions(self) -> int:
        return int(self.sources.shape[2])

    def activation_counts(self) -> np.ndarray:
        """How many windows call each region active, shape (R,)."""
        counts = np.zeros(self.n_regions, dtype=np.int64)
        for a in self.active:
            counts[a] += 1
        return counts

    def __repr__(self) -> str:
        return (f"<LocalizationResult: {self.n_events} events ({self.n_skipped} skipped), "
                f"{len(self.ch_names)} channels, {self.n_regions} regions, {self.sfreq:g} Hz, "
                f"checkpoint {self.checkpoint}>")

    def to_stc(self, k: int | None = None, subject: str | None = None):
        """An :class:`mne.SourceEstimate` on the anatomy's cortex vertices.

        Every vertex carries its region's time course (DeepSIF's leadfield gives all
        dipoles of a region the same activity).

        Parameters
        ----------
        k : int | None
            Event index; ``None``: the average over events of the window-aligned outputs.
        subject : str, optional
            Subject name stored in the estimate (default: ``fsaverage`` for DeepSIF's
            fsaverage5 template, else the anatomy's name).

        Returns
        -------
        mne.SourceEstimate
            ``tmin`` is the window's start on the recording clock (``k`` given) or
            relative to the window centre (average).
        """
        import mne

        anat = self.anatomy
        if anat is None or getattr(anat, "vertices", None) is None or getattr(anat, "vertex_region", None) is None:
            raise ValueError("the checkpoint's anatomy has no cortex mesh (vertices, vertex_region); "
                             "pass anatomy= to localize() to get a SourceEstimate")
        data = self.sources[k] if k is not None else self.sources.mean(axis=0)  # (T, R)
        vr = np.asarray(anat.vertex_region, dtype=np.int64)
        x = np.asarray(anat.vertices)[:, 0]
        n = len(vr)
        # fsaverage-style meshes store the left hemisphere first, then the right, equal halves
        if n % 2 == 0 and np.median(x[: n // 2]) < 0 < np.median(x[n // 2:]):
            lh, rh = np.arange(n // 2), np.arange(n // 2, n)
            vertno = [lh, rh - n // 2]
            subject = subject or ("fsaverage" if n == 20484 else str(anat.name))
        else:
            lh, rh = np.flatnonzero(x < 0), np.flatnonzero(x >= 0)
            vertno = [lh, rh]
            subject = subject or str(anat.name)
        order = np.concatenate([lh, rh])
        region = vr[order]
        vals = np.zeros((len(order), data.shape[0]), dtype=np.float32)
        ok = (region >= 0) & (region < data.shape[1])
        vals[ok] = data[:, region[ok]].T
        tmin = float(self.window_starts[k]) if k is not None else -(data.shape[0] // 2) / self.sfreq
        return mne.SourceEstimate(vals, vertices=vertno, tmin=tmin, tstep=1.0 / self.sfreq, subject=subject)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: per event and across events."""
        centres = self.centres
        events = []
        for k in range(self.n_events):
            r = int(self.peak_region[k])
            events.append({
                "index": k,
                "label": self.labels[k],
                "time_s": float(self.event_times[k]),
                "window_start_s": float(self.window_starts[k]),
                "peak_region": r,
                "peak_region_name": self.region_labels[r],
                "peak_region_centre_mm": None if centres is None else [float(v) for v in centres[r]],
                "peak_time_s": float(self.peak_time[k]),
                "active_regions": [int(a) for a in self.active[k]],
                "active_region_names": [self.region_labels[a] for a in self.active[k]],
            })
        counts = self.activation_counts()
        order = np.argsort(-counts, kind="stable")
        regions = [{"region": int(r), "name": self.region_labels[r], "n_active": int(counts[r]),
                    "fraction": float(counts[r] / max(self.n_events, 1)),
                    "centre_mm": None if centres is None else [float(v) for v in centres[r]]}
                   for r in order if counts[r] > 0]
        match = self.match
        return {
            "checkpoint": self.checkpoint,
            "n_events": self.n_events,
            "n_skipped": self.n_skipped,
            "sfreq": self.sfreq,
            "channels": {
                "n": len(self.ch_names),
                "interpolated": [] if match is None else match.missing,
                "bad_in_file": [] if match is None else match.bad,
                "dropped": [] if match is None else match.extra,
                "renamed": {} if match is None else match.renamed,
            },
            "events": events,
            "regions": regions,
            "timings_s": self.timings,
        }


def _load(checkpoint: Any, device: str):
    from ..train.trainer import load_model

    if isinstance(checkpoint, tuple):  # (model, state) already loaded
        return checkpoint
    return load_model(checkpoint, device=device)


def checkpoint_anatomy(cfg: dict[str, Any], anatomy: Any, n_regions: int):
    """``(anatomy, centres (R, 3) mm, region names)`` for a network of ``n_regions``: ``anatomy`` when
    given, else the checkpoint config's; ``(None, None, ['region 0', ...])`` when none fits."""
    from ..evaluate.runner import anatomy_centres
    from ..head.anatomy import find_anatomy
    from ..head.anatomy import load_anatomy

    anat = None
    if anatomy is not None:
        anat = load_anatomy(anatomy)
    else:
        try:
            anat = find_anatomy(cfg.get("ANATOMY"), cfg.get("FWD_MATRIX_PATH"))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("checkpoint's anatomy could not be loaded (%s); no region names or centres", exc)
    if anat is not None and anat.n_regions != n_regions:
        logger.warning("anatomy %s has %d regions, the network %d: ignoring it", anat.name, anat.n_regions,
                       n_regions)
        anat = None
    if anat is None:
        return None, None, [f"region {r}" for r in range(n_regions)]
    return anat, anatomy_centres(anat, n_regions), list(anat.region_labels)


def localize(
    inst: Any,
    checkpoint: Any,
    *,
    events: Any = None,
    window: float | None = None,
    annotation: str | None = None,
    gfp_spacing: float = 1.0,
    gfp_k: float = 5.0,
    max_events: int | None = None,
    l_freq: float | None = L_FREQ,
    h_freq: float | None = H_FREQ,
    max_missing: float = MAX_MISSING,
    montage: Any = None,
    anatomy: Any = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> LocalizationResult:
    """Localize the events of a recording with a trained network.

    Parameters
    ----------
    inst : mne.io.Raw | mne.Epochs | mne.Evoked | str | PathLike
        A recording, or a file: anything MNE reads, or DeepSIF's ``data*.mat`` windows
        (field ``data``, T x C or K x T x C, channels in the leadfield's order).
    checkpoint : str | PathLike | tuple
        A checkpoint file (``best.pt``), or ``(model, state)`` from
        :func:`esikit.train.trainer.load_model`.
    events : None | "annotations" | "gfp" | str | PathLike | array of float
        Where the windows go (500 samples centred on each time): the recording's
        annotations, peaks of the global field power, a CSV file of times (column
        ``time``, seconds), or an array of times (s). ``None``: annotations when the
        recording has any (other than ``BAD_``/``EDGE``), else GFP peaks. Epochs and
        windows from a ``.mat`` file are used as they are (centred on t = 0).
    window : float, optional
        One fixed window starting at this time (s) instead of events.
    annotation : str, optional
        Regular expression selecting annotation descriptions (default: all but BAD/EDGE).
    gfp_spacing, gfp_k : float
        GFP peaks: minimum spacing (s) and height in robust SDs above the median.
    max_events : int, optional
        At most this many GFP peaks (the highest).
    l_freq, h_freq : float | None
        Band-pass (Hz) for continuous recordings.
    max_missing : float
        Share of the montage's channels that may be interpolated (0.1).
    montage : Montage | str | list, optional
        Overrides the checkpoint's montage (see
        :func:`esikit.localization.recording.montage_from_spec`).
    anatomy : str | Anatomy, optional
        Overrides the checkpoint's anatomy (region names, centres, cortex).
    batch_size : int
        Windows per forward pass.
    device : str
        Torch device.

    Returns
    -------
    LocalizationResult

    Examples
    --------
    >>> import mne, esikit  # doctest: +SKIP
    >>> raw = mne.io.read_raw_edf("spikes.edf", preload=True)  # doctest: +SKIP
    >>> res = esikit.localize(raw, "checkpoints/demo/best.pt")  # doctest: +SKIP
    >>> res.to_stc(0).plot(subject="fsaverage")  # doctest: +SKIP
    """
    import mne
    import torch

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    model, state = _load(checkpoint, device)
    ckpt_name = str(checkpoint) if not isinstance(checkpoint, tuple) else "model"
    cfg = dict(state.get("config") or {})
    n_ch, n_reg = int(model.n_channels), int(model.n_regions)
    mont: Montage = montage_from_checkpoint(state, ckpt_name, override=montage, n_channels=n_ch)
    timings["load_checkpoint"] = time.perf_counter() - t0
    cpu["load_checkpoint"] = time.process_time() - c0

    t, c = time.perf_counter(), time.process_time()
    source = str(inst) if isinstance(inst, (str, os.PathLike)) else type(inst).__name__
    if isinstance(inst, (str, os.PathLike)):
        inst = read_recording(inst, mont)
        copy = False
    else:
        copy = True
    timings["read"] = time.perf_counter() - t
    cpu["read"] = time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    prepared, match = prepare(inst, mont, l_freq=l_freq, h_freq=h_freq, max_missing=max_missing,
                              source=source, copy=copy)
    timings["preprocess"] = time.perf_counter() - t
    cpu["preprocess"] = time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    sf = float(prepared.info["sfreq"])
    n_skipped = 0
    if isinstance(prepared, (mne.BaseEpochs, mne.Evoked)):
        data = prepared.get_data() if isinstance(prepared, mne.BaseEpochs) else prepared.data[None]
        i0 = int(np.argmin(np.abs(prepared.times))) - WINDOW // 2
        if i0 < 0 or i0 + WINDOW > data.shape[2]:
            raise ValueError(f"{source}: epochs span {prepared.times[0]:.3f}-{prepared.times[-1]:.3f} s "
                             f"({data.shape[2]} samples at {sf:g} Hz); a window of {WINDOW} samples centred "
                             "on t = 0 does not fit")
        windows = data[:, :, i0:i0 + WINDOW].transpose(0, 2, 1).astype(np.float32)
        if isinstance(prepared, mne.BaseEpochs):
            inv = {v: k for k, v in prepared.event_id.items()}
            labels = [inv.get(int(c), str(c)) for c in prepared.events[:, 2]]
            # .mat windows have no clock: window k sits at "time" k; epochs at their event sample
            event_times = (np.arange(len(windows), dtype=float) if source.lower().endswith(".mat")
                           else prepared.events[:, 0] / sf)
        else:
            labels, event_times = [prepared.comment or "evoked"], np.zeros(1)
        event_times = np.asarray(event_times, dtype=float)
        window_starts = event_times + float(prepared.times[i0])
    else:
        data = prepared.get_data()
        if window is not None:
            times, labels, centred = np.array([float(window)]), ["window"], False
        elif events is None or (isinstance(events, str) and events in ("annotations", "gfp")):
            times, labels = events_from_annotations(prepared, annotation)
            if events == "gfp" or (events is None and len(times) == 0):
                times = events_from_gfp(data, sf, min_spacing=gfp_spacing, k=gfp_k, max_events=max_events)
                labels = ["gfp"] * len(times)
                logger.info("%s: %d GFP peaks (spacing %.2f s, k=%.1f)", source, len(times), gfp_spacing, gfp_k)
            centred = True
        elif isinstance(events, (str, os.PathLike)):
            times, labels = events_from_csv(events)
            centred = True
        else:
            times = np.asarray(events, dtype=float).ravel()
            labels, centred = ["event"] * len(times), True
        if len(times) == 0:
            what = (f"no annotations{f' matching {annotation!r}' if annotation else ''}" if events == "annotations"
                    else "no annotations, CSV rows or GFP peaks")
            raise ValueError(f"{source}: no events to localize ({what}; pass events=... or window=...)")
        windows, kept = extract_windows(data, sf, times, centred=centred, source=source)
        n_skipped = len(times) - len(kept)
        if len(kept) == 0:
            raise ValueError(f"{source}: every event's window runs past the recording "
                             f"({len(times)} events, {data.shape[1] / sf:.2f} s recorded)")
        event_times = np.asarray(times, dtype=float)[kept]
        labels = [labels[i] for i in kept]
        window_starts = event_times - (WINDOW // 2) / sf if centred else event_times.copy()
        del data
    timings["windows"] = time.perf_counter() - t
    cpu["windows"] = time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    x = normalize_windows(windows)
    outs = []
    with torch.inference_mode():
        for b in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[b:b + batch_size]).to(device)
            outs.append(model(xb).float().cpu().numpy())
    sources = np.concatenate(outs, axis=0).astype(np.float32)
    timings["network"] = time.perf_counter() - t
    cpu["network"] = time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    active = [active_regions(s, cfg) for s in sources]
    # the peak as the rule sees it: DeepSIF's rule counts only positive output
    score = sources if region_rule(cfg) == "deepsif" else np.abs(sources)
    flat = score.reshape(len(sources), -1).argmax(axis=1)
    peak_t, peak_r = np.unravel_index(flat, sources.shape[1:])
    anat, centres, names = checkpoint_anatomy(cfg, anatomy, n_reg)
    timings["regions"] = time.perf_counter() - t
    cpu["regions"] = time.process_time() - c
    timings["total"] = time.perf_counter() - t0
    cpu["total"] = time.process_time() - c0
    timings.update({f"{k}_cpu": v for k, v in cpu.items()})
    res = LocalizationResult(
        sources=sources, eeg=x, event_times=event_times, window_starts=np.asarray(window_starts, dtype=float),
        labels=list(labels), active=active, peak_region=np.asarray(peak_r, dtype=np.int64),
        peak_time=np.asarray(window_starts, dtype=float) + peak_t / sf, sfreq=sf, ch_names=list(mont.ch_names),
        region_labels=names, centres=centres, anatomy=anat, match=match, n_skipped=n_skipped,
        checkpoint=ckpt_name, prepared=prepared, timings=timings)
    logger.info("%r in %.1f s", res, timings["total"])
    return res


def localize_file(recording: str | PathLike, checkpoint: str | PathLike, out: str | PathLike, *,
                  overwrite: bool = False, max_figures: int = 10, stc: str = "mean",
                  **kwargs: Any) -> tuple[LocalizationResult, Path]:
    """:func:`localize` a file and write every output into the folder ``out`` (see :mod:`.report`).

    The folder is written under a temporary name and renamed at the end, so a killed run
    never leaves a complete-looking output; an existing ``out`` is an error unless
    ``overwrite``.
    """
    from .report import check_output, write_outputs

    check_output(out, overwrite)
    res = localize(recording, checkpoint, **kwargs)
    path = write_outputs(res, out, overwrite=overwrite, max_figures=max_figures, stc=stc,
                         recording=str(recording))
    return res, path

