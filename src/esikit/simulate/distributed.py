"""Harvest spike clips on Dask: a local cluster by default, any Dask cluster by address.

:func:`harvest_clips` splits the work into (region batch, setting, chunk) tasks
(:func:`esikit.simulate.harvest.run_chunk_task`). The chunks of one (batch, setting)
follow each other (each continues the previous one's state from its checkpoint); the
chains run in parallel on the workers, a bounded number at a time so that the
checkpoints on disk stay few. Without a scheduler address a ``LocalCluster`` with one
single-threaded worker process per core is started; ``scheduler="tcp://HOST:PORT"``
sends the same tasks to an existing cluster, whose workers must see ``out_dir`` at the
same path (a shared filesystem: the tasks read the anatomy and the checkpoints from it
and write the clips into it).

Layout of ``out_dir`` (the ``nmm_spikes`` folder)::

    a{r}/nmm_{k}.mat               the clips of region r, k = 1, 2, ... (when complete)
    a{r}/.done                     JSON: clips, simulated seconds per setting
    .harvest/config.json           the run's configuration (a rerun must match it)
    .harvest/anatomy.npz           what the workers simulate
    .harvest/chains/b*_s*/         checkpoints and per-chunk results of each chain
    .harvest/clips/a{r}/s*_c*_*.mat  clips of regions still in progress

Rerunning after a crash, a killed worker or an interrupted client finishes only what is
missing; the output is the same as that of an uninterrupted run.

On a cluster: install esikit (same version) in every worker's environment, start
``dask scheduler`` on one machine and ``dask worker tcp://HOST:8786 --nthreads 1
--nworkers N`` on each machine (one single-threaded worker per core: the kernels are
serial), put the dataset folder on a filesystem mounted at the same path everywhere, then
``esikit simulate OUT --clips-per-region K --scheduler tcp://HOST:8786``. Each task
moves a few MB (a checkpoint per chain of ``batch_size`` variants: about 5 MB per variant
on the 998-node network) through that filesystem.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..head.anatomy import Anatomy, load_anatomy
from .harvest import (
    CheckpointError, chain_dir, chunk_seconds_valid, latest_checkpoint, remove_checkpoints,
    run_chunk_task)
from .nmm import NOISE_SETTINGS, JansenRitParams
from .spikes import write_json

logger = logging.getLogger(__name__)

__all__ = ["HarvestConfig", "connect_scheduler", "harvest_clips", "plot_clips_histogram"]

_WORK = ".harvest"
#: Seconds to wait for a Dask scheduler to answer before giving up.
SCHEDULER_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class HarvestConfig:
    """What decides the clips of a harvest (a rerun in the same folder must match).

    Parameters
    ----------
    clips_per_region : int
        Clips wanted per region, over all settings; each (region, setting) stops at
        ``ceil(clips_per_region / n_settings)``.
    regions : tuple of int
    settings : tuple of int
        DeepSIF noise settings (:data:`~esikit.simulate.nmm.NOISE_SETTINGS`).
    seed : int
    chunk_s : float
        Simulated seconds per task and variant (a multiple of 2 ms).
    max_simulated_s : float
        Cap of simulated seconds per (region, setting), rounded up to whole chunks.
    params : dict
        :class:`JansenRitParams` fields.
    target_snr_db : float
        Spike rescaling (DeepSIF: 15 dB).
    dt_ms : float
    anatomy_id : str
        Name and content hash of the anatomy (connectome, node map, leadfield).
    """

    clips_per_region: int
    regions: tuple[int, ...]
    settings: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    chunk_s: float = 5.0
    max_simulated_s: float = 200.0
    params: dict = dataclasses.field(default_factory=lambda: dataclasses.asdict(JansenRitParams()))
    target_snr_db: float = 15.0
    dt_ms: float = 0.5
    anatomy_id: str = ""

    @property
    def share(self) -> int:
        """Clips wanted per (region, setting)."""
        return int(math.ceil(self.clips_per_region / len(self.settings)))

    @property
    def max_chunks(self) -> int:
        """Chunks per (region, setting) at most."""
        return max(1, int(math.ceil(self.max_simulated_s / self.chunk_s - 1e-9)))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["regions"] = list(self.regions)
        d["settings"] = list(self.settings)
        return json.loads(json.dumps(d))


def _anatomy_id(anat: Anatomy) -> str:
    import hashlib

    h = hashlib.sha1()
    for arr in (anat.weights, anat.tract_lengths, anat.node_of_region, anat.fwd):
        h.update(np.ascontiguousarray(arr).tobytes())
    return f"{anat.name}:{h.hexdigest()[:16]}"


def connect_scheduler(address: str, timeout_s: float = SCHEDULER_TIMEOUT_S):
    """A ``distributed.Client`` of the Dask scheduler at ``address``, or a clear error quickly.

    ``Client(address)`` alone retries a closed port for its whole timeout and then shows
    a traceback, waits forever on a service that accepts the connection but does not
    answer, and fails obscurely on one that answers something else. Here the scheduler
    is first asked for its identity, the whole exchange bounded by ``timeout_s``.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT`` (any Dask address).
    timeout_s : float
        Seconds to wait for the connection and the scheduler's answer.

    Raises
    ------
    ConnectionError
        Naming the address: nothing listens there, no answer within ``timeout_s``, or
        the service there is not a Dask scheduler.
    """
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Client
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import get_backend
    from distributed.core import rpc

    timeout_s = float(timeout_s)
    where = f"Dask scheduler at {address!r}"
    try:
        scheme, loc = parse_address(address)
        get_backend(scheme)
    except ValueError as err:
        raise ConnectionError(f"{where}: not an address ({err}); expected tcp://HOST:PORT") from None
    if scheme == "tcp":  # a refused connection is known at once; Dask would retry it for the timeout
        try:
            host, port = parse_host_port(loc)
            socket.create_connection((host, port), timeout=timeout_s).close()
        except (OSError, ValueError) as err:
            raise ConnectionError(f"{where}: cannot connect ({err}); is the scheduler running "
                                  "and the address right?") from None

    async def identity():
        async with rpc(address, timeout=timeout_s) as r:
            return await r.identity()

    async def bounded():
        return await asyncio.wait_for(identity(), timeout_s)

    try:  # own event loop in a thread: works whether or not the caller runs one
        with ThreadPoolExecutor(1) as pool:
            info = pool.submit(asyncio.run, bounded()).result()
    except (asyncio.TimeoutError, TimeoutError):
        raise ConnectionError(f"{where}: no answer within {timeout_s:g} s; is it a Dask scheduler "
                              "(dask scheduler, default port 8786)?") from None
    except Exception as err:  # garbage on the wire surfaces as anything (even MemoryError)
        raise ConnectionError(f"{where}: the service there does not speak Dask's protocol "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise ConnectionError(f"{where}: answered as {kind!r}, expected a Dask scheduler")
    try:
        return Client(address, timeout=timeout_s)
    except Exception as err:
        raise ConnectionError(f"{where}: {type(err).__name__}: {err}") from None


def _make_client(scheduler: str | None, n_workers: int | None, processes: bool,
                 timeout_s: float = SCHEDULER_TIMEOUT_S):
    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "bokeh"):  # their INFO lines drown the progress bar
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)

    if scheduler:
        return connect_scheduler(scheduler, timeout_s), None
    from .spikes import default_n_workers

    n = n_workers or default_n_workers()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _finalize_region(out_dir: Path, work: Path, region: int, stats: dict[int, dict],
                     settings: Sequence[int]) -> dict:
    """Rename the staged clips of a complete region to ``a{r}/nmm_{k}.mat`` (idempotent)."""
    folder = out_dir / f"a{region}"
    marker = folder / ".done"
    if marker.exists():
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / ".harvest_manifest.json"
    if manifest_path.exists():  # an interrupted rename: finish it
        manifest = json.loads(manifest_path.read_text())
    else:
        staged = sorted((work / "clips" / f"a{region}").glob("s*_c*_*.mat"))
        for stale in folder.glob("nmm_*.mat"):
            stale.unlink()
        manifest = {p.name: k for k, p in enumerate(staged, start=1)}
        write_json(manifest_path, manifest)
    for name, k in manifest.items():
        src = work / "clips" / f"a{region}" / name
        if src.exists():
            os.replace(src, folder / f"nmm_{k}.mat")
    info = {"region": region, "n_clips": len(manifest),
            "clips_per_setting": [stats[s]["clips"] for s in settings],
            "simulated_s_per_setting": [stats[s]["simulated_s"] for s in settings],
            "capped_settings": [s for s in settings if stats[s]["capped"]],
            "bytes": int(sum((folder / f"nmm_{k}.mat").stat().st_size for k in manifest.values()))}
    write_json(marker, info)
    manifest_path.unlink(missing_ok=True)
    return info


def plot_clips_histogram(clips_per_region: dict[int, int], wanted: int, path: str | Path) -> Path:
    """PNG histogram of the clips per region, with the number wanted marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(list(clips_per_region.values()), dtype=int)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max(int(counts.max(initial=0)), wanted) + 1
    ax.hist(counts, bins=np.arange(0, top + 1) - 0.5, color="0.4")
    ax.axvline(wanted, color="C3", ls="--", label=f"wanted: {wanted}")
    below = int((counts < wanted).sum())
    ax.set_xlabel("clips per region")
    ax.set_ylabel("regions")
    ax.set_title(f"{len(counts)} regions, {below} below {wanted}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def harvest_clips(
    anatomy: str | Path | Anatomy,
    out_dir: str | Path,
    clips_per_region: int,
    regions: Sequence[int] | None = None,
    settings: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    params: JansenRitParams | None = None,
    chunk_s: float = 5.0,
    max_simulated_s: float = 200.0,
    batch_size: int = 16,
    backend: str = "numba",
    block: int = 16,
    scheduler: str | None = None,
    n_workers: int | None = None,
    processes: bool = True,
    max_chains_in_flight: int | None = None,
    target_snr_db: float = 15.0,
    progress: bool = True,
    report_dir: str | Path | None = None,
    scheduler_timeout_s: float = SCHEDULER_TIMEOUT_S,
) -> dict[str, Any]:
    """Simulate until every region has ``clips_per_region`` clips (or hits the cap).

    Parameters
    ----------
    anatomy : str | Path | Anatomy
        See :func:`esikit.simulate.anatomy.load_anatomy`.
    out_dir : str | Path
        The ``nmm_spikes`` folder (created). Must be on a filesystem every worker sees.
    clips_per_region : int
        Clips wanted per region over all settings (``K``).
    regions : sequence of int | None
        Regions to excite (default all).
    settings : sequence of int
        DeepSIF noise settings.
    seed : int
        Base seed: chunk ``c`` of (region, setting) uses ``(seed, region, setting, c)``.
    params : JansenRitParams | None
    chunk_s : float
        Simulated seconds per task and variant.
    max_simulated_s : float
        Cap per (region, setting) [s], reported when reached.
    batch_size : int
        Regions integrated together in one task (does not change the output).
    backend : {"numba", "numpy"}
    block : int
        Coupling block of the numba kernel.
    scheduler : str | None
        Address of an existing Dask scheduler (``tcp://HOST:PORT``); None starts a
        ``LocalCluster``.
    scheduler_timeout_s : float
        Seconds to wait for the scheduler at ``scheduler`` to answer
        (:func:`connect_scheduler`).
    n_workers : int | None
        Local workers (None: the CPUs available). Ignored with ``scheduler``.
    processes : bool
        Local workers as processes (True) or threads in this process.
    max_chains_in_flight : int | None
        (batch, setting) chains started at once (default: twice the worker threads).
    target_snr_db : float
    progress : bool
        tqdm bar over the tasks (ETA, clips per second).
    report_dir : str | Path | None
        Where ``harvest_report.json`` and ``clips_per_region.png`` go (default: the
        parent of ``out_dir``).

    Returns
    -------
    dict
        The report: ``config``, ``complete``, ``clips_per_region``,
        ``simulated_s_per_region``, ``regions_below_target``, ``capped_variants``,
        ``n_clips``, ``bytes_on_disk``, ``simulated_s``, ``wall_s``, ``tasks``,
        ``histogram``.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    anat = load_anatomy(anatomy)
    regions = list(range(anat.n_regions)) if regions is None else sorted({int(r) for r in regions})
    bad = [r for r in regions if not 0 <= r < anat.n_regions]
    if bad:
        raise ValueError(f"Invalid value for 'regions': expected indices in [0, {anat.n_regions}), "
                         f"got {bad}.")
    settings = tuple(int(s) for s in settings)
    for s in settings:
        if s not in range(len(NOISE_SETTINGS)):
            raise ValueError(f"Invalid value for 'settings': expected values in "
                             f"{list(range(len(NOISE_SETTINGS)))}, got {s!r}.")
    if clips_per_region < 1:
        raise ValueError(f"Invalid value for 'clips_per_region': expected an integer >= 1, "
                         f"got {clips_per_region!r}.")
    if not chunk_seconds_valid(chunk_s):
        raise ValueError(f"Invalid value for 'chunk_s': expected a multiple of 0.002 s, got {chunk_s!r}.")
    if batch_size < 1:
        raise ValueError(f"Invalid value for 'batch_size': expected an integer >= 1, got {batch_size!r}.")
    cfg = HarvestConfig(clips_per_region=int(clips_per_region), regions=tuple(regions),
                        settings=settings, seed=int(seed), chunk_s=float(chunk_s),
                        max_simulated_s=float(max_simulated_s),
                        params=dataclasses.asdict(params or JansenRitParams()),
                        target_snr_db=float(target_snr_db), anatomy_id=_anatomy_id(anat))
    work = out_dir / _WORK
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    wanted = cfg.to_json()
    if cfg_path.exists():
        previous = json.loads(cfg_path.read_text())
        if previous != wanted:
            raise ValueError(f"{cfg_path}: this folder holds a harvest made with another "
                             f"configuration ({previous}); use another folder or remove it")
        logger.info("%s: resuming a harvest", out_dir)
    anatomy_path = work / "anatomy.npz"
    if not anatomy_path.exists() or not cfg_path.exists():
        anat.save(anatomy_path)
    write_json(cfg_path, wanted)

    batches = [regions[i:i + batch_size] for i in range(0, len(regions), batch_size)]
    base_spec = {"work_dir": str(work.resolve()), "anatomy": str(anatomy_path.resolve()),
                 "seed": cfg.seed, "params": cfg.params, "chunk_s": cfg.chunk_s,
                 "share": cfg.share, "max_chunks": cfg.max_chunks, "backend": backend,
                 "block": int(block), "dt_ms": cfg.dt_ms, "target_snr_db": cfg.target_snr_db}
    # what is already done (resume): the chains' files are the record
    todo: deque = deque()
    for bid in range(len(batches)):
        for s in settings:
            cdir = chain_dir(work, bid, s)
            if (cdir / "done.json").exists():
                remove_checkpoints(cdir)  # left when the driver stopped before removing them
            else:
                todo.append((bid, s, latest_checkpoint(cdir) + 1))

    n_chains = len(batches) * len(settings)
    tasks_done = 0
    clips_found = 0
    bar = tqdm(total=max(1, cfg.max_chunks * len(todo)), desc="harvest", unit="task",
               disable=not progress)
    if todo:
        client, cluster = _make_client(scheduler, n_workers, processes, scheduler_timeout_s)
        try:
            from distributed import as_completed

            n_threads = sum(client.nthreads().values()) or 1
            limit = max_chains_in_flight or 2 * n_threads
            chain_chunk: dict[tuple[int, int], int] = {}  # last finished chunk of running chains
            chunks_used: list[int] = []  # chunks taken by the chains that finished

            def submit(bid, s, chunk):
                spec = dict(base_spec, batch=bid, regions=batches[bid], setting=s, chunk=chunk)
                # a retry redoes the chunk from the previous checkpoint, which the task keeps;
                # a unique key: a recomputed chain must not get an old erred result back
                fut = client.submit(run_chunk_task, spec, pure=False, retries=1,
                                    key=f"harvest-b{bid}-s{s}-c{chunk}-{uuid.uuid4().hex[:8]}")
                chain_of[fut.key] = (bid, s)
                return fut

            running = as_completed()
            recomputed: set[tuple[int, int]] = set()
            chain_of: dict[str, tuple[int, int]] = {}  # task key -> chain
            in_flight = 0
            while todo and in_flight < limit:
                running.add(submit(*todo.popleft()))
                in_flight += 1
            t_loop = time.perf_counter()
            for fut in running:
                in_flight -= 1
                try:
                    res = fut.result()
                except CheckpointError as err:
                    # unusable checkpoint (corrupt, or not ours): the chain is recomputed from
                    # its start; being deterministic it rewrites the same clips
                    bid, s = chain_of[fut.key]
                    if (bid, s) in recomputed:
                        raise
                    recomputed.add((bid, s))
                    logger.warning("%s; recomputing chain (batch %d, setting %d) from its start",
                                   err, bid, s)
                    cdir = chain_dir(work, bid, s)
                    shutil.rmtree(cdir, ignore_errors=True)
                    running.add(submit(bid, s, 0))
                    in_flight += 1
                    continue
                tasks_done += 1
                clips_found += res["new_clips"]
                key = (res["batch"], res["setting"])
                if res["done"]:
                    chain_chunk.pop(key, None)
                    chunks_used.append(res["chunk"] + 1)
                    remove_checkpoints(chain_dir(work, *key))
                else:
                    chain_chunk[key] = res["chunk"]
                    running.add(submit(res["batch"], res["setting"], res["chunk"] + 1))
                    in_flight += 1
                while todo and in_flight < limit:
                    running.add(submit(*todo.popleft()))
                    in_flight += 1
                # ETA: chains take as many chunks as the finished ones did (the cap before any)
                per_chain = float(np.mean(chunks_used)) if chunks_used else float(cfg.max_chunks)
                left = sum(max(1.0, per_chain - c - 1) for c in chain_chunk.values())
                left += max(0, in_flight - len(chain_chunk)) * per_chain + len(todo) * per_chain
                bar.total = tasks_done + int(round(left)) if (in_flight or todo) else tasks_done
                bar.update(1)
                elapsed = time.perf_counter() - t_loop
                bar.set_postfix(clips=clips_found, clips_per_s=f"{clips_found / max(elapsed, 1e-9):.2f}",
                                chains_left=len(todo) + in_flight)
        finally:
            bar.close()
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        bar.close()

    # every variant of a finished chain, including those that stopped in chunks done
    # before an interruption, is in the chain's done.json
    finished: dict[tuple[int, int], dict] = {}
    for bid in range(len(batches)):
        for s in settings:
            done_path = chain_dir(work, bid, s) / "done.json"
            if done_path.exists():
                for r, st in json.loads(done_path.read_text()).items():
                    finished[(int(r), s)] = st
    complete = all((r, s) in finished for r in regions for s in settings)
    report_dir = Path(report_dir) if report_dir is not None else out_dir.parent
    report: dict[str, Any] = {"config": wanted, "complete": complete, "tasks": tasks_done,
                              "chains": n_chains, "wall_s": time.perf_counter() - t0}
    if not complete:
        report["variants_done"] = len(finished)
        report["variants_total"] = len(regions) * len(settings)
        logger.warning("harvest interrupted: %d of %d variants done; rerun to finish",
                       len(finished), len(regions) * len(settings))
        return report
    infos = {r: _finalize_region(out_dir, work, r, {s: finished[(r, s)] for s in settings}, settings)
             for r in regions}
    clips = {r: int(i["n_clips"]) for r, i in infos.items()}
    simulated = {r: float(sum(i["simulated_s_per_setting"])) for r, i in infos.items()}
    report.update({
        "n_clips": int(sum(clips.values())),
        "clips_per_region": {str(r): n for r, n in clips.items()},
        "simulated_s_per_region": {str(r): v for r, v in simulated.items()},
        "simulated_s": float(sum(simulated.values())),
        "regions_below_target": [r for r, n in clips.items() if n < clips_per_region],
        "capped_variants": [[r, s] for r in regions for s in settings if finished[(r, s)]["capped"]],
        "bytes_on_disk": int(sum(i["bytes"] for i in infos.values())),
        "clips_per_simulated_s": float(sum(clips.values()) / max(sum(simulated.values()), 1e-9)),
    })
    report_dir.mkdir(parents=True, exist_ok=True)
    report["histogram"] = str(plot_clips_histogram(clips, clips_per_region,
                                                   report_dir / "clips_per_region.png"))
    write_json(report_dir / "harvest_report.json", report)
    # the chains' small JSON results stay (a rerun reuses them); staged clips are all moved
    shutil.rmtree(work / "clips", ignore_errors=True)
    logger.info("harvest complete: %d clips, %.0f simulated s, %d bytes, %d regions below %d",
                report["n_clips"], report["simulated_s"], report["bytes_on_disk"],
                len(report["regions_below_target"]), clips_per_region)
    return report
