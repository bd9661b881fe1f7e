"""DeepSIF-scale data generation: integrator speed, clips per core-hour, Dask scaling.

Measures, in one run (ratios are only meaningful within a run, on the same machine):

1. network-seconds simulated per CPU second and per wall second on one core, on the built-in 76-region
   connectome and on DeepSIF's 998-node one (``../shared/deepsif_anatomy/``), for TVB
   (when tvb-library is installed), the single-variant numba integrator and the batched
   numba integrator at several batch sizes;
2. clips per core-hour of the whole harvest (simulation, clip rules, rescaling, files,
   Dask), one worker;
3. the wall time of the same harvest on 1 and 2 local Dask workers.

Usage::

    python benchmarks/bench_harvest.py [--full] [--out results.json] [--deepsif-dir DIR]

The default run takes a few minutes on 2 cores; ``--full`` runs longer simulations and
larger batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per measurement

import numpy as np  # noqa: E402

from _common import benchmark_networks
from esikit.head.anatomy import load_default_anatomy  # noqa: E402
from esikit.simulate.nmm import JansenRitParams, simulate_batch, simulate_network  # noqa: E402

DEFAULT_DEEPSIF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "deepsif_anatomy"


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rates(fn, network_s: float) -> dict:
    """Network-seconds per wall second and per CPU second (all threads of this process).

    On a shared machine the wall rate depends on the other users; the CPU rate much less,
    so ratios are taken on it.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"wall": network_s / wall, "cpu": network_s / max(cpu, 1e-9)}


def tvb_rate(weights, lengths, duration_s: float) -> dict | None:
    """TVB with DeepSIF's settings (None without tvb-library); configure() is not timed."""
    import warnings

    from esikit.simulate._tvb import build_tvb_simulator

    try:
        sim = build_tvb_simulator(weights, lengths)
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _rates(lambda: sim.run(simulation_length=duration_s * 1000.0), duration_s)


def batched_rate(w, lengths, b, duration_s, backend="numba", **kw) -> dict:
    """Batched integration of ``b`` variants; set-up (initial histories) not timed, as for TVB."""
    from esikit.simulate.nmm import (
        NOISE_BLOCK, BatchIntegrator, draw_initial_history, draw_noise, excited_A, network_structure)

    p = JansenRitParams()
    st = network_structure(w, lengths, p)
    rngs = [np.random.default_rng(i) for i in range(b)]
    hist = np.stack([draw_initial_history(r, st.horizon, st.n_nodes) for r in rngs])
    integ = BatchIntegrator(st, excited_A(st.n_nodes, [i % st.n_nodes for i in range(b)], p), p, hist,
                            backend=backend, **kw)
    del hist
    steps = int(round(duration_s * 2000))

    def run():
        buf = None
        for s0 in range(0, steps, NOISE_BLOCK):
            buf = draw_noise(rngs, min(NOISE_BLOCK, steps - s0), st.n_nodes, out=buf)
            integ.advance(buf, record_every=4)

    return _rates(run, b * duration_s)


def integrator_rates(name, w, lengths, duration_s, batch_sizes, tvb_s) -> dict:
    res = {"network": name, "n_nodes": int(w.shape[0])}
    rate = tvb_rate(w, lengths, tvb_s)
    res["tvb"] = rate
    print(f"[{name}] TVB: " + (f"{rate['cpu']:.4f} network-s per CPU-s ({1 / rate['cpu']:.1f} CPU-s "
                               f"per simulated s), {rate['wall']:.4f} per wall-s"
                               if rate else "not installed (pip install tvb-library)"), flush=True)
    res["single"] = _rates(lambda: simulate_network(w, lengths, 0, duration_s, seed=0, record_every=4,
                                                    dtype=np.float32), duration_s)
    print(f"[{name}] single-variant numba: {res['single']['cpu']:.3f} network-s per CPU-s", flush=True)
    res["batched"] = {}
    for b in batch_sizes:
        res["batched"][b] = batched_rate(w, lengths, b, duration_s)
        print(f"[{name}] batched numba B={b}: {res['batched'][b]['cpu']:.3f} network-s per CPU-s",
              flush=True)
    return res


def harvest_run(anat, regions, settings, k, cap, n_workers, batch_size, chunk_s=2.0,
                warm_cluster=False) -> dict:
    """One harvest in a temporary folder; ``warm_cluster`` times it on already started workers."""
    from esikit.simulate.distributed import harvest_clips

    cluster = None
    kw = {"n_workers": n_workers}
    if warm_cluster:
        import logging

        from distributed import LocalCluster

        from distributed import Client

        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None,
                               silence_logs=logging.ERROR)
        kw = {"scheduler": cluster.scheduler_address}
        probe = Client(cluster)  # CPU time the workers get: the machine may be shared
        cpu0 = probe.run(time.process_time)
    worker_cpu = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rep = harvest_clips(anat, Path(tmp) / "nmm_spikes", k, regions=regions, settings=settings,
                                chunk_s=chunk_s, max_simulated_s=cap, batch_size=batch_size,
                                progress=False, **kw)
            wall = time.perf_counter() - t0
        if cluster is not None:
            cpu1 = probe.run(time.process_time)
            worker_cpu = sum(cpu1[w] - cpu0[w] for w in cpu1)
    finally:
        if cluster is not None:
            probe.close()
            cluster.close()
    return {"wall_s": wall, "n_clips": rep["n_clips"], "simulated_s": rep["simulated_s"],
            "bytes_on_disk": rep["bytes_on_disk"], "workers": n_workers,
            "clips_per_core_hour": rep["n_clips"] / (wall * n_workers / 3600.0),
            "network_s_per_core_s": rep["simulated_s"] / (wall * n_workers),
            "worker_cpu_s": worker_cpu,
            "cores_obtained": None if worker_cpu is None else worker_cpu / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="longer runs, larger batches")
    ap.add_argument("--deepsif-dir", type=Path, default=DEFAULT_DEEPSIF_DIR)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args, _ = ap.parse_known_args(argv)  # run_all.py may pass options meant for others
    full = args.full
    results: dict = {"cores": os.cpu_count(), "full": full}

    anat = load_default_anatomy()
    nets = benchmark_networks(args.deepsif_dir)
    simulate_batch(anat.weights, anat.tract_lengths, [0, 1], 0.01)  # compile / load numba
    simulate_network(anat.weights, anat.tract_lengths, 0, 0.01)

    results["integrator"] = []
    for name, w, t in nets:
        small = w.shape[0] < 200
        duration = (20.0 if small else 4.0) if full else (4.0 if small else 1.0)
        sizes = [1, 8, 16, 32, 64, 128] if full else [1, 8, 16, 32]
        tvb_s = (2.0 if full else 1.0) if small else (2.0 if full else 0.5)
        results["integrator"].append(integrator_rates(name, w, t, duration, sizes, tvb_s))

    # end-to-end harvest: DeepSIF's rules, rescaling and files included
    print("[harvest] 76 regions: 16 regions x 3 settings, K=3, cap 20 s, 1 worker", flush=True)
    results["harvest76"] = harvest_run(anat, list(range(0, 76, 76 // 16))[:16], (0, 1, 2), 3,
                                       60.0 if full else 20.0, 1, 8)
    if len(nets) > 1:
        from esikit.head.anatomy import load_deepsif_anatomy

        a998 = load_deepsif_anatomy(args.deepsif_dir)
        regs = [0, 300, 600, 900][:4 if full else 2]
        print(f"[harvest] 998 nodes: {len(regs)} regions x 1 setting, K=1, cap "
              f"{40 if full else 10} s, 1 worker", flush=True)
        results["harvest998"] = harvest_run(a998, regs, (2,), 1, 40.0 if full else 10.0, 1,
                                            len(regs))
    # Dask scaling: a fixed workload (K never reached: every variant runs to the cap), timed
    # on started workers (the cluster's start-up is not part of the scaling)
    scaling: dict = {1: [], 2: []}
    cores: dict = {1: [], 2: []}
    repeats = 2
    for _ in range(repeats):  # interleaved, best of: the other users of the machine vary
        for n in (1, 2):
            r = harvest_run(anat, list(range(16)), (0, 1), 1000, 40.0 if full else 16.0, n, 4,
                            warm_cluster=True)
            scaling[n].append(r["wall_s"])
            cores[n].append(r["cores_obtained"])
            print(f"[dask] {n} worker(s), started: {r['wall_s']:.1f} s wall for "
                  f"{r['simulated_s']:.0f} network-seconds; the workers got "
                  f"{r['cores_obtained']:.2f} cores on average", flush=True)
    results["dask_scaling"] = {"wall_1": min(scaling[1]), "wall_2": min(scaling[2]),
                               "speedup": min(scaling[1]) / min(scaling[2]), "repeats": repeats,
                               "cores_1": cores[1][int(np.argmin(scaling[1]))],
                               "cores_2": cores[2][int(np.argmin(scaling[2]))]}
    print("\n" + "\n".join(table(results)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


def table(res: dict) -> list[str]:
    """Markdown table of the results, ratios against TVB and the single-variant integrator."""
    lines = ["| network | integrator | network-s per CPU-s | network-s per wall-s | x TVB (CPU) | "
             "x single (CPU) |", "|---|---|---:|---:|---:|---:|"]
    for r in res["integrator"]:
        tvb, single = r["tvb"], r["single"]

        def row(label, rate):
            x_tvb = f"{rate['cpu'] / tvb['cpu']:.0f}" if tvb else "n/a"
            lines.append(f"| {r['network']} ({r['n_nodes']}) | {label} | {rate['cpu']:.3f} | "
                         f"{rate['wall']:.3f} | {x_tvb} | {rate['cpu'] / single['cpu']:.2f} |")

        if tvb:
            row("TVB 2.10 (tvb-library)", tvb)
        row("single-variant numba", single)
        for b, rate in r["batched"].items():
            row(f"batched numba, B={b}", rate)
    for key in ("harvest76", "harvest998"):
        if key in res:
            h = res[key]
            lines.append(f"| {key[7:]} | harvest end to end ({h['workers']} worker) | | "
                         f"{h['network_s_per_core_s']:.3f} | {h['clips_per_core_hour']:.0f} clips "
                         f"per core-hour | {h['n_clips']} clips, {h['bytes_on_disk'] / 1e6:.1f} MB |")
    d = res["dask_scaling"]
    lines.append(f"| 76 | Dask 1 -> 2 workers (best of {d['repeats']}) | | {d['wall_1']:.1f} s -> "
                 f"{d['wall_2']:.1f} s | speed-up {d['speedup']:.2f} | workers got {d['cores_1']:.2f} "
                 f"-> {d['cores_2']:.2f} cores |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
