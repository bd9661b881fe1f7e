"""Plan a clip harvest from a short pilot run: simulated time, wall time, disk, clips.

:func:`plan_harvest` simulates a few regions under every setting for a few seconds with
the harvest's own task (:func:`esikit.simulate.harvest.run_chunk_task`, one chunk as long
as the pilot, in a temporary folder), counts the clips DeepSIF's rules keep, and
extrapolates to the requested dataset: how long each (region, setting) must run to get
its share of clips (capped), the wall time on this machine's cores, the disk the clips
take, and the disk the raw simulations would take if they were kept (they are not).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._validation import format_bytes, format_duration
from ..head.anatomy import Anatomy, load_anatomy
from .distributed import chunks_at_most, clips_per_setting, default_n_workers
from .harvest import run_chunk_task
from .nmm import JansenRitParams
from .spikes import DISCARD_RAW, DOWNSAMPLE, RAW_SFREQ, save_clip

logger = logging.getLogger(__name__)

__all__ = ["expected_variant_cost", "format_plan", "plan_harvest"]


def plan_harvest(
    anatomy: str | Path | Anatomy,
    clips_per_region: int,
    regions: Sequence[int] | None = None,
    settings: Sequence[int] = (0, 1, 2),
    max_simulated_s: float = 200.0,
    chunk_s: float = 5.0,
    pilot_regions: int = 4,
    pilot_s: float = 10.0,
    batch_size: int = 16,
    n_cores: int | None = None,
    seed: int = 0,
    params: JansenRitParams | None = None,
    backend: str = "numba",
) -> dict[str, Any]:
    """Expected cost of ``harvest_clips(anatomy, ..., clips_per_region)`` from a pilot run.

    Parameters
    ----------
    anatomy : str | Path | Anatomy
    clips_per_region : int
        Clips wanted per region (``K``), over all settings.
    regions : sequence of int | None
        Regions of the dataset (default all).
    settings : sequence of int
    max_simulated_s : float
        Cap per (region, setting) [s].
    chunk_s : float
        The harvest's chunk [s]: a variant stops only at the end of a chunk, so it
        simulates a whole number of chunks (up to ``ceil(max_simulated_s / chunk_s)``).
    pilot_regions : int
        Regions simulated in the pilot (spread over ``regions``).
    pilot_s : float
        Simulated seconds per pilot (region, setting).
    batch_size : int
        Variants integrated together (as in the harvest).
    n_cores : int | None
        Cores the harvest would use (default: this machine's).
    seed : int
    params : JansenRitParams | None
    backend : {"numba", "numpy"}

    Returns
    -------
    dict
        ``clips_per_simulated_s`` (per setting, shrunk halfway to the mean over
        settings: a short pilot sees few spikes), ``wall_s_per_network_s`` (one core),
        ``expected_simulated_s``, ``expected_wall_s``, ``expected_wall_s_range`` (the
        wall time at the ends of the 80 % interval of the pilot's pooled spike rate:
        a pilot of a few clips knows the rate only roughly), ``expected_clips``,
        ``expected_fraction_of_variants_capped``, ``bytes_per_clip``, ``expected_bytes``,
        ``raw_bytes_if_kept``, and the inputs.
    """
    anat = load_anatomy(anatomy)
    params = params or JansenRitParams()
    regions = list(range(anat.n_regions)) if regions is None else sorted({int(r) for r in regions})
    settings = [int(s) for s in settings]
    n_cores = int(n_cores or default_n_workers())
    pick = sorted({regions[int(i)] for i in np.linspace(0, len(regions) - 1, min(pilot_regions, len(regions)))})
    steps = int(round(pilot_s * RAW_SFREQ)) // DOWNSAMPLE * DOWNSAMPLE
    discard_s = DISCARD_RAW / RAW_SFREQ
    spiking_s = steps / RAW_SFREQ - discard_s  # per pilot variant, after the discarded start
    if steps <= DISCARD_RAW:
        raise ValueError(f"Invalid value for 'pilot_s': expected more than {discard_s:g} s, got {pilot_s!r}.")
    share = clips_per_setting(clips_per_region, len(settings))
    rates, n_clips_pilot, wall, sim, clip_bytes = {}, 0, 0.0, 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        anat.save(work / "anatomy.npz")
        # the harvest's first chunk, as long as the pilot and final: every clip it holds is kept
        spec = {"work_dir": str(work), "anatomy": str(work / "anatomy.npz"), "seed": int(seed),
                "params": dataclasses.asdict(params), "chunk_s": steps / RAW_SFREQ,
                "share": steps // 500 + 1, "max_chunks": 1, "backend": backend, "block": 16,
                "dt_ms": 0.5, "target_snr_db": 15.0, "mode": "clips", "chunk": 0}
        for s in settings:
            found = 0
            for i in range(0, len(pick), batch_size):
                res = run_chunk_task(dict(spec, batch=i, regions=pick[i:i + batch_size], setting=s))
                wall += res["wall_s"]
                sim += res["simulated_s"]
                found += res["new_clips"]
            rates[s] = found / (len(pick) * spiking_s)
            n_clips_pilot += found
        clip_bytes = [p.stat().st_size for p in sorted((work / "clips").rglob("*.mat"))[:3]]
    # A short pilot sees few spikes: each setting's rate is shrunk halfway to the pooled one.
    pooled = float(np.mean(list(rates.values())))
    rates = {s: 0.5 * (v + pooled) for s, v in rates.items()}
    wall_per_ns = wall / sim
    if not clip_bytes:  # no clip in the pilot: size of a clip of this shape
        rng = np.random.default_rng(0)
        clip_bytes.append(_clip_size(rng.normal(1.0, 0.3, (500, anat.n_regions)).astype(np.float32)))
    bytes_per_clip = float(np.mean(clip_bytes))
    n = len(regions)
    max_chunks = chunks_at_most(max_simulated_s, chunk_s)

    def totals(scale: float) -> tuple[float, float, float]:
        per = [expected_variant_cost(scale * rates[s], share, chunk_s, max_chunks) for s in settings]
        return (n * sum(p[0] for p in per), n * sum(p[1] for p in per), float(np.mean([p[2] for p in per])))

    expected_sim, expected_clips, capped = totals(1.0)
    # 80 % interval of the pooled rate (Garwood's exact Poisson bounds on the pilot's count),
    # applied to every setting alike: the plan's wall time is as uncertain as that count
    from scipy.stats import chi2

    exposure = len(pick) * len(settings) * spiking_s
    lo = chi2.ppf(0.1, 2 * n_clips_pilot) / 2 / exposure if n_clips_pilot else 0.0
    hi = chi2.ppf(0.9, 2 * n_clips_pilot + 2) / 2 / exposure
    scale_lo, scale_hi = (lo / pooled, hi / pooled) if pooled > 0 else (0.0, 1.0)
    sim_range = (totals(scale_hi)[0], totals(scale_lo)[0]) if pooled > 0 else (expected_sim, expected_sim)
    return {
        "clips_per_region": int(clips_per_region), "n_regions": n, "settings": settings,
        "max_simulated_s": float(max_simulated_s), "chunk_s": float(chunk_s), "n_cores": n_cores, "batch_size": batch_size,
        "pilot_regions": pick, "pilot_s": float(pilot_s), "pilot_clips": int(n_clips_pilot),
        "clips_per_simulated_s": {int(s): float(v) for s, v in rates.items()},
        "wall_s_per_network_s": float(wall_per_ns),
        "expected_simulated_s": float(expected_sim),
        "expected_wall_s": float(expected_sim * wall_per_ns / n_cores),
        "expected_wall_s_range": [float(v * wall_per_ns / n_cores) for v in sim_range],
        "expected_clips": float(expected_clips),
        "expected_fraction_of_variants_capped": float(capped),
        "bytes_per_clip": bytes_per_clip,
        "expected_bytes": float(expected_clips * bytes_per_clip),
        "raw_bytes_if_kept": float(expected_sim * RAW_SFREQ * anat.weights.shape[0] * 4),
    }


def expected_variant_cost(rate: float, share: int, chunk_s: float, max_chunks: int,
                          discard_s: float = DISCARD_RAW / RAW_SFREQ) -> tuple[float, float, float]:
    """Expected simulated time, clips and chance of the cap for one (region, setting).

    Spikes that give clips arrive as a Poisson process of ``rate`` [clips per s] after the
    first ``discard_s``; the harvest stops a variant at the end of the first chunk by which
    it holds ``share`` clips, or after ``max_chunks`` chunks. The time is therefore a whole
    number of chunks: ``chunk_s * sum_j P(fewer than share clips by j * chunk_s)``
    (inverting the rate alone misses up to a chunk per variant).

    Returns
    -------
    simulated_s, clips, p_capped : float
        ``clips`` is ``E[min(share, N)]`` with ``N`` the clips of a whole capped run.
    """
    from scipy.stats import poisson

    t_end = np.arange(max_chunks) * chunk_s - discard_s  # spiking time before each chunk
    p_short = poisson.cdf(share - 1, rate * np.maximum(t_end, 0.0))
    simulated = chunk_s * float(np.sum(p_short))
    mu_cap = rate * max(0.0, max_chunks * chunk_s - discard_s)
    clips = float(sum(poisson.sf(k - 1, mu_cap) for k in range(1, share + 1)))
    return simulated, clips, float(poisson.cdf(share - 1, mu_cap))


def _clip_size(clip: np.ndarray) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nmm_1.mat"
        save_clip(path, clip)
        return path.stat().st_size


def format_plan(plan: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`plan_harvest`'s result."""
    rates = ", ".join(f"setting {s}: {v:.3f}" for s, v in plan["clips_per_simulated_s"].items())
    lo, hi = plan.get("expected_wall_s_range", [plan["expected_wall_s"]] * 2)
    return [
        f"Pilot: {len(plan['pilot_regions'])} regions x {len(plan['settings'])} settings x "
        f"{plan['pilot_s']:.0f} s -> {plan['pilot_clips']} clips ({rates} clips per simulated s)",
        f"Integrator: {plan['wall_s_per_network_s']:.3f} s of one core per simulated network-second "
        f"(pilot batches of {min(len(plan['pilot_regions']), plan['batch_size'])}; the harvest's "
        f"batches of {plan['batch_size']} are usually a little faster)",
        f"Dataset: {plan['n_regions']} regions x {plan['clips_per_region']} clips, cap "
        f"{plan['max_simulated_s']:.0f} s per (region, setting)",
        f"  expected simulated time: {plan['expected_simulated_s']:.0f} network-seconds",
        f"  expected wall time on {plan['n_cores']} cores here: {format_duration(plan['expected_wall_s'])} "
        f"({format_duration(plan['expected_wall_s'] * plan['n_cores'])} of one core; "
        f"{format_duration(lo)} to {format_duration(hi)} within the pilot's 80 % interval of the spike rate)",
        f"  cores to finish within a day: {math.ceil(plan['expected_wall_s'] * plan['n_cores'] / 86400)}"
        f"{' (this machine suffices)' if plan['expected_wall_s'] <= 86400 else ' (use a Dask cluster: --scheduler)'}",
        f"  expected clips: {plan['expected_clips']:.0f}; variants likely to hit the cap: "
        f"{100 * plan['expected_fraction_of_variants_capped']:.0f}%",
        f"  disk: {format_bytes(plan['expected_bytes'])} of clips "
        f"({format_bytes(plan['bytes_per_clip'])} each); the raw simulations, not kept, would be "
        f"{format_bytes(plan['raw_bytes_if_kept'])} as float32 at {RAW_SFREQ:.0f} Hz",
    ]
