"""Speed of the Jansen-Rit network integrator: simulated seconds per wall second.

Runs, after a warm-up that compiles the numba kernel:

* the numba kernel on the 76-region tvb-data default and on DeepSIF's 998-node
  connectome (``../shared/deepsif_anatomy/connectivity_998.zip`` when present),
* the numpy reference on both (shorter runs),
* TVB (tvb-library) on the 998-node connectome with DeepSIF's settings, when
  importable, and the numba/TVB speed ratio.

Usage::

    python benchmarks/bench_nmm.py [--duration 10] [--tvb-duration 0.5] [--deepsif-dir DIR]

Default runtime is under 2 minutes on one core (TVB adds ~10-20 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import benchmark_networks
from esikit.head.anatomy import load_default_anatomy
from esikit.simulate.nmm import simulate_network

DEFAULT_DEEPSIF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "deepsif_anatomy"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_esikit(name, weights, tracts, duration_s, backend) -> float:
    """Simulated seconds per wall second."""
    wall = _time(lambda: simulate_network(weights, tracts, 0, duration_s, setting=0, seed=0,
                                          backend=backend, record_every=4, dtype=np.float32))
    rate = duration_s / wall
    print(f"{name:<12} {backend:<6} {weights.shape[0]:>5} nodes  {duration_s:6.2f} s simulated "
          f"in {wall:7.2f} s  -> {rate:8.2f} simulated s / wall s  "
          f"({wall / duration_s * 10:.2f} s per simulated 10 s)")
    return rate


def bench_tvb(weights: np.ndarray, lengths: np.ndarray, duration_s: float) -> float | None:
    """TVB with DeepSIF's generate_tvb_data.py settings; None when tvb-library is missing."""
    from esikit.simulate._tvb import build_tvb_simulator

    try:
        sim = build_tvb_simulator(weights, lengths)
    except ImportError:
        print("tvb          (tvb-library not importable: skipped; pip install tvb-library)")
        return None
    n = weights.shape[0]
    wall = _time(lambda: sim.run(simulation_length=duration_s * 1000.0))
    rate = duration_s / wall
    print(f"{'tvb':<12} {'tvb':<6} {n:>5} nodes  {duration_s:6.2f} s simulated in {wall:7.2f} s  "
          f"-> {rate:8.2f} simulated s / wall s  ({wall / duration_s * 10:.2f} s per simulated 10 s)")
    return rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="simulated seconds for the numba runs")
    parser.add_argument("--numpy-duration", type=float, default=0.5,
                        help="simulated seconds for the numpy reference runs")
    parser.add_argument("--tvb-duration", type=float, default=0.5,
                        help="simulated seconds for the TVB run")
    parser.add_argument("--deepsif-dir", type=Path, default=DEFAULT_DEEPSIF_DIR,
                        help="folder with connectivity_998.zip")
    args, _ = parser.parse_known_args(argv)  # run_all.py may pass options meant for others

    anat = load_default_anatomy()
    nets = benchmark_networks(args.deepsif_dir)

    # warm-up: compile (or load from cache) the numba kernel
    print(f"numba kernel warm-up: {_time(lambda: simulate_network(anat.weights, anat.tract_lengths, 0, 0.01)):.2f} s")
    rates = {}
    for name, w, t in nets:
        rates[(name, "numba")] = bench_esikit(name, w, t, args.duration, "numba")
        rates[(name, "numpy")] = bench_esikit(name, w, t, args.numpy_duration, "numpy")
    for name, _, _ in nets:
        print(f"{name}: numba is {rates[(name, 'numba')] / rates[(name, 'numpy')]:.1f}x the numpy reference")
    big = {name: (w, t) for name, w, t in nets}.get("deepsif998")
    if big is not None:
        tvb_rate = bench_tvb(*big, args.tvb_duration)
        if tvb_rate:
            print(f"deepsif998: numba is {rates[('deepsif998', 'numba')] / tvb_rate:.1f}x TVB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
