"""The fast path of both datasets: a batch of sample specs made in one compiled call.

It gives the samples of :func:`esikit.data.synthesis.synthesize_spec` (the contract,
kept as the readable reference) up to float32 rounding, with the same draws, but:

- clips come from the :class:`~esikit.data.packed.PackedClipCache` (one memory map
  shared by every worker) instead of per-process decoded copies;
- the EEG is not ``X @ F.T`` (75 x 994 x 500 multiply-adds): each clip's projection
  ``P[c] = clip_c @ F.T`` is computed once, and a source adds
  ``P[c] + (a w^T - clip_c[:, p]) @ F[:, p].T``, a correction over its patch only
  (the replaced columns are one waveform times weights);
- the random draws are NumPy's, reproduced in compiled code (:mod:`._rng`);
- a batch is made in one call and written straight into the batch arrays (no
  per-sample tensors to stack); the dense target arrives zero-filled from the kernel
  (fresh pages) and only its labelled columns are written; a compact target (labelled regions and their waveforms,
  :func:`expand_compact_target` on the device) skips the dense write altogether.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numba as nb
import numpy as np
import torch

from . import _rng
from .packed import PackedClipCache
from .synthesis import SampleSpecs, draw_sample_randomness

logger = logging.getLogger(__name__)

#: ``fast``: this module's kernel over the packed clip cache; ``reference``: one
#: :func:`~esikit.data.synthesis.synthesize_spec` call per sample from the clip files.
SYNTHESIS_MODES = ("fast", "reference")
TARGET_MODES = ("dense", "compact")


@nb.njit(cache=True)
def _source_gain(clip_centre, peak):
    """``peak / max(a)`` for the centre waveform ``a`` (0 when ``max(a) <= 0``), float64."""
    top = -np.inf
    for t in range(clip_centre.size):
        v = np.float64(clip_centre[t])
        if v > top:
            top = v
    if not np.isfinite(top) or top <= 0.0:
        return 0.0
    return peak / top


# Reassociation lets the reductions vectorize; no 'nnan'/'ninf', so the finiteness
# checks of the contract's degenerate cases stay.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@nb.njit(cache=True, fastmath=_FASTMATH, inline="always")
def _add_noise(e, snr_db, white, rec, off, recorded, power, acc):
    """Sensor noise into ``e`` (T, C), in place (``docs/SAMPLE_CONTRACT.md``).

    White: ``white`` (T, C) standard normals times ``sqrt(10^(-snr/10) * P_c / 2)``
    (DeepSIF's training noise). ``recorded``: ``rec[off:off + T]`` (a bank segment) times
    ``sqrt(10^(-snr/10) * P_c / mean_t(rec^2))`` (DeepSIF's evaluation, no ``/ 2``).
    ``power``, ``acc``: (C,) float64 scratch.
    """
    n_times, n_ch = e.shape
    power[:] = 0.0
    for t in range(n_times):
        for c in range(n_ch):
            v = np.float64(e[t, c])
            power[c] += v * v
    scale_db = 10.0 ** (-snr_db / 10.0)
    if not recorded:
        for c in range(n_ch):
            power[c] = np.float32(math.sqrt(scale_db * (power[c] / n_times) / 2.0))
        for t in range(n_times):
            for c in range(n_ch):
                e[t, c] += white[t, c] * np.float32(power[c])
    else:  # recorded noise at the full noise power (no / 2), DeepSIF's evaluation
        acc[:] = 0.0
        for t in range(n_times):
            for c in range(n_ch):
                v = np.float64(rec[off + t, c])
                acc[c] += v * v
        for c in range(n_ch):
            power[c] = np.float32(math.sqrt(scale_db * power[c] / acc[c])) if acc[c] > 0 else 0.0
        for t in range(n_times):
            for c in range(n_ch):
                e[t, c] += rec[off + t, c] * np.float32(power[c])


@nb.njit(cache=True, fastmath=_FASTMATH, inline="always")
def _normalize_eeg(e, cmean):
    """Remove the time mean per channel, then the channel mean per time; scale to max |e| = 1."""
    n_times, n_ch = e.shape
    cmean[:] = 0.0
    for t in range(n_times):
        for c in range(n_ch):
            cmean[c] += e[t, c]
    for c in range(n_ch):
        cmean[c] /= n_times
    top = 0.0
    for t in range(n_times):
        m = 0.0
        for c in range(n_ch):
            e[t, c] = np.float32(e[t, c] - cmean[c])
            m += e[t, c]
        m /= n_ch
        for c in range(n_ch):
            e[t, c] = np.float32(e[t, c] - m)
            a = abs(e[t, c])
            if a > top:
                top = a
    if top > 0:
        inv = np.float32(1.0 / top)
        for t in range(n_times):
            for c in range(n_ch):
                e[t, c] = e[t, c] * inv


@nb.njit(cache=True, fastmath=_FASTMATH)
def _synthesize_batch(spec, draws, model, out, flags):
    """Fill a batch in place (see :meth:`FastSynthesizer.synthesize`).

    spec: the :class:`~esikit.data.synthesis.SampleSpecs` arrays (index (B,) seeds the
    draws; regions (B, S, P) int32, -1 padding; weights (B, S, P); clip_ids (B, S) int64,
    -1: no clip; scale_ratio (B, S, K) float64; snr_db (B,); noise_segment (B,) -1:
    white; noise_offset (B,)). draws: (seed, epoch, draw: make the draws here, else
    ``choice`` (B, S) and ``noise`` (B, T, C) hold them). model: clips (n, R, T), proj
    (n, T, C), ft (R, C), bank (n_segments, L, C) of recorded noise. out: eeg (B, T, C);
    dense: src (B, T, R) (``zeroed``: it holds zeros already, only the labelled columns
    are written); else lab_regions (B, L) int64 (-1 padded) and lab_values (B, L, T).
    flags: (normalize, dense, zeroed).
    """
    indices, regions, weights, clip_ids, scale_ratio, snr_db, noise_segment, noise_offset = spec
    seed, epoch, draw, choice, noise = draws
    clips, proj, ft, bank = model
    eeg_out, src_out, lab_regions, lab_values = out
    normalize, dense, zeroed = flags
    n_batch, n_src, n_pos = regions.shape
    n_times, n_ch = eeg_out.shape[1], eeg_out.shape[2]
    n_reg = ft.shape[0]
    n_opt = scale_ratio.shape[2]
    # Scratch, reused across the batch.
    wpos = np.full((n_src, n_reg), -1, dtype=np.int64)
    mark = np.full(n_reg, -1, dtype=np.int64)
    labels = np.empty(n_src * n_pos, dtype=np.int64)
    vals = np.empty((n_src * n_pos, n_times), dtype=np.float32)
    dmat = np.empty((n_src * n_pos, n_times), dtype=np.float32)
    gmat = np.empty((n_src * n_pos, n_ch), dtype=np.float32)
    gains = np.zeros(n_src, dtype=np.float64)
    row_choice = np.empty(n_src, dtype=np.int64)
    row_noise = np.empty((n_times, n_ch), dtype=np.float32)
    power = np.empty(n_ch, dtype=np.float64)
    cmean = np.empty(n_ch, dtype=np.float64)
    blk, zx, zacc = _rng.normal_scratch(n_times * n_ch)
    for b in range(n_batch):
        if draw:
            _rng.sample_draws_scratch(seed, epoch, indices[b], n_opt, row_choice, row_noise, blk, zx, zacc)
            nz = row_noise
            ch = row_choice
        else:
            nz = noise[b]
            ch = choice[b]
        e = eeg_out[b]
        e[:, :] = 0.0
        n_lab = 0
        k = 0
        # -- EEG: projections plus a patch-only correction (one product for all sources) ----
        for s in range(n_src):
            cid = clip_ids[b, s]
            gains[s] = 0.0
            if regions[b, s, 0] < 0 or cid < 0:
                continue
            clip = clips[cid]
            peak = scale_ratio[b, s, ch[s]]
            g = _source_gain(clip[regions[b, s, 0]], peak)
            gains[s] = g
            centre = clip[regions[b, s, 0]]
            pc = proj[cid]
            for t in range(n_times):
                for c in range(n_ch):
                    e[t, c] += pc[t, c]
            for j in range(n_pos):  # later duplicates win, as in X[:, patch] = ...
                r = regions[b, s, j]
                if r >= 0:
                    wpos[s, r] = j
            for j in range(n_pos):
                r = regions[b, s, j]
                if r < 0 or wpos[s, r] != j:
                    continue
                wj = np.float64(weights[b, s, j])
                cr = clip[r]
                for t in range(n_times):
                    dmat[k, t] = np.float32(np.float64(centre[t]) * g * wj) - cr[t]
                for c in range(n_ch):
                    gmat[k, c] = ft[r, c]
                k += 1
                if mark[r] < 0:
                    mark[r] = n_lab
                    labels[n_lab] = r
                    n_lab += 1
        if k > 0:
            e += np.dot(dmat[:k].T, gmat[:k])
        # -- target at the labelled regions: the sum over sources of X_s there -------------
        for l in range(n_lab):
            vals[l, :] = 0.0
        for s in range(n_src):
            cid = clip_ids[b, s]
            if regions[b, s, 0] < 0 or cid < 0:
                continue
            clip = clips[cid]
            centre = clip[regions[b, s, 0]]
            g = gains[s]
            for l in range(n_lab):
                r = labels[l]
                j = wpos[s, r]
                if j >= 0:
                    wj = np.float64(weights[b, s, j])
                    for t in range(n_times):
                        vals[l, t] += np.float32(np.float64(centre[t]) * g * wj)
                else:
                    cr = clip[r]
                    for t in range(n_times):
                        vals[l, t] += cr[t]
        seg = noise_segment[b]
        _add_noise(e, snr_db[b], nz, bank[max(seg, 0)], noise_offset[b], seg >= 0, power, cmean)
        top_y = 1.0
        if normalize:
            _normalize_eeg(e, cmean)
            top_y = -np.inf if n_lab == n_reg else 0.0
            for l in range(n_lab):
                for t in range(n_times):
                    if vals[l, t] > top_y:
                        top_y = vals[l, t]
            if not top_y > 0:
                top_y = 1.0
        inv_y = np.float32(1.0 / top_y)
        if dense:
            out = src_out[b]
            for t in range(n_times):
                row = out[t]
                if not zeroed:
                    row[:] = 0.0
                for l in range(n_lab):
                    row[labels[l]] = vals[l, t] * inv_y
        else:
            lab_regions[b, :] = -1
            for l in range(n_lab):
                lab_regions[b, l] = labels[l]
                for t in range(n_times):
                    lab_values[b, l, t] = vals[l, t] * inv_y
            for l in range(n_lab, lab_values.shape[1]):
                lab_values[b, l, :] = 0.0
        # Reset the scratch marks.
        for l in range(n_lab):
            mark[labels[l]] = -1
        for s in range(n_src):
            for j in range(n_pos):
                r = regions[b, s, j]
                if r >= 0:
                    wpos[s, r] = -1


class _SingleThreadBlas:
    """Run BLAS single-threaded inside the kernel (numba's ``np.dot`` calls SciPy's OpenBLAS).

    The kernel makes a few small products per sample; OpenBLAS would spread each over
    its threads, which costs far more than it gains and fights the DataLoader workers
    for cores (measured: 20 ms instead of 1 ms per sample on two busy cores). Uses
    OpenBLAS's thread-local setting where it exists, so other threads are unaffected.
    """

    def __init__(self) -> None:
        self._setters: list[Any] | None = None

    def _find(self) -> list[Any]:
        import ctypes

        import scipy.linalg.cython_blas  # noqa: F401 - numba's np.dot uses it: load it before looking

        setters: list[Any] = []
        try:
            with open("/proc/self/maps") as fh:
                paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
        except OSError:
            return setters
        for path in sorted(paths):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            fn = getattr(lib, "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                setters.append(fn)
        return setters

    def __enter__(self) -> list[int]:
        if self._setters is None:
            self._setters = self._find()
        self._prev = [fn(1) for fn in self._setters]
        return self._prev

    def __exit__(self, *exc: Any) -> None:
        for fn, prev in zip(self._setters or [], self._prev):
            fn(prev)


_BLAS_1 = _SingleThreadBlas()


def _new_batch_array(shape: tuple[int, ...]) -> tuple[np.ndarray, torch.Tensor]:
    """A zero-filled float32 array and the tensor over the same memory.

    In a DataLoader worker the memory is a new shared-memory segment (zeros, as any new
    segment), so sending the batch to the main process copies nothing; elsewhere it is
    ``np.zeros``, whose large allocations are fresh zero pages from the kernel (and
    transparent huge pages): either way the kernel's zeroing is the only full pass over
    a dense target, and the synthesis writes just the labelled columns.
    """
    if torch.utils.data.get_worker_info() is not None:
        tensor = torch.empty(0, dtype=torch.float32)
        n = int(np.prod(shape))
        storage = tensor.untyped_storage()._new_shared(n * 4)
        tensor = torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        return tensor.numpy(), tensor
    arr = np.zeros(shape, dtype=np.float32)
    return arr, torch.from_numpy(arr)


class SynthesizedBatch(list):
    """What ``__getitems__`` returns: a list of ``(eeg, source)`` pairs (what the
    default collate expects) that also carries the stacked batch, so
    :func:`collate_synthesized` hands that on without copying.

    Attributes
    ----------
    eeg : Tensor, shape (B, T, C)
    source : Tensor, shape (B, T, R), or a tuple ``(regions (B, L), values (B, L, T))``
        for the compact target.
    """

    def __init__(self, eeg: torch.Tensor, source: Any):
        if isinstance(source, tuple):
            items = [(eeg[i], (source[0][i], source[1][i])) for i in range(eeg.shape[0])]
        else:
            items = [(eeg[i], source[i]) for i in range(eeg.shape[0])]
        super().__init__(items)
        self.eeg = eeg
        self.source = source


def collate_synthesized(batch: Any) -> Any:
    """Collate for DataLoaders over the metadata dataset: a :class:`SynthesizedBatch`
    passes as ``(eeg, source)`` without a copy; anything else goes to the default."""
    if isinstance(batch, SynthesizedBatch):
        return batch.eeg, batch.source
    from torch.utils.data import default_collate

    return default_collate(batch)


def expand_compact_target(regions: torch.Tensor, values: torch.Tensor, n_regions: int) -> torch.Tensor:
    """The dense target ``(B, T, R)`` from a compact one, on the tensors' device.

    Parameters
    ----------
    regions : int64 tensor, shape (B, L)
        Labelled regions of each sample, -1 padded.
    values : float tensor, shape (B, L, T)
        Their normalized waveforms (zeros at padding).
    n_regions : int
        R.
    """
    n_batch, n_lab, n_times = values.shape
    out = torch.zeros((n_batch, n_regions + 1, n_times), dtype=values.dtype, device=values.device)
    idx = torch.where(regions >= 0, regions, torch.full_like(regions, n_regions))  # padding -> spare row
    out.scatter_(1, idx[:, :, None].expand(-1, -1, n_times), values)
    return out[:, :n_regions].transpose(1, 2).contiguous()


class FastSynthesizer:
    """Batched synthesis over a packed clip cache: the compiled kernel and its inputs.

    Parameters
    ----------
    cache : PackedClipCache
        Clips (ids as in the dataset's clip store) and their projections.
    fwd : array, shape (C, R)
    seed : int
    normalize : bool
    noise_bank : tensor or array, shape (n_segments, L, C), optional
        Recorded noise segments, in the forward matrix's channel order (a shared-memory
        tensor is passed to workers as a handle, not copied).
    """

    def __init__(self, cache: PackedClipCache, fwd: np.ndarray, seed: int, normalize: bool = True,
                 noise_bank: torch.Tensor | np.ndarray | None = None):
        self.cache = cache
        self.fwd = np.ascontiguousarray(fwd, dtype=np.float32)
        self.ft = np.ascontiguousarray(self.fwd.T)
        self.seed = int(seed)
        self.normalize = bool(normalize)
        self._bank = (torch.zeros((1, 1, self.fwd.shape[0])) if noise_bank is None
                      else torch.as_tensor(noise_bank, dtype=torch.float32).contiguous())
        self.cache.projections(self.fwd)  # build now, in the main process

    @property
    def n_times(self) -> int:
        return self.cache.n_times

    def synthesize(self, specs: SampleSpecs, epoch: int, *, target: str = "dense",
                   as_numpy: bool = False) -> tuple[Any, Any]:
        """The samples of a spec batch at ``epoch``.

        Parameters
        ----------
        specs : SampleSpecs
            B configurations (``specs.index`` seeds the draws, as in the reference).
        epoch : int
        target : {'dense', 'compact'}
            ``dense``: source ``(B, T, R)``; ``compact``: ``(regions (B, L) int64,
            values (B, L, T))`` with ``L = S * P`` (see :func:`expand_compact_target`).
        as_numpy : bool
            Return NumPy arrays instead of tensors.

        Returns
        -------
        eeg : (B, T, C) float32
        source : (B, T, R) float32, or the compact pair
        """
        specs = specs.contiguous()
        n_b, n_s = len(specs), specs.n_sources
        n_t, n_c, n_r = self.n_times, self.fwd.shape[0], self.fwd.shape[1]
        # The kernel has no bounds checks: an index outside its arrays reads other memory
        # (a segfault, or silently wrong samples). Metadata is validated when read; this
        # guards every other spec source for a few comparisons per batch.
        for name, ids, top in (("region", specs.regions, n_r), ("clip", specs.clip_ids, self.cache.n_clips)):
            if ids.size and (ids.min() < -1 or ids.max() >= top):
                raise ValueError(f"sample specs hold {name} ids in [{ids.min()}, {ids.max()}], expected -1 "
                                 f"(none) or [0, {top})")
        draw = _rng.check_against_numpy()
        if draw:
            choice = np.zeros((1, n_s), dtype=np.int64)
            noise = np.zeros((1, 1, 1), dtype=np.float32)
        else:
            choice = np.empty((n_b, n_s), dtype=np.int64)
            noise = np.empty((n_b, n_t, n_c), dtype=np.float32)
            for b, g in enumerate(specs.index):
                choice[b], noise[b] = draw_sample_randomness(self.seed, epoch, int(g), n_s,
                                                             specs.n_scale_options, n_t, n_c)
        eeg, eeg_t = _new_batch_array((n_b, n_t, n_c))
        if target == "dense":
            src, src_t = _new_batch_array((n_b, n_t, n_r))
            lab_r = np.empty((1, 1), dtype=np.int64)
            lab_v = np.empty((1, 1, 1), dtype=np.float32)
        else:
            n_lab = n_s * specs.regions.shape[2]
            src = np.empty((1, 1, 1), dtype=np.float32)
            lab_r = np.empty((n_b, n_lab), dtype=np.int64)
            lab_v, lab_v_t = _new_batch_array((n_b, n_lab, n_t))
        spec = (specs.index, specs.regions, specs.weights, specs.clip_ids, specs.scale_ratio, specs.snr_db,
                specs.noise_segment, specs.noise_offset)
        model = (self.cache.clips, self.cache.projections(self.fwd), self.ft, self._bank.numpy())
        with _BLAS_1:
            _synthesize_batch(spec, (self.seed, int(epoch), draw, choice, noise), model, (eeg, src, lab_r, lab_v),
                              (self.normalize, target == "dense", True))
        if target == "dense":
            return (eeg, src) if as_numpy else (eeg_t, src_t)
        if as_numpy:
            return eeg, (lab_r, lab_v)
        return eeg_t, (torch.from_numpy(lab_r), lab_v_t)


__all__ = [
    "FastSynthesizer",
    "SynthesizedBatch",
    "collate_synthesized",
    "expand_compact_target",
    "SYNTHESIS_MODES",
    "TARGET_MODES",
]
