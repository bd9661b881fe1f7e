"""Ground truth on real EEG: spikes of known regions added to recorded resting EEG, localized end to end.

DeepSIF's ``realistic_noise.mat`` (``../shared/deepsif_anatomy``) holds 4 recorded resting
segments of 500 samples (1 s at 500 Hz) on DeepSIF's 75-channel cap (``electrode_75.mat``,
10-05 names). They are split: segments ``--bank-segments`` (default 0, 1) become the noise
bank of ``NOISE = "mixed"`` training (``bank``), the others (2, 3) the background of the
test recording (``run``), so no network has seen the test background.

Steps::

    # 1. a leadfield for the 75 names on the built-in anatomy (esikit forward)
    esikit forward data/default/anatomy/leadfield_75_76.mat --anatomy default \\
        --montage ../shared/deepsif_anatomy/electrode_75.mat --ico 3
    # 2. the noise bank from the bank segments (esikit noise-bank's code)
    python benchmarks/ground_truth_real_eeg.py bank data/default/noise_bank_75.mat \\
        --forward data/default/anatomy/leadfield_75_76.mat
    # 3. two networks (white and mixed noise), e.g. 3 epochs each
    python train.py FWD_MATRIX_PATH=data/default/anatomy/leadfield_75_76.mat NOISE=white NUM_EPOCHS=3 RUN_NAME=gt_white
    python train.py FWD_MATRIX_PATH=... NOISE=mixed NOISE_BANK_PATH=data/default/noise_bank_75.mat ... RUN_NAME=gt_mixed
    # 4. the test recording (EDF), esikit localize with each network, scores and baselines
    python benchmarks/ground_truth_real_eeg.py run --forward data/default/anatomy/leadfield_75_76.mat \\
        --nmm-dir data/default/source/nmm_spikes --checkpoint white=checkpoints/gt_white/best.pt \\
        --checkpoint mixed=checkpoints/gt_mixed/best.pt --out results/ground_truth

``run`` prints (and writes to ``OUT/table.md``) one row per method and SNR: the median
peak localization error, the share of events whose peak region is the spiking one, the
region rule's localization error, precision and recall (:mod:`esikit.localization.groundtruth`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from esikit.evaluate import BASELINES
from esikit.io import load_forward_model
from esikit.localization.groundtruth import (
    evaluate_ground_truth,
    load_resting_segments,
    make_ground_truth_recording,
    resting_background,
    snr_table_markdown,
)
from esikit.localization.synthetic import clips_from_folder, spike_raw

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "deepsif_anatomy"


def _forward(path: str):
    fm = load_forward_model(path)
    if fm.ch_names is None:
        sys.exit(f"{path}: no ch_names (make it with esikit forward, or add them with --attach)")
    return fm


def cmd_bank(args) -> None:
    from esikit.localization.noise_bank import make_noise_bank, write_noise_bank

    segs = load_resting_segments(args.noise)
    fm = _forward(args.forward)
    # each bank segment forward and time-reversed: a continuous recording cut back into 500-sample windows
    order = [s for s in args.bank_segments for _ in range(2)]
    eeg, _ = resting_background(segs, order)
    raw, _ = spike_raw(eeg, fm.ch_names, [], sfreq=args.sfreq)
    # DeepSIF's segments are spike-free already: no GFP rejection (on 4 windows its robust threshold is noise)
    bank = make_noise_bank(raw, args.forward, k=1e9)
    path = write_noise_bank(bank, args.out, overwrite=True)
    print(f"wrote {path}: {bank.data.shape[0]} segments of {bank.data.shape[1]} samples x {bank.data.shape[2]} "
          f"channels from realistic_noise.mat segments {args.bank_segments} (rejected {bank.rejected})")


def cmd_run(args) -> None:
    from esikit.train.trainer import load_model

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segs = load_resting_segments(args.noise)
    test_segs = [s for s in range(len(segs)) if s not in set(args.bank_segments)]
    fm = _forward(args.forward)
    rng = np.random.default_rng(args.seed)
    nmm = Path(args.nmm_dir)
    have = [r for r in range(fm.fwd.shape[1]) if (nmm / f"a{r}" / "nmm_1.mat").is_file()]
    regions = np.sort(rng.choice(have, size=min(args.n_regions, len(have)), replace=False))
    # the same regions and backgrounds at every SNR: only the SNR changes between levels
    ev_regions = np.tile(regions, len(args.snr))
    ev_snr = np.repeat(np.asarray(args.snr, dtype=float), len(regions))
    truth = make_ground_truth_recording(fm.fwd, fm.ch_names, segs, ev_regions, ev_snr,
                                        clips=clips_from_folder(nmm, regions), use_segments=test_segs,
                                        sfreq=args.sfreq, ch_pos=fm.ch_pos, path=out / "spikes_real_eeg.edf",
                                        overwrite=True)
    print(f"{truth.path}: {len(ev_regions)} spikes ({len(regions)} regions x SNR {args.snr} dB) on resting "
          f"segments {test_segs}, measured SNR {truth.snr_measured_db.min():.2f}-{truth.snr_measured_db.max():.2f} dB")
    records, labels = [], {}
    for i, spec in enumerate(args.checkpoint):
        name, _, ckpt = spec.partition("=")
        loaded = load_model(ckpt)
        t = time.perf_counter()
        recs, res = evaluate_ground_truth(truth, loaded, fwd=fm.fwd, baselines=args.baselines if i == 0 else (),
                                          out=out / f"localize_{name}", overwrite=True, model_name=name)
        print(f"{name}: esikit localize + scores in {time.perf_counter() - t:.1f} s ({res.n_events} events, "
              f"epochs trained: {loaded[1].get('epoch')})")
        records += recs
        labels[name] = f"network ({name})"
    table = snr_table_markdown(records, label=labels)
    print(table)
    (out / "table.md").write_text(table + "\n")
    clean = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in records]
    (out / "records.json").write_text(json.dumps(clean, default=float, indent=0))
    print(f"done in {time.perf_counter() - t0:.0f} s; {out / 'table.md'}, {out / 'records.json'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("bank", "run"):
        s = sub.add_parser(name)
        s.add_argument("--noise", default=str(SHARED / "realistic_noise.mat"), help="resting segments (K x L x C)")
        s.add_argument("--forward", required=True, help="leadfield with ch_names (esikit forward)")
        s.add_argument("--bank-segments", type=int, nargs="+", default=[0, 1])
        s.add_argument("--sfreq", type=float, default=500.0)
    sub.choices["bank"].add_argument("out")
    r = sub.choices["run"]
    r.add_argument("--nmm-dir", required=True)
    r.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH, repeatable")
    r.add_argument("--out", required=True)
    r.add_argument("--snr", type=float, nargs="+", default=[5.0, 10.0, 15.0, 20.0])
    r.add_argument("--n-regions", type=int, default=20)
    r.add_argument("--baselines", nargs="*", default=list(BASELINES))
    r.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"bank": cmd_bank, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
