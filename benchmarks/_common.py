"""Shared by the simulation benchmarks: the networks they run on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esikit.head import load_default_anatomy, load_tvb_connectivity


def benchmark_networks(deepsif_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, weights, tract_lengths)`` of tvb-data's 76-region connectome and, when
    ``deepsif_dir/connectivity_998.zip`` exists, DeepSIF's 998-node one."""
    anat = load_default_anatomy()
    nets = [("tvb76", anat.weights, anat.tract_lengths)]
    zip998 = Path(deepsif_dir) / "connectivity_998.zip"
    if zip998.exists():
        w, t, _, _ = load_tvb_connectivity(zip998)
        nets.append(("deepsif998", w, t))
    else:
        print(f"({zip998} not found: 998-node runs skipped)")
    return nets
