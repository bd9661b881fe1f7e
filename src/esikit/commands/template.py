"""``esikit template OUT --size tiny|small|full``: from DeepSIF's template folder to a trained model.

One command runs every step on DeepSIF's template anatomy (994 regions, 998-node
network, 75 channels, fsaverage5; ``../shared/deepsif_anatomy`` in this project):

====================  =========================================================================
stage                 what it leaves in ``OUT/<stage>/``
====================  =========================================================================
``plan``              ``plan.json``: the pilot run's rates extrapolated to the size (core-hours,
                      disk, wall time here), printed before anything else runs
``clips``             ``nmm_spikes/a{r}/nmm_{k}.mat``: the 998-node Jansen-Rit network harvested
                      on Dask (a LocalCluster, or ``--scheduler``), clips cut by DeepSIF's rules
``metadata``          ``{train,test}_sample_source{1,2}.mat`` with the ``deepsif`` preset
``leadfield``         ``leadfield_75_994.mat``: the template's ``fwd`` with the 75 channel names
                      and positions of ``electrode_75.mat``
``train``             ``template/best.pt``, ``last.pt``: the network (its checkpoint records the
                      montage, so ``esikit localize`` matches a recording's channels by name)
``evaluate``          ``results.json``, ``results.md``, ``comparison.md``: the network against
                      every classical baseline on the test file
====================  =========================================================================

Each stage ends by writing ``OUT/<stage>/stage.json`` atomically (after its outputs):
its parameters, the digests of the stages it used and the size of every output. A
rerun skips a stage whose record is there, matches and whose outputs are unchanged, and
resumes the others (the harvest and training resume where they stopped). The disk a
stage needs (the plan's estimate) is checked before it starts.

The sizes are :data:`SIZES`. The integrator has no GPU kernel (a torch kernel was never
faster than numba and was removed, README "Benchmarks"), so simulation is on CPUs (or a
Dask cluster); training uses a GPU when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import format_bytes, format_duration, option_message

logger = logging.getLogger(__name__)

__all__ = ["SIZES", "STAGES", "TemplateError", "TemplateSize", "add_parser", "build_plan", "format_template_plan",
           "missing_anatomy_files", "run_template"]

#: Test files the evaluate stage scores together: both, so its table has rows by number of
#: sources (training uses the two-source file, as DeepSIF's main.py does).
EVAL_TEST_FILES = ("test_sample_source1.mat", "test_sample_source2.mat")
#: Stages in order; each one's record is ``OUT/<stage>/stage.json``.
STAGES = ("plan", "clips", "metadata", "leadfield", "train", "evaluate")
#: Regions of DeepSIF's template (columns of ``leadfield_75_20k.mat``).
N_TEMPLATE_REGIONS = 994
#: Files the whole run needs in the anatomy folder besides what the metadata preset needs.
SIMULATION_FILES = ("connectivity_998.zip", "electrode_75.mat", "fs_cortex_20k.mat",
                    "fs_cortex_20k_region_mapping.mat")
#: Without a cluster, a plan longer than this on this machine needs ``--yes``.
LOCAL_WALL_LIMIT_S = 24 * 3600.0
#: Training samples per second (wall, this project's 2-core machine, CPU): the fallback when
#: the plan's training probe fails. DeepSIF's network: about 2 on a quiet machine (1.35 by the
#: probe here). TCN at 75 x 994, batch 32: 54-62 in ``small``'s run on the quiet machine
#: (4.7 with it loaded by four other jobs; README).
CPU_TRAIN_SAMPLES_PER_S = {"deepsif": 2.0, "tcn": 55.0}
#: The plan's training probe (:func:`probe_training_rate`): timed steps after warm-up steps,
#: the seconds after which the timed steps stop (at least one runs), and the largest batch
#: it uses on a CPU (a step of DeepSIF's network at batch 2 takes seconds on a quiet
#: 2-core machine, a minute on a loaded one); on a GPU it uses the training's own batch.
PROBE_STEPS = 3
PROBE_WARMUP = 1
PROBE_MAX_S = 30.0
PROBE_CPU_MAX_BATCH = 2
#: Time samples per training sample (DeepSIF's 500-sample windows).
N_TIMES = 500
#: Wall seconds per test sample for the network and all seven baselines at 75 x 994
#: (Champagne dominates): 1.6 in ``small``'s run on the quiet 2-core machine, 3 loaded.
EVAL_S_PER_SAMPLE = 2.0
#: Seconds per metadata row written (DeepSIF preset, measured with ``--size tiny``).
METADATA_S_PER_ROW = 0.002
#: Bytes per metadata row on disk (70-region patches, float64 fields).
METADATA_BYTES_PER_ROW = 3000
#: Training rows when ``n_train`` is None: DeepSIF's design, 48 variations x 4 SNR per centre.
DEEPSIF_TRAIN_ROWS_PER_REGION = 48 * 4
DEEPSIF_TEST_ROWS_PER_REGION = 3 * 4


class TemplateError(RuntimeError):
    """A template run cannot go on (bad anatomy folder, another size in OUT, disk)."""


@dataclasses.dataclass(frozen=True)
class TemplateSize:
    """The parameters of one ``--size``: simulation, metadata, training and evaluation.

    ``n_regions``: regions excited (spread evenly over the 994; None: all).
    ``clips_per_region`` (K), ``max_simulated_s``, ``chunk_s``: the harvest.
    ``n_train``, ``n_test``: rows per metadata file (None: DeepSIF's full design).
    ``cpu_model`` / ``gpu_model`` (+ kwargs): the network without / with a GPU.
    ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``: training.
    ``eval_samples``: test samples evaluated (None: all). ``pilot_*``: the plan's pilot.
    """

    name: str
    n_regions: int | None
    clips_per_region: int
    max_simulated_s: float
    chunk_s: float
    n_train: int | None
    n_test: int | None
    cpu_model: str
    cpu_model_kwargs: dict
    gpu_model: str
    gpu_model_kwargs: dict
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    eval_samples: int | None
    pilot_regions: int
    pilot_s: float

    def regions(self) -> list[int] | None:
        """Excited regions, spread evenly over the template (None: all)."""
        if self.n_regions is None or self.n_regions >= N_TEMPLATE_REGIONS:
            return None
        return sorted({int(round(x)) for x in np.linspace(0, N_TEMPLATE_REGIONS - 1, self.n_regions)})

    def model(self, gpu: bool) -> tuple[str, dict]:
        return (self.gpu_model, dict(self.gpu_model_kwargs)) if gpu else (self.cpu_model, dict(self.cpu_model_kwargs))


# One table: everything a size decides. DeepSIF's own schedule (main.py): batch 64,
# Adam lr 3e-4, weight decay 1e-6, 20 epochs, MSE summed.
SIZES: dict[str, TemplateSize] = {
    # minutes on 2 cores; a test runs it
    "tiny": TemplateSize("tiny", n_regions=4, clips_per_region=3, max_simulated_s=15.0, chunk_s=5.0,
                         n_train=48, n_test=8, cpu_model="tcn", cpu_model_kwargs={"n_hidden": 32, "n_blocks": 2},
                         gpu_model="tcn", gpu_model_kwargs={"n_hidden": 32, "n_blocks": 2}, epochs=1,
                         batch_size=8, learning_rate=1e-3, weight_decay=0.0, eval_samples=8,
                         pilot_regions=1, pilot_s=2.0),
    # every region, at most 4 hours on 2 cores: TCN (244k parameters) on a CPU, DeepSIF's network on a GPU.
    # 10 epochs: the TCN trains at ~55 samples/s on a quiet 2-core machine (README), so
    # 72,000 samples take ~22 min; after 2 the validation loss was still falling fast.
    "small": TemplateSize("small", n_regions=None, clips_per_region=3, max_simulated_s=30.0, chunk_s=5.0,
                          n_train=8000, n_test=200, cpu_model="tcn", cpu_model_kwargs={},
                          gpu_model="deepsif", gpu_model_kwargs={}, epochs=10, batch_size=32,
                          learning_rate=1e-3, weight_decay=1e-6, eval_samples=200, pilot_regions=2, pilot_s=6.0),
    # DeepSIF's scale: 994 regions x 3 settings, 60 clips per region, DeepSIF's design and schedule
    "full": TemplateSize("full", n_regions=None, clips_per_region=60, max_simulated_s=200.0, chunk_s=5.0,
                         n_train=None, n_test=None, cpu_model="deepsif", cpu_model_kwargs={},
                         gpu_model="deepsif", gpu_model_kwargs={}, epochs=20, batch_size=64,
                         learning_rate=3e-4, weight_decay=1e-6, eval_samples=None, pilot_regions=4, pilot_s=10.0),
}


# ------------------------------------------------------------------------------ checks
def missing_anatomy_files(folder: str | Path) -> list[str]:
    """Files (with what they are for) the template run needs and ``folder`` lacks.

    The ``deepsif`` metadata preset's files (:func:`~esikit.head.deepsif_template.missing_template_files`)
    and the simulation's (:data:`SIMULATION_FILES`).
    """
    from ..head.deepsif_template import missing_template_files

    folder = Path(folder)
    if not folder.is_dir():
        return [f"the folder itself ({folder} does not exist)"]
    missing = list(missing_template_files(folder))
    why = {"connectivity_998.zip": "the 998-node connectome the network is simulated on",
           "electrode_75.mat": "field 'eloc75', the 75 channel names and positions",
           "fs_cortex_20k.mat": "the cortex mesh",
           "fs_cortex_20k_region_mapping.mat": "the region of each vertex"}
    for name in SIMULATION_FILES:
        if not (folder / name).is_file() and not any(m.startswith(name) for m in missing):
            missing.append(f"{name} ({why[name]})")
    return missing


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (its nearest existing parent); None when unknown."""
    from ..io.atomic import free_bytes

    p = path.resolve()
    while not p.exists():
        p = p.parent
    return free_bytes(p)


def _human_s(s: float | None) -> str:
    return "not measured here" if s is None else format_duration(s)


# ------------------------------------------------------------------------------ the plan
def _train_rows(size: TemplateSize, n_regions: int) -> int:
    return size.n_train if size.n_train is not None else n_regions * DEEPSIF_TRAIN_ROWS_PER_REGION


def _test_rows(size: TemplateSize, n_regions: int) -> int:
    return size.n_test if size.n_test is not None else n_regions * DEEPSIF_TEST_ROWS_PER_REGION


def probe_training_rate(model: str, model_kwargs: dict | None = None, *, gpu: bool, batch_size: int,
                        n_channels: int = 75, n_regions: int = N_TEMPLATE_REGIONS, n_times: int = N_TIMES,
                        steps: int = PROBE_STEPS, warmup: int = PROBE_WARMUP,
                        max_s: float | None = PROBE_MAX_S) -> dict[str, Any] | None:
    """Measure how fast ``model`` trains on the device the run will use; None when the probe fails.

    A few training steps (forward, summed MSE backward, Adam) on random data of the
    training shape, after ``warmup`` untimed steps, with the autocast training uses there
    (:func:`~esikit.train.trainer.choose_amp` with ``USE_AMP = True``: bf16/fp16 on a GPU,
    float32 on a CPU). On a CPU it starts at batch :data:`PROBE_CPU_MAX_BATCH` and measures
    again at ``batch_size`` when those steps, extrapolated, fit in ``max_s``
    (:data:`PROBE_MAX_S`); the timed steps stop after ``max_s`` seconds. A small batch on a
    CPU underestimates the rate of a bigger one (DeepSIF's network: 2 samples/s at batch 8,
    2.7 at batch 32, measured when the template issue was filed), so the plan errs long for DeepSIF's network.

    Returns
    -------
    dict or None
        :func:`esikit.train.speed.measure_training_speed`'s result plus ``model``.
    """
    import torch

    from ..models.registry import build_model
    from ..train.speed import measure_training_speed
    from ..train.trainer import choose_amp

    device = torch.device("cuda" if gpu else "cpu")
    batch = int(batch_size) if gpu else min(int(batch_size), PROBE_CPU_MAX_BATCH)
    try:
        net = build_model(model, n_channels, n_regions, **dict(model_kwargs or {}))
        opts = dict(n_times=n_times, device=device, amp_dtype=choose_amp(device, True), steps=steps, max_s=max_s)
        result = measure_training_speed(net, batch_size=batch, warmup=warmup, **opts)
        # the training's own batch when its steps fit the probe's budget (a light network:
        # small batches underuse the CPU, the TCN trains ~2x faster per sample at batch 16 than 2)
        full_step_s = result["s_per_step"] * int(batch_size) / batch
        if batch < int(batch_size) and (max_s is None or full_step_s * steps <= max_s):
            result = measure_training_speed(net, batch_size=int(batch_size), warmup=1, **opts)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the constant fallback, said in the plan
        logger.warning("training probe of %s on %s failed (%s: %s); the plan uses the fallback rate", model, device,
                       type(exc).__name__, exc)
        return None
    return {**result, "model": model}


def _rate(model: str, gpu: bool, probe: dict[str, Any] | None) -> tuple[float | None, str]:
    """Training samples/s and where the number comes from: the probe, else the CPU constant."""
    if probe is not None and probe.get("samples_per_s"):
        threads = f" ({probe['threads']} threads)" if probe.get("device") == "cpu" and probe.get("threads") else ""
        return float(probe["samples_per_s"]), (f"measured here: {probe['steps']} steps of batch "
                                              f"{probe['batch_size']} on {probe['device']}{threads}, "
                                              f"{probe.get('amp') or 'float32'}")
    if gpu:
        return None, "not measured (the probe failed)"
    rate = CPU_TRAIN_SAMPLES_PER_S.get(model)
    return rate, ("CPU_TRAIN_SAMPLES_PER_S (not measured here)" if rate else "unknown")


def build_plan(size: TemplateSize, harvest: dict[str, Any], *, gpu: bool, scheduler: str | None = None,
               n_params: int | None = None, train_probe: dict[str, Any] | None = None,
               deepsif_probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole run's expected cost from the harvest plan (:func:`esikit.simulate.plan.plan_harvest`).

    Parameters
    ----------
    size : TemplateSize
    harvest : dict
        ``plan_harvest``'s result for the size's regions and K.
    gpu : bool
        Whether training will run on a GPU (its rate is not measured here: no estimate).
    scheduler : str | None
        A Dask scheduler: the simulation's wall time is then the cluster's, not this machine's.
    n_params : int | None
        Parameters of the network (for the checkpoint's disk).
    train_probe, deepsif_probe : dict | None
        :func:`probe_training_rate` of the size's network and of DeepSIF's on the training
        device. Without one the training rate falls back to
        :data:`CPU_TRAIN_SAMPLES_PER_S` on a CPU, and is unknown on a GPU.

    Returns
    -------
    dict
        ``stages``: per stage ``core_h``, ``wall_s`` (None: unknown), ``bytes``; ``total_wall_s``
        (None when a part is unknown), ``total_bytes``, ``model``, ``device``, ``needs_yes``
        and ``reason`` (why ``--yes`` is needed), ``harvest`` (the input); ``train_rate``
        (``samples_per_s``, ``source``) and ``deepsif_schedule``: the wall time DeepSIF's own
        schedule (``--size full``'s training: 20 epochs of the full design, batch 64) would
        take on this device.
    """
    n_regions = int(harvest["n_regions"])
    n_cores = int(harvest["n_cores"])
    model, _ = size.model(gpu)
    n_clips = float(harvest["expected_clips"])
    # for the disk, every region reaching its share in every setting (a short pilot may see no spike)
    from ..simulate.distributed import clips_per_setting

    n_settings = len(harvest["settings"])
    clip_bound = n_regions * n_settings * clips_per_setting(size.clips_per_region, n_settings)
    clip_bytes = clip_bound * float(harvest["bytes_per_clip"])
    clip_wall = float(harvest["expected_wall_s"])
    stages: dict[str, dict[str, Any]] = {}
    stages["clips"] = {"core_h": clip_wall * n_cores / 3600.0, "wall_s": None if scheduler else clip_wall,
                       "bytes": max(float(harvest["expected_bytes"]), clip_bytes),
                       "what": f"{n_regions} regions x {len(harvest['settings'])} settings, K = "
                               f"{size.clips_per_region} clips per region, about {n_clips:.0f} clips"}
    rows = 2 * (_train_rows(size, n_regions) + _test_rows(size, n_regions))  # source1 and source2 files
    meta_s = rows * METADATA_S_PER_ROW
    stages["metadata"] = {"core_h": meta_s / 3600.0, "wall_s": meta_s, "bytes": rows * METADATA_BYTES_PER_ROW,
                          "what": f"{rows} rows in 4 files (DeepSIF preset)"}
    stages["leadfield"] = {"core_h": 0.0, "wall_s": 1.0, "bytes": 75 * N_TEMPLATE_REGIONS * 8 + 10_000,
                           "what": "fwd 75 x 994 with electrode_75's names and positions"}
    n_samples = _train_rows(size, n_regions) * 0.9 * size.epochs  # VAL_SPLIT 0.1
    rate, rate_source = _rate(model, gpu, train_probe)
    train_s = n_samples / rate if rate else None
    # the packed clip cache: each clip as float32 (500 x 994) plus its projection (500 x 75)
    cache = clip_bound * 500 * (N_TEMPLATE_REGIONS + 75) * 4
    ckpt = 2 * 3 * 4 * (n_params or 22_400_000)  # best.pt and last.pt, weights + Adam's two moments
    stages["train"] = {"core_h": None if train_s is None else train_s * n_cores / 3600.0, "wall_s": train_s,
                       "bytes": cache + ckpt,
                       "what": f"{model} on {'a GPU' if gpu else 'the CPU'}, {size.epochs} epochs x "
                               f"{_train_rows(size, n_regions) * 0.9:.0f} samples, batch {size.batch_size}"}
    n_eval = size.eval_samples or _test_rows(size, n_regions)
    eval_s = n_eval * EVAL_S_PER_SAMPLE
    stages["evaluate"] = {"core_h": eval_s / 3600.0, "wall_s": eval_s, "bytes": 50e6,
                          "what": f"{n_eval} test samples, the network and every baseline"}
    walls = [s["wall_s"] for s in stages.values()]
    total_wall = None if any(w is None for w in walls) else float(sum(walls))
    known_wall = float(sum(w for w in walls if w is not None))
    needs_yes, reason = False, ""
    if not scheduler and known_wall > LOCAL_WALL_LIMIT_S:
        needs_yes = True
        reason = (f"expected {_human_s(known_wall)} on this machine's {n_cores} cores without a cluster "
                  f"(more than {_human_s(LOCAL_WALL_LIMIT_S)}): use --scheduler tcp://HOST:PORT, a GPU, "
                  "or --yes to run it here anyway")
    full = SIZES["full"]
    if deepsif_probe is None and model == "deepsif":
        deepsif_probe = train_probe
    ds_rate, ds_source = _rate("deepsif", gpu, deepsif_probe)
    ds_samples = _train_rows(full, N_TEMPLATE_REGIONS) * 0.9 * full.epochs
    deepsif_schedule = {"epochs": full.epochs, "batch_size": full.batch_size, "samples": ds_samples,
                        "samples_per_s": ds_rate, "source": ds_source,
                        "wall_s": ds_samples / ds_rate if ds_rate else None}
    return {"size": size.name, "model": model, "device": "cuda" if gpu else "cpu", "n_cores": n_cores,
            "scheduler": scheduler, "stages": stages, "total_wall_s": total_wall, "known_wall_s": known_wall,
            "total_bytes": float(sum(s["bytes"] for s in stages.values())), "needs_yes": needs_yes,
            "reason": reason, "harvest": harvest,
            "train_rate": {"samples_per_s": rate, "source": rate_source, "probe": train_probe},
            "deepsif_schedule": {**deepsif_schedule, "probe": deepsif_probe}}


def format_template_plan(plan: dict[str, Any]) -> list[str]:
    """The plan as printed: the harvest planner's lines, then one line per stage and the totals."""
    from ..simulate.plan import format_plan

    lines = [f"Plan for esikit template --size {plan['size']} ({plan['model']} on {plan['device']}, "
             f"{plan['n_cores']} cores here{', simulation on ' + plan['scheduler'] if plan['scheduler'] else ''}):"]
    lines += ["  " + line for line in format_plan(plan["harvest"])]
    lines.append(f"  {'stage':<10} {'core-hours':>10} {'wall here':>18} {'disk':>10}  what")
    for name, s in plan["stages"].items():
        core_h = "?" if s["core_h"] is None else f"{s['core_h']:.2f}"
        wall = "on the cluster" if (name == "clips" and plan["scheduler"]) else _human_s(s["wall_s"])
        lines.append(f"  {name:<10} {core_h:>10} {wall:>18} {format_bytes(s['bytes']):>10}  {s['what']}")
    total = (_human_s(plan["total_wall_s"]) if plan["total_wall_s"] is not None
             else f"at least {_human_s(plan['known_wall_s'])} (a part is not measured here)")
    lines.append(f"  total: {total}, {format_bytes(plan['total_bytes'])} of disk")
    rate = plan.get("train_rate")  # absent from plans written before the training probe
    if rate and rate.get("samples_per_s"):
        lines.append(f"  training rate: {rate['samples_per_s']:.2f} samples/s ({rate['source']})")
    ds = plan.get("deepsif_schedule")
    if ds:
        hours = "not measured here" if ds.get("wall_s") is None else f"{ds['wall_s'] / 3600:,.1f} hours"
        at = f" at {ds['samples_per_s']:.2f} samples/s, {ds['source']}" if ds.get("samples_per_s") else ""
        lines.append(f"  DeepSIF's own schedule ({ds['epochs']} epochs x {ds['samples'] / ds['epochs']:,.0f} "
                     f"samples, batch {ds['batch_size']}) on {plan['device']}: {hours}{at}")
    if plan["needs_yes"]:
        lines.append(f"  too big for this machine: {plan['reason']}")
    return lines


# ------------------------------------------------------------------------------ stage records
def _snapshot(out: Path, rel_paths: list[str]) -> dict[str, Any]:
    """Sizes of the outputs: a file's byte count, a folder's [files, bytes]."""
    snap: dict[str, Any] = {}
    for rel in rel_paths:
        p = out / rel
        if p.is_dir():
            files = [f for f in p.rglob("*") if f.is_file()]
            snap[rel] = [len(files), int(sum(f.stat().st_size for f in files))]
        elif p.is_file():
            snap[rel] = p.stat().st_size
        else:
            snap[rel] = None
    return snap


def _record_path(out: Path, stage: str) -> Path:
    return out / stage / "stage.json"


def _digest(out: Path, stage: str) -> str | None:
    p = _record_path(out, stage)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def stage_is_complete(out: Path, stage: str, key: dict[str, Any], inputs: dict[str, str | None]) -> bool:
    """True when ``stage.json`` exists, matches ``key`` and ``inputs``, and every output is unchanged."""
    p = _record_path(out, stage)
    if not p.is_file():
        return False
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    if rec.get("status") != "complete" or rec.get("key") != _plain(key) or rec.get("inputs") != inputs:
        return False
    outputs = rec.get("outputs") or {}
    return bool(outputs) and _snapshot(out, list(outputs)) == outputs and None not in outputs.values()


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _write_record(out: Path, stage: str, key: dict, inputs: dict, outputs: list[str], info: dict,
                  wall_s: float) -> None:
    from ..io.atomic import atomic_write_json

    atomic_write_json(_record_path(out, stage), {
        "stage": stage, "status": "complete", "key": _plain(key), "inputs": inputs,
        "outputs": _snapshot(out, outputs), "info": _plain(info), "wall_s": wall_s})


# ------------------------------------------------------------------------------ the run
@dataclasses.dataclass
class TemplateRun:
    """What every stage needs: the folders, the size and the options."""

    out: Path
    anatomy_dir: Path
    size: TemplateSize
    scheduler: str | None = None
    workers: int | None = None
    seed: int = 0
    progress: bool = True
    gpu: bool = False
    plan: dict[str, Any] | None = None
    _anatomy: Any = None

    def anatomy(self):
        if self._anatomy is None:
            from ..head.anatomy import load_anatomy

            self._anatomy = load_anatomy(self.anatomy_dir)
        return self._anatomy

    @property
    def nmm_spikes(self) -> Path:
        return self.out / "clips" / "nmm_spikes"

    @property
    def fwd_path(self) -> Path:
        return self.out / "leadfield" / "leadfield_75_994.mat"

    @property
    def run_dir(self) -> Path:
        return self.out / "train" / "template"

    def train_config(self) -> dict[str, Any]:
        from ..config import get_config, validate_config

        model, kwargs = self.size.model(self.gpu)
        meta = self.out / "metadata"
        cfg, _ = get_config([])
        cfg.update({
            # DeepSIF trains on the two-source files (main.py's default)
            "TRAIN_METADATA_PATH": str(meta / "train_sample_source2.mat"),
            "TEST_METADATA_PATH": str(meta / "test_sample_source2.mat"),
            "NMM_SPIKES_DIR": str(self.nmm_spikes), "FWD_MATRIX_PATH": str(self.fwd_path),
            # absolute: esikit localize reads the anatomy from wherever it is run
            "ANATOMY": str(self.anatomy_dir.resolve()), "MODEL": model, "MODEL_KWARGS": kwargs,
            "BATCH_SIZE": self.size.batch_size, "NUM_EPOCHS": self.size.epochs,
            "LEARNING_RATE": self.size.learning_rate, "WEIGHT_DECAY": self.size.weight_decay,
            "LOSS_REDUCTION": "sum", "VAL_SPLIT": 0.1, "SEED": self.seed,
            "NUM_WORKERS": 0 if self.size.name == "tiny" else 2,
            "CHECKPOINT_DIR": str(self.out / "train"), "LOG_DIR": str(self.out / "train" / "logs"),
            "RUN_NAME": "template", "CACHE_DIR": str(self.out / "train" / "cache"), "EVALUATE": False,
            "EVAL_MAX_SAMPLES": self.size.eval_samples,
        })
        return validate_config(cfg, source="esikit template") or cfg


def _stage_key(run: TemplateRun, stage: str) -> dict[str, Any]:
    s = run.size
    common = {"size": s.name, "anatomy": str(run.anatomy_dir.resolve()), "seed": run.seed}
    if stage == "plan":
        # the whole size: any parameter changes the estimates
        return {**common, "n_cores": run.workers, "gpu": run.gpu, "scheduler": run.scheduler,
                "params": dataclasses.asdict(s)}
    if stage == "clips":
        return {**common, "regions": s.regions(), "K": s.clips_per_region, "max_simulated_s": s.max_simulated_s,
                "chunk_s": s.chunk_s}
    if stage == "metadata":
        return {**common, "n_train": s.n_train, "n_test": s.n_test, "preset": "deepsif"}
    if stage == "leadfield":
        return common
    if stage == "train":
        return {**common, "model": s.model(run.gpu), "epochs": s.epochs, "batch_size": s.batch_size,
                "learning_rate": s.learning_rate, "weight_decay": s.weight_decay}
    return {**common, "eval_samples": s.eval_samples, "test_files": list(EVAL_TEST_FILES)}


#: Stages each stage reads (its record is invalid when theirs changed).
STAGE_INPUTS = {"plan": (), "clips": (), "metadata": ("clips",), "leadfield": (), "train": ("clips", "metadata",
                "leadfield"), "evaluate": ("train",)}


def _run_plan(run: TemplateRun) -> tuple[list[str], dict]:
    from ..simulate.plan import plan_harvest

    harvest = plan_harvest(run.anatomy(), run.size.clips_per_region, regions=run.size.regions(),
                           max_simulated_s=run.size.max_simulated_s, chunk_s=run.size.chunk_s,
                           pilot_regions=run.size.pilot_regions,
                           pilot_s=run.size.pilot_s, n_cores=run.workers, seed=run.seed)
    n_params = None
    model, kwargs = run.size.model(run.gpu)
    try:
        from ..models.registry import build_model

        n_params = build_model(model, 75, N_TEMPLATE_REGIONS, **kwargs).count_parameters()
    except Exception as exc:  # the plan stays useful without the exact count
        logger.warning("could not count the network's parameters: %s", exc)
    # the training rate measured on the device the run trains on, for the size's network and
    # for DeepSIF's (its own schedule's hours); the constant stays the fallback
    train_probe = probe_training_rate(model, kwargs, gpu=run.gpu, batch_size=run.size.batch_size)
    deepsif_probe = train_probe if (model, kwargs) == ("deepsif", {}) else probe_training_rate(
        "deepsif", {}, gpu=run.gpu, batch_size=SIZES["full"].batch_size)
    plan = build_plan(run.size, harvest, gpu=run.gpu, scheduler=run.scheduler, n_params=n_params,
                      train_probe=train_probe, deepsif_probe=deepsif_probe)
    from ..io.atomic import atomic_write_json

    atomic_write_json(run.out / "plan" / "plan.json", _plain(plan))
    run.plan = plan
    return ["plan/plan.json"], {"total_wall_s": plan["total_wall_s"], "total_bytes": plan["total_bytes"]}


def _run_clips(run: TemplateRun) -> tuple[list[str], dict]:
    from ..simulate.distributed import harvest_clips

    s = run.size
    report = harvest_clips(run.anatomy(), run.nmm_spikes, s.clips_per_region, regions=s.regions(), seed=run.seed,
                           chunk_s=s.chunk_s, max_simulated_s=s.max_simulated_s, scheduler=run.scheduler,
                           n_workers=run.workers, progress=run.progress, report_dir=run.out / "clips")
    if not report["complete"]:
        raise TemplateError(f"{run.nmm_spikes}: harvest interrupted ({report.get('variants_done')} of "
                            f"{report.get('variants_total')} variants done); rerun the same command to finish it")
    if not report["n_clips"]:
        raise TemplateError(f"{run.nmm_spikes}: no region produced a clip; raise max_simulated_s")
    return ["clips/nmm_spikes"], {k: report[k] for k in ("n_clips", "simulated_s", "wall_s", "bytes_on_disk",
                                                         "regions_below_target")}


def _run_metadata(run: TemplateRun) -> tuple[list[str], dict]:
    from ..head.deepsif_template import load_deepsif_template
    from ..simulate.metadata import make_metadata_files

    t0 = time.perf_counter()
    files = make_metadata_files(run.anatomy(), run.nmm_spikes, run.out / "metadata", run.size.n_train,
                                run.size.n_test, seed=run.seed, preset="deepsif",
                                template=load_deepsif_template(run.anatomy_dir), progress=run.progress)
    paths = [p for pair in files.by_sources.values() for p in pair]
    rel = [str(Path(p).resolve().relative_to(run.out.resolve())) for p in paths]
    return rel, {"files": rel, "wall_s": time.perf_counter() - t0}


def _run_leadfield(run: TemplateRun) -> tuple[list[str], dict]:
    """The template's ``fwd`` with electrode_75's names and positions (the rows follow ``eloc75``)."""
    from ..head.forward import read_montage
    from ..io.forward_model import ForwardModel, load_forward_model, save_forward_model

    src = sorted(run.anatomy_dir.glob("leadfield_*.mat"))[0]
    names, pos = read_montage(run.anatomy_dir / "electrode_75.mat")
    model = load_forward_model(src, n_regions=N_TEMPLATE_REGIONS)
    if model.n_channels != len(names):
        raise TemplateError(f"{src}: field 'fwd' has {model.n_channels} channels, expected {len(names)} "
                            f"(the channels of {run.anatomy_dir / 'electrode_75.mat'})")
    save_forward_model(run.fwd_path, ForwardModel(model.fwd, names, pos))
    return [str(run.fwd_path.relative_to(run.out))], {"n_channels": len(names), "source": src.name,
                                                      "frame": "electrode_75.mat's coordinates, RAS metres"}


def _run_train(run: TemplateRun) -> tuple[list[str], dict]:
    from ..train.checkpoint import load_checkpoint
    from .train import train

    from ..train.trainer import ResumeConfigError

    cfg = run.train_config()
    if _record_path(run.out, "train").is_file() and run.run_dir.is_dir():
        # a finished training on other data or settings: kept aside, not continued
        n = 1
        while (old := run.run_dir.with_name(f"{run.run_dir.name}.superseded-{n}")).exists():
            n += 1
        run.run_dir.rename(old)
        _record_path(run.out, "train").unlink()
        print(f"[train] the data or settings changed since the last training: its run moved to {old}")
    resume = (run.run_dir / "last.pt").is_file()  # a killed run goes on from its newest checkpoint
    try:
        result = train(cfg, resume=resume, show_progress=run.progress)
    except ResumeConfigError as err:  # e.g. a GPU now, a CPU network before
        raise TemplateError(f"{run.run_dir}: the checkpoint there was trained with another configuration ({err}); "
                            "move that folder away to train again") from err
    best = run.run_dir / "best.pt"
    ckpt = best if best.is_file() else run.run_dir / "last.pt"
    montage = load_checkpoint(ckpt).get("montage") or {}
    names = montage.get("ch_names") or []
    if len(names) != 75:
        raise TemplateError(f"{ckpt}: the checkpoint records {len(names)} channel names, expected the 75 of "
                            "electrode_75.mat")
    outputs = [str(p.relative_to(run.out)) for p in (run.run_dir / "best.pt", run.run_dir / "last.pt")
               if p.is_file()]
    return outputs, {"checkpoint": str(ckpt.relative_to(run.out)), "train_s": result.get("train_seconds"),
                     "model": cfg["MODEL"], "epochs": cfg["NUM_EPOCHS"]}


def _run_evaluate(run: TemplateRun) -> tuple[list[str], dict]:
    from .evaluate import main as evaluate_main

    best = run.run_dir / "best.pt"
    ckpt = best if best.is_file() else run.run_dir / "last.pt"
    out = run.out / "evaluate"
    tests = [str(run.out / "metadata" / name) for name in EVAL_TEST_FILES]
    args = argparse.Namespace(checkpoint=str(ckpt), out=str(out), max_samples=run.size.eval_samples,
                              test_metadata=tests, baselines=None, oracle=False, depth=None, rule="deepsif")
    t0 = time.perf_counter()
    code = evaluate_main(args)
    if code:
        raise TemplateError(f"{ckpt}: evaluation failed (exit status {code}, message above)")
    return ["evaluate/results.json", "evaluate/comparison.md"], {"wall_s": time.perf_counter() - t0}


STAGE_RUNNERS: dict[str, Callable[[TemplateRun], tuple[list[str], dict]]] = {
    "plan": _run_plan, "clips": _run_clips, "metadata": _run_metadata, "leadfield": _run_leadfield,
    "train": _run_train, "evaluate": _run_evaluate,
}


def _stage_bytes(run: TemplateRun, stage: str) -> float:
    """Disk the stage still needs: the plan's estimate less what it already wrote (a resumed stage)."""
    if run.plan is None or stage not in run.plan["stages"]:
        return 0.0
    need = float(run.plan["stages"][stage]["bytes"])
    there = run.out / stage
    if there.is_dir():
        need -= sum(f.stat().st_size for f in there.rglob("*") if f.is_file())
    return max(0.0, need)


def check_disk(run: TemplateRun, stage: str) -> None:
    """Raise :class:`TemplateError` when the free disk is below the stage's estimate."""
    need = _stage_bytes(run, stage)
    free = _free_bytes(run.out)
    if free is not None and need > free:
        raise TemplateError(f"{run.out}: stage '{stage}' needs about {format_bytes(need)} of disk (the plan's "
                            f"estimate), only {format_bytes(free)} free; free some space or use another folder")


def run_stage(run: TemplateRun, stage: str) -> bool:
    """Run ``stage`` unless its record says it is complete; returns True when it ran."""
    key = _stage_key(run, stage)
    inputs = {name: _digest(run.out, name) for name in STAGE_INPUTS[stage]}
    if stage_is_complete(run.out, stage, key, inputs):
        print(f"[{stage}] complete, skipped ({_record_path(run.out, stage).relative_to(run.out)})")
        if stage == "plan":
            run.plan = json.loads((run.out / "plan" / "plan.json").read_text())
        return False
    if stage != "plan":
        check_disk(run, stage)
    print(f"[{stage}] running ...", flush=True)
    t0 = time.perf_counter()
    outputs, info = STAGE_RUNNERS[stage](run)
    wall = time.perf_counter() - t0
    _write_record(run.out, stage, key, inputs, outputs, info, wall)
    print(f"[{stage}] done in {wall:.1f} s")
    return True


def run_template(out: str | Path, size: str = "small", anatomy: str | Path = "../shared/deepsif_anatomy", *,
                 scheduler: str | None = None, workers: int | None = None, yes: bool = False,
                 plan_only: bool = False, seed: int = 0, progress: bool = True, gpu: bool | None = None) -> int:
    """Run ``esikit template`` (module docstring); returns the exit status.

    0 done (or ``plan_only``), 2 bad input (anatomy folder, another size in ``out``),
    3 the plan needs ``--yes``, 1 a stage failed (disk, harvest).
    """
    out = Path(out)
    anatomy_dir = Path(anatomy)
    if size not in SIZES:
        print(f"esikit template: error: {option_message('size', size, sorted(SIZES))}")
        return 2
    missing = missing_anatomy_files(anatomy_dir)
    if missing:
        print(f"esikit template: error: {anatomy_dir}: the template run needs file(s) this anatomy folder lacks: "
              + "; ".join(missing))
        return 2
    if gpu is None:
        import torch

        gpu = bool(torch.cuda.is_available())
    run = TemplateRun(out, anatomy_dir, SIZES[size], scheduler=scheduler, workers=workers, seed=seed,
                      progress=progress, gpu=gpu)
    from ..io.atomic import atomic_write_json

    identity = {"size": size, "anatomy": str(anatomy_dir.resolve()), "seed": seed}
    marker = out / "template.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != identity:
            print(f"esikit template: error: {marker}: this folder holds a template run with {previous}, not "
                  f"{identity}; use another folder")
            return 2
    else:
        atomic_write_json(marker, identity)
    try:
        run_stage(run, "plan")
        for line in format_template_plan(run.plan):
            print(line)
        if plan_only:
            return 0
        if run.plan["needs_yes"] and not yes:
            print(f"esikit template: not started: {run.plan['reason']}")
            return 3
        for stage in STAGES[1:]:
            run_stage(run, stage)
    except (TemplateError, ValueError, FileNotFoundError, ConnectionError) as err:
        # TemplateError covers the run's own checks; the others are the stages' clear errors
        # (a bad field in a file, an unreachable --scheduler, a checkpoint or lock problem)
        print(f"esikit template: error: {err}")
        return 1
    except RuntimeError as err:
        from ..train.checkpoint import CheckpointError, RunLockedError

        if not isinstance(err, (CheckpointError, RunLockedError)):
            raise
        print(f"esikit template: error: {err}")
        return 1
    ckpt = json.loads(_record_path(out, "train").read_text())["info"]["checkpoint"]
    print(f"template model: {out / ckpt} (75 channel names of electrode_75.mat; "
          f"esikit localize RECORDING --checkpoint {out / ckpt})")
    print(f"evaluation: {out / 'evaluate' / 'results.md'}")
    return 0


# ------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    """Register ``template`` on the ``esikit`` command's sub-parsers."""
    p = sub.add_parser(
        "template", help="DeepSIF's template end to end: plan, simulate, metadata, leadfield, train, evaluate",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="output folder (resumable: rerun the same command to go on)")
    p.add_argument("--size", choices=tuple(SIZES), default="small",
                   help="tiny: a few regions, minutes; small: every region, at most 4 h on 2 cores; "
                        "full: DeepSIF's scale (a cluster or GPU)")
    p.add_argument("--anatomy", default="../shared/deepsif_anatomy", help="DeepSIF's template anatomy folder")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="a running Dask scheduler for the simulation (default: a LocalCluster here)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all CPUs)")
    p.add_argument("--plan", action="store_true", help="print the plan and exit")
    p.add_argument("--yes", action="store_true", help="run a plan too big for this machine anyway")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_template(args.out, args.size, args.anatomy, scheduler=args.scheduler, workers=args.workers,
                        yes=args.yes, plan_only=args.plan, seed=args.seed, progress=not args.no_progress)
