"""The training loop: Adam on MSE, checkpoints, resume, TensorBoard, progress, AMP, DDP."""

from __future__ import annotations

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

from ..data import set_loader_epoch
from ..models import build_model, model_from_config
from .checkpoint import cleanup_stale_temporaries, load_checkpoint, save_checkpoint

try:
    from tqdm.auto import tqdm as _tqdm

    tqdm_write = _tqdm.write
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm_write = print

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; names the batch and its samples."""


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    epoch: int = 0  # epochs completed
    best_val: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {
        "train_loss": [], "val_loss": [], "lr": [], "data_wait_fraction": [], "samples_per_s": []})


# -- environment -----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
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


def choose_amp(device: torch.device, use_amp: bool, model: nn.Module, batch: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype to train with, or None.

    On a GPU: bf16 where supported, else fp16 (with a GradScaler). On a CPU: bf16 only
    when a measured forward/backward pass is faster than float32 (often it is not).
    """
    if not use_amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    x = batch[: min(4, batch.shape[0])].to(device)

    def timed(dtype: torch.dtype | None) -> float:
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                out = model(x)
            out.float().sum().backward()
            best = min(best, time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        return best

    try:
        fp32, bf16 = timed(None), timed(torch.bfloat16)
    except RuntimeError as exc:  # an op without a bf16 CPU kernel
        logger.info("bf16 autocast unavailable on CPU (%s); training in float32", exc)
        return None
    faster = bf16 < 0.9 * fp32
    logger.info("CPU step: float32 %.3f s, bf16 %.3f s -> %s", fp32, bf16, "bf16" if faster else "float32")
    return torch.bfloat16 if faster else None


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
        self.model = build_model(cfg["MODEL"], data_info["n_channels"], data_info["n_regions"],
                                 **dict(cfg.get("MODEL_KWARGS") or {})).to(self.device)
        self.model_config = self.model.get_config()
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
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
        batch = next(iter(self.train_loader))[0]
        self.amp_dtype = choose_amp(self.device, bool(self.cfg.get("USE_AMP")), self.model, batch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # The probe above must not change what training draws next.
        seed_everything(int(self.cfg["SEED"]))

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
    def checkpoint_state(self) -> dict[str, Any]:
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
            "data": {k: v for k, v in self.data_info.items() if isinstance(v, (int, float, str, type(None)))},
        }

    def save(self, name: str) -> Path | None:
        if self.rank != 0:
            return None
        return save_checkpoint(self.checkpoint_state(), self.run_dir / name)

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore everything from ``last.pt`` (or ``path``); False when there is none."""
        path = Path(path) if path is not None else self.run_dir / "last.pt"
        cleanup_stale_temporaries(path.parent)
        if not path.exists():
            logger.warning("--resume: no checkpoint at %s; starting from scratch", path)
            return False
        state = load_checkpoint(path, map_location=self.device)
        if state["model_config"] != self.model_config:
            raise ValueError(
                f"{path}: the checkpoint's model {state['model_config']} differs from the configured one "
                f"{self.model_config}; use the same MODEL/MODEL_KWARGS or another RUN_NAME")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if self.scheduler is not None and state.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(state["scheduler_state"])
        self.scaler.load_state_dict(state["scaler_state"])
        self.state = TrainState(**state["train_state"])
        restore_rng_states(state["rng_states"])
        dtype = state.get("amp_dtype")
        self.amp_dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}.get(dtype) if dtype else None
        self._resumed = True
        logger.info("Resumed from %s after epoch %d", path, self.state.epoch)
        return True

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

    def fit(self, *, resume: bool = False) -> TrainState:
        """Train for ``NUM_EPOCHS`` (continuing after the last completed epoch on resume)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
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
            # last.pt first: a kill between the two saves loses nothing of this epoch.
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            if self.rank == 0:
                (self.run_dir / "history.json").write_text(json.dumps(st.history, indent=1))
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
