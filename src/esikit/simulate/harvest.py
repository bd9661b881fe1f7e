"""The task of every clip run: simulate a chunk, cut clips as they appear, stop by a rule.

One function, :func:`run_chunk_task`, simulates one chunk of a batch of variants
(excited region, noise setting), applies DeepSIF's spike rules
(:mod:`esikit.simulate.spikes`) to the stream and writes the clips found. The driver
(:mod:`esikit.simulate.distributed`) runs it on Dask or in this process for the three
uses: ``esikit simulate --duration`` (and the demo), ``--clips-per-region K`` (and
``esikit template``), and the pilot of ``--plan`` (:mod:`esikit.simulate.plan`). A spec's
``mode`` picks the stop rule:

``"clips"`` (default): K clips or a cap
    Spikes are rare at DeepSIF's settings (~0.1 per simulated second in the excited
    region), so the clip count wanted, not the number of regions, sets the cost of a
    dataset. Each variant runs chunk after chunk until it has its share of the clips
    (``share``) or reaches ``max_chunks``; no raw simulation is kept.
``"duration"``: a fixed simulated time
    The whole recording (``chunk_s`` seconds, the transient included) in one chunk, as
    DeepSIF ran TVB. This is the demo's mode and keeps its numbers: the exact numba
    kernel (``block=1``), and one generator ``default_rng([seed, region, setting])`` that
    draws the initial history and then the noise.

Streaming the rules exactly
    :class:`~esikit.simulate.spikes.ClipStream` keeps the last few seconds of the
    downsampled activity and the spike peaks that can still matter. A peak's clip is
    decided once the recording reaches 1000 samples past its block start: by then every
    peak that could veto it (``block - 200 .. block + 699``) is known and clear of the
    end margin, so the decision is the one :func:`~esikit.simulate.spikes.find_spike_times`
    and :func:`~esikit.simulate.spikes.select_clips` take on the whole recording of any
    final length. When a variant stops, the remaining peaks are decided with the
    recording's final length. The clips are exactly those of the batch rules on the
    concatenated recording (tested).

Rescaling (DeepSIF's 15 dB ``find_alpha``)
    DeepSIF computes one factor per simulation from all its kept spikes and removes the
    temporal mean of the whole recording. The ``"duration"`` mode has the whole
    recording in one task and does exactly that
    (:func:`~esikit.simulate.spikes.spike_alpha` over every kept spike, then
    :func:`~esikit.simulate.spikes.rescale_spike_channel`). The ``"clips"`` mode cannot:
    its stop rule counts clips already written, so a clip must be final before the
    recording ends (and the recording, of unknown length, is never held whole); each
    clip's factor and mean come from its own spike and the 1500 samples around its block
    (``block - 500 .. block + 1000``, :func:`~esikit.simulate.spikes.scale_clip`). This
    is its only departure from ``process_raw_nmm.m``; deferring the scaling to the end
    of a variant would also change the clips of harvests already on disk.

Tasks and seeds (``"clips"``)
    Variants are integrated in batches (:class:`esikit.simulate.nmm.BatchIntegrator`). A
    task is one chunk of one (region batch, setting); variant ``(region, setting)`` draws
    its initial history from ``default_rng([seed, region, setting, 0])`` and the noise of
    chunk ``c`` from ``default_rng([seed, region, setting, c + 1])``. As the kernel treats
    the variants of a batch independently, the output does not depend on the batch size,
    the number of workers or on restarts. Each task reads the previous chunk's
    checkpoint and writes its own atomically, so a crashed run resumes from the last
    finished chunk of every batch.

Checkpoints
    ``chains/b{batch}_s{setting}/chunk_{c}.npz``: plain arrays (the integrator state,
    the clip streams, the clips found), read with ``allow_pickle=False`` and checked
    field by field, so a file anyone can write into the (shared) folder cannot run code;
    a malformed one raises :class:`CheckpointError` and the driver recomputes the chain.
    A task keeps the previous chunk's checkpoint, so a retried task redoes its chunk
    from it and writes the same files again. Clips wait in
    ``clips/a{region}/s{setting}_c{chunk}_{j}.mat`` until their region is complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from .._validation import check_option
from ..head.layout import region_dirname
from ..io.atomic import atomic_output
from .nmm import BatchIntegrator, JansenRitParams, network_structure
from .spikes import (
    CLIP_LENGTH, DISCARD_RAW, DOWNSAMPLE, ClipStream, rescale_spike_channel, save_clip, scale_clip,
    spike_alpha, write_json)

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "MODES",
    "chain_dir",
    "read_checkpoint",
    "run_chunk_task",
    "variant_seed",
    "write_checkpoint",
]

#: Stop rules of :func:`run_chunk_task` (see the module docstring).
MODES = ("clips", "duration")


def variant_seed(seed: int, region: int, setting: int, chunk: int) -> list[int]:
    """Entropy of the random stream of one chunk of one variant (chunk -1: initial history)."""
    return [int(seed), int(region), int(setting), int(chunk) + 1]


# --------------------------------------------------------------------------- tasks
def chain_dir(work_dir: str | Path, batch: int, setting: int) -> Path:
    """Checkpoint folder of one (region batch, setting) chain."""
    return Path(work_dir) / "chains" / f"b{int(batch):05d}_s{int(setting)}"


def staged_clip_path(work_dir: str | Path, region: int, setting: int, chunk: int, j: int) -> Path:
    """Where a clip waits until its region is complete (then renamed to ``nmm_{k}.mat``)."""
    return Path(work_dir) / "clips" / region_dirname(region) / f"s{int(setting)}_c{int(chunk):06d}_{int(j):03d}.mat"


class CheckpointError(ValueError):
    """A chain checkpoint that cannot be used (unreadable, or fields of the wrong shape)."""


#: Stream fields stored per variant ``b`` as ``s{b}_{field}``.
_STREAM_FIELDS = ("buf", "peak_t", "peak_r", "pending", "ints")
_CHECKPOINT_FORMAT = "esikit-harvest-checkpoint-2"


def write_checkpoint(path: Path, regions: list[int], streams: list[ClipStream], found: list[int],
                     state: dict) -> Path:
    """Write a chain checkpoint: plain arrays in one ``.npz``, atomically.

    Parameters
    ----------
    path : Path
        ``chunk_{c}.npz`` in the chain's folder.
    regions : list of int, length B
        The variants still running.
    streams : list of ClipStream, length B
    found : list of int, length B
        Clips written so far per variant.
    state : dict
        :meth:`BatchIntegrator.get_state` (``y``, ``ring``, ``A``, ``step``).
    """
    arrays = {"format": np.array(_CHECKPOINT_FORMAT), "regions": np.asarray(regions, np.int64),
              "found": np.asarray(found, np.int64), "y": state["y"], "ring": state["ring"],
              "A": state["A"], "step": np.int64(state["step"])}
    for b, stream in enumerate(streams):
        arrays.update({f"s{b}_{k}": v for k, v in stream.to_arrays().items()})
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_checkpoint(path: Path, n_nodes: int, horizon: int, n_regions: int, step: int,
                    regions: list[int]) -> tuple[list[int], list[ClipStream], list[int], dict]:
    """Read and check a chain checkpoint written by :func:`write_checkpoint`.

    Nothing in the file is unpickled (``allow_pickle=False``); every field is checked
    against the chain's network (``n_nodes``, ``horizon``, ``n_regions`` of the
    activity), the expected integration ``step`` and the chain's ``regions``.

    Returns
    -------
    regions, streams, found, state
        As given to :func:`write_checkpoint`.

    Raises
    ------
    CheckpointError
        Naming the file and every field that is missing or wrong.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:  # not a zip, pickled objects, truncated: all unusable alike
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                              "expected an .npz of plain arrays") from None
    problems = []

    def field(name, ndim=None, shape=None, kind="if"):
        if name not in data:
            problems.append(f"field '{name}' is missing")
            return None
        v = data[name]
        if v.dtype.kind not in kind:
            problems.append(f"field '{name}' has dtype {v.dtype}, expected a numeric array")
            return None
        if (ndim is not None and v.ndim != ndim) or (shape is not None and v.shape != shape):
            want = shape if shape is not None else f"{ndim} dimensions"
            problems.append(f"field '{name}' has shape {v.shape}, expected {want}")
            return None
        return v

    fmt = data.get("format")
    if fmt is None or fmt.dtype.kind != "U" or str(fmt) != _CHECKPOINT_FORMAT:
        problems.append(f"field 'format' is {None if fmt is None else str(fmt)!r}, "
                        f"expected {_CHECKPOINT_FORMAT!r}")
    regs = field("regions", ndim=1, kind="i")
    nb = 0 if regs is None else len(regs)
    if regs is not None and (nb == 0 or not set(regs.tolist()) <= set(regions)):
        problems.append(f"field 'regions' is {regs.tolist()}, expected a non-empty subset of {regions}")
    found = field("found", shape=(nb,), kind="i")
    y = field("y", shape=(6, n_nodes, nb), kind="f")
    ring = field("ring", shape=(n_nodes, horizon, nb), kind="f")
    A = field("A", shape=(n_nodes, nb), kind="f")
    st = field("step", shape=(), kind="i")
    if st is not None and int(st) != step:
        problems.append(f"field 'step' is {int(st)}, expected {step}")
    streams = []
    for b in range(nb):
        f = {k: field(f"s{b}_{k}", ndim=1 if k != "buf" else 2, kind="f" if k == "buf" else "i")
             for k in _STREAM_FIELDS}
        if f["ints"] is not None and f["ints"].shape != (5,):
            problems.append(f"field 's{b}_ints' has shape {f['ints'].shape}, expected (5,)")
        elif f["buf"] is not None and f["buf"].size and f["buf"].shape[1] != n_regions:
            problems.append(f"field 's{b}_buf' has shape {f['buf'].shape}, expected (n, {n_regions})")
        elif all(v is not None for v in f.values()):
            streams.append(ClipStream.from_arrays(int(regs[b]), f))
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    state = {"y": y, "ring": ring, "A": A, "step": int(st)}
    return [int(r) for r in regs], streams, [int(n) for n in found], state


_ANATOMY_CACHE: dict = {}


def _load_work_anatomy(path: str) -> dict:
    """Connectome, node map and leadfield of the run, cached per worker process."""
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _ANATOMY_CACHE:
        from ..head.anatomy import load_anatomy

        anat = load_anatomy(path)
        _ANATOMY_CACHE.clear()
        _ANATOMY_CACHE[key] = {"weights": anat.weights, "tract_lengths": anat.tract_lengths,
                               "node_of_region": anat.node_of_region, "fwd": anat.fwd}
    return _ANATOMY_CACHE[key]


def latest_checkpoint(cdir: Path) -> int:
    """Chunk index of the newest checkpoint in ``cdir`` (-1 when none)."""
    if not cdir.is_dir():
        return -1
    return max(_checkpoints(cdir), default=-1)


def _checkpoints(cdir: Path) -> dict[int, Path]:
    """Chunk index -> checkpoint file of a chain folder (other files are ignored)."""
    out = {}
    for p in cdir.glob("chunk_*.npz"):
        try:
            out[int(p.stem.split("_")[1])] = p
        except ValueError:
            continue
    return out


def run_chunk_task(spec: dict) -> dict:
    """Simulate one chunk of one (region batch, setting) and write the clips found.

    Parameters
    ----------
    spec : dict
        ``work_dir``, ``anatomy`` (path of the run's ``anatomy.npz``), ``batch`` (int),
        ``regions`` (list of int), ``setting``, ``chunk`` (int, from 0), ``seed``,
        ``params`` (dict of :class:`JansenRitParams` fields, setting applied here),
        ``chunk_s`` (simulated seconds per chunk), ``share`` (clips wanted per variant),
        ``max_chunks`` (cap per variant), ``backend``, ``block``, ``dt_ms``,
        ``target_snr_db``, and ``mode`` (:data:`MODES`, default ``"clips"``; in the
        ``"duration"`` mode ``chunk_s`` is the whole recording, ``share``, ``max_chunks``
        and ``block`` are unused).

    Returns
    -------
    dict
        ``batch``, ``setting``, ``chunk``, ``n_active`` (variants simulated),
        ``new_clips``, ``simulated_s`` (network-seconds simulated), ``finished``
        (per-region stats of the variants that stopped: ``clips``, ``simulated_s``,
        ``capped``; in the ``"duration"`` mode also ``peaks`` (peaks of the region
        passing DeepSIF's peak rules), ``alpha`` (the recording-wide factor, None
        without clips) and ``wall_s``), ``done`` (the chain is complete), ``wall_s``.
    """
    t_start = time.perf_counter()
    work = Path(spec["work_dir"])
    batch, setting, chunk = int(spec["batch"]), int(spec["setting"]), int(spec["chunk"])
    whole = check_option("mode", spec.get("mode", "clips"), MODES) == "duration"
    cdir = chain_dir(work, batch, setting)
    cdir.mkdir(parents=True, exist_ok=True)
    anat = _load_work_anatomy(spec["anatomy"])
    params = JansenRitParams(**spec["params"]).with_setting(setting)
    dt_ms = float(spec.get("dt_ms", 0.5))
    structure = network_structure(anat["weights"], anat["tract_lengths"], params, dt_ms)
    n_nodes = structure.n_nodes
    node_of_region = anat["node_of_region"]
    seed = int(spec["seed"])
    snr_db = float(spec["target_snr_db"])
    steps = int(round(float(spec["chunk_s"]) * 1000.0 / dt_ms))
    if whole and chunk != 0:
        raise ValueError(f"Invalid value for 'chunk': the 'duration' mode simulates the whole "
                         f"recording in chunk 0, got {chunk!r}.")
    if not whole and steps % DOWNSAMPLE:
        raise ValueError(f"Invalid value for 'chunk_s': expected a multiple of "
                         f"{DOWNSAMPLE * dt_ms / 1000} s, got {spec['chunk_s']!r}.")

    if chunk == 0:
        regions = [int(r) for r in spec["regions"]]
        # "duration": one generator per variant draws the initial history, then the noise
        rngs = [np.random.default_rng([seed, r, setting] if whole else variant_seed(seed, r, setting, -1))
                for r in regions]
        integ = BatchIntegrator.start(structure, params, [int(node_of_region[r]) for r in regions], rngs,
                                      dt_ms, spec["backend"], 1 if whole else int(spec.get("block", 16)),
                                      exact=whole)
        streams = [ClipStream(region=r) for r in regions]
        found = [0] * len(regions)
    else:
        regions, streams, found, state = read_checkpoint(
            cdir / f"chunk_{chunk - 1:06d}.npz", n_nodes, structure.horizon, len(node_of_region),
            chunk * steps, [int(r) for r in spec["regions"]])
        integ = BatchIntegrator.from_state(structure, params, state, dt_ms, spec["backend"],
                                           block=int(spec.get("block", 16)))

    if not whole:  # each chunk its own streams: the output depends on no batch and no restart
        rngs = [np.random.default_rng(variant_seed(seed, r, setting, chunk)) for r in regions]
    rec = integ.integrate(rngs, steps, DOWNSAMPLE, np.float32)  # (B, ceil(steps / 4), n_nodes)
    first = chunk * steps // DOWNSAMPLE  # downsampled index of rec[:, 0]
    skip = max(0, DISCARD_RAW // DOWNSAMPLE - first)

    capped_now = whole or chunk + 1 >= int(spec["max_chunks"])
    new_clips, finished, keep = 0, {}, []
    for b, (r, stream) in enumerate(zip(regions, streams)):
        rows = rec[b, skip:][:, node_of_region]
        decided = stream.feed(rows, final=capped_now)
        if whole:
            clips, alpha = _recording_clips(rows, decided, r, anat["fwd"], snr_db)
        else:  # up to the variant's share, each scaled around its own spike
            clips = (scale_clip(ctx, c0, peak, block, r, anat["fwd"], snr_db)[0]
                     for peak, block, ctx, c0 in decided[:max(0, int(spec["share"]) - found[b])])
        j = 0
        for clip in clips:
            path = staged_clip_path(work, r, setting, chunk, j)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_clip(path, clip)
            j += 1
        found[b] += j
        new_clips += j
        if whole:
            finished[r] = {"clips": j, "simulated_s": steps * dt_ms / 1000.0, "capped": False,
                           "peaks": int(stream.n_peaks), "alpha": alpha if np.isfinite(alpha) else None,
                           "wall_s": (time.perf_counter() - t_start) / len(regions)}
        elif found[b] >= int(spec["share"]) or capped_now:
            finished[r] = {"clips": int(found[b]), "simulated_s": (chunk + 1) * steps * dt_ms / 1000.0,
                           "capped": bool(found[b] < int(spec["share"]))}
        else:
            keep.append(b)
    # finished variants of this chunk are recorded with the chain: append-only per chunk
    write_json(cdir / f"finished_{chunk:06d}.json", {str(k): v for k, v in finished.items()})
    done = not keep
    if done:
        write_json(cdir / "done.json", collect_finished(cdir))
    else:
        if len(keep) < len(regions):
            integ.select(keep)
        write_checkpoint(cdir / f"chunk_{chunk:06d}.npz", [regions[b] for b in keep],
                         [streams[b] for b in keep], [found[b] for b in keep], integ.get_state())
    # the previous checkpoint stays until the next chunk (a retry of this task redoes it);
    # the driver removes those of a finished chain
    for c, old in _checkpoints(cdir).items():
        if c < chunk - 1:
            old.unlink(missing_ok=True)
    return {"batch": batch, "setting": setting, "chunk": chunk, "n_active": len(regions),
            "new_clips": new_clips, "simulated_s": len(regions) * steps * dt_ms / 1000.0,
            "finished": finished, "done": done, "wall_s": time.perf_counter() - t_start}


def _recording_clips(nmm: np.ndarray, decided: list, region: int, fwd: np.ndarray,
                     target_snr_db: float) -> tuple[list[np.ndarray], float]:
    """The clips ``decided`` (:meth:`ClipStream.feed`, ``final=True``) of the whole recording
    ``nmm`` (n_times, n_regions), rescaled by DeepSIF's one factor from every kept spike
    (``find_alpha``, ``rescale_nmm_channel``); returns the clips and the factor (NaN
    without clips)."""
    if not decided:
        return [], float("nan")
    spikes = np.array([d[0] for d in decided], dtype=np.int64)
    alpha = spike_alpha(nmm, fwd, region, spikes, target_snr_db)
    scaled = nmm
    if np.isfinite(alpha) and alpha > 0:
        scaled = rescale_spike_channel(nmm, region, spikes, alpha)
    else:  # e.g. a region whose leadfield column is zero: nothing to scale against
        logger.warning("region %d: scaling factor %s; clips kept unscaled", region, alpha)
    return [scaled[d[1]:d[1] + CLIP_LENGTH] for d in decided], alpha


def collect_finished(cdir: Path) -> dict:
    """Per-region stats of every variant of a chain that has finished so far (from its files)."""
    out = {}
    for p in sorted(cdir.glob("finished_*.json")):
        out.update(json.loads(p.read_text()))
    return out


def remove_checkpoints(cdir: Path) -> None:
    """Delete every checkpoint of a chain (when it is done, or to recompute it)."""
    for p in _checkpoints(cdir).values():
        p.unlink(missing_ok=True)


def chunk_seconds_valid(chunk_s: float, dt_ms: float = 0.5) -> bool:
    """Whether ``chunk_s`` is a whole number of downsampled samples."""
    steps = chunk_s * 1000.0 / dt_ms
    return math.isclose(steps, round(steps)) and round(steps) % DOWNSAMPLE == 0
