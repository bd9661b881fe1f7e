"""Speed and memory of the metadata data path: does the loader keep up with training?

On the real 75 x 994 DeepSIF forward matrix, clips of 500 x 994 (compressed ``.mat``
files, and the same clips in one HDF5 file as DeepSIF keeps them), metadata with 2
sources and patches of 1 to 70 regions, it measures samples per second of:

(a) the straightforward per-sample algorithm reading each clip from its ``.mat`` file
    (``synthesis='reference'``, no clip cache);
(b) the same reading clips from one HDF5 file, as DeepSIF does;
(c) this project in one process, sample by sample (``dataset[i]``);
(d) this project with 2 DataLoader workers (batches of 32; and with the compact target);
(e) batched synthesis in one process (DataLoader, batches of 32, dense target; and
    with the compact target);
(f) the dynamic mode (configurations drawn on the fly, patches grown on a ring of the
    994 regions), batches of 32 in one process, by the reference function and (f') by
    the fast kernel;

and the dense write limit: zero-filling the same output arrays (500 x 994 target plus
500 x 75 EEG per sample, float32). Then ratios to (a), (b) and the limit, the memory
(RSS, PSS, USS) of the main process and of each worker, the start-up time and memory of
a dataset over a 190,656-sample metadata file, and the data-wait fraction of CPU
training with the default settings (what TensorBoard shows as ``data/wait_fraction``).

Usage::

    python benchmarks/bench_loader.py [--seconds 4] [--data-dir DIR] [--quick]

The data (about 0.9 GB: clips, HDF5 file, metadata) is made once in ``--data-dir``
(default ``$ESIKIT_BENCH_DIR`` or ``~/.cache/esikit/bench_loader``) and reused.
Run it with BLAS and torch on one thread per process for the one-core numbers (the
script sets ``OMP_NUM_THREADS=1`` etc. for itself when they are not set).
"""

from __future__ import annotations

import os

_ORIGINAL_ENV = dict(os.environ)  # the training run uses the user's threading, not ours
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FWD = REPO.parent / "shared" / "deepsif_anatomy" / "leadfield_75_20k.mat"
N_BIG = 190_656
N_SMALL = 8_192
T, P_MAX, S = 500, 70, 2


# -- data ----------------------------------------------------------------------------------------


def _metadata(n: int, clip_regions: np.ndarray, clips_per_region: int, n_regions: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """DeepSIF-layout metadata: 2 source slots (30 % one source), patches of 1 to 70 regions."""
    pad = 15213.0
    offsets = [0]
    d = 1
    while len(offsets) < P_MAX:
        offsets += [d, -d]
        d += 1
    offsets = np.asarray(offsets[:P_MAX])
    centres = np.stack([rng.choice(clip_regions, size=n), rng.choice(clip_regions, size=n)], axis=1)
    two = rng.random(n) >= 0.3
    sizes = rng.integers(1, P_MAX + 1, size=(n, S))
    sel = (centres[:, :, None] + offsets[None, None, :]) % n_regions
    pos = np.arange(P_MAX)[None, None, :]
    used = (pos < sizes[:, :, None]) & np.stack([np.ones(n, bool), two], axis=1)[:, :, None]
    mag = np.exp(-0.5 * (pos / 12.0) ** 2) * np.ones((n, S, 1))
    k = rng.integers(1, clips_per_region + 1, size=(n, S))
    region_index = np.searchsorted(clip_regions, centres)
    return {
        "selected_region": np.where(used, sel, pad).astype(np.float64),
        "mag_change": np.where(used, mag, pad),
        "random_samples": np.where(used[:, :, 0], k, 0).astype(np.float64),
        # Index into the HDF5 file (clips sorted by region, then k), DeepSIF's h5 indexing.
        "nmm_idx": np.where(used[:, :, 0], region_index * clips_per_region + (k - 1), 0).astype(np.float64),
        "scale_ratio": rng.uniform(0.5, 3.0, size=(n, S, 3)),
        "current_snr": rng.choice([5.0, 10.0, 15.0, 20.0], size=(n, 1)),
    }


def prepare_data(root: Path, fwd_path: Path, n_clip_regions: int, clips_per_region: int) -> dict[str, object]:
    """Make (once) the clips, HDF5 file and metadata files of the benchmark."""
    import h5py

    from esikit.data.toy import toy_clip
    from esikit.io import load_forward_matrix, save_mat_file

    fwd = np.asarray(load_forward_matrix(fwd_path), dtype=np.float64)
    n_regions = fwd.shape[1]
    stamp = root / "prepared.json"
    want = {"fwd": str(fwd_path), "n_clip_regions": n_clip_regions, "clips_per_region": clips_per_region,
            "n_big": N_BIG, "version": 1}
    clip_regions = np.unique(np.linspace(0, n_regions - 1, n_clip_regions).astype(np.int64))
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return {"root": root, "fwd": fwd, "made_s": None}
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    spikes = root / "nmm_spikes"
    clips = []
    print(f"making {clip_regions.size * clips_per_region} clips of {T} x {n_regions} in {spikes} ...", flush=True)
    for r in clip_regions:
        (spikes / f"a{r}").mkdir(parents=True, exist_ok=True)
        for k in range(1, clips_per_region + 1):
            clip = toy_clip(rng, T, n_regions, int(r))
            save_mat_file(spikes / f"a{r}" / f"nmm_{k}.mat", {"data": clip})  # compressed MAT v5
            clips.append(clip)
    with h5py.File(root / "bench_nmm.h5", "w") as f:
        f.create_dataset("data", data=np.stack(clips))
    for name, n in (("small", N_SMALL), ("big", N_BIG)):
        print(f"writing {n}-sample metadata ...", flush=True)
        meta = _metadata(n, clip_regions, clips_per_region, n_regions, np.random.default_rng(1))
        save_mat_file(root / f"{name}_sample_source.mat", meta)
    stamp.write_text(json.dumps(want))
    return {"root": root, "fwd": fwd, "made_s": time.perf_counter() - t0}


# -- measuring -------------------------------------------------------------------------------------


def _rate(step, seconds: float, min_calls: int = 3, pids: tuple[int, ...] = ()) -> dict[str, float]:
    """Samples per second of ``step()`` (which returns how many samples it made).

    ``wall``: per wall-clock second; ``cpu``: per CPU second of this process plus
    ``pids`` (the one-core figure: other users of a shared machine do not count).
    """
    import psutil

    procs = [psutil.Process()] + [psutil.Process(p) for p in pids]

    def cpu() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

    step()  # warm-up (compilation, page faults, worker start-up)
    n, calls, t0, c0 = 0, 0, time.perf_counter(), cpu()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        n += step()
        calls += 1
    wall, used = time.perf_counter() - t0, cpu() - c0
    return {"wall": n / wall, "cpu": n / max(used, 1e-9)}


def _mem(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {k: getattr(info, k) / 2**20 for k in ("rss", "pss", "uss")}


def _startup(meta: Path, fwd_path: Path, nmm: Path) -> dict[str, float]:
    """Build the dataset over the big metadata in a fresh process: time and memory."""
    code = (
        "import time, json, resource, os, psutil\n"
        "t0 = time.perf_counter()\n"
        "from esikit.data import SpikeEEGMetadataDataset\n"
        "t1 = time.perf_counter()\n"
        f"ds = SpikeEEGMetadataDataset({str(meta)!r}, {str(fwd_path)!r}, {str(nmm)!r})\n"
        "t2 = time.perf_counter()\n"
        "ds.synthesize_batch(range(8))\n"
        "m = psutil.Process().memory_full_info()\n"
        "print(json.dumps({'import_s': t1 - t0, 'startup_s': t2 - t1, 'n': len(ds), 'rss_mb': m.rss / 2**20,\n"
        "  'pss_mb': m.pss / 2**20, 'uss_mb': m.uss / 2**20,\n"
        "  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _training_wait(meta: Path, fwd_path: Path, nmm: Path, n_samples: int) -> dict[str, float]:
    """One epoch of CPU training with the default configuration, in a fresh process with the
    caller's threading settings: the data-wait fraction the trainer logs to TensorBoard."""
    code = f"""
import json, tempfile, time
from pathlib import Path
from esikit.config import default_config
from esikit.commands.train import build_loaders
from esikit.train.trainer import Trainer
cfg = default_config()
tmp = Path(tempfile.mkdtemp(prefix="esikit_bench_train_"))
cfg.update(USE_METADATA_LOADER=True, TRAIN_METADATA_PATH={str(meta)!r}, FWD_MATRIX_PATH={str(fwd_path)!r},
           NMM_SPIKES_DIR={str(nmm)!r}, TRAIN_DATASET_LEN={int(n_samples)}, NUM_EPOCHS=1, DEVICE="cpu",
           LOG_DIR=str(tmp / "logs"), CHECKPOINT_DIR=str(tmp / "ckpt"), EVALUATE=False)
train_loader, val_loader, _, info = build_loaders(cfg)
data_info = {{k: info[k] for k in ("n_channels", "n_regions", "n_times", "n_train", "n_val", "n_test")}}
trainer = Trainer(cfg, train_loader, None, data_info, tmp / "run", tmp / "logs", show_progress=False)
t0 = time.perf_counter()
try:
    stats = trainer.train_epoch(0)
finally:
    trainer.close()
wall = time.perf_counter() - t0
print(json.dumps({{"wait_fraction": stats["data_wait_fraction"], "epoch_s": wall,
                  "samples_per_s": info["n_train"] / wall, "batch_size": cfg["BATCH_SIZE"],
                  "num_workers": cfg["NUM_WORKERS"], "model": cfg["MODEL"], "n_train": info["n_train"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_ORIGINAL_ENV)
    if out.returncode != 0:
        raise RuntimeError(f"training run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("ESIKIT_BENCH_DIR", Path.home() / ".cache/esikit/bench_loader")))
    ap.add_argument("--fwd", type=Path, default=DEFAULT_FWD)
    ap.add_argument("--clip-regions", type=int, default=48, help="regions that have clips")
    ap.add_argument("--clips-per-region", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-samples", type=int, default=64, help="samples of the training-wait epoch (0: skip)")
    ap.add_argument("--quick", action="store_true", help="short measurements (1 s), no training run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.train_samples = 1.0, 0

    import psutil
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    from esikit.data import SpikeEEGMetadataDataset
    from esikit.data.fast import collate_synthesized

    if not args.fwd.exists():
        print(f"error: forward matrix not found: {args.fwd} (the DeepSIF anatomy in ../shared)", file=sys.stderr)
        return 2
    root = args.data_dir
    root.mkdir(parents=True, exist_ok=True)
    prep = prepare_data(root, args.fwd, args.clip_regions, args.clips_per_region)
    nmm, h5 = root / "nmm_spikes", root / "bench_nmm.h5"
    small, big = root / "small_sample_source.mat", root / "big_sample_source.mat"
    B = args.batch_size
    res: dict[str, object] = {"seconds": args.seconds, "batch_size": B, "cpu": os.cpu_count(),
                              "load_avg": os.getloadavg()[0]}

    # Cache: time a first pack + projection, into a fresh folder (the real one stays warm).
    from esikit.data.clips import FolderClipStore
    from esikit.data.packed import PackedClipCache

    store = FolderClipStore(nmm, cache_bytes=0)
    t0 = time.perf_counter()
    cache_tmp = Path(tempfile.mkdtemp(prefix="esikit_bench_cache_"))
    c = PackedClipCache.open(store, cache_tmp)
    c.projections(prep["fwd"])
    res["first_pack_s"] = time.perf_counter() - t0
    res["n_clips"] = len(store)
    import shutil

    shutil.rmtree(cache_tmp, ignore_errors=True)

    rng = np.random.default_rng(0)
    order = rng.permutation(N_SMALL)
    pos = {"i": 0}

    def next_positions(k: int) -> list[int]:
        i = pos["i"]
        pos["i"] = (i + k) % (N_SMALL - k)
        return order[i:i + k].tolist()

    rates: dict[str, float] = {}
    print("(a) reference, clips from .mat files ...", flush=True)
    ds_a = SpikeEEGMetadataDataset(small, args.fwd, nmm, synthesis="reference", cache_mb=0)
    rates["a"] = _rate(lambda: (ds_a.synthesize(next_positions(1)[0]), 1)[1], args.seconds)
    print("(b) reference, clips from one HDF5 file ...", flush=True)
    ds_b = SpikeEEGMetadataDataset(small, args.fwd, h5, synthesis="reference", cache_mb=0)
    rates["b"] = _rate(lambda: (ds_b.synthesize(next_positions(1)[0]), 1)[1], args.seconds)

    ds = SpikeEEGMetadataDataset(small, args.fwd, nmm)
    print("(c) fast path, one process, sample by sample ...", flush=True)

    def per_sample() -> int:
        for i in next_positions(B):
            ds[i]
        return B

    rates["c"] = _rate(per_sample, args.seconds)

    print("(e) batched synthesis, one process ...", flush=True)
    loader0 = DataLoader(ds, batch_size=B, shuffle=True, num_workers=0, collate_fn=collate_synthesized)
    it0 = {"it": iter(loader0)}

    def next_batch(holder, loader) -> int:
        try:
            e, _ = next(holder["it"])
        except StopIteration:
            holder["it"] = iter(loader)
            e, _ = next(holder["it"])
        return int(e.shape[0])

    rates["e"] = _rate(lambda: next_batch(it0, loader0), args.seconds)
    ds_c = SpikeEEGMetadataDataset(small, args.fwd, nmm, target="compact")
    loader_c = DataLoader(ds_c, batch_size=B, shuffle=True, num_workers=0, collate_fn=collate_synthesized)
    itc = {"it": iter(loader_c)}
    rates["e_compact"] = _rate(lambda: next_batch(itc, loader_c), args.seconds)

    print("(d) 2 workers ...", flush=True)
    loader2 = DataLoader(ds, batch_size=B, shuffle=True, num_workers=2, collate_fn=collate_synthesized,
                         persistent_workers=True, prefetch_factor=2)
    it2 = {"it": iter(loader2)}
    next_batch(it2, loader2)
    workers = [w.pid for w in it2["it"]._workers]
    rates["d"] = _rate(lambda: next_batch(it2, loader2), args.seconds, pids=tuple(workers))
    res["mem_main"] = _mem(os.getpid())
    res["mem_workers"] = [_mem(p) for p in workers]
    del it2, loader2
    loader2c = DataLoader(ds_c, batch_size=B, shuffle=True, num_workers=2, collate_fn=collate_synthesized,
                          persistent_workers=True, prefetch_factor=2)
    it2c = {"it": iter(loader2c)}
    next_batch(it2c, loader2c)
    rates["d_compact"] = _rate(lambda: next_batch(it2c, loader2c), args.seconds,
                               pids=tuple(w.pid for w in it2c["it"]._workers))
    del it2c, loader2c

    print("(f) dynamic mode ...", flush=True)
    from types import SimpleNamespace

    import scipy.sparse as sp

    from esikit.data.dynamic import DynamicSpikeEEGDataset

    n_reg = int(prep["fwd"].shape[1])
    ring = sp.diags([np.ones(n_reg - 1), np.ones(n_reg - 1)], [-1, 1], shape=(n_reg, n_reg), format="csr")
    angle = np.arange(n_reg) * 2 * np.pi / n_reg
    ring_anatomy = SimpleNamespace(adjacency=ring.astype(bool), centres=np.stack(
        [80 * np.cos(angle), 80 * np.sin(angle), np.zeros(n_reg)], axis=1))
    for key, mode in (("f", "reference"), ("f_fast", "fast")):
        dyn = DynamicSpikeEEGDataset(nmm, args.fwd, ring_anatomy, N_SMALL, patch_size_range=(1, P_MAX),
                                     synthesis=mode, cache_mb=0 if mode == "fast" else 512)
        rates[key] = _rate(lambda: (dyn.synthesize_batch(next_positions(B)), B)[1], args.seconds)
    del dyn

    print("dense write limit ...", flush=True)
    buf_y = np.empty((B, T, 994), dtype=np.float32)
    buf_e = np.empty((B, T, 75), dtype=np.float32)

    def fill() -> int:
        buf_y.fill(0.0)
        buf_e.fill(0.0)
        return B

    rates["limit"] = _rate(fill, args.seconds)

    def fresh() -> int:
        y = np.zeros((B, T, 994), dtype=np.float32)
        e = np.zeros((B, T, 75), dtype=np.float32)
        y.fill(0.0)
        e.fill(0.0)
        return B

    rates["limit_fresh"] = _rate(fresh, args.seconds)
    res["rates"] = rates

    print("start-up over the 190,656-sample metadata (fresh process) ...", flush=True)
    res["startup"] = _startup(big, args.fwd, nmm)
    if args.train_samples:
        print(f"CPU training, default settings, {args.train_samples} samples ...", flush=True)
        res["training"] = _training_wait(small, args.fwd, nmm, args.train_samples)
    res["load_avg_end"] = os.getloadavg()[0]
    _report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def _report(res: dict) -> None:
    rw = res["rates"]
    r = {k: v["cpu"] for k, v in rw.items()}
    a, b, lim = r["a"], r["b"], r["limit"]
    names = {
        "a": "(a) per sample, clips from .mat files",
        "b": "(b) per sample, clips from one HDF5 file (DeepSIF)",
        "c": "(c) esikit, 1 process, sample by sample",
        "d": "(d) esikit, 2 workers, batches",
        "d_compact": "(d') 2 workers, compact target",
        "e": "(e) esikit, batched synthesis, 1 process",
        "e_compact": "(e') batched, compact target, 1 process",
        "f": "(f) dynamic mode, reference synthesis, 1 process",
        "f_fast": "(f') dynamic mode, fast kernel, 1 process",
        "limit": "dense write limit (zero-fill outputs)",
        "limit_fresh": "dense write limit, fresh arrays",
    }
    print()
    print(f"Loader benchmark: real 75 x 994 leadfield, clips 500 x 994 ({res['n_clips']} clips), 2 sources, "
          f"patches 1-70, batch {res['batch_size']}; {res['cpu']} CPUs, load average {res['load_avg']:.1f} "
          f"-> {res['load_avg_end']:.1f}")
    print()
    print("Samples per CPU-second (one core; for (d) the CPU of the main process and both workers "
          "together), and per wall-clock second on this machine as loaded. Ratios use the CPU figures.")
    print()
    print("| path | samples/s per core | wall samples/s | x (a) | x (b) | / limit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key in ("a", "b", "c", "d", "d_compact", "e", "e_compact", "f", "f_fast", "limit", "limit_fresh"):
        if key in r:
            v = r[key]
            print(f"| {names[key]} | {v:,.1f} | {rw[key]['wall']:,.1f} | {v / a:,.1f} | {v / b:,.1f} | "
                  f"{v / lim:.2f} |")
    print()
    m = res["mem_main"]
    print(f"Memory (MiB), main process during (d): RSS {m['rss']:.0f}, PSS {m['pss']:.0f}, USS {m['uss']:.0f}")
    for i, w in enumerate(res["mem_workers"]):
        print(f"  worker {i}: RSS {w['rss']:.0f}, PSS {w['pss']:.0f}, USS {w['uss']:.0f}")
    s = res["startup"]
    print(f"Start-up over {s['n']:,} samples (fresh process, warm clip cache): {s['startup_s']:.2f} s "
          f"(+{s['import_s']:.2f} s imports); RSS {s['rss_mb']:.0f} MiB, PSS {s['pss_mb']:.0f} MiB, "
          f"peak RSS {s['peak_rss_mb']:.0f} MiB")
    print(f"First use of {res['n_clips']} clips: packing + projections took {res['first_pack_s']:.1f} s (once)")
    if "training" in res:
        t = res["training"]
        print(f"CPU training ({t['model']}, batch {t['batch_size']}, {t['num_workers']} workers, {t['n_train']} "
              f"samples, default threads): data wait {100 * t['wait_fraction']:.2f} % of the epoch "
              f"({t['epoch_s']:.0f} s, {t['samples_per_s']:.1f} samples/s: the model, not the data, sets the pace)")
    print()
    print("Targets: dense path >= 10x (b): "
          f"{'met' if r['e'] >= 10 * b else 'NOT met'} ({r['e'] / b:.1f}x); >= half the write limit: "
          f"{'met' if r['e'] >= 0.5 * lim else 'NOT met'} ({r['e'] / lim:.2f}; {r['e'] / r['limit_fresh']:.2f} of the "
          f"fresh-array limit); start-up < 10 s: "
          f"{'met' if s['startup_s'] < 10 else 'NOT met'}; main < 2 GB: "
          f"{'met' if s['peak_rss_mb'] < 2048 else 'NOT met'}; each worker < 200 MB USS: "
          f"{'met' if all(w['uss'] < 200 for w in res['mem_workers']) else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
