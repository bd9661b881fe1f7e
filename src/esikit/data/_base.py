"""What the metadata and dynamic datasets share: positions, a shared epoch, frozen views."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .clips import ClipReadError

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log ``message`` once per process (an unreadable clip is met at every epoch)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s; the source contributes nothing (missing_clips='zeros')", message)


class EpochIndexedDataset(Dataset):
    """Base of the synthesized datasets.

    Position ``i`` maps to a sample index ``indices[i]`` that, with the seed and the
    epoch, seeds every draw. The epoch lives in shared memory so that persistent
    DataLoader workers see :meth:`set_epoch`; frozen views (validation, test) keep
    epoch 0. Subclasses define ``synthesize(i, epoch=None) -> (eeg, source)`` and set
    ``fwd`` (C x R), ``store`` (a clip store) and ``missing_clips``.
    """

    missing_clips: str = "zeros"
    indices: np.ndarray

    def _init_indexing(self, indices: np.ndarray) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._frozen = False

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def n_channels(self) -> int:
        """C, rows of the forward matrix ``fwd``."""
        return int(self.fwd.shape[0])  # type: ignore[attr-defined]

    @property
    def n_regions(self) -> int:
        """R, columns of the forward matrix ``fwd``."""
        return int(self.fwd.shape[1])  # type: ignore[attr-defined]

    @property
    def n_times(self) -> int:
        """T, time points of every clip."""
        return int(self.store.n_times)  # type: ignore[attr-defined]

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Fresh draws for a new epoch (no effect on frozen views)."""
        if not self._frozen:
            self._epoch.fill_(int(epoch))

    def subset(self, indices: Sequence[int] | np.ndarray, *, freeze_epoch: bool = False) -> Any:
        """A view of some positions, sharing arrays, clips and seed with this dataset.

        Parameters
        ----------
        indices : sequence of int
            Positions in this dataset.
        freeze_epoch : bool
            Keep epoch 0 for ever (validation and test sets).
        """
        view = copy.copy(self)
        view.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        if freeze_epoch:
            view._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
            view._frozen = True
        return view

    def sample_index(self, i: int) -> int:
        """Sample index (the one that seeds the draws) behind position ``i``."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        return int(self.indices[i])

    def synthesize(self, i: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        eeg, source = self.synthesize(int(i))
        return torch.from_numpy(eeg), torch.from_numpy(source)

    def _load_clip(self, clip_id: int) -> np.ndarray | None:
        """A clip, or None (with one warning) when it cannot be read and the policy is 'zeros'."""
        try:
            return self.store.get(clip_id)  # type: ignore[attr-defined]
        except ClipReadError as exc:
            if self.missing_clips == "zeros":
                warn_once(str(exc))
                return None
            raise
