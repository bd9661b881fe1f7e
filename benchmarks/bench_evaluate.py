"""Speed of the evaluation's baselines and metrics, for 1,000 test samples on one core.

Samples: the tvb-data default head (63 channels x 76 regions), 1-2 sources of 1-5
adjacent regions with spike-shaped time courses (500 samples), white sensor noise at
5-20 dB; all methods see the same EEG. BLAS is limited to one thread and times are CPU
times of this process, so every rate is per core (and holds on a busy machine).

Rows (samples per second; ``x (a)``: ratio to the straightforward route measured in the
same run):

* (a) straightforward: every method through invertmeeg's ``Solver`` one sample at a
  time, the ``mne.Forward`` rebuilt per sample (what a first script would do);
  measured on a subset, the rate is per sample.
* (b) esikit, per method: the minimum-norm family as one cached kernel applied to the
  whole batch (one matrix product), LCMV / Champagne / FlexChampagne through invertmeeg
  with the Forward and solvers built once.
* (c) the metrics of one method on one sample (all rules and threshold-free metrics).
* total: everything the evaluation does for 1,000 samples x every baseline (the
  "1,000 samples" column is the measured rate times 1,000).

Usage::

    python benchmarks/bench_evaluate.py [--samples 200] [--subset 10] [--quick] [--full]

Default: 200 samples (about 3 CPU-minutes); ``--full`` measures on 1,000.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one core, as the rates claim
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from esikit.evaluate.baselines import BASELINES, Baselines, clear_kernel_cache  # noqa: E402
from esikit.evaluate.metrics import evaluate_sample  # noqa: E402
from esikit.head.anatomy import load_default_anatomy  # noqa: E402


def make_samples(anatomy, n: int, n_times: int = 500, seed: int = 0):
    """EEG (n, T, C), sources (n, T, R), patch lists and SNRs of synthetic spike samples."""
    rng = np.random.default_rng(seed)
    G = np.asarray(anatomy.fwd, dtype=np.float64)
    n_ch, n_reg = G.shape
    t = np.arange(n_times)
    eeg = np.empty((n, n_times, n_ch), dtype=np.float32)
    src = np.zeros((n, n_times, n_reg), dtype=np.float32)
    patches, snrs = [], []
    for i in range(n):
        ps = []
        for _ in range(int(rng.integers(1, 3))):
            patch = [int(rng.integers(n_reg))]
            for _ in range(int(rng.integers(0, 5))):
                nb = np.setdiff1d(anatomy.neighbours(patch[int(rng.integers(len(patch)))]), patch)
                if nb.size:
                    patch.append(int(rng.choice(nb)))
            ps.append(np.array(patch))
            wave = np.exp(-0.5 * ((t - rng.integers(150, 350)) / rng.uniform(8, 20)) ** 2)
            src[i][:, patch] += wave[:, None].astype(np.float32)
        x = src[i] @ G.T
        snr = float(rng.choice([5.0, 10.0, 15.0, 20.0]))
        noise = rng.standard_normal(x.shape)
        noise *= np.sqrt(np.mean(x**2) / 10 ** (snr / 10) / np.mean(noise**2))
        y = x + noise
        eeg[i] = y - y.mean(axis=1, keepdims=True)
        patches.append(ps)
        snrs.append(snr)
    return eeg, src, patches, snrs


def straightforward(anatomy, eeg, names):
    """(a): invertmeeg Solver per sample, Forward rebuilt each time. Samples per second per method."""
    import mne
    from invert import Solver

    from esikit.evaluate.adaptive import quiet_solvers, region_forward

    rates = {}
    for name in names:
        t0 = time.process_time()
        for b in range(eeg.shape[0]):
            fwd, info = region_forward(anatomy.fwd, anatomy.centres, anatomy.adjacency)
            with quiet_solvers():
                evoked = mne.EvokedArray(eeg[b].T.astype(np.float64), info, verbose=False)
                solver = Solver(name, verbose=0)
                solver.make_inverse_operator(fwd, evoked, alpha="auto")
                solver.apply_inverse_operator(evoked)
        rates[name] = eeg.shape[0] / (time.process_time() - t0)
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200, help="samples of the esikit rows (200)")
    ap.add_argument("--subset", type=int, default=10, help="samples of the straightforward row (10)")
    ap.add_argument("--quick", action="store_true", help="50 samples, subset 3")
    ap.add_argument("--full", action="store_true", help="1,000 samples, subset 20")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.subset = 50, 3
    if args.full:
        args.samples, args.subset = 1000, 20
    anatomy = load_default_anatomy()
    G = np.asarray(anatomy.fwd, dtype=np.float64)
    t0 = time.process_time()
    eeg, src, patches, snrs = make_samples(anatomy, args.samples)
    print(f"{args.samples} samples, {G.shape[0]} channels x {G.shape[1]} regions, 500 time points "
          f"(made in {time.process_time() - t0:.1f} s); BLAS threads: {os.environ['OMP_NUM_THREADS']}")
    from esikit.evaluate.runner import anatomy_centres

    centres = anatomy_centres(anatomy, G.shape[1])

    # (a) straightforward, on a subset
    ref = straightforward(anatomy, eeg[: args.subset], BASELINES)

    # (b) esikit: build once, batches of 64 as the evaluation runs them
    clear_kernel_cache()
    t0 = time.process_time()
    solvers = Baselines(G, BASELINES, centres=centres, adjacency=anatomy.adjacency)
    setup = time.process_time() - t0
    times = dict.fromkeys(BASELINES, 0.0)
    ests = {}
    for name in BASELINES:
        one = Baselines(G, [name], centres=centres, adjacency=anatomy.adjacency)
        t0 = time.process_time()
        out = [one.estimate(eeg[start:start + 64])[name] for start in range(0, args.samples, 64)]
        times[name] = time.process_time() - t0
        ests[name] = np.concatenate(out)

    # (c) metrics, every method on every sample
    t0 = time.process_time()
    for name in BASELINES:
        for b in range(args.samples):
            evaluate_sample(ests[name][b], src[b], centres, patches[b], eeg=eeg[b], rule="normalized")
    metric_time = time.process_time() - t0
    per_metric = metric_time / (args.samples * len(BASELINES))

    print(f"\nsetup (region Forward and all solvers, once): {setup:.2f} CPU-s\n")
    print("| method | (a) straightforward, samples/s | (b) esikit, samples/s | x (a) | 1,000 samples (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in BASELINES:
        rate = args.samples / times[name]
        print(f"| {name} | {ref[name]:,.1f} | {rate:,.1f} | {rate / ref[name]:,.0f} | {1000 / rate:,.1f} |")
    total_a = sum(1000 / ref[n] for n in BASELINES) + 1000 * len(BASELINES) * per_metric
    total_b = sum(1000 / (args.samples / times[n]) for n in BASELINES) + 1000 * len(BASELINES) * per_metric
    print(f"| metrics (per method and sample) | | {1 / per_metric:,.0f} | | {1000 * per_metric:,.1f} per method |")
    print(f"| total, 1,000 samples x {len(BASELINES)} baselines + metrics | {total_a / 60:,.1f} min | "
          f"{total_b / 60:,.1f} min | {total_a / total_b:,.1f} | {total_b:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
