"""Synthesis on the training device (torch), from resident clip and projection tensors.

When the model trains on a GPU, the batch can be made there: the packed clips
``(n_clips, R, T)``, their projections ``(n_clips, T, C)``, the forward matrix and the
metadata are copied to the device once, and each batch needs from the host only its
metadata rows and the sensor noise. The noise is the one thing that cannot be drawn on
the device: the contract fixes it to NumPy's generator seeded by ``(seed, epoch,
index)``, a sequential stream, so the host draws it (compiled, :mod:`._rng`) and sends
``B x T x C`` floats (150 KB per 500 x 75 sample, against 2 MB for a dense target).

The arithmetic is that of :mod:`esikit.data.fast` written with tensor operations, and
gives the reference samples up to float32 rounding (tested on CPU tensors).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from . import _rng
from .synthesis import draw_sample_randomness

logger = logging.getLogger(__name__)


class TorchSynthesizer:
    """Batched synthesis with torch on ``device``, for a dataset using the fast path.

    Parameters
    ----------
    dataset : SpikeEEGMetadataDataset
        Built with ``synthesis='fast'`` (its packed clip cache is copied to the device),
        or a view of one (``subset``).
    device : str or torch.device
        Where the clips live and the batches are made (``'cuda'``, or ``'cpu'``).

    Examples
    --------
    >>> gen = TorchSynthesizer(train_ds, "cuda")  # doctest: +SKIP
    >>> eeg, source = gen.synthesize_batch([0, 1, 2, 3])  # (4, T, C), (4, T, R) on the GPU  # doctest: +SKIP
    """

    def __init__(self, dataset: Any, device: str | torch.device = "cuda"):
        fast = getattr(dataset, "_fast", None)
        if fast is None:
            raise ValueError("TorchSynthesizer needs a dataset with synthesis='fast' (it uses the packed clip cache)")
        self.dataset = dataset
        self.device = torch.device(device)
        dev = self.device
        meta = fast.metadata
        self.clips = torch.tensor(np.asarray(fast.cache.clips), device=dev)  # a copy: the map is read-only
        self.proj = torch.tensor(np.asarray(fast.cache.projections(fast.fwd)), device=dev)
        self.ft = torch.as_tensor(fast.ft, device=dev)
        self.regions = torch.as_tensor(np.asarray(meta.regions), dtype=torch.int64, device=dev)
        self.weights = torch.as_tensor(np.asarray(meta.weights), device=dev)
        self.scale_ratio = torch.as_tensor(np.asarray(meta.scale_ratio), dtype=torch.float64, device=dev)
        self.snr_db = torch.as_tensor(np.asarray(meta.snr_db), dtype=torch.float64, device=dev)
        self.clip_ids = torch.as_tensor(np.asarray(fast.clip_ids), dtype=torch.int64, device=dev)
        self.seed = fast.seed
        self.normalize = fast.normalize
        self.n_sources = meta.n_sources
        self.n_options = meta.n_scale_options
        self.n_times = fast.n_times
        self.n_channels, self.n_regions = fast.fwd.shape
        logger.info("TorchSynthesizer on %s: %.0f MiB of clips and projections resident", dev,
                    (self.clips.numel() + self.proj.numel()) * 4 / 2**20)

    def draws(self, rows: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Host-side draws of metadata rows ``rows``: ``choice (B, S)``, ``noise (B, T, C)``."""
        n_b = rows.size
        choice = np.empty((n_b, self.n_sources), dtype=np.int64)
        noise = np.empty((n_b, self.n_times, self.n_channels), dtype=np.float32)
        if _rng.check_against_numpy():
            _rng.batch_draws(self.seed, int(epoch), rows, self.n_options, choice, noise)
        else:
            for b, g in enumerate(rows):
                choice[b], noise[b] = draw_sample_randomness(self.seed, epoch, int(g), self.n_sources,
                                                             self.n_options, self.n_times, self.n_channels)
        noise_t = torch.from_numpy(noise)
        if self.device.type == "cuda":
            noise_t = noise_t.pin_memory()
        return (torch.from_numpy(choice).to(self.device, non_blocking=True),
                noise_t.to(self.device, non_blocking=True))

    @torch.no_grad()
    def synthesize_batch(self, positions: Any, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at dataset positions ``positions``: ``eeg (B, T, C)``, ``source (B, T, R)`` on the device."""
        ds = self.dataset
        epoch = ds.epoch if epoch is None else int(epoch)
        rows = np.array([ds.sample_index(int(i)) for i in positions], dtype=np.int64)
        choice, noise = self.draws(rows, epoch)
        return self.synthesize_rows(torch.as_tensor(rows, device=self.device), choice, noise)

    def synthesize_rows(self, rows: torch.Tensor, choice: torch.Tensor,
                        noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples of metadata rows ``rows`` (B,) from given draws (see :meth:`draws`)."""
        n_r, n_t = self.n_regions, self.n_times
        reg = self.regions[rows]  # (B, S, P)
        n_b, n_s, n_p = reg.shape
        w = self.weights[rows].double()
        cid = self.clip_ids[rows]
        present = (reg[:, :, 0] >= 0) & (cid >= 0)  # (B, S)
        cidc = cid.clamp(min=0)
        regc = reg.clamp(min=0)
        valid = (reg >= 0) & present[:, :, None]
        # X[:, patch] = ...: a region listed twice in a patch takes its last weight.
        same = reg[:, :, :, None] == reg[:, :, None, :]
        later = torch.triu(torch.ones(n_p, n_p, dtype=torch.bool, device=reg.device), diagonal=1)
        keep = valid & ~(same & later).any(dim=3)

        centre = self.clips[cidc, regc[:, :, 0]].double()  # (B, S, T)
        top = centre.amax(dim=2)
        peak = torch.gather(self.scale_ratio[rows], 2, choice[:, :, None])[:, :, 0]
        ok = torch.isfinite(top) & (top > 0)
        gain = torch.where(ok, peak / torch.where(ok, top, torch.ones_like(top)), torch.zeros_like(top))
        patch_vals = ((centre * gain[:, :, None])[:, :, None, :] * w[:, :, :, None]).float()  # (B, S, P, T)
        clip_rows = self.clips[cidc[:, :, None], regc]  # (B, S, P, T)
        delta = (patch_vals - clip_rows) * keep[:, :, :, None]

        # EEG: projections plus the patch-only correction.
        pmask = present[:, :, None, None].to(self.proj.dtype)
        eeg = (self.proj[cidc] * pmask).sum(dim=1) + torch.einsum("bspt,bspc->btc", delta, self.ft[regc])
        power = eeg.double().square().mean(dim=1)  # (B, C)
        snr = self.snr_db[rows]
        sigma = torch.sqrt(10.0 ** (-snr[:, None] / 10.0) * power / 2.0).float()
        eeg = eeg + noise * sigma[:, None, :]

        # Target: X summed over sources at every labelled region, zeros elsewhere.
        spare = torch.full_like(reg, n_r)
        idx = torch.where(keep, reg, spare).reshape(n_b, n_s * n_p)
        labelled = torch.zeros(n_b, n_r + 1, dtype=torch.bool, device=reg.device)
        labelled.scatter_(1, idx, True)
        labelled = labelled[:, :n_r]
        src = torch.zeros(n_b, n_r + 1, n_t, dtype=torch.float32, device=reg.device)
        for s in range(n_s):
            full = self.clips[cidc[:, s]] * (present[:, s, None, None] & labelled[:, :, None])
            src[:, :n_r] += full
        src.scatter_add_(1, idx[:, :, None].expand(-1, -1, n_t), delta.reshape(n_b, n_s * n_p, n_t))
        src = src[:, :n_r].transpose(1, 2)

        if self.normalize:
            eeg = eeg - eeg.mean(dim=1, keepdim=True)
            eeg = eeg - eeg.mean(dim=2, keepdim=True)
            top_e = eeg.abs().amax(dim=(1, 2), keepdim=True)
            eeg = torch.where(top_e > 0, eeg / torch.where(top_e > 0, top_e, torch.ones_like(top_e)), eeg)
            top_y = src.amax(dim=(1, 2), keepdim=True)
            src = torch.where(top_y > 0, src / torch.where(top_y > 0, top_y, torch.ones_like(top_y)), src)
        return eeg.contiguous(), src.contiguous()


__all__ = ["TorchSynthesizer"]
