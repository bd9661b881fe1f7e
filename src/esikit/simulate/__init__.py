"""Simulation of DeepSIF-style training data.

The Jansen-Rit network simulation (:mod:`.nmm`, one integrator for batches of
excited-region variants), DeepSIF's spike and clip rules (:mod:`.spikes`), the one task
that simulates a chunk and cuts its clips (:mod:`.harvest`) and the one driver that runs
it for a fixed duration, for K clips per region or for a plan's pilot, on Dask or in this
process (:mod:`.distributed`, :mod:`.plan`), DeepSIF metadata (:mod:`.metadata`) and the
whole dataset in one call (:mod:`.pipeline`, ``esikit simulate``).
"""

from ..head.anatomy import (
    Anatomy,
    load_anatomy,
    load_deepsif_anatomy,
    load_default_anatomy,
    region_adjacency_from_mesh,
)
from .distributed import HarvestConfig, harvest_clips, make_spike_clips, plot_clips_histogram
from .harvest import run_chunk_task
from .metadata import (
    generate_metadata,
    index_clips,
    make_metadata_files,
    write_metadata,
)
from .nmm import (
    NOISE_SETTINGS,
    BatchIntegrator,
    JansenRitParams,
    NetworkStructure,
    jansen_rit_dfun,
    network_structure,
    simulate_batch,
    simulate_network,
)
from ..head.patches import CandidatePatches, candidate_patches, grow_patch, is_connected, pick_second_patch
from .plan import format_plan, plan_harvest
from .pipeline import DEMO_DURATION_S, DEMO_SETTINGS, dataset_paths, make_dataset
from ..head.snr import find_alpha, peak_windows, sensor_snr_db, source_background_power
from .spikes import (
    CLIP_LENGTH,
    ClipStream,
    RegionClipResult,
    find_spike_times,
    rescale_spike_channel,
    select_clips,
    spike_alpha,
)

__all__ = [
    "Anatomy",
    "BatchIntegrator",
    "ClipStream",
    "HarvestConfig",
    "NetworkStructure",
    "format_plan",
    "harvest_clips",
    "network_structure",
    "plan_harvest",
    "plot_clips_histogram",
    "run_chunk_task",
    "simulate_batch",
    "CLIP_LENGTH",
    "CandidatePatches",
    "DEMO_DURATION_S",
    "DEMO_SETTINGS",
    "JansenRitParams",
    "NOISE_SETTINGS",
    "RegionClipResult",
    "candidate_patches",
    "dataset_paths",
    "find_alpha",
    "find_spike_times",
    "generate_metadata",
    "grow_patch",
    "index_clips",
    "is_connected",
    "jansen_rit_dfun",
    "load_anatomy",
    "load_deepsif_anatomy",
    "load_default_anatomy",
    "make_dataset",
    "make_metadata_files",
    "make_spike_clips",
    "peak_windows",
    "pick_second_patch",
    "region_adjacency_from_mesh",
    "rescale_spike_channel",
    "select_clips",
    "sensor_snr_db",
    "simulate_network",
    "source_background_power",
    "spike_alpha",
    "write_metadata",
]
