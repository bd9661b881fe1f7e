"""``esikit simulate``: make a DeepSIF-style training dataset from an anatomy."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .._validation import format_bytes
from ..simulate.pipeline import DEMO_DURATION_S, DEMO_N_TEST, DEMO_N_TRAIN, DEMO_SETTINGS

logger = logging.getLogger(__name__)


def parse_index_list(text: str | None, name: str = "regions") -> list[int] | None:
    """Parse ``"all"``, ``"3"``, ``"0-9,12,20-22"`` into sorted indices (None for all).

    Raises
    ------
    argparse.ArgumentTypeError
        On anything else, naming the option.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Invalid value for '{name}': expected 'all' or indices like '0-9,12', got {text!r}."
        ) from None
    return sorted(out)


def _settings(text: str) -> list[int]:
    values = parse_index_list(text, "settings")
    return list(DEMO_SETTINGS) if values is None else values


def add_parsers(subparsers) -> None:
    """Register ``simulate`` on the ``esikit`` command's sub-parsers."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate NMM spike clips and write a training dataset (anatomy, clips, metadata)",
        description=(
            "Simulate the Jansen-Rit network as DeepSIF did in TVB (one excited region at a "
            "time), cut spike clips, and write a complete dataset folder: anatomy/, "
            "source/nmm_spikes/, source/train_sample_source1.mat, source/test_sample_source1.mat "
            "and dataset.json. Resumable: rerunning continues an interrupted run and reuses a "
            "finished one."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out_dir", nargs="?", default="data/simulated", help="dataset folder to write")
    p.add_argument("--anatomy", default="default",
                   help="'default' (tvb-data, 76 regions, 63 channels), a DeepSIF anatomy folder "
                        "or an anatomy .npz")
    p.add_argument("--regions", type=parse_index_list, default=None,
                   help="regions to simulate, e.g. '0-9,12' (None: all)")
    p.add_argument("--duration", type=float, default=DEMO_DURATION_S,
                   help="simulated seconds per region and noise setting")
    p.add_argument("--settings", type=_settings, default=list(DEMO_SETTINGS),
                   help="DeepSIF noise settings to run, e.g. '0,1,2' (0: mu 0.087, 1: 0.08 x1.7 "
                        "noise, 2: 0.083 x1.5 noise)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the local Dask cluster (None: all available CPUs; "
                        "1: no cluster, in this process)")
    p.add_argument("--n-train", type=int, default=DEMO_N_TRAIN,
                   help="samples in train_sample_source1.mat (0: DeepSIF's full design)")
    p.add_argument("--n-test", type=int, default=DEMO_N_TEST,
                   help="samples in test_sample_source1.mat (0: DeepSIF's full design)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and metadata")
    p.add_argument("--preset", choices=("auto", "esikit", "deepsif"), default="auto",
                   help="metadata choices: 'deepsif' reproduces DeepSIF's generate_sythetic_source.m on "
                        "its template folder (neighbour lists as given, second source drawn freely, "
                        "scale_ratio without mag_change, one file per source count: "
                        "..._source1.mat and ..._source2.mat); 'esikit' keeps esikit's (symmetric "
                        "neighbours, disjoint second source, exact SNR, 1-2 sources per file); "
                        "'auto': deepsif for a DeepSIF anatomy folder, else esikit")
    p.add_argument("--coupling-scale", type=float, default=1.0,
                   help="global connectome weight scale (1.0 reproduces DeepSIF's data)")
    p.add_argument("--r", type=float, default=1.0,
                   help="steepness of the SigmoidalJansenRit coupling (1.0 = TVB of DeepSIF's "
                        "time; 0.56 = tvb-library >= 2.7.3 default)")
    g = p.add_argument_group(
        "adaptive harvesting (DeepSIF scale)",
        "With --clips-per-region K each (region, setting) is simulated in chunks until it has "
        "its share of K clips (or hits --max-simulated-s); tasks run on Dask: a LocalCluster "
        "over this machine's cores, or an existing cluster with --scheduler (the output folder "
        "must then be on a filesystem every worker sees). Rerunning finishes an interrupted run.")
    g.add_argument("--clips-per-region", type=int, default=None, metavar="K",
                   help="clips wanted per region over all settings (replaces --duration)")
    g.add_argument("--max-simulated-s", type=float, default=200.0,
                   help="cap of simulated seconds per (region, setting)")
    g.add_argument("--chunk-s", type=float, default=5.0,
                   help="simulated seconds per task and variant")
    g.add_argument("--batch-size", type=int, default=16,
                   help="regions integrated together in one task")
    g.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="integration kernel (numpy: the slow, readable reference)")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="address of an existing Dask scheduler (default: a LocalCluster)")
    g.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to wait for the --scheduler to answer before giving up")
    g.add_argument("--plan", action="store_true",
                   help="print the expected simulated time, wall time, disk and clips from a short "
                        "pilot run, then exit")
    g.add_argument("--pilot-regions", type=int, default=4, help="regions in the --plan pilot")
    g.add_argument("--pilot-seconds", type=float, default=10.0,
                   help="simulated seconds per pilot region and setting")
    p.add_argument("--force", action="store_true", help="remake an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_simulate)


def config_lines(summary: dict) -> list[str]:
    """The lines to paste into ``configs/config.py`` for a made dataset."""
    paths = summary["paths"]
    # the files written (the DeepSIF preset's pair is ..._source2.mat), else the layout's
    train = summary.get("train_metadata", paths["train_metadata"])
    test = summary.get("test_metadata", paths["test_metadata"])
    return [
        f"TRAIN_METADATA_PATH = {str(Path(train).resolve())!r}",
        f"TEST_METADATA_PATH = {str(Path(test).resolve())!r}",
        f"NMM_SPIKES_DIR = {str(Path(paths['nmm_spikes']).resolve())!r}",
        f"FWD_MATRIX_PATH = {str(Path(paths['fwd']).resolve())!r}",
    ]


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``esikit simulate`` with parsed arguments; returns the exit code."""
    from ..simulate.pipeline import make_dataset

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "plan", False):
        return run_plan(args)
    harvest_kw = None
    if getattr(args, "clips_per_region", None) is not None:
        harvest_kw = {"max_simulated_s": args.max_simulated_s, "chunk_s": args.chunk_s,
                      "batch_size": args.batch_size, "backend": args.backend,
                      "scheduler": args.scheduler,
                      "scheduler_timeout_s": getattr(args, "scheduler_timeout", 10.0)}
    try:
        summary = make_dataset(
            args.out_dir, anatomy=args.anatomy, regions=args.regions, duration_s=args.duration,
            settings=args.settings, n_workers=args.workers, seed=args.seed,
            n_train=args.n_train or None, n_test=args.n_test or None,
            coupling_scale=args.coupling_scale, r=args.r, force=args.force,
            progress=not args.no_progress, clips_per_region=getattr(args, "clips_per_region", None),
            harvest_kw=harvest_kw, metadata_preset=getattr(args, "preset", "auto"))
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as err:
        print(f"esikit simulate: error: {err}")
        return 2
    n_regions = len(summary["config"]["regions"])
    without = summary["regions_without_clips"]
    print(f"Dataset in {args.out_dir}: {summary['n_clips']} clips from "
          f"{n_regions - len(without)} of {n_regions} regions "
          f"({summary['n_channels']} channels, {summary['n_regions']} regions)")
    if "harvest_report" in summary:
        k = summary["config"]["harvest"]["clips_per_region"]
        below = summary["regions_below_target"]
        per_region = list(summary["simulated_s_per_region"].values())
        print(f"  simulated {summary['simulated_s']:.0f} network-seconds "
              f"({min(per_region):.0f}-{max(per_region):.0f} s per region), "
              f"{format_bytes(summary['bytes_on_disk'])} of clips, wall time {summary['wall_s']:.1f} s")
        print(f"  {len(below)} regions below {k} clips"
              + (f": {below}" if below else "")
              + f"; {len(summary['capped_variants'])} (region, setting) runs hit the cap")
        print(f"  report: {summary['harvest_report']}, histogram: {summary['histogram']}")
    else:
        print(f"  simulated {summary['simulated_s']:.0f} s, "
              f"{summary['spikes']['peaks_per_simulated_s'] or 0:.3f} spikes per simulated second, "
              f"wall time {summary['wall_s']:.1f} s")
    if without:
        print(f"  regions without clips (not in the metadata): {without}")
    by_sources = summary.get("metadata_files", {})
    if set(by_sources) - {"0"}:
        print(f"  metadata ({summary['config'].get('metadata_preset', 'esikit')} preset), one pair per "
              "number of sources (esikit trains on one file: the pair below, or concatenate datasets):")
        for n, (train, test) in sorted(by_sources.items()):
            print(f"    {n} source(s): {train}, {test}")
    print("Paste into configs/config.py:")
    for line in config_lines(summary):
        print(f"  {line}")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """``esikit simulate --plan``: pilot run and extrapolation, printed."""
    import dataclasses

    from ..simulate.nmm import JansenRitParams
    from ..simulate.plan import format_plan, plan_harvest

    k = args.clips_per_region
    if k is None:
        print("esikit simulate: error: --plan needs --clips-per-region K")
        return 2
    params = dataclasses.replace(JansenRitParams(), coupling_scale=args.coupling_scale,
                                 coupling_r=args.r)
    try:
        plan = plan_harvest(args.anatomy, k, regions=args.regions, settings=args.settings,
                            max_simulated_s=args.max_simulated_s, chunk_s=args.chunk_s,
                            pilot_regions=args.pilot_regions,
                            pilot_s=args.pilot_seconds, batch_size=args.batch_size,
                            n_cores=args.workers, seed=args.seed, params=params,
                            backend=args.backend)
    except (ValueError, FileNotFoundError) as err:
        print(f"esikit simulate: error: {err}")
        return 2
    for line in format_plan(plan):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m esikit.commands.simulate``)."""
    parser = argparse.ArgumentParser(prog="esikit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
