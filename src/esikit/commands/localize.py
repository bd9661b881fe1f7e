"""``esikit localize`` and ``esikit noise-bank`` sub-commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..localization.preprocess import H_FREQ, L_FREQ
from ..localization.recording import MAX_MISSING


def _freq(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "") else float(text)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--l-freq", type=_freq, default=L_FREQ, help=f"band-pass low edge, Hz ('none': open; {L_FREQ})")
    p.add_argument("--h-freq", type=_freq, default=H_FREQ, help=f"band-pass high edge, Hz ('none': open; {H_FREQ})")
    p.add_argument("--max-missing", type=float, default=MAX_MISSING,
                   help=f"share of channels that may be missing and interpolated ({MAX_MISSING})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def add_parsers(sub) -> None:
    """Register the two sub-commands on an ``argparse`` sub-parser collection."""
    p = sub.add_parser("localize", help="localize the events of a recording with a trained network",
                       description="Localize spikes/events of a recording (EDF, BDF, BrainVision, EEGLAB, FIF, "
                                   "DeepSIF data*.mat windows) with a checkpoint; writes arrays, tables, a "
                                   "SourceEstimate, figures and report.html.")
    p.add_argument("recording", help="recording file")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (best.pt)")
    p.add_argument("--out", default=None, help="output folder (default: <recording>_localization)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--events", default=None,
                   help="'annotations', 'gfp', or a CSV of times (column 'time', seconds); default: annotations "
                        "if any, else GFP peaks")
    g.add_argument("--window", type=float, default=None, help="one fixed window starting at this time (s)")
    p.add_argument("--annotation", default=None, help="regular expression selecting annotation descriptions")
    p.add_argument("--gfp-spacing", type=float, default=1.0, help="GFP peaks: minimum spacing, s (1.0)")
    p.add_argument("--gfp-k", type=float, default=5.0, help="GFP peaks: robust SDs above the median (5)")
    p.add_argument("--max-events", type=int, default=None, help="GFP peaks: keep the N highest")
    p.add_argument("--montage", default=None,
                   help="channels when the checkpoint has none: a leadfield file with ch_names, or "
                        "NAME:CH1,CH2,... (MNE montage name, channels in the leadfield's order)")
    p.add_argument("--anatomy", default=None, help="anatomy for region names, centres and cortex (default: the checkpoint's)")
    p.add_argument("--stc", choices=("mean", "all", "none"), default="mean",
                   help="SourceEstimates to write: event average (default), every event, none")
    p.add_argument("--max-figures", type=int, default=10, help="events that get figures (10)")
    _add_common(p)
    p.set_defaults(func=run_localize)

    p = sub.add_parser("noise-bank", help="cut spike-free segments of a recording into DeepSIF's realistic_noise.mat",
                       description="Cut spike-free 500-sample segments from a recording, channels matched by name "
                                   "to a leadfield's, written in DeepSIF's realistic_noise.mat layout "
                                   "(data K x T x C, npower, ch_names).")
    p.add_argument("recording", help="recording file (continuous)")
    p.add_argument("out", help="output .mat file")
    p.add_argument("--forward", required=True,
                   help="leadfield file with ch_names (or NAME:CH1,CH2,... as for localize --montage)")
    p.add_argument("--sfreq", type=float, default=None, help="output rate, Hz (default: the leadfield's, else 500)")
    p.add_argument("--k", type=float, default=4.0, help="reject windows whose GFP peak exceeds median + k robust SDs (4)")
    p.add_argument("--event-margin", type=float, default=1.0, help="seconds kept clear around annotations (1.0)")
    p.add_argument("--max-segments", type=int, default=None, help="keep at most N segments (lowest GFP)")
    _add_common(p)
    p.set_defaults(func=run_noise_bank)


def run_localize(args: argparse.Namespace) -> int:
    from ..localization.run import localize_file

    out = Path(args.out) if args.out else Path(args.recording).with_name(Path(args.recording).stem + "_localization")
    t0 = time.perf_counter()
    try:
        res, path = localize_file(
            args.recording, args.checkpoint, out, overwrite=args.overwrite, max_figures=args.max_figures,
            stc=args.stc, events=args.events, window=args.window, annotation=args.annotation,
            gfp_spacing=args.gfp_spacing, gfp_k=args.gfp_k, max_events=args.max_events, l_freq=args.l_freq,
            h_freq=args.h_freq, max_missing=args.max_missing, montage=args.montage, anatomy=args.anatomy)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = res.activation_counts()
    top = [r for r in counts.argsort()[::-1][:5] if counts[r] > 0]
    print(f"{res.n_events} events localized ({res.n_skipped} skipped) in {time.perf_counter() - t0:.1f} s; "
          f"results in {path}")
    if res.match is not None and (res.match.missing or res.match.extra):
        print(f"  channels interpolated: {', '.join(res.match.missing) or 'none'}; "
              f"dropped: {', '.join(res.match.extra) or 'none'}")
    for r in top:
        print(f"  {res.region_labels[r]} ({r}): active in {counts[r]} of {res.n_events} events")
    return 0


def run_noise_bank(args: argparse.Namespace) -> int:
    from ..localization.noise_bank import make_noise_bank, write_noise_bank

    try:
        if Path(args.out).exists() and not args.overwrite:
            raise FileExistsError(f"{args.out}: already exists; pass --overwrite to replace it")
        bank = make_noise_bank(args.recording, args.forward, sfreq=args.sfreq, k=args.k,
                               event_margin=args.event_margin, max_segments=args.max_segments,
                               l_freq=args.l_freq, h_freq=args.h_freq, max_missing=args.max_missing)
        path = write_noise_bank(bank, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    k, t, c = bank.data.shape
    print(f"{k} noise segments of {t} samples x {c} channels at {bank.sfreq:g} Hz written to {path} "
          f"(rejected: {bank.rejected})")
    return 0
