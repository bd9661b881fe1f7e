"""The end of ``make demo``: localize the spikes of a synthetic EDF recording and compare with the truth."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SFREQ_HZ
from ..head.layout import clip_relpath
from .synthetic import clips_from_folder, make_spike_recording

logger = logging.getLogger(__name__)

__all__ = ["demo_localization"]


def _regions_with_clips(nmm_dir: Path, n_regions: int) -> list[int]:
    return [r for r in range(n_regions) if (nmm_dir / clip_relpath(r, 1)).is_file()]


def demo_localization(checkpoint: str | PathLike, nmm_dir: str | PathLike, out_dir: str | PathLike, *,
                      anatomy: Any = None, n_spikes: int = 8, spacing: float = 3.0, snr_db: float = 15.0,
                      background: float = 0.05, sfreq: float = SFREQ_HZ, seed: int = 0,
                      overwrite: bool = True, show: bool = True,
                      max_figures: int = 3) -> dict[str, Any]:
    """Write an EDF with spikes at known regions, localize it with ``checkpoint``, compare.

    The recording uses the checkpoint's anatomy (its leadfield and channel names, i.e.
    the built-in cap for the demo) and, as spikes, the dataset's own NMM clips (clip 1 of
    ``n_spikes`` randomly chosen regions that have clips), with smooth background
    activity in every region and sensor noise at ``snr_db``.

    Parameters
    ----------
    checkpoint : str | PathLike
        The trained network (``best.pt``).
    nmm_dir : str | PathLike
        The dataset's ``nmm_spikes`` folder.
    out_dir : str | PathLike
        Receives ``spikes.edf`` and the localization folder ``localization/``.
    anatomy : Anatomy | str, optional
        Default: the checkpoint's.
    n_spikes, spacing : int, float
        Number of spikes and seconds between them.
    show : bool
        Print the comparison table.
    max_figures : int
        Events that get figures in the report.

    Returns
    -------
    dict
        ``rows`` (one per spike: time, true and found region, distance in mm, whether the
        true region is among the active ones), ``median_distance_mm``, ``n_exact``,
        ``n_true_active``, ``edf`` and ``out`` paths.
    """
    from ..train.trainer import load_model
    from .run import checkpoint_anatomy, localize
    from .report import write_outputs

    out_dir = Path(out_dir)
    model, state = load_model(checkpoint)
    anat, centres, names = checkpoint_anatomy(dict(state.get("config") or {}), anatomy, int(model.n_regions))
    if anat is None:
        raise ValueError(f"{checkpoint}: no anatomy found (config ANATOMY); pass anatomy=")
    nmm_dir = Path(nmm_dir)
    have = _regions_with_clips(nmm_dir, anat.n_regions)
    if not have:
        raise FileNotFoundError(f"{nmm_dir}: no clips (a{{r}}/nmm_1.mat) to build spikes from")
    rng = np.random.default_rng(seed)
    regions = rng.choice(have, size=min(n_spikes, len(have)), replace=False)
    times = spacing * (1 + np.arange(len(regions)))
    # the cap's names as the network knows them (the leadfield file's), else the anatomy's
    known = (state.get("montage") or {}).get("ch_names")
    ch_names = list(known) if known and len(known) == anat.n_channels else list(anat.channel_names)
    rec = make_spike_recording(anat.fwd, ch_names, regions, times, sfreq=sfreq,
                               duration=float(times[-1] + spacing), clips=clips_from_folder(nmm_dir, regions),
                               background=background, snr_db=snr_db, seed=seed, path=out_dir / "spikes.edf",
                               overwrite=overwrite)
    # a checkpoint from before montages were recorded: the anatomy's channel names are its inputs
    montage = None if (state.get("montage") or {}).get("ch_names") else list(anat.channel_names)
    res = localize(rec.path, (model, state), montage=montage, anatomy=anat, events="annotations")
    path = write_outputs(res, out_dir / "localization", overwrite=overwrite, recording=str(rec.path),
                         max_figures=max_figures)
    rows = []
    for k, t in enumerate(res.event_times):
        j = int(np.argmin(np.abs(rec.times - t)))
        true_r, found = int(rec.regions[j]), int(res.peak_region[k])
        dist = float(np.linalg.norm(centres[true_r] - centres[found])) if centres is not None else float("nan")
        rows.append({"time_s": float(t), "true": true_r, "true_name": names[true_r], "found": found,
                     "found_name": names[found], "distance_mm": dist,
                     "true_active": bool(true_r in set(res.active[k].tolist())),
                     "n_active": int(len(res.active[k]))})
    d = np.array([r["distance_mm"] for r in rows])
    summary = {"rows": rows, "median_distance_mm": float(np.median(d)) if len(d) else float("nan"),
               "n_exact": int(sum(r["true"] == r["found"] for r in rows)),
               "n_true_active": int(sum(r["true_active"] for r in rows)), "edf": rec.path, "out": path}
    if show:
        print(f"\nlocalizing {len(rows)} spikes of {rec.path} (esikit localize) ...")
        print(f"{'time (s)':>8}  {'spike in':<28} {'peak found in':<28} {'distance (mm)':>13}  true region active")
        for r in rows:
            print(f"{r['time_s']:8.2f}  {r['true_name'][:28]:<28} {r['found_name'][:28]:<28} "
                  f"{r['distance_mm']:13.1f}  {'yes' if r['true_active'] else 'no'} ({r['n_active']} active)")
        print(f"peak region exact for {summary['n_exact']} of {len(rows)} spikes, median distance "
              f"{summary['median_distance_mm']:.1f} mm; true region among the active ones for "
              f"{summary['n_true_active']} of {len(rows)}; report: {path / 'report.html'}")
    return summary
