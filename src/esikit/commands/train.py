"""``python train.py`` / ``esikit train``: build the loaders, train, then evaluate.

Exit status of :func:`main`: 0 done, 1 data, checkpoint, disk or worker problem, 2 bad
configuration, 3 non-finite loss, 4 the run folder is locked by another run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, dataset_options, get_config
from .evaluate import print_evaluation, run_evaluation

logger = logging.getLogger(__name__)


def build_loaders(cfg: dict[str, Any]):
    """Loaders and data info for a validated configuration (metadata or dynamic mode)."""
    from ..data import create_dataloaders_from_metadata, create_dynamic_dataloaders
    from ..train.trainer import distributed_context

    rank, world, _ = distributed_context()
    common = dict(
        batch_size=cfg["BATCH_SIZE"], val_split=cfg["VAL_SPLIT"], num_workers=cfg["NUM_WORKERS"],
        seed=cfg["SEED"], pin_memory=cfg["PIN_MEMORY"], target=cfg.get("TARGET", "dense"),
        train_dataset_len=cfg.get("TRAIN_DATASET_LEN"), test_dataset_len=cfg.get("TEST_DATASET_LEN"),
        **dataset_options(cfg),
    )
    if world > 1:
        common.update(num_replicas=world, rank=rank)
    if cfg["USE_METADATA_LOADER"]:
        return create_dataloaders_from_metadata(
            cfg["TRAIN_METADATA_PATH"], cfg.get("TEST_METADATA_PATH"), cfg["FWD_MATRIX_PATH"],
            nmm_spikes_dir=cfg.get("NMM_SPIKES_DIR"), **common,
        )
    # the dynamic mode (USE_METADATA_LOADER = False): configurations drawn on the fly
    from ..head.anatomy import find_anatomy

    if cfg.get("NMM_SPIKES_DIR") is None:
        raise ConfigError(["USE_METADATA_LOADER = False needs NMM_SPIKES_DIR (the clip folder)"])
    anatomy = find_anatomy(cfg.get("ANATOMY"), cfg["FWD_MATRIX_PATH"])
    if anatomy is None:
        raise ConfigError(["USE_METADATA_LOADER = False needs the region adjacency: set ANATOMY (an anatomy .npz, "
                           "a DeepSIF anatomy folder or 'default')"])
    sizes = cfg.get("DYNAMIC_PATCH_SIZE_RANGE")
    return create_dynamic_dataloaders(
        cfg["NMM_SPIKES_DIR"], cfg["FWD_MATRIX_PATH"], anatomy, test_metadata_path=cfg.get("TEST_METADATA_PATH"),
        snr_range_db=tuple(cfg["DYNAMIC_SNR_RANGE"]), n_sources=tuple(cfg["DYNAMIC_N_SOURCES"]),
        patch_size_range=None if sizes is None else tuple(sizes), **common,
    )


def run_dirs(cfg: dict[str, Any]) -> tuple[Path, Path]:
    name = cfg.get("RUN_NAME") or cfg["MODEL"]
    return Path(cfg["CHECKPOINT_DIR"]) / name, Path(cfg["LOG_DIR"]) / name


def train(cfg: dict[str, Any], *, resume: bool = False, force: bool = False,
          show_progress: bool = True) -> dict[str, Any]:
    """Train (and evaluate, when ``EVALUATE``) with a validated configuration.

    The run folder stays locked from before the data is built until the evaluation is
    written (a second run with the same RUN_NAME stops at once with the holder's PID).
    ``force`` (with ``resume``) accepts a changed configuration (:meth:`Trainer.resume`).
    """
    from ..train.checkpoint import RunLock
    from ..train.trainer import distributed_context

    run_dir, _ = run_dirs(cfg)
    rank = distributed_context()[0]
    with RunLock(run_dir) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, resume=resume, force=force, show_progress=show_progress)


def _train(cfg: dict[str, Any], *, resume: bool, force: bool, show_progress: bool) -> dict[str, Any]:
    from ..train.trainer import Trainer, load_model, resolve_auto_batch_size

    t0 = time.perf_counter()
    cfg = resolve_auto_batch_size(cfg)  # BATCH_SIZE = "auto": probed on the device before the loaders exist
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
        state = trainer.fit(resume=resume, force=force)
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
    """``python train.py [KEY=VALUE ...] [--config PATH] [--resume [--force]]``.

    Exit status: 0 done, 1 data, checkpoint, disk or worker problem, 2 bad configuration
    (or a changed one on ``--resume`` without ``--force``), 3 non-finite loss, 4 the run
    folder is locked by another run.
    """
    from ..train.checkpoint import CheckpointError, RunLockedError
    from ..train.trainer import DataLoaderWorkerError, ResumeConfigError, is_worker_death, worker_death_message

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(argv)
    flags = {flag: flag in argv for flag in ("--resume", "--force")}
    argv = [a for a in argv if a not in flags]
    resume, force = flags["--resume"], flags["--force"]
    try:
        if force and not resume:
            raise ConfigError(["--force only goes with --resume (it accepts a changed configuration)"],
                              "command line")
        cfg, rest = get_config(argv, default_config)
        if rest:
            raise ConfigError([f"unknown arguments {rest} (expected KEY=VALUE, --config PATH, --resume or "
                               "--resume --force)"], "command line")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _init_distributed()
    try:
        result = train(cfg, resume=resume, force=force)
    except RunLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except (ConfigError, ResumeConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:  # unreadable checkpoints, disk full while saving
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}\nRun 'python test_metadata_loader.py' to check the data.", file=sys.stderr)
        return 1
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except DataLoaderWorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not is_worker_death(exc):  # e.g. a worker of the evaluation's loader
            raise
        print(f"error: {worker_death_message(exc)}", file=sys.stderr)
        return 1
    ev = result.get("evaluation")
    if ev is not None:
        print_evaluation(ev, result["run_dir"])
    return 0


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


