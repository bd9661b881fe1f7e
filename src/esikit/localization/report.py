"""Writing a localization: arrays, tables, a SourceEstimate, figures and one HTML report.

Layout of the output folder::

    sources.npz          all windows: sources (K, T, R), eeg (K, T, C), times, peaks, active mask
    all_out.mat          DeepSIF's layout: all_out (K, T, R)
    events.csv           one row per event: time, peak region (id, name, centre), active regions
    regions.csv          how often each region is active across events
    summary.json         everything above as JSON, plus channel matching and timings
    stc/                 mne.SourceEstimate on the cortex (event average, or every event)
    figures/             event_XXX_cortex.png, event_XXX_eeg.png, region_frequency.png
    report.html          mne.Report with all of it

The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from os import PathLike
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._validation import check_option  # noqa: E402
from ..evaluate.plots import save_figure  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["check_output", "plot_eeg_window", "plot_region_frequency", "write_outputs"]

STC_CHOICES = ("mean", "all", "none")


def check_output(out: str | PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; returns the path."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an old one with two renames."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def plot_eeg_window(prepared: Any, start_s: float, n_times: int, path: Path, title: str,
                    context_s: float = 1.5) -> Path:
    """EEG butterfly plot (all channels, average reference) with the analysed window shaded."""
    sf = float(prepared.info["sfreq"])
    dur = n_times / sf
    t0 = max(0.0, start_s - context_s)
    t1 = min(float(prepared.times[-1]), start_s + dur + context_s)
    a, b = int(round(t0 * sf)), int(round(t1 * sf)) + 1
    data = prepared.get_data(start=a, stop=b) * 1e6  # V -> uV
    times = np.arange(a, a + data.shape[1]) / sf
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(times, data.T, lw=0.5, color="k", alpha=0.5)
    ax.plot(times, data.std(axis=0), lw=1.2, color="C3", label="GFP")
    ax.axvspan(start_s, start_s + dur, color="C0", alpha=0.15, label="window")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("uV")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_region_frequency(counts: np.ndarray, names: list[str], n_events: int, path: Path, top: int = 20) -> Path:
    """Bar chart: share of events in which each region is active (most frequent first)."""
    order = np.argsort(-counts, kind="stable")[:top]
    order = order[counts[order] > 0]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(order), 3) + 1))
    ax.barh(np.arange(len(order)), counts[order] / max(n_events, 1), color="C3")
    ax.set_yticks(np.arange(len(order)), [f"{names[r]} ({r})" for r in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"fraction of {n_events} events active")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)


def _write_arrays(res: Any, tmp: Path) -> None:
    from ..io import fits_in_mat_v5, save_mat_file

    mask = np.zeros((res.n_events, res.n_regions), dtype=bool)
    for k, a in enumerate(res.active):
        mask[k, a] = True
    # uncompressed: network outputs hardly compress and zlib would dominate the run time
    np.savez(
        tmp / "sources.npz", sources=res.sources, eeg=res.eeg, event_times=res.event_times,
        window_starts=res.window_starts, labels=np.array(res.labels, dtype=str), active=mask,
        peak_region=res.peak_region, peak_time=res.peak_time, sfreq=np.array(res.sfreq),
        ch_names=np.array(res.ch_names, dtype=str), region_labels=np.array(res.region_labels, dtype=str))
    mat = {"all_out": res.sources}
    save_mat_file(tmp / "all_out.mat", mat, format="v5" if fits_in_mat_v5(mat) else "v7.3", do_compression=False)


def _write_tables(res: Any, summary: dict[str, Any], tmp: Path) -> None:
    with open(tmp / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "time_s", "window_start_s", "peak_region", "peak_region_name",
                    "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_time_s", "n_active", "active_regions"])
        for e in summary["events"]:
            c = e["peak_region_centre_mm"] or ["", "", ""]
            w.writerow([e["index"], e["label"], f"{e['time_s']:.4f}", f"{e['window_start_s']:.4f}",
                        e["peak_region"], e["peak_region_name"], *[f"{v:.1f}" if v != "" else "" for v in c],
                        f"{e['peak_time_s']:.4f}", len(e["active_regions"]),
                        " ".join(map(str, e["active_regions"]))])
    with open(tmp / "regions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["region", "name", "n_active", "fraction", "x_mm", "y_mm", "z_mm"])
        for r in summary["regions"]:
            c = r["centre_mm"] or ["", "", ""]
            w.writerow([r["region"], r["name"], r["n_active"], f"{r['fraction']:.3f}",
                        *[f"{v:.1f}" if v != "" else "" for v in c]])
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))


def _write_stc(res: Any, tmp: Path, stc: str) -> list[Path]:
    if stc == "none":
        return []
    if res.anatomy is None or getattr(res.anatomy, "vertices", None) is None:
        logger.warning("no cortex mesh in the anatomy: no SourceEstimate written")
        return []
    folder = tmp / "stc"
    folder.mkdir()
    written = []
    for k in ([None] if stc == "mean" else range(res.n_events)):
        name = "mean" if k is None else f"event_{k:03d}"
        res.to_stc(k).save(folder / name, ftype="stc", overwrite=True, verbose="error")
        written.append(folder / f"{name}-lh.stc")
    return written


def _write_figures(res: Any, tmp: Path, max_figures: int) -> list[tuple[str, Path]]:
    from ..evaluate.plots import plot_cortex_activity

    folder = tmp / "figures"
    folder.mkdir()
    figs: list[tuple[str, Path]] = []
    anat = res.anatomy
    for k in range(min(res.n_events, max_figures)):
        est = res.sources[k]
        r = int(res.peak_region[k])
        ti = int(round((res.peak_time[k] - res.window_starts[k]) * res.sfreq))
        title = (f"event {k} ({res.labels[k]}, {res.event_times[k]:.2f} s): peak {res.region_labels[r]} "
                 f"at {res.peak_time[k]:.3f} s, {len(res.active[k])} active")
        if anat is not None or res.centres is not None:
            p = plot_cortex_activity(
                getattr(anat, "vertices", None), getattr(anat, "triangles", None),
                getattr(anat, "vertex_region", None), est[ti], np.abs(est).max(axis=0),
                folder / f"event_{k:03d}_cortex.png", centres=res.centres,
                titles=(f"at peak {res.peak_time[k]:.3f} s", "max |output| in window"))
            figs.append((f"Event {k}: cortex - {title}", p))
        if res.prepared is not None and hasattr(res.prepared, "first_samp"):
            p = plot_eeg_window(res.prepared, float(res.window_starts[k]), res.sources.shape[1],
                                folder / f"event_{k:03d}_eeg.png", title)
            figs.append((f"Event {k}: EEG", p))
    if res.n_events:
        p = plot_region_frequency(res.activation_counts(), res.region_labels, res.n_events,
                                  folder / "region_frequency.png")
        figs.insert(0, ("Active regions across events", p))
    return figs


def _html_summary(summary: dict[str, Any], recording: str) -> str:
    ch = summary["channels"]
    rows = "".join(
        f"<tr><td>{e['index']}</td><td>{e['label']}</td><td>{e['time_s']:.3f}</td>"
        f"<td>{e['peak_region_name']} ({e['peak_region']})</td><td>{e['peak_time_s']:.3f}</td>"
        f"<td>{', '.join(e['active_region_names'][:8])}{' ...' if len(e['active_regions']) > 8 else ''}</td></tr>"
        for e in summary["events"][:500])
    regs = "".join(f"<tr><td>{r['name']} ({r['region']})</td><td>{r['n_active']}</td><td>{r['fraction']:.2f}</td></tr>"
                   for r in summary["regions"][:30])
    return (f"<p>Recording <code>{recording}</code>, checkpoint <code>{summary['checkpoint']}</code>: "
            f"{summary['n_events']} events localized, {summary['n_skipped']} skipped (window past the "
            f"recording). Channels: {ch['n']}; interpolated: {', '.join(ch['interpolated']) or 'none'}; "
            f"dropped: {', '.join(ch['dropped']) or 'none'}.</p>"
            f"<h4>Regions most often active</h4><table><tr><th>region</th><th>events</th><th>fraction</th></tr>"
            f"{regs}</table><h4>Events</h4><table><tr><th>#</th><th>label</th><th>time (s)</th>"
            f"<th>peak region</th><th>peak time (s)</th><th>active regions</th></tr>{rows}</table>")


def write_outputs(res: Any, out: str | PathLike, *, overwrite: bool = False, max_figures: int = 10,
                  stc: str = "mean", recording: str = "") -> Path:
    """Write a :class:`~esikit.localization.run.LocalizationResult` into the folder ``out``.

    Parameters
    ----------
    res : LocalizationResult
    out : str | PathLike
        Output folder; must not exist unless ``overwrite``.
    max_figures : int
        Events that get figures (the first ones; figures cost about a second each).
    stc : {"mean", "all", "none"}
        SourceEstimates to write: the event average, one per event (about 40 MB each on a
        20k-vertex cortex), or none.
    recording : str
        Shown in the report.

    Returns
    -------
    Path
        The output folder.
    """
    import mne

    check_option("stc", stc, STC_CHOICES)
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        summary = res.summary()
        summary["recording"] = recording
        _write_arrays(res, tmp)
        _write_tables(res, summary, tmp)
        stcs = _write_stc(res, tmp, stc)
        figs = _write_figures(res, tmp, max_figures)
        report = mne.Report(title=f"esikit localization: {Path(recording).name or 'recording'}", verbose="error")
        report.add_html(_html_summary(summary, recording), title="Summary")
        for title, p in figs:
            report.add_image(p, title=title)
        if stcs:
            report.add_html("<p>SourceEstimates (read with <code>mne.read_source_estimate</code>): "
                            + ", ".join(f"<code>{p.relative_to(tmp)}</code>" for p in stcs[:20])
                            + (" ..." if len(stcs) > 20 else "") + "</p>", title="Source estimates")
        report.save(tmp / "report.html", open_browser=False, overwrite=True, verbose="error")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("localization written to %s", out)
    return out
