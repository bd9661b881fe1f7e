"""``esikit evaluate CHECKPOINT``: a trained model and the classical baselines on its test set."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..config import dataset_options, resolve_config_paths

logger = logging.getLogger(__name__)


def check_model_fits(model, fwd, *, checkpoint=None, fwd_path=None) -> None:
    """Raise a ValueError naming both shapes when ``model`` cannot run on ``fwd`` (C x R)."""
    shape = tuple(int(n) for n in np.shape(fwd))
    want = (getattr(model, "n_channels", None), getattr(model, "n_regions", None))
    if None in want:  # not an esikit model: nothing to compare
        return
    if shape != want:
        where = f"{checkpoint}: " if checkpoint else ""
        what = f"the forward matrix {fwd_path}" if fwd_path else "the forward matrix"
        raise ValueError(f"{where}the model takes {want[0]} channels and gives {want[1]} regions (expects a "
                         f"forward matrix of shape {want}), but {what} has shape {shape}; evaluate on data with "
                         "the leadfield the model was trained with")


def run_evaluation(model, test_dataset, fwd, out_dir, cfg: dict[str, Any], history=None, device="cpu",
                   fwd_path=None, **options: Any) -> dict[str, Any]:
    """Evaluate ``model`` and ``cfg['BASELINES']``; ``options`` (``oracle``, ``depth``, ``rule``) go to
    :func:`esikit.evaluate.runner.evaluate_model`."""
    from ..evaluate.runner import evaluate_model
    from ..head.anatomy import find_anatomy

    check_model_fits(model, fwd, fwd_path=fwd_path if fwd_path is not None else cfg.get("FWD_MATRIX_PATH"))
    anatomy = find_anatomy(cfg.get("ANATOMY"), fwd_path if fwd_path is not None else cfg.get("FWD_MATRIX_PATH"))
    return evaluate_model(
        model, test_dataset, fwd, out_dir, anatomy=anatomy, baselines=tuple(cfg.get("BASELINES") or ()),
        max_samples=cfg.get("EVAL_MAX_SAMPLES"), batch_size=max(int(cfg["BATCH_SIZE"]), 16), device=device,
        history=history, model_name=cfg["MODEL"], **options,
    )


class JoinedTestSets:
    """Several test datasets evaluated as one (positions run through them in order).

    What the evaluation reads of a dataset: ``len``, ``ds[i]``, ``sample_info(i)`` and
    ``fwd``. Each sample keeps its own file's row as ``index``; its number of sources
    (from its labels) splits the table, so a one- and a two-source file give rows by
    number of sources.
    """

    def __init__(self, parts: list[Any]):
        self.parts = list(parts)
        self.fwd = self.parts[0].fwd
        self._bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._bounds[-1])

    def _locate(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = int(np.searchsorted(self._bounds, i, side="right")) - 1
        return self.parts[k], int(i - self._bounds[k])

    def __getitem__(self, i: int):
        part, j = self._locate(int(i))
        return part[j]

    def sample_info(self, i: int) -> dict[str, Any]:
        part, j = self._locate(int(i))
        return part.sample_info(j)


def print_evaluation(ev: dict[str, Any], run_dir: Path) -> None:
    print()
    print(f"Test results on {ev['n_samples']} samples (median over samples; full tables in {run_dir}/results.md):")
    print()
    print(ev["comparison"])
    print(f"\nresults and figures: {run_dir}")


def main(args) -> int:
    """``esikit evaluate CHECKPOINT``: everything needed is recorded in the checkpoint."""
    from ..data import SpikeEEGMetadataDataset
    from ..train.trainer import load_model

    try:
        model, state = load_model(args.checkpoint)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = resolve_config_paths(dict(state["config"]), _path_bases(Path(args.checkpoint), state))
    if args.max_samples is not None:
        cfg["EVAL_MAX_SAMPLES"] = args.max_samples
    if getattr(args, "baselines", None) is not None:
        cfg["BASELINES"] = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    options = {"oracle": bool(getattr(args, "oracle", False)), "depth": getattr(args, "depth", None),
               "rule": getattr(args, "rule", None) or "deepsif"}
    given = args.test_metadata
    paths = [given] if isinstance(given, (str, Path)) else list(given or [])
    if not paths and cfg.get("TEST_METADATA_PATH"):
        paths = [cfg["TEST_METADATA_PATH"]]
    if not paths:
        print("error: the checkpoint's config has no TEST_METADATA_PATH; pass --test-metadata", file=sys.stderr)
        return 1
    parts = []
    try:
        for test_path in paths:
            ds = SpikeEEGMetadataDataset(test_path, cfg["FWD_MATRIX_PATH"], cfg.get("NMM_SPIKES_DIR"),
                                         dataset_len=None if given else cfg.get("TEST_DATASET_LEN"),
                                         seed=cfg.get("SEED", 0), **dataset_options(cfg))
            check_model_fits(model, ds.fwd, checkpoint=args.checkpoint, fwd_path=cfg["FWD_MATRIX_PATH"])
            parts.append(ds.subset(np.arange(len(ds)), freeze_epoch=True))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ds = parts[0] if len(parts) == 1 else JoinedTestSets(parts)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    history = state.get("train_state", {}).get("history")
    try:
        ev = run_evaluation(model, ds, ds.fwd, out, cfg, history=history, **options)
    except ValueError as exc:  # e.g. an unknown baseline or rule name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from ..train.trainer import is_worker_death, worker_death_message

        if not is_worker_death(exc):
            raise
        print(f"error: {worker_death_message(exc)}", file=sys.stderr)
        return 1
    print_evaluation(ev, out)
    return 0


def _path_bases(checkpoint: Path, state: dict[str, Any]) -> list[Path | None]:
    """Where a checkpoint's relative config paths may be relative to, most likely first.

    The folder training ran in (recorded as ``run_cwd``), then the folder that holds
    ``CHECKPOINT_DIR`` judging by where the checkpoint file is now (a project moved or
    copied as a whole), then the current folder.
    """
    bases: list[Path | None] = [Path(state["run_cwd"]) if state.get("run_cwd") else None]
    ckpt_dir = state.get("config", {}).get("CHECKPOINT_DIR")
    if isinstance(ckpt_dir, str) and not Path(ckpt_dir).is_absolute():
        # <root>/<CHECKPOINT_DIR>/<run>/best.pt -> <root>
        root = checkpoint.resolve().parent.parent
        for _ in Path(ckpt_dir).parts:
            root = root.parent
        bases.append(root)
    bases.append(Path.cwd())
    return bases


