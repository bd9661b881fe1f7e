"""``train.py`` / ``esikit train``, ``esikit evaluate`` and ``esikit demo``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, dataset_options, get_config

logger = logging.getLogger(__name__)


def build_loaders(cfg: dict[str, Any]):
    """Loaders and data info for a validated configuration (metadata or dynamic mode)."""
    from ..data import create_dataloaders_from_metadata
    from .trainer import distributed_context

    rank, world, _ = distributed_context()
    common = dict(
        batch_size=cfg["BATCH_SIZE"], val_split=cfg["VAL_SPLIT"], num_workers=cfg["NUM_WORKERS"],
        seed=cfg["SEED"], pin_memory=cfg["PIN_MEMORY"],
    )
    if world > 1:
        common.update(num_replicas=world, rank=rank)
    if cfg["USE_METADATA_LOADER"]:
        return create_dataloaders_from_metadata(
            cfg["TRAIN_METADATA_PATH"], cfg.get("TEST_METADATA_PATH"), cfg["FWD_MATRIX_PATH"],
            nmm_spikes_dir=cfg.get("NMM_SPIKES_DIR"), train_dataset_len=cfg.get("TRAIN_DATASET_LEN"),
            test_dataset_len=cfg.get("TEST_DATASET_LEN"), target=cfg.get("TARGET", "dense"),
            **dataset_options(cfg), **common,
        )
    return dynamic_loaders(cfg, normalize=cfg.get("NORMALIZE", True), **common)


def dynamic_loaders(cfg: dict[str, Any], *, batch_size: int, val_split: float, num_workers: int, seed: int,
                    pin_memory: bool, normalize: bool, num_replicas: int = 1, rank: int = 0):
    """The dynamic mode (``USE_METADATA_LOADER = False``): configurations drawn on the fly.

    Training draws new configurations every epoch; validation (``VAL_SPLIT`` times the
    training length) uses another seed and stays at epoch 0; the test set is the test
    metadata file when configured, else another frozen dynamic set.
    """
    from ..data import SpikeEEGMetadataDataset
    from ..data.dynamic import DynamicSpikeEEGDataset
    from ..data.loaders import _loader
    from ..evaluate.runner import find_anatomy

    if cfg.get("NMM_SPIKES_DIR") is None:
        raise ConfigError(["USE_METADATA_LOADER = False needs NMM_SPIKES_DIR (the clip folder)"])
    anatomy = find_anatomy(cfg.get("ANATOMY"), cfg["FWD_MATRIX_PATH"])
    if anatomy is None:
        raise ConfigError(["USE_METADATA_LOADER = False needs the region adjacency: set ANATOMY (an anatomy .npz, "
                           "a DeepSIF anatomy folder or 'default')"])
    n_train = int(cfg.get("TRAIN_DATASET_LEN") or 10000)
    sizes = cfg.get("DYNAMIC_PATCH_SIZE_RANGE")
    if sizes is None:  # the same fraction of the cortex as DeepSIF's 70 of 994 regions
        sizes = (1, max(1, int(round(70 * anatomy.n_regions / 994))))
    kw = dict(snr_range_db=tuple(cfg["DYNAMIC_SNR_RANGE"]), patch_size_range=tuple(sizes),
              n_sources=tuple(cfg["DYNAMIC_N_SOURCES"]), normalize=normalize)
    train_ds = DynamicSpikeEEGDataset(cfg["NMM_SPIKES_DIR"], cfg["FWD_MATRIX_PATH"], anatomy, n_train, seed=seed, **kw)
    n_val = int(round(n_train * float(val_split)))
    val_ds = None
    if n_val:
        val_ds = DynamicSpikeEEGDataset(cfg["NMM_SPIKES_DIR"], train_ds.fwd, anatomy, n_val, seed=seed + 1,
                                        clip_store=train_ds.store, **kw).subset(np.arange(n_val), freeze_epoch=True)
    if cfg.get("TEST_METADATA_PATH"):
        test_ds = SpikeEEGMetadataDataset(cfg["TEST_METADATA_PATH"], train_ds.fwd, cfg.get("NMM_SPIKES_DIR"),
                                          dataset_len=cfg.get("TEST_DATASET_LEN"), seed=seed, normalize=normalize)
    else:
        n_test = int(cfg.get("TEST_DATASET_LEN") or max(n_val, 100))
        test_ds = DynamicSpikeEEGDataset(cfg["NMM_SPIKES_DIR"], train_ds.fwd, anatomy, n_test, seed=seed + 2,
                                         clip_store=train_ds.store, **kw)
    test_ds = test_ds.subset(np.arange(len(test_ds)), freeze_epoch=True)
    common = dict(num_workers=int(num_workers), pin_memory=bool(pin_memory) and torch.cuda.is_available())
    dist = dict(num_replicas=num_replicas, rank=rank)
    train_loader = _loader(train_ds, int(batch_size), shuffle_seed=seed, **common, **dist)
    val_loader = _loader(val_ds, int(batch_size), shuffle_seed=None, **common, **dist) if val_ds is not None else None
    test_loader = _loader(test_ds, int(batch_size), shuffle_seed=None, **common)
    info = {"fwd": train_ds.fwd, "n_channels": train_ds.n_channels, "n_regions": train_ds.n_regions,
            "n_times": train_ds.n_times, "n_train": len(train_ds), "n_val": len(val_ds) if val_ds is not None else 0,
            "n_test": len(test_ds), "train_dataset": train_ds, "val_dataset": val_ds, "test_dataset": test_ds}
    return train_loader, val_loader, test_loader, info


def run_dirs(cfg: dict[str, Any]) -> tuple[Path, Path]:
    name = cfg.get("RUN_NAME") or cfg["MODEL"]
    return Path(cfg["CHECKPOINT_DIR"]) / name, Path(cfg["LOG_DIR"]) / name


def run_evaluation(model, test_dataset, fwd, out_dir, cfg: dict[str, Any], history=None, device="cpu",
                   fwd_path=None) -> dict[str, Any]:
    from ..evaluate.runner import evaluate_model, find_anatomy

    anatomy = find_anatomy(cfg.get("ANATOMY"), fwd_path if fwd_path is not None else cfg.get("FWD_MATRIX_PATH"))
    return evaluate_model(
        model, test_dataset, fwd, out_dir, anatomy=anatomy, baselines=tuple(cfg.get("BASELINES") or ()),
        max_samples=cfg.get("EVAL_MAX_SAMPLES"), batch_size=max(int(cfg["BATCH_SIZE"]), 16), device=device,
        history=history, model_name=cfg["MODEL"],
    )


def train(cfg: dict[str, Any], *, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train (and evaluate, when ``EVALUATE``) with a validated configuration."""
    from .trainer import Trainer, load_model

    t0 = time.perf_counter()
    train_loader, val_loader, test_loader, info = build_loaders(cfg)
    run_dir, log_dir = run_dirs(cfg)
    data_info = {k: info[k] for k in ("n_channels", "n_regions", "n_times", "n_train", "n_val", "n_test")}
    data_info["fwd_path"] = str(cfg["FWD_MATRIX_PATH"])
    trainer = Trainer(cfg, train_loader, val_loader, data_info, run_dir, log_dir, show_progress=show_progress)
    if show_progress and trainer.rank == 0:
        print(f"training {cfg['MODEL']} ({trainer.model.count_parameters():,} parameters) on {trainer.device}: "
              f"{info['n_train']} train / {info['n_val']} validation / {info['n_test']} test samples, "
              f"{info['n_channels']} channels x {info['n_regions']} regions")
    try:
        state = trainer.fit(resume=resume)
    finally:
        trainer.close()
    result: dict[str, Any] = {"run_dir": run_dir, "state": state, "train_seconds": time.perf_counter() - t0}
    if trainer.rank != 0:
        return result
    if cfg.get("EVALUATE", True) and info.get("test_dataset") is not None:
        best = run_dir / "best.pt"
        model, _ = load_model(best if best.exists() else run_dir / "last.pt", trainer.device)
        evaluation = run_evaluation(model, info["test_dataset"], info["fwd"], run_dir, cfg,
                                    history=state.history, device=trainer.device)
        result["evaluation"] = evaluation
        writer_dir = log_dir
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(writer_dir)) as w:
            overall = evaluation["summary"]["methods"][cfg["MODEL"]]["overall"]["stats"]
            for metric, stats in overall.items():
                if isinstance(stats, dict) and stats.get("median") is not None:
                    w.add_scalar(f"test/{metric}_median", float(stats["median"]), state.epoch)
    return result


def main(argv: Sequence[str] = (), default_config: str | os.PathLike | None = None) -> int:
    """``python train.py [KEY=VALUE ...] [--config PATH] [--resume]``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(argv)
    resume = "--resume" in argv
    if resume:
        argv.remove("--resume")
    try:
        cfg, rest = get_config(argv, default_config)
        if rest:
            raise ConfigError([f"unknown arguments {rest} (expected KEY=VALUE, --config PATH or --resume)"],
                              "command line")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _init_distributed()
    try:
        result = train(cfg, resume=resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}\nRun 'python test_metadata_loader.py' to check the data.", file=sys.stderr)
        return 1
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    ev = result.get("evaluation")
    if ev is not None:
        _print_evaluation(ev, result["run_dir"])
    return 0


def _print_evaluation(ev: dict[str, Any], run_dir: Path) -> None:
    print()
    print(f"Test results on {ev['n_samples']} samples (median over samples; full tables in {run_dir}/results.md):")
    print()
    print(ev["comparison"])
    print(f"\nresults and figures: {run_dir}")


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def evaluate_main(args) -> int:
    """``esikit evaluate CHECKPOINT``: everything needed is recorded in the checkpoint."""
    from ..data import SpikeEEGMetadataDataset
    from .trainer import load_model

    try:
        model, state = load_model(args.checkpoint)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = dict(state["config"])
    if args.max_samples is not None:
        cfg["EVAL_MAX_SAMPLES"] = args.max_samples
    test_path = args.test_metadata or cfg.get("TEST_METADATA_PATH")
    if not test_path:
        print("error: the checkpoint's config has no TEST_METADATA_PATH; pass --test-metadata", file=sys.stderr)
        return 1
    ds = SpikeEEGMetadataDataset(test_path, cfg["FWD_MATRIX_PATH"], cfg.get("NMM_SPIKES_DIR"),
                                 dataset_len=cfg.get("TEST_DATASET_LEN") if not args.test_metadata else None,
                                 seed=cfg.get("SEED", 0), **dataset_options(cfg))
    ds = ds.subset(np.arange(len(ds)), freeze_epoch=True)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    history = state.get("train_state", {}).get("history")
    ev = run_evaluation(model, ds, ds.fwd, out, cfg, history=history)
    _print_evaluation(ev, out)
    return 0


# -- the demo ---------------------------------------------------------------------------------

DEMO_OVERRIDES = {
    "MODEL": "deepsif",
    "BATCH_SIZE": 16,
    "NUM_EPOCHS": 5,
    "LEARNING_RATE": 1e-3,
    "NUM_WORKERS": 1,
    "VAL_SPLIT": 0.1,
    "GRAD_CLIP": 100.0,
    "RUN_NAME": "demo",
    "EVAL_MAX_SAMPLES": 200,
}


def demo_main(args) -> int:
    """Make the built-in dataset when missing, check it, train the default model, evaluate."""
    from ..diagnose import run_checks
    from ..simulate.pipeline import make_dataset

    data = Path(args.data)
    t0 = time.perf_counter()
    if not (data / "dataset.json").is_file():
        print(f"making the built-in dataset in {data} (tvb-data anatomy, Jansen-Rit simulation) ...")
        make_dataset(data)
        print(f"dataset ready in {time.perf_counter() - t0:.0f} s")
    summary = json.loads((data / "dataset.json").read_text())
    paths = summary.get("paths", {})
    cfg, _ = get_config([])
    cfg.update(DEMO_OVERRIDES)
    source = data / "source"
    cfg.update({
        "TRAIN_METADATA_PATH": paths.get("train_metadata", str(source / "train_sample_source1.mat")),
        "TEST_METADATA_PATH": paths.get("test_metadata", str(source / "test_sample_source1.mat")),
        "NMM_SPIKES_DIR": paths.get("nmm_spikes", str(source / "nmm_spikes")),
        "FWD_MATRIX_PATH": paths["fwd"],
        "ANATOMY": paths.get("anatomy"),
    })
    if args.epochs is not None:
        cfg["NUM_EPOCHS"] = int(args.epochs)
    from ..config import validate_config

    validate_config(cfg, source="demo configuration")
    print("\nchecking the dataset (python test_metadata_loader.py) ...")
    if run_checks(cfg):
        return 1
    print("\ntraining (python train.py with the demo settings) ...")
    result = train(cfg)
    print()
    ev = result.get("evaluation")
    if ev is not None:
        _print_evaluation(ev, result["run_dir"])
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; results and figures in {result['run_dir']}")
    return 0
