"""The driver of every clip run: chains of chunk tasks, on Dask or in this process.

Three uses run the same task (:func:`esikit.simulate.harvest.run_chunk_task`) through
:func:`_run_chains`:

- :func:`make_spike_clips`: a fixed simulated time per (region, setting), one task each
  (``esikit simulate --duration``, the demo's dataset);
- :func:`harvest_clips`: K clips per region or a cap, (region batch, setting, chunk)
  tasks (``esikit simulate --clips-per-region K``, ``esikit template``);
- :func:`esikit.simulate.plan.plan_harvest`: the pilot of ``--plan``, one task per
  batch in a temporary folder.

The chunks of one (batch, setting) follow each other (each continues the previous one's
state from its checkpoint); the chains run in parallel on the workers, a bounded number
at a time so that the checkpoints on disk stay few. Without a scheduler address a
``LocalCluster`` with one single-threaded worker process per core is started, or, for
one worker, the tasks run one after the other in this process (no cluster to start);
``scheduler="tcp://HOST:PORT"`` sends the same tasks to an existing cluster, whose
workers must see ``out_dir`` at the same path (a shared filesystem: the tasks read the
anatomy and the checkpoints from it and write the clips into it).

Layout of ``out_dir`` (the ``nmm_spikes`` folder)::

    a{r}/nmm_{k}.mat               the clips of region r, k = 1, 2, ... (when complete),
                                   numbered across the settings in their order
    a{r}/.done                     JSON: clips, simulated seconds per setting
    .harvest/config.json           the run's configuration (a rerun must match it)
    .harvest/anatomy.npz           what the workers simulate
    .harvest/chains/b*_s*/         checkpoints and per-chunk results of each chain
    .harvest/clips/a{r}/s*_c*_*.mat  clips of regions still in progress

Rerunning after a crash, a killed worker or an interrupted client finishes only what is
missing; the output is the same as that of an uninterrupted run. A fixed-duration run
names its chains by region (``b{region}``) and removes ``.harvest`` once every region it
was asked for is complete: its ``.done`` markers are the record.

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
from ..head.layout import clip_filename, region_dirname
from ..io.atomic import remove_stale_temporaries
from .harvest import (
    CheckpointError, chain_dir, chunk_seconds_valid, latest_checkpoint, remove_checkpoints,
    run_chunk_task)
from .nmm import NOISE_SETTINGS, JansenRitParams
from .spikes import RegionClipResult, plain_json, write_json

logger = logging.getLogger(__name__)

__all__ = ["HarvestConfig", "check_variants", "chunks_at_most", "clips_per_setting", "connect_scheduler",
           "default_n_workers", "harvest_clips", "make_spike_clips", "plot_clips_histogram"]

_WORK = ".harvest"


def clips_per_setting(clips_per_region: int, n_settings: int) -> int:
    """Clips a K-clip harvest wants of each (region, setting): ``ceil(K / settings)``."""
    return int(math.ceil(clips_per_region / n_settings))


def chunks_at_most(max_simulated_s: float, chunk_s: float) -> int:
    """Chunks a variant runs at most: the cap in whole chunks (a variant stops only at a chunk's end)."""
    return max(1, int(math.ceil(max_simulated_s / chunk_s - 1e-9)))
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
        return clips_per_setting(self.clips_per_region, len(self.settings))

    @property
    def max_chunks(self) -> int:
        """Chunks per (region, setting) at most."""
        return chunks_at_most(self.max_simulated_s, self.chunk_s)

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


def default_n_workers() -> int:
    """CPUs available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _make_client(scheduler: str | None, n_workers: int | None, processes: bool,
                 timeout_s: float = SCHEDULER_TIMEOUT_S):
    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "bokeh"):  # their INFO lines drown the progress bar
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)

    if scheduler:
        return connect_scheduler(scheduler, timeout_s), None
    n = n_workers or default_n_workers()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                           # any free port: a second run beside another one must not warn about 8787
                           dashboard_address=":0", silence_logs=logging.ERROR)
    return Client(cluster), cluster


class _OnDask:
    """Tasks on a Dask cluster (local or at ``scheduler``), yielded as they complete."""

    def __init__(self, scheduler, n_workers, processes, timeout_s):
        from distributed import as_completed

        self.client, self.cluster = _make_client(scheduler, n_workers, processes, timeout_s)
        self.threads = sum(self.client.nthreads().values()) or 1
        self._running = as_completed()

    def submit(self, spec: dict, key: str) -> None:
        # a retry redoes the chunk from the previous checkpoint, which the task keeps
        self._running.add(self.client.submit(run_chunk_task, spec, pure=False, retries=1, key=key))

    def __iter__(self):
        return iter(self._running)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class _InProcess(deque):
    """Tasks one after the other in this process (one worker: no cluster to start)."""

    threads = 1

    def submit(self, spec: dict, key: str) -> None:
        self.append(_Call(spec, key))

    def __iter__(self):
        while self:
            yield self.popleft()

    close = deque.clear


class _Call:
    """A task of :class:`_InProcess`; ``result()`` runs it (retried once, as on Dask)."""

    def __init__(self, spec: dict, key: str):
        self.spec, self.key = spec, key

    def result(self) -> dict:
        try:
            return run_chunk_task(self.spec)
        except Exception as err:
            logger.warning("task %s failed (%s: %s); retrying it once", self.key, type(err).__name__, err)
            return run_chunk_task(self.spec)


def _run_chains(work: Path, base_spec: dict, batches: dict[int, list[int]], settings: Sequence[int],
                max_chunks: int, *, scheduler: str | None, n_workers: int | None, processes: bool,
                scheduler_timeout_s: float, max_chains_in_flight: int | None, progress: bool,
                desc: str) -> tuple[int, dict[tuple[int, int], dict]]:
    """Run every unfinished (batch, setting) chain to its end: the one driver of clip runs.

    Parameters
    ----------
    work : Path
        The run's ``.harvest`` folder (chains, staged clips, ``anatomy.npz``).
    base_spec : dict
        :func:`~esikit.simulate.harvest.run_chunk_task` fields shared by every task.
    batches : dict of int to list of int
        Chain id -> regions integrated together.
    settings : sequence of int
    max_chunks : int
        Chunks per chain at most (for the progress estimate).
    scheduler, n_workers, processes, scheduler_timeout_s
        Where the tasks run: see :func:`harvest_clips`; without ``scheduler`` and with
        one worker they run in this process.
    max_chains_in_flight : int | None
        Chains started at once (default: twice the worker threads).
    progress : bool
    desc : str
        Label of the progress bar.

    Returns
    -------
    tasks : int
        Tasks run by this call.
    finished : dict of (region, setting) to dict
        Per-variant records (``finished`` of the tasks) of every finished chain.
    """
    from tqdm.auto import tqdm

    todo: deque = deque()
    for bid in batches:
        for s in settings:
            cdir = chain_dir(work, bid, s)
            if (cdir / "done.json").exists():
                remove_checkpoints(cdir)  # left when the driver stopped before removing them
            else:
                todo.append((bid, s, latest_checkpoint(cdir) + 1))
    tasks_done, clips_found = 0, 0
    if todo:
        bar = tqdm(total=max(1, max_chunks * len(todo)), desc=desc, unit="task", disable=not progress)
        n = n_workers or default_n_workers()
        runner = _InProcess() if scheduler is None and n == 1 else _OnDask(
            scheduler, n_workers, processes, scheduler_timeout_s)
        try:
            limit = max_chains_in_flight or 2 * runner.threads
            chain_chunk: dict[tuple[int, int], int] = {}  # last finished chunk of running chains
            chunks_used: list[int] = []  # chunks taken by the chains that finished
            chain_of: dict[str, tuple[int, int]] = {}  # task key -> chain
            recomputed: set[tuple[int, int]] = set()

            def submit(bid, s, chunk):
                spec = dict(base_spec, batch=bid, regions=batches[bid], setting=s, chunk=chunk)
                # a unique key: a recomputed chain must not get an old erred result back
                key = f"clips-b{bid}-s{s}-c{chunk}-{uuid.uuid4().hex[:8]}"
                chain_of[key] = (bid, s)
                runner.submit(spec, key)

            in_flight = 0
            while todo and in_flight < limit:
                submit(*todo.popleft())
                in_flight += 1
            t_loop = time.perf_counter()
            for fut in runner:
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
                    shutil.rmtree(chain_dir(work, bid, s), ignore_errors=True)
                    submit(bid, s, 0)
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
                    submit(res["batch"], res["setting"], res["chunk"] + 1)
                    in_flight += 1
                while todo and in_flight < limit:
                    submit(*todo.popleft())
                    in_flight += 1
                # ETA: chains take as many chunks as the finished ones did (the cap before any)
                per_chain = float(np.mean(chunks_used)) if chunks_used else float(max_chunks)
                left = sum(max(1.0, per_chain - c - 1) for c in chain_chunk.values())
                left += max(0, in_flight - len(chain_chunk)) * per_chain + len(todo) * per_chain
                bar.total = tasks_done + int(round(left)) if (in_flight or todo) else tasks_done
                bar.update(1)
                elapsed = time.perf_counter() - t_loop
                bar.set_postfix(clips=clips_found, clips_per_s=f"{clips_found / max(elapsed, 1e-9):.2f}",
                                chains_left=len(todo) + in_flight)
        finally:
            bar.close()
            runner.close()
    # every variant of a finished chain, including those that stopped in chunks done
    # before an interruption, is in the chain's done.json
    finished: dict[tuple[int, int], dict] = {}
    for bid in batches:
        for s in settings:
            done_path = chain_dir(work, bid, s) / "done.json"
            if done_path.exists():
                for r, st in json.loads(done_path.read_text()).items():
                    finished[(int(r), s)] = st
    return tasks_done, finished


def _staged_order(settings: Sequence[int]):
    """Sort key of staged clip names ``s{setting}_c{chunk}_{j}.mat``: settings in their order."""
    order = {int(s): i for i, s in enumerate(settings)}

    def key(path: Path):
        s, c, j = path.stem.split("_")
        return order.get(int(s[1:]), len(order) + int(s[1:])), int(c[1:]), int(j)
    return key


def check_variants(anat: Anatomy, regions: Sequence[int] | None,
                    settings: Sequence[int]) -> tuple[list[int], tuple[int, ...]]:
    """Sorted distinct regions (default all) and the settings, checked against the anatomy."""
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
    return regions, settings


def _finalize_region(out_dir: Path, work: Path, region: int, stats: dict[int, dict],
                     settings: Sequence[int], extra: dict | None = None) -> dict:
    """Rename the staged clips of a complete region to ``a{r}/nmm_{k}.mat`` (idempotent).

    ``stats`` are the region's per-setting records of the tasks; ``extra`` goes into the
    ``.done`` marker as well.
    """
    folder = out_dir / region_dirname(region)
    marker = folder / ".done"
    if marker.exists():
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / ".harvest_manifest.json"
    if manifest_path.exists():  # an interrupted rename: finish it
        manifest = json.loads(manifest_path.read_text())
    else:
        remove_stale_temporaries(folder)
        staged = sorted((work / "clips" / region_dirname(region)).glob("s*_c*_*.mat"), key=_staged_order(settings))
        for stale in folder.glob("nmm_*.mat"):
            stale.unlink()
        manifest = {p.name: k for k, p in enumerate(staged, start=1)}
        write_json(manifest_path, manifest)
    for name, k in manifest.items():
        src = work / "clips" / region_dirname(region) / name
        if src.exists():
            os.replace(src, folder / clip_filename(k))
    info = {"region": region, "n_clips": len(manifest),
            "clips_per_setting": [stats[s]["clips"] for s in settings],
            "simulated_s_per_setting": [stats[s]["simulated_s"] for s in settings],
            "capped_settings": [s for s in settings if stats[s]["capped"]],
            "bytes": int(sum((folder / clip_filename(k)).stat().st_size for k in manifest.values()))}
    if all("peaks" in stats[s] for s in settings):  # records of the "duration" mode
        info.update({"peaks_per_setting": [stats[s]["peaks"] for s in settings],
                     "alpha_per_setting": [stats[s]["alpha"] for s in settings],
                     "simulated_s": float(sum(info["simulated_s_per_setting"])),
                     "wall_s": float(sum(stats[s]["wall_s"] for s in settings))})
    info.update(extra or {})
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
        Local workers (None: the CPUs available; 1: the tasks run in this process).
        Ignored with ``scheduler``.
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
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    anat = load_anatomy(anatomy)
    regions, settings = check_variants(anat, regions, settings)
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

    batches = {i: regions[i * batch_size:(i + 1) * batch_size]
               for i in range(-(-len(regions) // batch_size))}
    base_spec = {"work_dir": str(work.resolve()), "anatomy": str(anatomy_path.resolve()),
                 "seed": cfg.seed, "params": cfg.params, "chunk_s": cfg.chunk_s,
                 "share": cfg.share, "max_chunks": cfg.max_chunks, "backend": backend,
                 "block": int(block), "dt_ms": cfg.dt_ms, "target_snr_db": cfg.target_snr_db,
                 "mode": "clips"}
    tasks_done, finished = _run_chains(
        work, base_spec, batches, settings, cfg.max_chunks, scheduler=scheduler, n_workers=n_workers,
        processes=processes, scheduler_timeout_s=scheduler_timeout_s,
        max_chains_in_flight=max_chains_in_flight, progress=progress, desc="harvest")
    n_chains = len(batches) * len(settings)
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


def make_spike_clips(
    anatomy: str | Path | Anatomy,
    out_dir: str | Path,
    regions: Sequence[int] | None = None,
    duration_s: float = 20.0,
    settings: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    params: JansenRitParams | None = None,
    n_workers: int | None = None,
    target_snr_db: float = 15.0,
    backend: str = "numba",
    progress: bool = True,
    scheduler: str | None = None,
    processes: bool = True,
) -> dict[int, RegionClipResult]:
    """Spike clips of ``duration_s`` simulated seconds per (region, setting) (resumable).

    DeepSIF's procedure (``generate_tvb_data.py``, ``process_raw_nmm.m``): each region
    excited in turn, the whole recording simulated, its isolated spikes cut into clips
    and rescaled by one factor per recording. One task
    (:func:`~esikit.simulate.harvest.run_chunk_task`, ``mode="duration"``) per (region,
    setting), seeded ``[seed, region, setting]``, exact numba kernel.

    Parameters
    ----------
    anatomy : str | Path | Anatomy
        Connectome, ``node_of_region`` and leadfield (see :func:`load_anatomy`).
    out_dir : str | Path
        The ``nmm_spikes`` folder; clips go to ``a{region}/nmm_{k}.mat`` (``k`` from 1,
        continuing across the settings in their order).
    regions : sequence of int | None
        Regions to excite, default all.
    duration_s : float
        Simulated seconds per (region, setting), the 0.5 s transient included.
    settings : sequence of int
        DeepSIF noise settings (:data:`~esikit.simulate.nmm.NOISE_SETTINGS`).
    seed : int
        Base seed; each (region, setting) run is seeded by ``(seed, region, setting)``.
    params : JansenRitParams | None
        Model parameters (``mu`` and ``noise_scale`` come from the setting).
    target_snr_db : float
        SNR of the rescaled spikes (DeepSIF: 15).
    n_workers, backend, progress, scheduler, processes
        As for :func:`harvest_clips` (one worker: the tasks run in this process).

    Returns
    -------
    dict of int to RegionClipResult
        One entry per region, in region order; ``skipped`` for the regions whose
        ``a{r}/.done`` marker (same settings, duration, seed and SNR) was there already.
        A marker of other settings is replaced: the region is made again.
    """
    out_dir = Path(out_dir)
    anat = load_anatomy(anatomy)
    regions, settings = check_variants(anat, regions, settings)
    params = params or JansenRitParams()
    # what the markers record (as before the one driver), and what else decides the clips
    config = {"settings": list(settings), "duration_s_per_setting": float(duration_s),
              "seed": int(seed), "target_snr_db": float(target_snr_db)}
    run_config = plain_json({"mode": "duration", **config, "params": dataclasses.asdict(params),
                             "dt_ms": 0.5, "anatomy_id": _anatomy_id(anat)})
    work = out_dir / _WORK
    cfg_path = work / "config.json"
    if cfg_path.exists():
        previous = json.loads(cfg_path.read_text())
        if previous.get("mode") != "duration":
            raise ValueError(f"{cfg_path}: this folder holds a clip harvest (clips_per_region); "
                             "use another folder or remove it")
        if previous != run_config:
            logger.warning("%s: unfinished clips made with other settings, discarded", cfg_path)
            shutil.rmtree(work)
    results: dict[int, RegionClipResult] = {}
    todo = []
    for r in regions:
        marker = out_dir / region_dirname(r) / ".done"
        if marker.exists():
            info = json.loads(marker.read_text())
            if all(info.get(key) == value for key, value in config.items()):
                results[r] = _region_result(info, skipped=True)
                continue
            logger.warning("%s: made with other settings (%s), remaking region %d with %s",
                           marker, {key: info.get(key) for key in config}, r, config)
            marker.unlink()
            for s in settings:
                shutil.rmtree(chain_dir(work, r, s), ignore_errors=True)
        todo.append(r)
    if todo:
        work.mkdir(parents=True, exist_ok=True)
        anatomy_path = work / "anatomy.npz"
        if not cfg_path.exists() or not anatomy_path.exists():
            anat.save(anatomy_path)
            write_json(cfg_path, run_config)
        base_spec = {"work_dir": str(work.resolve()), "anatomy": str(anatomy_path.resolve()),
                     "seed": int(seed), "params": dataclasses.asdict(params), "chunk_s": float(duration_s),
                     "share": 0, "max_chunks": 1, "backend": backend, "block": 1, "dt_ms": 0.5,
                     "target_snr_db": float(target_snr_db), "mode": "duration"}
        # one chain per (region, setting), named by the region: a rerun finds its work whatever
        # the region list
        _, finished = _run_chains(
            work, base_spec, {r: [r] for r in todo}, settings, 1, scheduler=scheduler,
            n_workers=n_workers, processes=processes, scheduler_timeout_s=SCHEDULER_TIMEOUT_S,
            max_chains_in_flight=None, progress=progress, desc="spike clips")
        for r in todo:
            results[r] = _region_result(_finalize_region(
                out_dir, work, r, {s: finished[(r, s)] for s in settings}, settings, extra=config), skipped=False)
        shutil.rmtree(work)  # every region asked for is complete: the markers are the record
    return {r: results[r] for r in regions}


def _region_result(info: dict, skipped: bool) -> RegionClipResult:
    """A region's ``.done`` marker of the ``"duration"`` mode as a :class:`RegionClipResult`."""
    fields = {k: info[k] for k in RegionClipResult.__dataclass_fields__ if k in info}
    fields["alpha_per_setting"] = [float("nan") if a is None else a for a in fields.get("alpha_per_setting", [])]
    return RegionClipResult(**{**fields, "skipped": skipped})
