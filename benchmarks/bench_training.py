"""Training speed: samples/s of forward + backward + Adam step, per network and device.

Measures DeepSIF's network (75 x 994, a 994-wide 3-layer LSTM) and the TCN at the
template size (75 channels, 994 regions, 500 time samples) with
:func:`esikit.train.speed.measure_training_speed`, the probe ``esikit template --plan``
uses, on every device present:

* CPU: float32 eager (the baseline) and float32 through ``torch.compile``; bf16 autocast
  (``USE_AMP = 'bf16'``) with ``--full``;
* CUDA, when available: float32 eager (the baseline), float32 compiled, bf16 (fp16 on a
  GPU without bf16) eager and compiled, at DeepSIF's batch 64, and the batch
  ``BATCH_SIZE = 'auto'`` would choose.

Each line gives samples/s, seconds per step, the warm-up's seconds (compilation, cuDNN's
search) and the ratio to the baseline measured in the same run on the same device.
``cpu s/step`` is this process's CPU time per step: on a shared machine it compares the
paths better than the wall time.

Usage::

    python benchmarks/bench_training.py [--quick | --full] [--no-compile] [--tiny] [--threads N] [--json OUT]

The default CPU run is a few steps per path (DeepSIF's network: batch 4, about 2 samples/s
on 2 quiet cores); ``--quick`` leaves out the compiled paths; ``--full`` takes more steps
and adds bf16 on the CPU.
``--tiny`` runs small networks (8 x 16, 50 samples): a smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from esikit.models import build_model
from esikit.train.speed import DEFAULT_AUTO_BATCH_MAX, cuda_step_fits, probe_batch_size
from esikit.train.speed import measure_training_speed
from esikit.train.trainer import choose_amp

#: (network, constructor arguments) at the template size, and tiny ones for --tiny.
NETWORKS = {"deepsif": {}, "tcn": {}}
TINY_NETWORKS = {"deepsif": {"n_hidden": 16, "n_lstm_layers": 2}, "tcn": {"n_hidden": 8, "n_blocks": 2}}
#: Batch per network and device kind for the measured steps.
BATCH = {("deepsif", "cpu"): 4, ("tcn", "cpu"): 16, ("deepsif", "cuda"): 64, ("tcn", "cuda"): 64}


def paths_for(device: torch.device, *, compile_: bool, quick: bool, full: bool = False
              ) -> list[tuple[torch.dtype | None, bool]]:
    """``(autocast dtype, compiled)`` to measure on ``device``; the first is the baseline.

    On a GPU float32 and its autocast dtype (bf16, else fp16), each eager and compiled. On
    a CPU float32 eager and compiled; bf16 only with ``full`` (5-8x slower there).
    ``quick`` leaves out the compiled paths.
    """
    comp = compile_ and not quick
    if device.type == "cpu":
        paths: list[tuple[torch.dtype | None, bool]] = [(None, False)]
        paths += [(None, True)] if comp else []
        paths += [(torch.bfloat16, False)] if full else []
        return paths
    low = choose_amp(device, True)
    paths = [(None, False)] + ([(None, True)] if comp else []) + [(low, False)] + ([(low, True)] if comp else [])
    return paths


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def run(args: argparse.Namespace) -> list[dict]:
    shape = (8, 16, 50) if args.tiny else (75, 994, 500)
    n_channels, n_regions, n_times = shape
    nets = TINY_NETWORKS if args.tiny else NETWORKS
    steps = args.steps or (6 if args.full else 2)
    rows: list[dict] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; shape {n_channels} channels x "
          f"{n_regions} regions x {n_times} samples; {steps} timed steps after {args.warmup} warm-up step(s)")
    header = (f"{'network':<8} {'device':<6} {'amp':<9} {'compile':<7} {'batch':>5} {'samples/s':>10} "
              f"{'s/step':>8} {'cpu s/step':>10} {'warm-up s':>9} {'vs fp32 eager':>13}")
    for device in devices():
        kind = device.type
        for name, kwargs in nets.items():
            model = build_model(name, n_channels, n_regions, **kwargs)
            batch = args.batch or (2 if args.tiny else BATCH[(name, kind)])
            print(f"\n{name} ({model.count_parameters():,} parameters) on {device}")
            print(header)
            base = None
            for amp, comp in paths_for(device, compile_=not args.no_compile, quick=args.quick, full=args.full):
                t0 = time.perf_counter()
                try:
                    r = measure_training_speed(model, batch_size=batch, n_times=n_times, device=device,
                                               amp_dtype=amp, compile=comp, steps=steps, warmup=args.warmup)
                except Exception as exc:  # one path failing (e.g. a compiler missing) is a result too
                    print(f"{name:<8} {kind:<6} {str(amp).removeprefix('torch.'):<9} {str(comp):<7} {batch:>5} "
                          f"failed: {type(exc).__name__}: {str(exc)[:200]}")
                    rows.append({"network": name, "device": str(device), "amp": str(amp), "compile": comp,
                                 "error": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                r.update(network=name, total_s=time.perf_counter() - t0)
                if base is None:
                    base = r["samples_per_s"]
                r["ratio"] = r["samples_per_s"] / base
                rows.append(r)
                print(f"{name:<8} {kind:<6} {str(r['amp'] or 'float32'):<9} {str(comp):<7} {batch:>5} "
                      f"{r['samples_per_s']:>10.2f} {r['s_per_step']:>8.3f} {r['cpu_s_per_step']:>10.2f} "
                      f"{r['warmup_s']:>9.1f} {r['ratio']:>12.2f}x")
            if kind == "cuda" and not args.tiny:
                fits = cuda_step_fits(model, n_channels, n_regions, n_times, device, choose_amp(device, True))
                auto = probe_batch_size(fits, cap=DEFAULT_AUTO_BATCH_MAX)
                print(f"{name}: BATCH_SIZE='auto' chooses {auto} on {torch.cuda.get_device_name(device)} "
                      f"(cap {DEFAULT_AUTO_BATCH_MAX})")
                rows.append({"network": name, "device": str(device), "auto_batch_size": auto})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="no compiled paths")
    ap.add_argument("--full", action="store_true", help="more timed steps; bf16 on the CPU too")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile paths")
    ap.add_argument("--tiny", action="store_true", help="small networks: a smoke test of this script")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per path (default 2; 6 with --full)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every network and device")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; on a loaded machine 1 can be several times faster)")
    args, _ = ap.parse_known_args(argv)  # run_all.py may pass options meant for others
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    failed = [r for r in rows if "error" in r and not r.get("compile")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
