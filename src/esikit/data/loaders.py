"""DataLoaders over the metadata and dynamic datasets: seeded split, epoch-aware shuffling."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .._validation import check_option, check_positive_int
from .dataset import SpikeEEGMetadataDataset, resolve_forward

logger = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``.

    Unlike ``shuffle=True`` with a global generator, the order of epoch ``e`` is known
    without replaying epochs ``0..e-1``, so a resumed run sees the same batches as an
    uninterrupted one. With ``num_replicas > 1`` (``torchrun``), each rank takes every
    ``num_replicas``-th position of the permutation, padded so all ranks have as many
    (as ``DistributedSampler`` does).
    """

    def __init__(self, n: int, seed: int = 0, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True):
        check_option("rank", rank, range(num_replicas))
        self.n = int(n)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0x5EED]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            order = np.resize(order, total)[self.rank::self.num_replicas]
        return iter(order.tolist())

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


def set_loader_epoch(loader: DataLoader | None, epoch: int) -> None:
    """Propagate ``epoch`` to a loader's sampler and dataset (whichever support it)."""
    if loader is None:
        return
    for obj in (loader.sampler, getattr(loader.batch_sampler, "sampler", None), loader.dataset):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def split_indices(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``range(n)``: ``(train_idx, val_idx)``, sorted."""
    if not 0.0 <= float(val_split) < 1.0:
        raise ValueError(f"Invalid value for 'VAL_SPLIT': expected a fraction in [0, 1), got {val_split!r}")
    n_val = int(round(n * float(val_split)))
    if n - n_val < 1:
        raise ValueError(f"Invalid value for 'VAL_SPLIT': {val_split} leaves no training sample out of {n}")
    perm = np.random.default_rng([int(seed), 0xDA7A]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def make_loader(dataset: Any, batch_size: int, *, shuffle_seed: int | None, num_workers: int, pin_memory: bool,
            num_replicas: int = 1, rank: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader over ``dataset`` as every esikit loader is built.

    ``shuffle_seed`` set: an :class:`EpochShuffleSampler` (same order for the same seed and
    epoch, sharded over ``num_replicas``); None: sequential. Workers get the dataset's
    epoch through its shared state, so ``set_epoch`` reaches persistent workers.
    """
    if shuffle_seed is not None:
        sampler = EpochShuffleSampler(len(dataset), shuffle_seed, num_replicas=num_replicas, rank=rank)
    elif num_replicas > 1:
        sampler = EpochShuffleSampler(len(dataset), 0, num_replicas=num_replicas, rank=rank, shuffle=False)
    else:
        sampler = None
    from .fast import collate_synthesized

    kwargs.setdefault("collate_fn", collate_synthesized)  # batches made whole, not stacked again
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        **kwargs,
    )


def create_dataloaders_from_metadata(
    train_metadata_path: str | PathLike,
    test_metadata_path: str | PathLike | None,
    fwd_matrix_path: str | PathLike | np.ndarray,
    batch_size: int = 8,
    val_split: float = 0.1,
    num_workers: int = 4,
    nmm_spikes_dir: str | PathLike | None = None,
    train_dataset_len: int | None = None,
    test_dataset_len: int | None = None,
    *,
    seed: int = 0,
    pin_memory: bool = False,
    normalize: bool = True,
    test_nmm_spikes_dir: str | PathLike | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    **dataset_kwargs: Any,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None, dict[str, Any]]:
    """Train, validation and test loaders over DeepSIF metadata.

    Parameters
    ----------
    train_metadata_path, test_metadata_path : path-like
        Metadata files; ``test_metadata_path`` may be None (no test loader).
    fwd_matrix_path : path-like or array
        Forward matrix file (or array), shared by all three datasets.
    batch_size : int
    val_split : float
        Fraction of the training metadata held out for validation (seeded split;
        validation draws stay those of epoch 0).
    num_workers : int
        DataLoader worker processes (persistent). Workers share the metadata arrays
        through shared memory instead of each holding a copy.
    nmm_spikes_dir : path-like, optional
        Clip folder (default: ``nmm_spikes`` beside each metadata file).
    train_dataset_len, test_dataset_len : int, optional
        Use only the first samples of each file.
    seed : int
        Seed of the split, the shuffling and every sample's draws.
    test_nmm_spikes_dir : path-like, optional
        Clip folder of the test metadata when it differs from ``nmm_spikes_dir``.
    num_replicas, rank : int
        Distributed training (``torchrun``): each rank loads its share of the training
        and validation sets; the test loader stays whole (evaluation runs on rank 0).
    **dataset_kwargs
        Passed to :class:`SpikeEEGMetadataDataset` (``clip_resolution``, ``nper``,
        ``missing_clips``, ...).

    Returns
    -------
    train_loader, val_loader, test_loader : DataLoader
        ``val_loader`` is None when ``val_split`` is 0, ``test_loader`` when no test file.
    info : dict
        ``fwd`` (C, R), ``n_channels``, ``n_regions``, ``n_times``, sample counts and
        the datasets themselves.
    """
    check_positive_int("BATCH_SIZE", batch_size)
    check_positive_int("NUM_WORKERS", num_workers, minimum=0)
    fwd, fwd_source = resolve_forward(fwd_matrix_path)
    _bank_channel_names(fwd_matrix_path, dataset_kwargs)
    full = SpikeEEGMetadataDataset(
        train_metadata_path, fwd, nmm_spikes_dir, dataset_len=train_dataset_len, normalize=normalize,
        seed=seed, **dataset_kwargs,
    )
    train_idx, val_idx = split_indices(len(full), val_split, seed)
    train_ds = full.subset(train_idx)
    val_ds = full.subset(val_idx, freeze_epoch=True) if val_idx.size else None
    test_ds = None
    if test_metadata_path is not None:
        test_ds = SpikeEEGMetadataDataset(
            test_metadata_path, fwd, test_nmm_spikes_dir or nmm_spikes_dir, dataset_len=test_dataset_len,
            normalize=normalize, seed=seed, **dataset_kwargs,
        )
        test_ds = test_ds.subset(np.arange(len(test_ds)), freeze_epoch=True)

    train_loader, val_loader, test_loader = _three_loaders(train_ds, val_ds, test_ds, batch_size, seed, num_workers,
                                                           pin_memory, num_replicas, rank)
    info = {
        "fwd": fwd,
        "fwd_source": fwd_source,
        "n_channels": int(fwd.shape[0]),
        "n_regions": int(fwd.shape[1]),
        "n_times": full.n_times,
        "n_train": len(train_ds),
        "n_val": len(val_ds) if val_ds is not None else 0,
        "n_test": len(test_ds) if test_ds is not None else 0,
        "train_dataset": train_ds,
        "val_dataset": val_ds,
        "test_dataset": test_ds,
        "train_metadata": full.metadata.summary(),
        "test_metadata": test_ds.metadata.summary() if test_ds is not None else None,
    }
    logger.info(
        "Loaders: %d train, %d validation, %d test samples; %d channels, %d regions, %d time points",
        info["n_train"], info["n_val"], info["n_test"], info["n_channels"], info["n_regions"], info["n_times"],
    )
    return train_loader, val_loader, test_loader, info


def _bank_channel_names(fwd_matrix_path: Any, dataset_kwargs: dict[str, Any]) -> None:
    """Recorded noise: match the bank's channels to the leadfield file's by name when it has them."""
    if dataset_kwargs.get("noise", "white") != "white" and isinstance(fwd_matrix_path, (str, PathLike)):
        from .noise import forward_channel_names

        dataset_kwargs.setdefault("channel_names", forward_channel_names(fwd_matrix_path))


def _three_loaders(train_ds: Any, val_ds: Any, test_ds: Any, batch_size: int, seed: int, num_workers: int,
                   pin_memory: bool, num_replicas: int, rank: int) -> tuple[DataLoader, DataLoader | None,
                                                                           DataLoader | None]:
    """Shuffled training, sequential validation (both sharded over ranks) and whole test loaders."""
    common = dict(num_workers=int(num_workers), pin_memory=bool(pin_memory) and torch.cuda.is_available())
    dist = dict(num_replicas=int(num_replicas), rank=int(rank))
    train_loader = make_loader(train_ds, int(batch_size), shuffle_seed=seed, **common, **dist)
    val_loader = make_loader(val_ds, int(batch_size), shuffle_seed=None, **common, **dist) if val_ds is not None else None
    test_loader = make_loader(test_ds, int(batch_size), shuffle_seed=None, **common) if test_ds is not None else None
    return train_loader, val_loader, test_loader


def create_dynamic_dataloaders(
    nmm_spikes_dir: str | PathLike,
    fwd_matrix_path: str | PathLike | np.ndarray,
    anatomy: Any,
    *,
    train_dataset_len: int | None = None,
    test_metadata_path: str | PathLike | None = None,
    test_dataset_len: int | None = None,
    snr_range_db: tuple[float, float] = (5.0, 20.0),
    patch_size_range: tuple[int, int] | None = None,
    n_sources: int | Sequence[int] = (1, 2),
    batch_size: int = 8,
    val_split: float = 0.1,
    num_workers: int = 4,
    seed: int = 0,
    pin_memory: bool = False,
    normalize: bool = True,
    num_replicas: int = 1,
    rank: int = 0,
    **dataset_kwargs: Any,
) -> tuple[DataLoader, DataLoader | None, DataLoader, dict[str, Any]]:
    """Train, validation and test loaders of the dynamic mode: configurations drawn on the fly.

    Training draws new configurations every epoch (:class:`~esikit.data.DynamicSpikeEEGDataset`,
    ``seed``); validation (``val_split`` times the training length) uses ``seed + 1`` and
    stays at epoch 0; the test set is the test metadata file when given, else a frozen
    dynamic set with ``seed + 2``.

    Parameters
    ----------
    nmm_spikes_dir : path-like
        The clip folder (``a{region}/nmm_{k}.mat``), shared by every set.
    fwd_matrix_path : path-like or array
        Forward matrix file (or array), ``C x R``.
    anatomy : Anatomy
        Region adjacency and centres (:func:`esikit.head.anatomy.find_anatomy`).
    train_dataset_len : int | None
        Training samples per epoch (None: 10000).
    test_metadata_path : path-like | None
        Test metadata file; None: a dynamic test set.
    test_dataset_len : int | None
        Samples of the test set (None: the whole file, or ``max(n_val, 100)``).
    snr_range_db, n_sources
        As for :class:`~esikit.data.DynamicSpikeEEGDataset`.
    patch_size_range : (int, int) | None
        None: ``(1, round(70 R / 994))``, the fraction of the cortex of DeepSIF's 70 of
        994 regions.
    batch_size, val_split, num_workers, seed, pin_memory, normalize, num_replicas, rank
        As for :func:`create_dataloaders_from_metadata`.
    **dataset_kwargs
        Every dataset option (:func:`esikit.config.dataset_options` and ``target``): the
        metadata test set takes them all, the dynamic sets those in
        ``DynamicSpikeEEGDataset.DATASET_OPTIONS`` and ``target``.

    Returns
    -------
    train_loader, val_loader, test_loader : DataLoader
        ``val_loader`` is None when ``val_split`` gives no sample.
    info : dict
        ``fwd``, ``n_channels``, ``n_regions``, ``n_times``, the sample counts and the
        datasets.
    """
    from .dynamic import DynamicSpikeEEGDataset

    check_positive_int("BATCH_SIZE", batch_size)
    check_positive_int("NUM_WORKERS", num_workers, minimum=0)
    n_train = int(train_dataset_len or 10000)
    if patch_size_range is None:  # the same fraction of the cortex as DeepSIF's 70 of 994 regions
        patch_size_range = (1, max(1, int(round(70 * anatomy.n_regions / 994))))
    _bank_channel_names(fwd_matrix_path, dataset_kwargs)
    dynamic_options = (*DynamicSpikeEEGDataset.DATASET_OPTIONS, "target", "channel_names")
    kw = dict(snr_range_db=tuple(snr_range_db), patch_size_range=tuple(patch_size_range), n_sources=n_sources,
              normalize=normalize, **{k: v for k, v in dataset_kwargs.items() if k in dynamic_options})
    train_ds = DynamicSpikeEEGDataset(nmm_spikes_dir, fwd_matrix_path, anatomy, n_train, seed=seed, **kw)
    n_val = int(round(n_train * float(val_split)))
    val_ds = None
    if n_val:
        val_ds = DynamicSpikeEEGDataset(nmm_spikes_dir, train_ds.fwd, anatomy, n_val, seed=seed + 1,
                                        clip_store=train_ds.store, **kw).subset(np.arange(n_val), freeze_epoch=True)
    if test_metadata_path:
        test_ds = SpikeEEGMetadataDataset(test_metadata_path, train_ds.fwd, nmm_spikes_dir,
                                          dataset_len=test_dataset_len, seed=seed, normalize=normalize,
                                          **dataset_kwargs)
    else:
        test_ds = DynamicSpikeEEGDataset(nmm_spikes_dir, train_ds.fwd, anatomy, int(test_dataset_len or max(n_val, 100)),
                                         seed=seed + 2, clip_store=train_ds.store, **kw)
    test_ds = test_ds.subset(np.arange(len(test_ds)), freeze_epoch=True)
    loaders = _three_loaders(train_ds, val_ds, test_ds, batch_size, seed, num_workers, pin_memory, num_replicas, rank)
    info = {"fwd": train_ds.fwd, "n_channels": train_ds.n_channels, "n_regions": train_ds.n_regions,
            "n_times": train_ds.n_times, "n_train": len(train_ds), "n_val": len(val_ds) if val_ds is not None else 0,
            "n_test": len(test_ds), "train_dataset": train_ds, "val_dataset": val_ds, "test_dataset": test_ds}
    return (*loaders, info)  # type: ignore[return-value]
