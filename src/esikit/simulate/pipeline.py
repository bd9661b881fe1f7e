"""One call from an anatomy to a complete DeepSIF-style training dataset folder.

:func:`make_dataset` writes::

    OUT/anatomy/leadfield_{C}_{R}.mat      field fwd, C x R
    OUT/anatomy/anatomy.npz                 Anatomy.save
    OUT/source/nmm_spikes/a{r}/nmm_{k}.mat  field data, 500 x R, k = 1, 2, ...
    OUT/source/train_sample_source1.mat, OUT/source/test_sample_source1.mat
    OUT/dataset.json                        settings, counts, timings

``dataset.json`` is written last: it exists only for a complete dataset. The run is
resumable: the configuration is recorded first in ``OUT/.simulate_config.json``, every
finished region leaves a marker, so a rerun with the same configuration continues an
interrupted run, and a complete folder made with the same configuration is reused as it
is (``force=True`` remakes it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..head.anatomy import Anatomy, load_anatomy
from .distributed import check_variants, harvest_clips, make_spike_clips
from .nmm import NOISE_SETTINGS, JansenRitParams
from .spikes import plain_json, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_DURATION_S",
    "DEMO_N_TEST",
    "DEMO_N_TRAIN",
    "DEMO_SETTINGS",
    "dataset_paths",
    "default_metadata_kw",
    "make_dataset",
]

#: Simulated seconds per (region, setting) of the demo dataset. At ~0.1-0.2 isolated
#: spikes per simulated second this gives ~8 clips per region on average, and the
#: 76-region default runs in about 2 minutes on 2 cores.
DEMO_DURATION_S = 20.0
#: DeepSIF's three noise settings.
DEMO_SETTINGS = (0, 1, 2)
#: Samples in the demo metadata files.
DEMO_N_TRAIN = 2000
DEMO_N_TEST = 200

_STATUS_FILE = "dataset.json"
_PROGRESS_FILE = ".simulate_config.json"


def default_metadata_kw(anatomy: Anatomy, preset: str = "esikit") -> dict:
    """Metadata settings that suit the anatomy's parcellation (esikit preset).

    DeepSIF's patches (1-3 rings, up to 70 regions) cover a few percent of its 994-region
    cortex; on a coarse parcellation such as the 76-region default the same rings cover
    half a hemisphere. There, patches are grown to at most the same fraction of the
    cortex (70/994 of the regions, at least 1), and samples mix one and two sources.
    The ``'deepsif'`` preset keeps DeepSIF's settings whatever the parcellation.
    """
    if anatomy.n_regions >= 500 or preset == "deepsif":
        return {}
    largest = max(1, int(round(70 * anatomy.n_regions / 994)))
    return {"patch_mode": "grow", "patch_size_range": (1, largest), "n_sources": (1, 2)}


def dataset_paths(out_dir: str | Path, anatomy: Anatomy) -> dict[str, Path]:
    """Where :func:`make_dataset` puts each file for ``anatomy``.

    Returns
    -------
    dict of str to Path
        Keys ``anatomy_dir``, ``fwd``, ``anatomy``, ``source_dir``, ``nmm_spikes``,
        ``train_metadata``, ``test_metadata``, ``status`` (``dataset.json``),
        ``progress`` (the configuration of a run in progress).
    """
    out = Path(out_dir)
    return {
        "anatomy_dir": out / "anatomy",
        "fwd": out / "anatomy" / f"leadfield_{anatomy.n_channels}_{anatomy.n_regions}.mat",
        "anatomy": out / "anatomy" / "anatomy.npz",
        "source_dir": out / "source",
        "nmm_spikes": out / "source" / "nmm_spikes",
        "train_metadata": out / "source" / "train_sample_source1.mat",
        "test_metadata": out / "source" / "test_sample_source1.mat",
        "status": out / _STATUS_FILE,
        "progress": out / _PROGRESS_FILE,
    }


def _clean_nan(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, list):
        return [_clean_nan(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean_nan(v) for k, v in x.items()}
    return x


def _anatomy_spec(anatomy) -> str:
    if isinstance(anatomy, Anatomy):
        return anatomy.name
    if isinstance(anatomy, str) and anatomy.lower() in ("default", "tvb76"):
        return "tvb76"
    return str(Path(anatomy).resolve())


def _write_anatomy(anat: Anatomy, paths: dict[str, Path]) -> None:
    from esikit.head.forward import default_channel_positions
    from esikit.io.forward_model import save_forward_model

    paths["anatomy_dir"].mkdir(parents=True, exist_ok=True)
    # The leadfield carries its channel names (and head-frame positions when known), so a
    # network trained on it knows which input is which electrode. tvb-data's 'T8/T4' is
    # MNE's 'T8'.
    names = [c.split("/")[0] for c in anat.channel_names]
    if len(set(names)) != len(names):
        names = list(anat.channel_names)
    try:
        pos = default_channel_positions(anat)
    except (OSError, ValueError) as exc:
        logger.warning("%s: no channel positions for the leadfield (%s)", anat.name, exc)
        pos = None
    save_forward_model(paths["fwd"], anat.fwd, names, pos)
    anat.save(paths["anatomy"])


def make_dataset(
    out_dir: str | Path,
    anatomy: str | Path | Anatomy = "default",
    regions: Sequence[int] | None = None,
    duration_s: float = DEMO_DURATION_S,
    settings: Sequence[int] = DEMO_SETTINGS,
    n_workers: int | None = None,
    seed: int = 0,
    n_train: int | None = DEMO_N_TRAIN,
    n_test: int | None = DEMO_N_TEST,
    coupling_scale: float = 1.0,
    r: float = 1.0,
    params: JansenRitParams | None = None,
    force: bool = False,
    progress: bool = True,
    metadata_kw: dict[str, Any] | None = None,
    clips_per_region: int | None = None,
    harvest_kw: dict[str, Any] | None = None,
    metadata_preset: str = "auto",
) -> dict[str, Any]:
    """Simulate spike clips and write a complete dataset folder with its metadata.

    Parameters
    ----------
    out_dir : str | Path
        Dataset folder (created).
    anatomy : str | Path | Anatomy
        ``"default"`` (tvb-data, 76 regions, 63 channels), a DeepSIF anatomy folder, a
        saved ``.npz`` or an :class:`Anatomy` (see :func:`load_anatomy`).
    regions : sequence of int | None
        Regions to simulate (each one excited in turn); default all.
    duration_s : float
        Simulated seconds per region and setting (0.5 s transient included).
    settings : sequence of int
        DeepSIF noise settings, indices into :data:`~esikit.simulate.nmm.NOISE_SETTINGS`.
    n_workers : int | None
        Worker processes for the simulation (None: all available CPUs; 1: in this
        process).
    seed : int
        Seeds the simulations (per region and setting) and the metadata.
    n_train, n_test : int | None
        Samples in the train/test metadata files (None: DeepSIF's full design).
    coupling_scale : float
        Global connectome weight scale (1.0 = DeepSIF's data).
    r : float
        Steepness of the ``SigmoidalJansenRit`` coupling sigmoid (1.0 = DeepSIF's TVB).
    params : JansenRitParams | None
        Other model parameters; ``coupling_scale`` and ``r`` override its fields.
    force : bool
        Remake the clips, metadata and ``dataset.json`` even when they exist.
    progress : bool
        Progress bars.
    metadata_kw : dict | None
        Extra keyword arguments for
        :func:`esikit.simulate.metadata.make_metadata_files`.
    clips_per_region : int | None
        None (default): simulate ``duration_s`` per region and setting. An int ``K``:
        harvest adaptively (:func:`esikit.simulate.distributed.harvest_clips`), each
        (region, setting) simulated in chunks until it has ``ceil(K / n_settings)``
        clips or reaches ``harvest_kw["max_simulated_s"]``; ``duration_s`` is unused.
        Writes ``harvest_report.json`` and ``clips_per_region.png`` beside
        ``dataset.json``.
    harvest_kw : dict | None
        More :func:`~esikit.simulate.distributed.harvest_clips` options
        (``max_simulated_s``, ``chunk_s``, ``batch_size``, ``scheduler``, ``backend``,
        ``block``, ``processes``).
    metadata_preset : {'auto', 'esikit', 'deepsif'}
        Metadata choices (:mod:`esikit.simulate.metadata`): ``'deepsif'`` reproduces
        DeepSIF's script on its template folder and writes ``..._source1.mat`` and
        ``..._source2.mat``; ``'esikit'`` is esikit's (one file per split, 1-2 sources);
        ``'auto'``: ``'deepsif'`` for a DeepSIF anatomy folder, else ``'esikit'``.

    Returns
    -------
    dict
        The content of ``dataset.json``: ``config``, ``paths``, ``clips_per_region``,
        ``regions_without_clips``, ``spikes`` (peaks per setting and region),
        ``simulated_s``, ``wall_s`` and ``status``.

    Raises
    ------
    ValueError
        When ``out_dir`` holds a dataset made with another configuration (use
        ``force=True`` or another folder), or when no region produced a clip.
    """
    from .metadata import resolve_preset

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    preset = resolve_preset(metadata_preset, anatomy)
    anat = load_anatomy(anatomy)
    region_list, settings = check_variants(anat, regions, settings)
    params = dataclasses.replace(params or JansenRitParams(), coupling_scale=float(coupling_scale),
                                 coupling_r=float(r))
    config = {
        "anatomy": _anatomy_spec(anatomy),
        "anatomy_name": anat.name,
        "regions": region_list,
        "duration_s_per_setting": float(duration_s),
        "settings": list(settings),
        "noise_settings": [list(NOISE_SETTINGS[s]) for s in settings],
        "seed": int(seed),
        "n_train": n_train,
        "n_test": n_test,
        "params": dataclasses.asdict(params),
        "metadata_kw": {k: v for k, v in (metadata_kw or {}).items()
                        if isinstance(v, (int, float, str, bool, list, tuple, type(None)))},
    }
    if preset != "esikit":  # recorded only then: datasets made before presets existed stay valid
        config["metadata_preset"] = preset
    harvest_kw = dict(harvest_kw or {})
    if clips_per_region is not None:
        # what decides the clips (not where or how fast they are computed)
        config["harvest"] = {"clips_per_region": int(clips_per_region),
                             "max_simulated_s": float(harvest_kw.get("max_simulated_s", 200.0)),
                             "chunk_s": float(harvest_kw.get("chunk_s", 5.0))}
        del config["duration_s_per_setting"]
    paths = dataset_paths(out_dir, anat)
    if preset == "deepsif":
        from ..head.deepsif_template import load_deepsif_template

        if isinstance(anatomy, Anatomy) or str(anatomy).lower() in ("default", "tvb76"):
            raise ValueError(f"the 'deepsif' metadata preset needs DeepSIF's anatomy folder (its neighbour lists and "
                             f"distances), got {config['anatomy']!r}; use preset 'esikit' or 'auto'")
        # read (and check, naming every missing file) before hours of simulation
        metadata_kw = {**(metadata_kw or {}), "preset": "deepsif", "template": load_deepsif_template(anatomy)}

    status_path, progress_path = paths["status"], paths["progress"]
    wanted = plain_json(config)
    if not force:
        for path, what in ((status_path, "a dataset"), (progress_path, "an unfinished dataset")):
            if not path.exists():
                continue
            previous = json.loads(path.read_text())
            if previous.get("config") != wanted:
                raise ValueError(
                    f"{path}: this folder holds {what} made with another configuration "
                    f"({previous.get('config')}); use force=True (--force) or another folder")
            if path == status_path and previous.get("status") == "complete":
                logger.info("%s: dataset already complete, reusing it", out_dir)
                return previous
            logger.info("%s: resuming an interrupted dataset", out_dir)
    else:
        for p in (paths["nmm_spikes"], paths["train_metadata"], paths["test_metadata"],
                  paths["source_dir"] / "train_sample_source2.mat",
                  paths["source_dir"] / "test_sample_source2.mat", status_path, progress_path):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(progress_path, {"status": "in_progress", "config": config})

    _write_anatomy(anat, paths)
    if clips_per_region is None:
        logger.info("Simulating %d regions x %d settings x %.1f s on %s", len(region_list),
                    len(settings), duration_s, anat)
        results = make_spike_clips(anat, paths["nmm_spikes"], regions=region_list,
                                   duration_s=duration_s, settings=settings, seed=seed,
                                   params=params, n_workers=n_workers, progress=progress)
        clips = {r: res.n_clips for r, res in results.items()}
        simulated = float(sum(res.simulated_s for res in results.values()))
        peaks = {r: res.peaks_per_setting for r, res in results.items()}
        total_peaks = int(sum(sum(v) for v in peaks.values()))
        made = {
            "spikes": {
                "peaks_per_region_and_setting": {str(r): v for r, v in peaks.items()},
                "peaks_total": total_peaks,
                "peaks_per_simulated_s": total_peaks / simulated if simulated else None,
                "alpha_per_region_and_setting": {str(r): _clean_nan(res.alpha_per_setting)
                                                 for r, res in results.items()},
            },
            "simulated_s": simulated,
            "simulation_wall_s": float(sum(res.wall_s for res in results.values() if not res.skipped)),
        }
        remedy = (f" in {duration_s} s per setting; increase duration_s (spikes come at ~0.1-0.2 "
                  "per simulated second)")
    else:
        report = harvest_clips(anat, paths["nmm_spikes"], int(clips_per_region), regions=region_list,
                               settings=settings, seed=seed, params=params, n_workers=n_workers,
                               progress=progress, report_dir=out_dir, **harvest_kw)
        if not report["complete"]:
            raise RuntimeError(f"{paths['nmm_spikes']}: harvest interrupted "
                               f"({report.get('variants_done')} of {report.get('variants_total')} "
                               "variants done); rerun the same command to finish it")
        clips = {int(r): n for r, n in report["clips_per_region"].items()}
        made = {k: report[k] for k in ("regions_below_target", "capped_variants", "bytes_on_disk",
                                       "simulated_s", "simulated_s_per_region", "histogram")}
        made.update({"spikes": {"peaks_per_simulated_s": report["clips_per_simulated_s"]},
                     "simulation_wall_s": report["wall_s"],
                     "harvest_report": str(Path(out_dir) / "harvest_report.json")})
        remedy = "; raise max_simulated_s"
    without = [r for r, n in clips.items() if n == 0]
    if without:
        logger.warning("%d of %d regions produced no clip (excluded from the metadata): %s",
                       len(without), len(region_list), without)
    if len(without) == len(region_list):
        raise ValueError(f"No region produced a spike clip{remedy}")

    from .metadata import make_metadata_files

    t_meta = time.perf_counter()
    train_path, test_path = files = make_metadata_files(
        anat, paths["nmm_spikes"], paths["source_dir"], n_train, n_test, seed=seed,
        **{"progress": progress, **default_metadata_kw(anat, (metadata_kw or {}).get("preset", "esikit")),
           **(metadata_kw or {})})
    summary = {
        "status": "complete",
        "config": config,
        "paths": {k: str(v) for k, v in paths.items()},
        "n_channels": anat.n_channels,
        "n_regions": anat.n_regions,
        "n_clips": int(sum(clips.values())),
        "clips_per_region": {str(r): n for r, n in clips.items()},
        "regions_without_clips": without,
        **made,
        "metadata_wall_s": time.perf_counter() - t_meta,
        "wall_s": time.perf_counter() - t0,
        "train_metadata": str(train_path),
        "test_metadata": str(test_path),
        "metadata_files": {str(n): [str(a), str(b)] for n, (a, b) in files.by_sources.items()},
    }
    write_json(status_path, summary)
    progress_path.unlink(missing_ok=True)
    logger.info("Dataset complete in %s: %d clips from %d regions (%.0f s simulated, %.0f s wall)",
                out_dir, summary["n_clips"], len(region_list) - len(without), summary["simulated_s"],
                summary["wall_s"])
    return summary
