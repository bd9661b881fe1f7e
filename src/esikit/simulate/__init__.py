"""Simulation of DeepSIF-style training data: anatomy, neural masses, spike clips."""

from .anatomy import (
    Anatomy,
    load_anatomy,
    load_deepsif_anatomy,
    load_default_anatomy,
)
from .nmm import NOISE_SETTINGS, JansenRitParams, jansen_rit_dfun, simulate_network
from .spikes import (
    CLIP_LENGTH,
    RegionClipResult,
    downsample_raw,
    find_spike_times,
    make_region_clips,
    make_spike_clips,
    rescale_spike_channel,
    select_clips,
    spike_alpha,
)
from .snr import find_alpha, peak_windows, sensor_snr_db, source_background_power

__all__ = [
    "Anatomy",
    "CLIP_LENGTH",
    "RegionClipResult",
    "downsample_raw",
    "find_spike_times",
    "make_region_clips",
    "make_spike_clips",
    "rescale_spike_channel",
    "select_clips",
    "spike_alpha",
    "JansenRitParams",
    "NOISE_SETTINGS",
    "find_alpha",
    "jansen_rit_dfun",
    "load_anatomy",
    "load_deepsif_anatomy",
    "load_default_anatomy",
    "peak_windows",
    "sensor_snr_db",
    "simulate_network",
    "source_background_power",
]
