"""An independent, deliberately slow reference of the sample contract.

Written from ``docs/SAMPLE_CONTRACT.md`` alone: loops, float64, raw metadata
arrays as the generator wrote them (padding values included), clips from a dict. It
shares no code with ``esikit.data`` so the two can check each other.
"""

from __future__ import annotations

import numpy as np


def reference_draws(seed, epoch, index, n_sources, n_options, n_times, n_channels):
    rng = np.random.default_rng([seed, epoch, index])
    choice = rng.integers(0, n_options, size=n_sources)
    noise = rng.standard_normal((n_times, n_channels), dtype=np.float32)
    return choice, noise


def _is_region(v, n_regions):
    return bool(np.isfinite(v) and float(v).is_integer() and 0 <= v < n_regions)


def reference_sample(meta, i, clips, fwd, *, seed=0, epoch=0, nper=None, use="random_samples",
                     normalize=True, missing=()):
    """Sample ``i`` of raw metadata ``meta`` (dict of arrays, N x S x P layout).

    ``clips`` maps ``(region, k)`` to a ``(T, R)`` array; ``missing`` lists keys whose
    clips must be treated as absent (the source contributes nothing).
    """
    fwd = np.asarray(fwd, dtype=np.float64)
    n_channels, n_regions = fwd.shape
    sel = np.asarray(meta["selected_region"], dtype=np.float64)
    if sel.ndim == 2:
        sel = sel[:, None, :]
    n_src = sel.shape[1]
    mag = np.asarray(meta["mag_change"], dtype=np.float64).reshape(sel.shape)
    scale = np.asarray(meta["scale_ratio"], dtype=np.float64)
    scale = scale.reshape(sel.shape[0], n_src, -1)
    snr = float(np.asarray(meta["current_snr"]).reshape(-1)[i])
    any_clip = next(iter(clips.values()))
    n_times = any_clip.shape[0]
    choice, noise = reference_draws(seed, epoch, i, n_src, scale.shape[2], n_times, n_channels)

    x = np.zeros((n_times, n_regions))
    labelled = []
    for s in range(n_src):
        row = sel[i, s]
        if not _is_region(row[0], n_regions):
            continue
        keep = [p for p in range(row.size) if _is_region(row[p], n_regions)]
        regions = [int(row[p]) for p in keep]
        weights = [mag[i, s, p] for p in keep]
        centre = regions[0]
        if use == "random_samples":
            k = int(np.asarray(meta["random_samples"]).reshape(sel.shape[0], n_src)[i, s])
        else:
            idx = int(np.asarray(meta["nmm_idx"]).reshape(sel.shape[0], n_src)[i, s])
            k = idx - (centre + 1) * nper - 1
        if (centre, k) in missing or (centre, k) not in clips:
            continue
        xs = np.array(clips[(centre, k)], dtype=np.float64)
        a = xs[:, centre].copy()
        a = a / a.max() * scale[i, s, choice[s]]
        for r, w in zip(regions, weights):
            xs[:, r] = a * w
        x += xs
        labelled.extend(regions)
    e = x @ fwd.T
    for c in range(n_channels):
        sigma2 = 10 ** (-snr / 10) * np.mean(e[:, c] ** 2) / 2
        e[:, c] += np.sqrt(sigma2) * noise[:, c]
    y = np.zeros_like(x)
    for r in set(labelled):
        y[:, r] = x[:, r]
    if normalize:
        e -= e.mean(axis=0, keepdims=True)
        e -= e.mean(axis=1, keepdims=True)
        if np.abs(e).max() > 0:
            e /= np.abs(e).max()
        if y.max() > 0:
            y /= y.max()
    return e, y
