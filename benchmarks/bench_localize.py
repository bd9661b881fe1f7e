"""Speed of ``esikit localize`` on a 1-hour, 75-channel recording with 200 marked spikes, one CPU core.

The recording is synthetic: DeepSIF's template (``../shared/deepsif_anatomy``: 75-channel
cap and leadfield, 994 regions; tvb-data's 63-channel default when absent), 200 spikes at
random regions with smooth background activity and sensor noise at 15 dB, sampled at
256 Hz (a common clinical rate, so resampling to the network's 500 Hz is included),
written as EDF with one annotation per spike. Timed, with every thread pool limited to
one thread:

* the pipeline (read the EDF, match channels, average reference, 1-40 Hz band-pass,
  resample, cut 200 windows, normalize) and the region rule;
* the network on all 200 windows for a TCN (75 x 994) and DeepSIF's own LSTM network
  (75 x 994, 22 M parameters: measured on ``--deepsif-windows`` windows and extrapolated
  to 200 unless ``--full``);
* writing the outputs without figures (arrays, tables, mean SourceEstimate, report).

Usage::

    python benchmarks/bench_localize.py [--quick | --full] [--deepsif-windows 8] [--keep DIR]

About 2 minutes on an idle core (building the 1-hour EDF takes about half of it).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU core: set before numpy and torch are imported

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from esikit.head.anatomy import load_default_anatomy, load_deepsif_anatomy  # noqa: E402
from esikit.localization import localize  # noqa: E402
from esikit.localization.report import write_outputs  # noqa: E402
from esikit.localization.synthetic import make_spike_recording  # noqa: E402
from esikit.models import build_model  # noqa: E402
from esikit.train.checkpoint import save_checkpoint  # noqa: E402

DEFAULT_DEEPSIF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "deepsif_anatomy"


def _checkpoint(folder: Path, name: str, anat, anat_path: Path) -> Path:
    net = build_model(name, anat.n_channels, anat.n_regions)
    state = {"model_state": net.state_dict(), "model_config": net.get_config(), "epoch": 0,
             "config": {"ANATOMY": str(anat_path)},
             "montage": {"ch_names": list(anat.channel_names), "ch_pos": None, "sfreq": 500.0}}
    return save_checkpoint(state, folder / f"{name}.pt")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deepsif-dir", type=Path, default=DEFAULT_DEEPSIF_DIR)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--spikes", type=int, default=200)
    ap.add_argument("--sfreq", type=float, default=256.0)
    ap.add_argument("--deepsif-windows", type=int, default=8, help="windows timed for DeepSIF's network")
    ap.add_argument("--full", action="store_true", help="DeepSIF's network on all windows")
    ap.add_argument("--keep", type=Path, default=None, help="keep the EDF and outputs in this folder")
    ap.add_argument("--quick", action="store_true", help="6 minutes of recording, 20 spikes")
    args = ap.parse_args(argv)
    if args.quick:
        args.hours, args.spikes = 0.1, 20
    torch.set_num_threads(1)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_localize_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        if (args.deepsif_dir / "leadfield_75_20k.mat").is_file():
            anat = load_deepsif_anatomy(args.deepsif_dir)
        else:
            print(f"({args.deepsif_dir} not found: tvb-data's 63-channel default anatomy instead)")
            anat = load_default_anatomy()
        anat_path = anat.save(folder / "anatomy.npz")
        duration = args.hours * 3600.0
        rng = np.random.default_rng(0)
        times = np.sort(rng.uniform(2.0, duration - 2.0, args.spikes))
        regions = rng.integers(0, anat.n_regions, args.spikes)
        rec = make_spike_recording(anat.fwd, anat.channel_names, regions, times, sfreq=args.sfreq,
                                   duration=duration, snr_db=15.0, background=0.1, path=folder / "spikes.edf",
                                   overwrite=True)
        size_mb = rec.path.stat().st_size / 1e6
        del rec
        print(f"recording: {args.hours:g} h, {anat.n_channels} channels at {args.sfreq:g} Hz, "
              f"{args.spikes} annotated spikes, EDF {size_mb:.0f} MB (built in {time.perf_counter() - t:.0f} s)")

        rows = []
        edf = folder / "spikes.edf"
        write_s = float("nan")
        for name in ("tcn", "deepsif") if args.full else ("tcn",):  # noqa: B007
            ck = _checkpoint(folder, name, anat, anat_path)
            c0, w0 = time.process_time(), time.perf_counter()
            res = localize(edf, ck, events="annotations")
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            rows.append((name, res.n_events, dict(res.timings), cpu, wall, res.timings["network"], ""))
            if name == "tcn":
                w1 = time.perf_counter()
                write_outputs(res, folder / "out_tcn", overwrite=True, max_figures=0, stc="mean", recording=str(edf))
                write_s = time.perf_counter() - w1
            del res
        if not args.full:
            # DeepSIF's network on a few windows, extrapolated to all of them (plus the same pipeline)
            from esikit.train.trainer import load_model

            model, _ = load_model(_checkpoint(folder, "deepsif", anat, anat_path))
            x = torch.randn(args.deepsif_windows, 500, anat.n_channels)
            with torch.inference_mode():
                model(x[:1])
                t, c = time.perf_counter(), time.process_time()
                model(x)
                per = (time.perf_counter() - t) / args.deepsif_windows
                per_cpu = (time.process_time() - c) / args.deepsif_windows
            name, n_win, tm, cpu, wall, net_s, _ = rows[0]
            cpu_net = cpu * net_s / max(wall, 1e-9)  # the TCN's share of CPU, pro rata
            rows.append(("deepsif", n_win, None, cpu - cpu_net + per_cpu * n_win, wall - net_s + per * n_win,
                         per * n_win, f"(network timed on {args.deepsif_windows} windows, extrapolated)"))

        print(f"\n{'network':<10} {'windows':>7} {'read s':>7} {'prep s':>7} {'windows s':>9} {'network s':>9} "
              f"{'regions s':>9} {'wall s':>8} {'CPU s':>7}  CPU < 60 s?")
        for name, n_win, tm, cpu, wall, net_s, note in rows:
            if tm is not None:
                print(f"{name:<10} {n_win:>7} {tm['read']:>7.1f} {tm['preprocess']:>7.1f} {tm['windows']:>9.2f} "
                      f"{net_s:>9.1f} {tm['regions']:>9.2f} {wall:>8.1f} {cpu:>7.1f}  {'yes' if cpu < 60 else 'no'}")
            else:
                print(f"{name:<10} {n_win:>7} {'':>7} {'':>7} {'':>9} {net_s:>9.1f} {'':>9} {wall:>8.1f} "
                      f"{cpu:>7.1f}  {'yes' if cpu < 60 else 'no'} {note}")
        print("(wall times include waiting for the CPU when the machine is shared; CPU s is the one-core cost)")
        tm = rows[0][2]
        print("CPU s per stage (" + rows[0][0] + "): " + ", ".join(
            f"{k[:-4]} {v:.1f}" for k, v in tm.items() if k.endswith("_cpu")))
        print(f"writing the outputs without figures (npz, all_out.mat, CSV, mean stc, report): {write_s:.1f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak:.0f} MB")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
