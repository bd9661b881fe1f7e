"""Tests of esikit.evaluate.plots: each writes a readable PNG of the expected size."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from esikit.evaluate.plots import (  # noqa: E402
    DPI,
    plot_cortex_activity,
    plot_metric_distributions,
    plot_time_courses,
    plot_training_curves,
)


def _check_png(path, width_in, height_in):
    assert path.exists() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(height_in * DPI), round(width_in * DPI))
    # not a blank canvas
    assert np.ptp(img[..., :3]) > 0.2


def _icosphere_like(n_lat=12, n_lon=24, radius=60.0):
    """A small UV sphere mesh with two 'hemispheres' of regions."""
    lat = np.linspace(0.1, np.pi - 0.1, n_lat)
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    verts = radius * np.c_[(np.sin(la) * np.cos(lo)).ravel(), (np.sin(la) * np.sin(lo)).ravel(), np.cos(la).ravel()]
    tris = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            tris += [(a, b, c), (b, d, c)]
    # 8 regions by longitude sector, plus unlabelled polar rows
    region = (np.floor(lo.ravel() / (2 * np.pi) * 8)).astype(int)
    region[: n_lon] = -1
    return verts, np.array(tris), region


def test_plot_training_curves(tmp_path):
    hist = {"train_loss": [1.0, 0.5, 0.3, 0.25], "val_loss": [1.1, 0.7, 0.5, float("nan")], "lr": [1e-3] * 4}
    path = plot_training_curves(hist, tmp_path / "sub" / "curves.png")
    _check_png(path, 12, 4)
    _check_png(plot_training_curves({"train_loss": [3.0, 2.0]}, tmp_path / "one.png"), 6, 4)
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves({}, tmp_path / "x.png")


def test_plot_cortex_activity_mesh(tmp_path):
    verts, tris, region = _icosphere_like()
    true = np.zeros(8)
    true[2] = 1.0
    est = np.linspace(0, -3, 8)  # other sign and scale: shown as |.| / max
    path = plot_cortex_activity(verts, tris, region, true, est, tmp_path / "cortex.png")
    _check_png(path, 12, 7.5)


def test_plot_cortex_activity_orientation(tmp_path):
    from esikit.evaluate.plots import _to_ras

    # TVB's frame: x anterior, y left, z superior
    np.testing.assert_allclose(np.array([[1.0, 2.0, 3.0]]) @ _to_ras("ALS"), [[-2.0, 1.0, 3.0]])
    np.testing.assert_allclose(_to_ras("RAS"), np.eye(3))
    verts, tris, region = _icosphere_like()
    path = plot_cortex_activity(verts, tris, region, np.ones(8), np.ones(8), tmp_path / "o.png", orientation="als")
    _check_png(path, 12, 7.5)
    with pytest.raises(ValueError, match="Invalid value for 'orientation'"):
        _to_ras("RRS")


def test_plot_cortex_activity_centres_only(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 3)) * 40
    path = plot_cortex_activity(None, None, None, rng.random(30), rng.random(30), tmp_path / "c.png", centres=centres)
    _check_png(path, 12, 7.5)
    with pytest.raises(ValueError, match="needs a mesh"):
        plot_cortex_activity(None, None, None, rng.random(30), rng.random(30), tmp_path / "d.png")
    with pytest.raises(ValueError, match="expected \\(R,\\) both"):
        plot_cortex_activity(None, None, None, rng.random(30), rng.random(29), tmp_path / "d.png", centres=centres)


def test_plot_time_courses(tmp_path):
    t = np.linspace(0, 1, 100)
    true = np.zeros((100, 5))
    true[:, 1] = np.exp(-((t - 0.5) / 0.05) ** 2)
    true[:, 3] = 0.5 * true[:, 1]
    est = 1e-3 * true + 1e-5 * np.random.default_rng(0).normal(size=true.shape)
    path = plot_time_courses(true, est, [1, 3], tmp_path / "tc.png", sfreq=500.0)
    _check_png(path, 8, 2.2 * 2 + 0.6)
    with pytest.raises(ValueError, match="outside"):
        plot_time_courses(true, est, [7], tmp_path / "x.png")


def test_plot_metric_distributions(tmp_path):
    rng = np.random.default_rng(0)
    recs = {
        m: [{"snr_db": s, "le_mm": rng.gamma(2, 5), "auc": rng.random(), "precision": np.nan}
            for s in (5, 15) for _ in range(20)]
        for m in ("deepsif", "mne", "eloreta")
    }
    path = plot_metric_distributions(recs, ["le_mm", "auc", "precision", "recall"], tmp_path / "dist.png")
    width = max(4.5, 1.0 + 0.45 * 3 * 2)
    _check_png(path, width * 3, 3.6 * 2)
    no_snr = {"a": [{"le_mm": 1.0}, {"le_mm": 2.0}]}
    _check_png(plot_metric_distributions(no_snr, ["le_mm"], tmp_path / "d2.png"), 4.5, 3.6)
