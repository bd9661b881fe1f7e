"""What the metadata and dynamic datasets share: positions, a shared epoch, frozen views,
and the synthesis itself.

A dataset is an adapter: it turns positions into a :class:`~esikit.data.synthesis.SampleSpecs`
batch (:meth:`EpochIndexedDataset.specs`); everything after (the noise choice, the fast
kernel or the reference function, single samples, batches) is here, once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .clips import ClipReadError
from .synthesis import SampleSpecs, synthesize_spec

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
    epoch 0. Subclasses define :meth:`specs` and set ``fwd`` (C x R), ``store`` (a clip
    store), ``seed``, ``normalize``, ``missing_clips`` and ``target``, then call
    :meth:`_init_noise` and, for the fast path, :meth:`_open_fast_path`.
    """

    missing_clips: str = "zeros"
    target: str = "dense"
    noise: str = "white"
    _noise_bank: torch.Tensor | None = None  # in shared memory: workers map it, not copy it
    indices: np.ndarray
    _fast: Any = None

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

    # -- synthesis --------------------------------------------------------------------------
    def specs(self, positions: Sequence[int], epoch: int) -> SampleSpecs:  # pragma: no cover
        """The configurations of the samples at ``positions`` (without the noise choice)."""
        raise NotImplementedError

    def _init_noise(self, noise: str, noise_bank_path: Any, channel_names: Sequence[str] | None) -> None:
        """Check the noise option and load the bank (at start-up, so errors come first)."""
        from .._validation import check_option
        from .noise import NOISE_MODES, forward_channel_names, load_noise_bank

        self.noise = check_option("noise", noise, NOISE_MODES)
        self._noise_bank = None
        if noise != "white":
            if noise_bank_path is None:
                raise ValueError(f"Invalid value for 'noise_bank_path': noise={noise!r} needs a noise bank file "
                                 "(NOISE_BANK_PATH), got None.")
            if channel_names is None and getattr(self, "fwd_source", "<array>") != "<array>":
                channel_names = forward_channel_names(self.fwd_source)  # type: ignore[attr-defined]
            bank = load_noise_bank(noise_bank_path, self.n_channels, self.n_times, channel_names)
            self._noise_bank = torch.from_numpy(bank).share_memory_()

    @property
    def noise_bank(self) -> np.ndarray | None:
        """Recorded noise segments ``(K, L, C)`` in the forward matrix's channel order, or None."""
        return None if self._noise_bank is None else self._noise_bank.numpy()

    def _open_fast_path(self, cache_dir: Any) -> Any:
        """Open (or build) the packed clip cache and the kernel's state; returns the cache."""
        from .fast import FastSynthesizer
        from .packed import PackedClipCache

        cache = PackedClipCache.open(self.store, cache_dir)  # type: ignore[attr-defined]
        self._fast = FastSynthesizer(cache, self.fwd, self.seed, self.normalize,  # type: ignore[attr-defined]
                                     self._noise_bank)
        return cache

    def _noisy_specs(self, positions: Sequence[int], epoch: int) -> SampleSpecs:
        specs = self.specs(positions, epoch)
        if self.noise != "white":
            from .noise import draw_noise_choice

            specs.noise_segment, specs.noise_offset = draw_noise_choice(
                self.noise, self.seed, epoch, specs.index, self.noise_bank, self.n_times)  # type: ignore[attr-defined]
        return specs

    def synthesize(self, i: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` as numpy arrays ``(eeg (T, C), source (T, R))``."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._fast is not None:
            eeg, src = self._fast.synthesize(self._noisy_specs([i], epoch), epoch, as_numpy=True)
            return eeg[0], src[0]
        return self.synthesize_reference(i, epoch)

    def synthesize_reference(self, i: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` by the reference :func:`~esikit.data.synthesis.synthesize_spec`, clips from the store."""
        epoch = self.epoch if epoch is None else int(epoch)
        return synthesize_spec(self._noisy_specs([i], epoch), 0, self._load_clip, self.fwd,  # type: ignore[attr-defined]
                               self.seed, epoch, self.n_times, self.normalize, self.noise_bank)  # type: ignore[attr-defined]

    def synthesize_batch(self, positions: Sequence[int] | np.ndarray, epoch: int | None = None,
                         target: str | None = None) -> tuple[torch.Tensor, Any]:
        """Samples at ``positions`` stacked: ``eeg (B, T, C)`` and the source (``(B, T, R)``,
        or ``(regions, values)`` for the compact target)."""
        epoch = self.epoch if epoch is None else int(epoch)
        target = self.target if target is None else target
        if self._fast is None:
            pairs = [self.synthesize(int(i), epoch) for i in positions]
            return (torch.from_numpy(np.stack([p[0] for p in pairs])),
                    torch.from_numpy(np.stack([p[1] for p in pairs])))
        return self._fast.synthesize(self._noisy_specs(positions, epoch), epoch, target=target)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        eeg, source = self.synthesize(int(i))
        return torch.from_numpy(eeg), torch.from_numpy(source)

    def __getitems__(self, positions: list[int]) -> list[Any]:
        """A whole batch in one call (DataLoader's batched fetch); see
        :func:`esikit.data.fast.collate_synthesized`."""
        if self._fast is None:
            return [self[int(i)] for i in positions]
        from .fast import SynthesizedBatch

        return SynthesizedBatch(*self.synthesize_batch(positions))

    def _load_clip(self, clip_id: int) -> np.ndarray | None:
        """A clip, or None (with one warning) when it cannot be read and the policy is 'zeros'."""
        try:
            return self.store.get(clip_id)  # type: ignore[attr-defined]
        except ClipReadError as exc:
            if self.missing_clips == "zeros":
                warn_once(str(exc))
                return None
            raise
