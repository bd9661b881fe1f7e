"""How fast a network trains on a device: backend settings, the compiled path, the batch size
that fits in GPU memory, and a short measured probe of forward + backward + Adam step.

One set of rules, used by the :class:`~esikit.train.trainer.Trainer`, by ``esikit template
--plan`` (hours of training on this device) and by ``benchmarks/bench_training.py``:

* :func:`configure_backends`: on CUDA, ``cudnn.benchmark`` (the LSTM and convolution
  kernels are chosen once per input shape; every training batch has the same shape).
* :func:`maybe_compile`: ``torch.compile`` only when asked (``COMPILE = True``); measured on
  the CPU it does not pay (README "Training speed").
* :func:`probe_batch_size` / :func:`resolve_batch_size`: ``BATCH_SIZE = 'auto'``, the
  largest power of two up to a cap whose training step fits in GPU memory; on a CPU the
  fallback :data:`CPU_AUTO_BATCH_SIZE`, said in a warning.
* :func:`measure_training_speed`: samples/s of a few timed training steps after warm-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: ``BATCH_SIZE = 'auto'`` on a device without a memory probe (the CPU): DeepSIF's network
#: trains at about the same samples/s from batch 8 to 32 there, so a small batch loses nothing.
CPU_AUTO_BATCH_SIZE = 8
#: Default cap of ``BATCH_SIZE = 'auto'`` (``AUTO_BATCH_MAX``): beyond it a bigger batch
#: rarely trains faster and changes the optimisation (DeepSIF trains with 64).
DEFAULT_AUTO_BATCH_MAX = 256
#: Fraction of the GPU's memory a probed batch may use at its peak: the rest is left for
#: the allocator's fragmentation and the data loader's pinned copies.
MEMORY_HEADROOM = 0.85


def configure_backends(device: torch.device) -> None:
    """Backend switches for fast training on ``device`` (nothing on a CPU).

    On CUDA: ``torch.backends.cudnn.benchmark = True`` (cuDNN picks the fastest LSTM and
    convolution algorithms for the fixed training shape; the choice costs a few batches).
    TF32 is left as torch sets it, so float32 training stays float32.
    """
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True


def flatten_rnn_weights(model: nn.Module) -> int:
    """Make every LSTM/GRU's weights one contiguous block (cuDNN's fused kernel needs it).

    Called after the model moved to its device and after loading weights; returns the
    number of recurrent modules flattened (no-op on a CPU).
    """
    n = 0
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()
            n += 1
    return n


def has_cudnn_rnn(model: nn.Module) -> bool:
    """Whether ``model`` holds an LSTM/GRU/RNN (cuDNN's kernel on a GPU)."""
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def needs_grad_scaler(device: torch.device, amp_dtype: torch.dtype | None, model: nn.Module) -> bool:
    """Whether training must scale the loss (``torch.amp.GradScaler``) to keep fp16 gradients finite.

    fp16 autocast: yes. bf16 autocast on CUDA with a recurrent layer: yes as well, because
    PyTorch's autocast runs cuDNN RNNs in fp16 whatever the autocast dtype
    (``aten/src/ATen/cudnn/AutocastRNN.cpp`` casts input, states and weights to half):
    DeepSIF's LSTM then computes its gradients in fp16, whose range (6e-8 to 65504) a
    summed MSE over 500 x 994 outputs can leave. The scaler finds a scale that fits and
    skips a step whose gradients overflowed. Elsewhere (float32, bf16 without an RNN, the
    CPU) no.
    """
    if amp_dtype is None or device.type != "cuda":
        return False
    return amp_dtype == torch.float16 or has_cudnn_rnn(model)


def maybe_compile(net: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(net)`` when ``enabled``, else ``net`` itself.

    The compiled module shares its parameters with ``net``: checkpoints keep being written
    from the plain model. Compilation happens at the first batch (tens of seconds for
    DeepSIF's network).
    """
    if not enabled:
        return net
    logger.info("compiling %s with torch.compile (at the first batch)", type(net).__name__)
    return torch.compile(net)


# -- batch size ------------------------------------------------------------------------------


def probe_batch_size(fits: Callable[[int], bool], *, cap: int = DEFAULT_AUTO_BATCH_MAX, start: int = 1) -> int:
    """The largest power of two ``b`` with ``start <= b <= cap`` for which ``fits(b)``.

    Doubles from ``start`` and stops at the first batch that does not fit (memory grows
    with the batch, so no larger one would). ``cap`` itself is tried when it is not a
    power of two and the last power below it fit.

    Parameters
    ----------
    fits : callable
        ``fits(batch_size) -> bool``: whether one training step at that batch size fits
        (:func:`cuda_step_fits` on a GPU; a fake in tests).
    cap : int
        The largest batch size returned.
    start : int
        The first batch size tried.

    Raises
    ------
    RuntimeError
        When not even ``start`` fits.
    """
    if cap < 1 or start < 1:
        raise ValueError(f"Invalid value for 'AUTO_BATCH_MAX': expected an integer >= 1, got cap={cap}, "
                         f"start={start}.")
    best = None
    b = min(start, cap)
    while True:
        if not fits(b):
            break
        best = b
        if b >= cap:
            break
        b = min(b * 2, cap)
    if best is None:
        raise RuntimeError(f"BATCH_SIZE='auto': not even a batch of {min(start, cap)} fits in the device's memory")
    return best


def _training_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   eeg: torch.Tensor, src: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None
                   ) -> torch.Tensor:
    """One step as the Trainer takes it: autocast forward, MSE summed in float32, scaled backward, Adam."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = net(eeg)
    loss = nn.functional.mse_loss(out.float(), src, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _random_batch(batch_size: int, n_times: int, n_channels: int, n_regions: int, device: torch.device,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    eeg = torch.randn(batch_size, n_times, n_channels, generator=g)
    src = torch.randn(batch_size, n_times, n_regions, generator=g).clamp_(-1, 1)
    return eeg.to(device), src.to(device)


def cuda_step_fits(model: nn.Module, n_channels: int, n_regions: int, n_times: int, device: torch.device,
                   amp_dtype: torch.dtype | None, *, headroom: float = MEMORY_HEADROOM) -> Callable[[int], bool]:
    """A ``fits(batch_size)`` for :func:`probe_batch_size`: one real training step on the GPU.

    The step runs on a copy of the model with its own Adam (the model's weights are not
    touched); it fits when it raises no out-of-memory error and its peak allocation stays
    under ``headroom`` of the device's memory.
    """
    import copy

    total = torch.cuda.get_device_properties(device).total_memory

    def fits(batch_size: int) -> bool:
        probe = copy.deepcopy(model).to(device)
        flatten_rnn_weights(probe)
        opt = torch.optim.Adam(probe.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp_dtype, probe))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            eeg, src = _random_batch(batch_size, n_times, n_channels, n_regions, device)
            _training_step(probe, opt, scaler, eeg, src, device, amp_dtype)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            ok = peak <= headroom * total
            logger.info("BATCH_SIZE='auto': batch %d peaks at %.2f GB of %.2f GB", batch_size, peak / 1e9,
                        total / 1e9)
            return ok
        except torch.cuda.OutOfMemoryError:
            logger.info("BATCH_SIZE='auto': batch %d does not fit", batch_size)
            return False
        finally:
            del probe, opt
            torch.cuda.empty_cache()

    return fits


def resolve_batch_size(requested: int | str, model: nn.Module, n_channels: int, n_regions: int, n_times: int,
                       device: torch.device, amp_dtype: torch.dtype | None, *,
                       cap: int = DEFAULT_AUTO_BATCH_MAX,
                       fits: Callable[[int], bool] | None = None) -> int:
    """``BATCH_SIZE`` as an integer: itself, or for ``'auto'`` the probed size.

    On CUDA (or with ``fits`` given) the largest power of two up to ``cap`` whose training
    step fits (:func:`probe_batch_size`); elsewhere :data:`CPU_AUTO_BATCH_SIZE` (at most
    ``cap``) with a warning saying so.
    """
    if requested != "auto":
        return int(requested)
    if fits is None and device.type != "cuda":
        chosen = min(CPU_AUTO_BATCH_SIZE, cap)
        logger.warning("BATCH_SIZE='auto' probes GPU memory; training runs on %s, so it falls back to batch %d",
                       device, chosen)
        return chosen
    if fits is None:
        fits = cuda_step_fits(model, n_channels, n_regions, n_times, device, amp_dtype)
    chosen = probe_batch_size(fits, cap=cap)
    logger.info("BATCH_SIZE='auto': %d on %s (cap %d)", chosen, device, cap)
    return chosen


# -- the probe -------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training_speed(model: nn.Module, *, batch_size: int, n_times: int = 500,
                           device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
                           compile: bool = False, steps: int = 3, warmup: int = 1, lr: float = 1e-4,
                           seed: int = 0, max_s: float | None = None) -> dict[str, Any]:
    """Training samples per second of ``model``: forward, MSE backward and Adam step.

    Runs on a copy of ``model`` (its weights are not changed) with random inputs of the
    training shape; ``warmup`` steps (compilation, cuDNN's algorithm search, allocator
    growth) are timed separately and excluded.

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, n_times, C)`` to ``(B, n_times, R)``; has ``n_channels``, ``n_regions``.
    batch_size : int
        Samples per step.
    n_times : int
        Time samples per sample (500 in DeepSIF).
    device : str or torch.device
    amp_dtype : torch.dtype or None
        Autocast dtype (None: float32), as :func:`~esikit.train.trainer.choose_amp` gives.
    compile : bool
        Through ``torch.compile``.
    steps, warmup : int
        Timed steps, and steps run before them.
    max_s : float, optional
        Stop the timed steps once they took this many seconds (at least one step runs):
        bounds the probe on a slow or loaded machine.

    Returns
    -------
    dict
        ``samples_per_s``, ``s_per_step``, ``warmup_s`` (wall seconds of the warm-up steps),
        ``cpu_s_per_step`` (this process's CPU seconds per step, all threads: on a shared
        machine it compares paths better than the wall time),
        ``batch_size``, ``steps``, ``device``, ``threads`` (torch's CPU threads), ``amp`` (dtype
        name or None), ``compile``.
    """
    import copy

    device = torch.device(device)
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"measure_training_speed: expected steps >= 1, warmup >= 0 and batch_size >= 1, got "
                         f"steps={steps}, warmup={warmup}, batch_size={batch_size}")
    configure_backends(device)
    net = copy.deepcopy(model).to(device).train()
    flatten_rnn_weights(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp_dtype, net))
    run = maybe_compile(net, compile)
    eeg, src = _random_batch(batch_size, n_times, int(model.n_channels), int(model.n_regions), device, seed)
    t0 = time.perf_counter()
    for _ in range(warmup):
        _training_step(run, opt, scaler, eeg, src, device, amp_dtype)
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < steps:
        loss = _training_step(run, opt, scaler, eeg, src, device, amp_dtype)
        done += 1
        if max_s is not None and time.perf_counter() - t0 > max_s:
            break
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = done
    if not torch.isfinite(loss):
        raise FloatingPointError(f"measure_training_speed: non-finite loss {float(loss)} on {device}")
    return {"samples_per_s": steps * batch_size / wall, "s_per_step": wall / steps, "warmup_s": warm_s,
            "cpu_s_per_step": cpu / steps,
            "batch_size": int(batch_size), "steps": int(steps), "device": str(device),
            "threads": torch.get_num_threads(),
            "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None,
            "compile": bool(compile)}
