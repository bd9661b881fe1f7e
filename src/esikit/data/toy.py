"""A small DeepSIF-layout dataset made from synthetic spikes, for tests and smoke runs.

It has the layout of real DeepSIF data (metadata file, ``nmm_spikes/a{r}/nmm_{k}.mat``
clips, leadfield file) and every metadata variant the loader must accept (padding
values, one-source rows, MAT v5 / v7.3 / Octave text), but its clips are spike-shaped
bumps over smooth noise and its leadfield is random unless one is given. The real
generator is :mod:`esikit.simulate`.
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..head.layout import CLIP_FIELD, DEEPSIF_PADDING, clip_relpath

logger = logging.getLogger(__name__)


def toy_clip(rng: np.random.Generator, n_times: int, n_regions: int, region: int) -> np.ndarray:
    """One ``(T, R)`` float32 clip: smooth background everywhere, a spike in ``region``."""
    from scipy.ndimage import gaussian_filter1d

    t = np.arange(n_times)
    # Smooth background: low-pass filtered noise of about 1 mV.
    bg = gaussian_filter1d(rng.standard_normal((n_times, n_regions)), 6.0, axis=0) * 4.0
    centre = rng.integers(n_times // 4, 3 * n_times // 4)
    width = rng.uniform(6.0, 15.0)
    spike = rng.uniform(15.0, 35.0) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    spike -= 0.3 * rng.uniform(15.0, 35.0) * np.exp(-0.5 * ((t - centre - 3 * width) / (2 * width)) ** 2)
    bg[:, region] += spike
    return bg.astype(np.float32)


def toy_patches(n_regions: int, centre: int, size: int) -> np.ndarray:
    """A patch on a ring adjacency: the centre, then alternating neighbours."""
    offsets = [0]
    d = 1
    while len(offsets) < size:
        offsets += [d, -d]
        d += 1
    return (centre + np.asarray(offsets[:size])) % n_regions


def make_toy_metadata(
    rng: np.random.Generator,
    n_samples: int,
    n_regions: int,
    clips_per_region: int,
    *,
    max_sources: int = 2,
    max_patch: int = 8,
    n_scale_options: int = 3,
    padding: float = DEEPSIF_PADDING,
    one_source_fraction: float = 0.3,
    regions_with_clips: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Metadata arrays in DeepSIF's layout (``selected_region`` N x S x P, ...)."""
    candidates = np.arange(n_regions) if regions_with_clips is None else np.asarray(regions_with_clips)
    sel = np.full((n_samples, max_sources, max_patch), padding, dtype=np.float64)
    mag = np.full((n_samples, max_sources, max_patch), padding, dtype=np.float64)
    rs = np.zeros((n_samples, max_sources))
    nidx = np.zeros((n_samples, max_sources))
    scale = np.zeros((n_samples, max_sources, n_scale_options))
    for i in range(n_samples):
        n_src = 1 if (max_sources == 1 or rng.random() < one_source_fraction) else max_sources
        centres = rng.choice(candidates, size=n_src, replace=False)
        for s, c in enumerate(centres):
            size = int(rng.integers(1, max_patch + 1))
            patch = toy_patches(n_regions, int(c), size)
            sel[i, s, :size] = patch
            mag[i, s, :size] = np.exp(-0.5 * (np.arange(size) / 3.0) ** 2)
            k = int(rng.integers(1, clips_per_region + 1))
            rs[i, s] = k
            nidx[i, s] = (c + 1) * clips_per_region + k + 1
            scale[i, s] = rng.uniform(0.5, 3.0, size=n_scale_options)
    snr = rng.choice([5.0, 10.0, 15.0, 20.0], size=(n_samples, 1))
    return {
        "selected_region": sel,
        "mag_change": mag,
        "random_samples": rs,
        "nmm_idx": nidx,
        "scale_ratio": scale,
        "current_snr": snr,
    }


def make_toy_dataset(
    out_dir: str | PathLike,
    *,
    n_regions: int = 40,
    n_channels: int = 16,
    n_times: int = 500,
    clips_per_region: int = 2,
    n_train: int = 64,
    n_test: int = 16,
    max_sources: int = 2,
    max_patch: int = 8,
    padding: float = DEEPSIF_PADDING,
    metadata_format: str = "v5",
    fwd: np.ndarray | None = None,
    clip_regions: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a toy dataset in DeepSIF's layout under ``out_dir``.

    Returns
    -------
    dict
        ``train_metadata``, ``test_metadata``, ``nmm_spikes_dir``, ``fwd_path`` (Paths),
        ``fwd`` (C, R), ``clips`` ({(region, k): array}), ``train_meta``/``test_meta``
        (the metadata arrays as written).

    Notes
    -----
    ``clip_regions`` limits which regions get clips (and may be centres); the default
    is every region.
    """
    from ..io import save_mat_file

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    if fwd is None:
        fwd = rng.standard_normal((n_channels, n_regions))
    fwd = np.asarray(fwd, dtype=np.float64)
    n_channels, n_regions = fwd.shape
    (out / "anatomy").mkdir(parents=True, exist_ok=True)
    fwd_path = out / "anatomy" / f"leadfield_{n_channels}_{n_regions}.mat"
    save_mat_file(fwd_path, {"fwd": fwd})
    spikes = out / "source" / "nmm_spikes"
    clips: dict[tuple[int, int], np.ndarray] = {}
    regions = np.arange(n_regions) if clip_regions is None else np.asarray(clip_regions)
    for r in regions:
        r = int(r)
        for k in range(1, clips_per_region + 1):
            clip = toy_clip(rng, n_times, n_regions, r)
            clips[(r, k)] = clip
            path = spikes / clip_relpath(r, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_mat_file(path, {CLIP_FIELD: clip})
    metas = {}
    paths = {}
    for name, n in (("train", n_train), ("test", n_test)):
        meta = make_toy_metadata(
            rng, n, n_regions, clips_per_region, max_sources=max_sources, max_patch=max_patch, padding=padding,
            regions_with_clips=regions,
        )
        path = out / "source" / f"{name}_sample_source1.mat"
        save_mat_file(path, meta, format=metadata_format)
        metas[name] = meta
        paths[name] = path
    logger.info("Toy dataset with %d regions, %d channels written to %s", n_regions, n_channels, out)
    return {
        "root": out,
        "train_metadata": paths["train"],
        "test_metadata": paths["test"],
        "nmm_spikes_dir": spikes,
        "fwd_path": fwd_path,
        "fwd": fwd,
        "clips": clips,
        "train_meta": metas["train"],
        "test_meta": metas["test"],
    }
