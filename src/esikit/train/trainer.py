"""The training loop: Adam on MSE, checkpoints, resume, TensorBoard, progress, AMP, DDP.

Resume rules: ``last.pt`` (or ``best.pt`` when it is newer, or when ``last.pt`` is
unreadable) restores everything; a configuration that differs from the run's in a key
that changes the weights (not in :data:`esikit.config.RESUME_FREE_KEYS`) is refused
unless ``force``, which applies the new values and records the change. While a run
trains, ``<run>/.lock`` is held so that a second run into the same folder stops at once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import KEYS, PATH_KEYS, RESUME_FREE_KEYS, ConfigError
from ..data import set_loader_epoch
from ..io.atomic import remove_stale_temporaries
from ..models import build_model, model_from_config
from .speed import (
    DEFAULT_AUTO_BATCH_MAX,
    configure_backends,
    flatten_rnn_weights,
    maybe_compile,
    needs_grad_scaler,
    resolve_batch_size,
)
from .checkpoint import (
    CheckpointError,
    RunLock,
    load_checkpoint,
    save_checkpoint,
    write_run_file,
)

try:
    from tqdm.auto import tqdm as _tqdm

    tqdm_write = _tqdm.write
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm_write = print

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; names the batch and its samples."""


class ResumeConfigError(ValueError):
    """``--resume`` with a configuration that differs from the run's; lists each change."""


class DataLoaderWorkerError(RuntimeError):
    """A DataLoader worker process died (often killed for memory); says what to try."""


def is_worker_death(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's error for a DataLoader worker that died."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DataLoader worker" in text and (
        "exited unexpectedly" in text or "killed by signal" in text)


def _collect_dead_loaders(attempts: int = 5) -> None:
    """Free the iterators of dead DataLoader workers now, so their workers are unregistered.

    An iterator may sit in a reference cycle; until it is collected, torch's SIGCHLD
    handler raises "worker ... killed" at any child process exit, possibly during this
    very clean-up (another loader's dead worker): such errors are absorbed here.
    """
    for _ in range(attempts):
        try:
            gc.collect()
            return
        except RuntimeError as again:
            if not is_worker_death(again):
                raise
            again.__traceback__ = None


def worker_death_message(exc: BaseException, run_dir: str | os.PathLike | None = None) -> str:
    kept = f" The last complete checkpoint in {run_dir} is kept; continue with --resume." if run_dir else ""
    return (f"a DataLoader worker process died ({exc}). This is usually the system running out of memory: lower "
            "NUM_WORKERS or BATCH_SIZE, or set NUM_WORKERS=0 to load in the main process, where any error in the "
            f"data shows itself.{kept}")


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    epoch: int = 0  # epochs completed
    best_val: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {
        "train_loss": [], "val_loss": [], "lr": [], "data_wait_fraction": [], "samples_per_s": []})
    # One entry per resume that changed the configuration:
    # {"epoch": n, "forced": bool, "changes": {key: [old, new]}}.
    config_changes: list[dict[str, Any]] = field(default_factory=list)


# -- environment -----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every global RNG state as plain data (lists, numbers, tensors) for a checkpoint."""
    version, internal, gauss = random.getstate()
    npstate = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": npstate["bit_generator"],
                  "state": {"key": npstate["state"]["key"].tolist(), "pos": int(npstate["state"]["pos"])},
                  "has_gauss": int(npstate["has_gauss"]), "gauss": float(npstate["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`rng_states` (also reads older checkpoints' tuple / numpy-array form)."""
    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npstate = states["numpy"]
    if isinstance(npstate, dict):
        npstate = {**npstate, "state": {"key": np.asarray(npstate["state"]["key"], dtype=np.uint32),
                                        "pos": int(npstate["state"]["pos"])}}
    np.random.set_state(npstate)
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid value for 'DEVICE': {name!r} but no CUDA device is available")
    return dev


def distributed_context() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` under ``torchrun``; ``(0, 1, 0)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


_AMP_NAMES = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}


def choose_amp(device: torch.device, use_amp: bool | str) -> torch.dtype | None:
    """The autocast dtype to train with (None: float32), by one fixed rule.

    ``USE_AMP = True``: on CUDA bf16 where supported, else fp16 (with a GradScaler, also
    used under bf16 for a network with an LSTM: see :func:`~esikit.train.speed.needs_grad_scaler`); on
    the CPU float32. ``'bf16'``: bf16 autocast on any device. ``'fp16'``: CUDA only.
    ``False``: float32. No timing is involved, so the same command and seed give the
    same weights on the same machine.

    Raises
    ------
    ConfigError
        When the device cannot do what ``use_amp`` asks.
    """
    if use_amp is False or use_amp is None:
        return None
    cuda = device.type == "cuda"
    if use_amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError([f"Invalid value for 'USE_AMP': 'bf16', but {device} has no bf16 support; use True "
                               "(fp16 on this GPU) or False."])
        return torch.bfloat16
    if use_amp == "fp16":
        if not cuda:
            raise ConfigError([f"Invalid value for 'USE_AMP': 'fp16' needs a CUDA device, training runs on {device}; "
                               "use 'bf16' or False."])
        return torch.float16
    if cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def resolve_auto_batch_size(cfg: dict[str, Any], *, n_channels: int | None = None, n_regions: int | None = None,
                            n_times: int = 500, fits=None) -> dict[str, Any]:
    """The configuration with ``BATCH_SIZE = 'auto'`` replaced by the probed batch size.

    Run before the loaders are built. The probe (:func:`esikit.train.speed.resolve_batch_size`)
    trains one step of the configured network at growing batch sizes on ``DEVICE`` with
    the autocast ``USE_AMP`` gives there, up to ``AUTO_BATCH_MAX``; on a CPU it falls back
    to :data:`~esikit.train.speed.CPU_AUTO_BATCH_SIZE` with a warning. The returned copy
    records the request as ``_BATCH_SIZE_REQUESTED``. Any other BATCH_SIZE is returned as is.

    Parameters
    ----------
    cfg : dict
        Validated configuration.
    n_channels, n_regions : int, optional
        The network's input and output sizes; default: the shape of ``FWD_MATRIX_PATH``.
    n_times : int
        Time samples per training sample (500 in DeepSIF).
    fits : callable, optional
        ``fits(batch_size) -> bool`` instead of the GPU probe (tests).
    """
    if cfg.get("BATCH_SIZE") != "auto":
        return cfg
    if n_channels is None or n_regions is None:
        from ..io.forward_model import load_forward_model

        fwd = load_forward_model(cfg["FWD_MATRIX_PATH"])
        n_channels, n_regions = fwd.n_channels, fwd.n_regions
    device = resolve_device(cfg.get("DEVICE", "auto"))
    _, world, local_rank = distributed_context()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    model = build_model(cfg["MODEL"], int(n_channels), int(n_regions), **dict(cfg.get("MODEL_KWARGS") or {}))
    batch = resolve_batch_size("auto", model, int(n_channels), int(n_regions), int(n_times), device,
                               choose_amp(device, cfg.get("USE_AMP", True)),
                               cap=int(cfg.get("AUTO_BATCH_MAX") or DEFAULT_AUTO_BATCH_MAX), fits=fits)
    if world > 1:  # every rank must use the same batch: the smallest any rank could fit
        t = torch.tensor([batch], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        batch = int(t.item())
    return {**cfg, "BATCH_SIZE": batch, "_BATCH_SIZE_REQUESTED": "auto"}


def _comparable(value: Any) -> Any:
    """Tuples as lists, paths as strings: how a value reads back from a checkpoint."""
    if isinstance(value, (tuple, list)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _absolute(value: Any, cwd: str | None) -> Any:
    if not isinstance(value, (str, os.PathLike)) or value == "default":
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and cwd:
        path = Path(cwd) / path
    return os.path.normpath(path)


def config_changes(old: dict[str, Any], old_cwd: str | None, new: dict[str, Any], new_cwd: str | None
                   ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The keys that differ between a run's configuration and a new one.

    Paths are compared as absolute paths, each relative to the folder its run started
    in. MODEL and MODEL_KWARGS are left out: the model itself is compared instead.

    Returns
    -------
    guarded : dict
        ``{key: [old, new]}`` for keys that change the trained weights.
    free : dict
        The same for :data:`~esikit.config.RESUME_FREE_KEYS` (NUM_EPOCHS counts as guarded
        under ``LR_SCHEDULE = 'cosine'``, whose period it sets).
    """
    guarded: dict[str, list[Any]] = {}
    free: dict[str, list[Any]] = {}
    cosine = "cosine" in (old.get("LR_SCHEDULE"), new.get("LR_SCHEDULE"))
    for key in sorted(set(old) | set(new)):
        if key.startswith("_") or key in ("MODEL", "MODEL_KWARGS"):
            continue
        default = KEYS[key].default if key in KEYS else None
        a, b = _comparable(old.get(key, default)), _comparable(new.get(key, default))
        if key in PATH_KEYS:
            a, b = _absolute(a, old_cwd), _absolute(b, new_cwd)
        if a == b:
            continue
        if key in RESUME_FREE_KEYS and not (key == "NUM_EPOCHS" and cosine):
            free[key] = [a, b]
        else:
            guarded[key] = [a, b]
    return guarded, free


# -- the trainer -------------------------------------------------------------------------------


class Trainer:
    """Train a model on loaders made from a configuration dict (see :mod:`esikit.config`).

    Parameters
    ----------
    cfg : dict
        Validated configuration.
    train_loader, val_loader : DataLoader
        ``val_loader`` may be None (no validation: the last epoch counts as best).
    data_info : dict
        ``n_channels``, ``n_regions``, ``n_times`` and what the checkpoint should record
        about the data.
    run_dir : path-like
        Where ``last.pt``, ``best.pt`` and ``history.json`` go.
    log_dir : path-like
        TensorBoard folder.
    """

    def __init__(self, cfg: dict[str, Any], train_loader: DataLoader, val_loader: DataLoader | None,
                 data_info: dict[str, Any], run_dir: str | os.PathLike, log_dir: str | os.PathLike,
                 *, show_progress: bool = True):
        self.cfg = cfg
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.data_info = data_info
        self.run_dir = Path(run_dir)
        self.log_dir = Path(log_dir)
        self.show_progress = show_progress
        self.rank, self.world, local_rank = distributed_context()
        self.device = resolve_device(cfg.get("DEVICE", "auto"))
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
        seed_everything(int(cfg["SEED"]))
        if cfg.get("BATCH_SIZE") == "auto":
            raise ConfigError(["BATCH_SIZE = 'auto' reached the Trainer unresolved: call "
                               "esikit.train.trainer.resolve_auto_batch_size(cfg) before building the loaders"])
        self.model = build_model(cfg["MODEL"], data_info["n_channels"], data_info["n_regions"],
                                 **dict(cfg.get("MODEL_KWARGS") or {})).to(self.device)
        # cuDNN's algorithm search for the fixed training shape; one weight block per LSTM
        configure_backends(self.device)
        flatten_rnn_weights(self.model)
        self.model_config = self.model.get_config()
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Checkpoints are written from self.model; the compiled wrapper shares its parameters.
        self.net = maybe_compile(self.net, bool(cfg.get("COMPILE", False)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(cfg["LEARNING_RATE"]),
                                          weight_decay=float(cfg.get("WEIGHT_DECAY", 0.0)))
        self.loss_fn = nn.MSELoss(reduction=cfg.get("LOSS_REDUCTION", "sum"))
        self.scheduler = self._make_scheduler()
        self.amp_dtype: torch.dtype | None = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.state = TrainState()
        self.writer = None

    # -- pieces --------------------------------------------------------------------------------
    def _make_scheduler(self):
        kind = self.cfg.get("LR_SCHEDULE")
        if kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=int(self.cfg["NUM_EPOCHS"]))
        if kind == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5, patience=2)
        return None

    def _setup_amp(self) -> None:
        self.amp_dtype = choose_amp(self.device, self.cfg.get("USE_AMP", True))
        self.scaler = self._make_scaler()
        # Training draws start from the seed, whatever building the model consumed.
        seed_everything(int(self.cfg["SEED"]))

    def _make_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled where fp16 gradients occur (:func:`~esikit.train.speed.needs_grad_scaler`)."""
        return torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.device, self.amp_dtype, self.model))

    def _writer(self):
        if self.writer is None and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def _batch_samples(self, loader: DataLoader, epoch: int, batch_index: int) -> list[int]:
        """Metadata rows of batch ``batch_index`` of ``epoch`` (for error messages)."""
        order = list(iter(loader.sampler))
        bs = loader.batch_size or 1
        positions = order[batch_index * bs:(batch_index + 1) * bs]
        ds = loader.dataset
        if hasattr(ds, "sample_index"):
            return [ds.sample_index(p) for p in positions]
        return positions

    def _target_on_device(self, src: Any) -> torch.Tensor:
        """The dense target on the device; a compact one ``(regions, values)`` is expanded there."""
        if isinstance(src, (tuple, list)):
            from ..data.fast import expand_compact_target

            regions, values = src
            return expand_compact_target(regions.to(self.device, non_blocking=True),
                                         values.to(self.device, non_blocking=True), self.data_info["n_regions"])
        return src.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    # -- checkpoints -----------------------------------------------------------------------
    def montage(self) -> dict[str, Any]:
        """The channels the network is trained for: ``{"ch_names", "ch_pos", "sfreq"}``, plain data.

        Names and positions come from the leadfield file (``None`` for DeepSIF's plain
        ``fwd`` files); ``sfreq`` is the rate of the synthesized EEG in Hz.
        """
        if getattr(self, "_montage", None) is None:
            from ..constants import SFREQ_HZ
            from ..io.forward_model import load_forward_model, montage_dict

            path = self.cfg.get("FWD_MATRIX_PATH")
            try:
                entry = load_forward_model(path).montage_dict() if path is not None else montage_dict(None, None)
            except (OSError, ValueError) as exc:  # the loaders already read it; keep training
                logger.warning("%s: channel names not read (%s)", path, exc)
                entry = montage_dict(None, None)
            self._montage = {**entry, "sfreq": float(SFREQ_HZ)}
        return self._montage

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything :meth:`resume` restores, as plain data (loads with ``weights_only=True``)."""
        cfg = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in self.cfg.items()}
        return {
            "model_state": self.model.state_dict(),
            "model_config": self.model_config,
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler_state": self.scaler.state_dict(),
            "amp_dtype": str(self.amp_dtype) if self.amp_dtype is not None else None,
            "epoch": self.state.epoch,
            "train_state": self.state.__dict__,
            "rng_states": rng_states(),
            "config": cfg,
            # Relative paths in the config are relative to this folder (esikit evaluate
            # resolves them from here when run elsewhere).
            "run_cwd": os.getcwd(),
            "data": {k: v for k, v in self.data_info.items() if isinstance(v, (int, float, str, type(None)))},
            # Which electrode is which input (read by esikit localize).
            "montage": self.montage(),
        }

    def save(self, name: str) -> Path | None:
        if self.rank != 0:
            return None
        return save_checkpoint(self.checkpoint_state(), self.run_dir / name)

    def _read_run_checkpoints(self, run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                                            dict[str, str]]:
        """``(last, best, problems)``: each state or None, and why a present file is unusable."""
        states: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name in ("last.pt", "best.pt"):
            path = run_dir / name
            if path.exists():
                try:
                    states[name] = load_checkpoint(path, map_location=self.device)
                except CheckpointError as exc:
                    problems[name] = str(exc)
        return states.get("last.pt"), states.get("best.pt"), problems

    def resume(self, path: str | os.PathLike | None = None, *, force: bool = False) -> bool:
        """Restore everything from the run's checkpoint; False when there is none.

        Without ``path``: ``last.pt``, or ``best.pt`` when it is newer (a kill between the
        two writes) or when ``last.pt`` is unreadable (a warning says which epochs are
        trained again). The other file is rewritten so that the two agree again.

        Raises
        ------
        CheckpointError
            When no checkpoint of the run can be read.
        ResumeConfigError
            When the configuration changed in a key that changes the weights and not
            ``force``; lists every changed key, old -> new.
        ValueError
            When the model (MODEL, MODEL_KWARGS or the data's channels/regions) differs.
        """
        if path is not None:
            path = Path(path)
            remove_stale_temporaries(path.parent)
            if not path.exists():
                logger.warning("--resume: no checkpoint at %s; starting from scratch", path)
                return False
            state, last, best, problems = load_checkpoint(path, map_location=self.device), None, None, {}
        else:
            path = self.run_dir / "last.pt"
            remove_stale_temporaries(self.run_dir)
            last, best, problems = self._read_run_checkpoints(self.run_dir)
            if last is None and best is None:
                if problems:
                    raise CheckpointError(f"{self.run_dir}: cannot resume, no readable checkpoint:\n  - "
                                          + "\n  - ".join(problems.values())
                                          + "\nStart again without --resume (or with another RUN_NAME).")
                logger.warning("--resume: no checkpoint at %s; starting from scratch", path)
                return False
            if last is None:
                why = problems.get("last.pt", "missing")
                logger.warning("%s: %s; resuming from best.pt (epoch %d) instead: the epochs after it are trained "
                               "again", path, why, best["epoch"])
                state, path = best, self.run_dir / "best.pt"
            elif best is not None and best["epoch"] > last["epoch"]:
                logger.warning("%s (epoch %d) is newer than last.pt (epoch %d): the run was stopped between the two "
                               "writes; resuming from best.pt", self.run_dir / "best.pt", best["epoch"], last["epoch"])
                state, path = best, self.run_dir / "best.pt"
            else:
                state = last
        if state["model_config"] != self.model_config:
            raise ValueError(
                f"{path}: the checkpoint's model {state['model_config']} differs from the configured one "
                f"{self.model_config}; use the same MODEL/MODEL_KWARGS and data, or another RUN_NAME")
        # Checkpoints of older esikit versions lack run_cwd: they ran where we run now.
        guarded, free = config_changes(state["config"], state.get("run_cwd") or os.getcwd(), self.cfg, os.getcwd())
        if guarded and not force:
            lines = "\n".join(f"  - {k}: {old!r} -> {new!r}" for k, (old, new) in guarded.items())
            raise ResumeConfigError(
                f"{path}: the configuration differs from the one this run was trained with (epoch {state['epoch']}):"
                f"\n{lines}\nRestore the old values, use --resume --force to continue with the new ones (the change "
                "is recorded in the checkpoint and history.json), or choose another RUN_NAME.")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if (self.scheduler is not None and state.get("scheduler_state") is not None
                and "LR_SCHEDULE" not in guarded):
            self.scheduler.load_state_dict(state["scheduler_state"])
        self.state = TrainState(**state["train_state"])
        restore_rng_states(state["rng_states"])
        self._restore_amp(state, path)
        if guarded:
            self._apply_forced(guarded)
        if guarded or free:
            self.state.config_changes.append({"epoch": self.state.epoch, "forced": bool(guarded),
                                              "changes": {**free, **guarded}})
            for k, (old, new) in free.items():
                logger.info("--resume: %s %r -> %r (does not change the weights)", k, old, new)
        self._repair_pair(state, last, best, problems)
        self._resumed = True
        logger.info("Resumed from %s after epoch %d", path, self.state.epoch)
        return True

    def _restore_amp(self, state: dict[str, Any], path: Path) -> None:
        """The autocast dtype by today's rule; the GradScaler state when the scaler continues."""
        stored = _AMP_NAMES.get(state.get("amp_dtype") or "")
        self.amp_dtype = choose_amp(self.device, self.cfg.get("USE_AMP", True))
        if stored != self.amp_dtype:
            logger.warning("%s: the run trained with %s autocast; continuing with %s (USE_AMP=%r on %s)", path,
                           stored or "no", self.amp_dtype or "no", self.cfg.get("USE_AMP", True), self.device)
        self.scaler = self._make_scaler()
        if self.scaler.is_enabled() and stored == self.amp_dtype and state.get("scaler_state"):
            self.scaler.load_state_dict(state["scaler_state"])

    def _apply_forced(self, guarded: dict[str, list[Any]]) -> None:
        """Put what ``--force`` changed into the optimizer, scheduler and RNGs.

        The data (paths, BATCH_SIZE, SEED of the samples, ...), the loss and GRAD_CLIP
        already follow the new configuration; the optimizer, scheduler and global RNGs
        were just restored from the checkpoint, so the new values are applied here.
        """
        logger.warning("--resume --force: continuing with a changed configuration: %s",
                       ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in guarded.items()))
        if "LEARNING_RATE" in guarded:
            lr = float(self.cfg["LEARNING_RATE"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
                if "initial_lr" in group:
                    group["initial_lr"] = lr
            if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
        if "WEIGHT_DECAY" in guarded:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = float(self.cfg.get("WEIGHT_DECAY", 0.0))
        if "NUM_EPOCHS" in guarded and isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = int(self.cfg["NUM_EPOCHS"])
        if "SEED" in guarded:
            seed_everything(int(self.cfg["SEED"]))

    def _repair_pair(self, state: dict[str, Any], last: dict[str, Any] | None, best: dict[str, Any] | None,
                     problems: dict[str, str]) -> None:
        """Make ``last.pt`` and ``best.pt`` agree again after a kill between their writes."""
        if self.rank != 0 or (last is None and best is None):
            return
        if state is not last:  # resumed from best.pt: last.pt is older or unreadable
            self.save("last.pt")
            logger.warning("%s rewritten from best.pt (epoch %d)", self.run_dir / "last.pt", state["epoch"])
            return
        best_epoch = self.state.best_epoch
        best_file_epoch = best["epoch"] if best is not None else None
        if best_epoch == self.state.epoch and best_file_epoch != best_epoch:
            # last.pt is itself the best epoch, and best.pt missed it.
            self.save("best.pt")
            logger.warning("%s rewritten from last.pt (epoch %d, the best; it held %s)", self.run_dir / "best.pt",
                           best_epoch, problems.get("best.pt") or f"epoch {best_file_epoch}")
        elif best_epoch > 0 and best_file_epoch != best_epoch:
            logger.warning("%s holds epoch %s but last.pt records epoch %d as the best; it cannot be rebuilt: it "
                           "is replaced at the next improvement", self.run_dir / "best.pt", best_file_epoch,
                           best_epoch)

    # -- epochs -------------------------------------------------------------------------------
    def _per_sample(self, loss: torch.Tensor, batch_size: int) -> float:
        value = float(loss.detach())
        return value / batch_size if self.cfg.get("LOSS_REDUCTION", "sum") == "sum" else value

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.net.train()
        set_loader_epoch(self.train_loader, epoch)
        total, count, wait, t_start = 0.0, 0, 0.0, time.perf_counter()
        clip = self.cfg.get("GRAD_CLIP")
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg['NUM_EPOCHS']}", unit="batch",
                   disable=not self.show_progress or self.rank != 0, leave=False, dynamic_ncols=True)
        t_wait = time.perf_counter()
        for b, (eeg, src) in enumerate(bar):
            wait += time.perf_counter() - t_wait
            eeg = eeg.to(self.device, non_blocking=True)
            src = self._target_on_device(src)
            with self._autocast():
                out = self.net(eeg)
            loss = self.loss_fn(out.float(), src)
            if not torch.isfinite(loss):
                rows = self._batch_samples(self.train_loader, epoch, b)
                raise NonFiniteLossError(
                    f"non-finite training loss ({float(loss.detach())}) at epoch {epoch + 1}, batch {b} (metadata samples "
                    f"{rows}); nothing was saved over the last good checkpoint in {self.run_dir}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach())
            count += eeg.shape[0]
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(loss=f"{self._per_sample(loss, eeg.shape[0]):.4g}", sps=f"{count / elapsed:.1f}")
            t_wait = time.perf_counter()
        elapsed = time.perf_counter() - t_start
        batches = b + 1
        total, count, batches = self._all_ranks(total, count, batches)
        mean = total / max(count, 1) if self.cfg.get("LOSS_REDUCTION", "sum") == "sum" else total / max(batches, 1)
        return {"train_loss": mean, "data_wait_fraction": wait / max(elapsed, 1e-9),
                "samples_per_s": count / max(elapsed, 1e-9)}

    @torch.no_grad()
    def evaluate_loss(self, loader: DataLoader) -> float:
        self.net.eval()
        total, count, batches = 0.0, 0, 0
        for eeg, src in loader:
            eeg, src = eeg.to(self.device), self._target_on_device(src)
            with self._autocast():
                out = self.net(eeg)
            total += float(self.loss_fn(out.float(), src))
            count += eeg.shape[0]
            batches += 1
        total, count, batches = self._all_ranks(total, count, batches)
        if self.cfg.get("LOSS_REDUCTION", "sum") == "sum":
            return total / max(count, 1)
        return total / max(batches, 1)

    def _all_ranks(self, *values: float) -> list[float]:
        """Sums over ranks under ``torchrun`` (each rank sees its shard), as given otherwise."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def fit(self, *, resume: bool = False, force: bool = False) -> TrainState:
        """Train for ``NUM_EPOCHS`` (continuing after the last completed epoch on resume).

        Holds the run folder's lock throughout (:class:`~esikit.train.checkpoint.RunLock`).

        Parameters
        ----------
        resume : bool
            Continue from the run's checkpoint (see :meth:`resume`).
        force : bool
            With ``resume``: accept a changed configuration, apply and record it.

        Raises
        ------
        RunLockedError
            When another process trains into the same run folder.
        DataLoaderWorkerError
            When a DataLoader worker process died.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.run_dir) if self.rank == 0 else contextlib.nullcontext()
        with lock:
            try:
                return self._fit(resume, force)
            except RuntimeError as exc:
                if is_worker_death(exc):
                    message = worker_death_message(exc, self.run_dir)
                    # Drop the traceback: it holds the loader's iterator, whose clean-up
                    # unregisters the dead worker; kept alive, torch's SIGCHLD handler would
                    # raise this again at the next child process exit, anywhere.
                    exc.__traceback__ = None
                    _collect_dead_loaders()
                    raise DataLoaderWorkerError(message) from None
                raise

    def _fit(self, resume: bool, force: bool) -> TrainState:
        resumed = self.resume(force=force) if resume else False
        if not resumed:
            self._setup_amp()
        writer = self._writer()
        n_epochs = int(self.cfg["NUM_EPOCHS"])
        patience = self.cfg.get("EARLY_STOPPING_PATIENCE")
        for epoch in range(self.state.epoch, n_epochs):
            stats = self.train_epoch(epoch)
            val = self.evaluate_loss(self.val_loader) if self.val_loader is not None else stats["train_loss"]
            if not math.isfinite(val):
                raise NonFiniteLossError(f"non-finite validation loss at epoch {epoch + 1}; last good checkpoint "
                                         f"kept in {self.run_dir}")
            lr = self.optimizer.param_groups[0]["lr"]
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(val)
            elif self.scheduler is not None:
                self.scheduler.step()
            st = self.state
            st.epoch = epoch + 1
            for key, value in (("train_loss", stats["train_loss"]), ("val_loss", val), ("lr", lr),
                               ("data_wait_fraction", stats["data_wait_fraction"]),
                               ("samples_per_s", stats["samples_per_s"])):
                st.history[key].append(float(value))
            improved = val < st.best_val
            if improved:
                st.best_val, st.best_epoch, st.epochs_without_improvement = val, epoch + 1, 0
            else:
                st.epochs_without_improvement += 1
            if writer is not None:
                writer.add_scalar("loss/train", stats["train_loss"], epoch + 1)
                writer.add_scalar("loss/val", val, epoch + 1)
                writer.add_scalar("lr", lr, epoch + 1)
                writer.add_scalar("data/wait_fraction", stats["data_wait_fraction"], epoch + 1)
                writer.add_scalar("data/samples_per_s", stats["samples_per_s"], epoch + 1)
                writer.flush()
            # best.pt first, then last.pt: both hold this epoch's full state, so after a kill
            # between the writes the newer file is complete and resume() repairs the other.
            if improved:
                self.save("best.pt")
            self.save("last.pt")
            if self.rank == 0:
                record = dict(st.history, **({"config_changes": st.config_changes} if st.config_changes else {}))
                write_run_file(self.run_dir / "history.json", json.dumps(record, indent=1), "training history")
                logger.info("epoch %d: train %.5g, val %.5g, lr %.3g, %.1f samples/s, data wait %.1f%%",
                            epoch + 1, stats["train_loss"], val, lr, stats["samples_per_s"],
                            100 * stats["data_wait_fraction"])
            if self.show_progress and self.rank == 0:
                # Progress output (with the bars), only when the caller asked for it.
                tqdm_write(f"epoch {epoch + 1}/{n_epochs}: train loss {stats['train_loss']:.5g}  val loss {val:.5g}  "
                      f"{stats['samples_per_s']:.1f} samples/s  data wait {100 * stats['data_wait_fraction']:.1f}%"
                      + ("  (best)" if improved else ""))
            if patience and st.epochs_without_improvement >= int(patience):
                logger.info("early stopping: no validation improvement for %d epochs", patience)
                if self.show_progress and self.rank == 0:
                    tqdm_write(f"early stopping after epoch {epoch + 1} (best: epoch {st.best_epoch})")
                break
        if writer is not None:
            writer.flush()
        return self.state

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint with its weights; returns ``(model, checkpoint)``."""
    state = load_checkpoint(path, map_location=device)
    model = model_from_config(state["model_config"])
    model.load_state_dict(state["model_state"])
    model.to(device).eval()
    return model, state
