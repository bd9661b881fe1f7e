"""The head model: what every other layer needs to know about one anatomy.

Anatomy (:mod:`.anatomy`: regions, centres, cortex, connectome, region map), source
patches and their magnitude weights (:mod:`.patches`) and the SNR rules that tie source
amplitudes to sensor power (:mod:`.snr`), and where sample configurations come from:
the clips of each region and the source drawer (:mod:`.configs`). ``io`` sits below this package; ``data``,
``simulate`` and ``evaluate`` sit above it and do not import one another's internals
for these concepts.
"""

from .anatomy import (
    Anatomy,
    find_anatomy,
    load_anatomy,
    load_deepsif_anatomy,
    load_default_anatomy,
    load_tvb_connectivity,
    region_adjacency_from_mesh,
)
from .configs import ClipIndex, SourceDrawer
from .patches import (
    CandidatePatches,
    candidate_patches,
    gaussian_magnitude,
    grow_patch,
    is_connected,
    pick_second_patch,
)
from .snr import find_alpha, peak_windows, sensor_snr_db, source_background_power

__all__ = [
    "Anatomy",
    "CandidatePatches",
    "ClipIndex",
    "SourceDrawer",
    "candidate_patches",
    "find_anatomy",
    "find_alpha",
    "gaussian_magnitude",
    "grow_patch",
    "is_connected",
    "load_anatomy",
    "load_deepsif_anatomy",
    "load_default_anatomy",
    "load_tvb_connectivity",
    "peak_windows",
    "pick_second_patch",
    "region_adjacency_from_mesh",
    "sensor_snr_db",
    "source_background_power",
]
