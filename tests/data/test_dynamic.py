"""Tests for esikit.data.dynamic (sample configurations drawn on the fly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esikit.data.dynamic import DynamicSpikeEEGDataset
from esikit.data.synthesis import draw_sample_randomness, synthesize_sample
from esikit.head.patches import is_connected

N_TIMES = 120
N_REGIONS = 49
CLIP_REGIONS = [2, 10, 17, 24, 31, 38, 46]


def clip(region, k):
    rng = np.random.default_rng([region, k])
    x = 0.3 * rng.normal(size=(N_TIMES, N_REGIONS))
    t = np.arange(N_TIMES)
    x[:, region] += 3.0 * np.exp(-0.5 * ((t - 50 - 3 * k) / 4.0) ** 2)
    return x


@pytest.fixture(scope="module")
def anatomy(grid_anatomy):
    return grid_anatomy(7, 7, spacing_mm=9.0, n_channels=12)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from esikit.io import save_mat_file

    root = tmp_path_factory.mktemp("dyn") / "nmm_spikes"
    for r in CLIP_REGIONS:
        (root / f"a{r}").mkdir(parents=True)
        for k in (1, 2):
            save_mat_file(root / f"a{r}" / f"nmm_{k}.mat", {"data": clip(r, k)})
    return root


def make(clip_dir, anatomy, **kw):
    args = dict(dataset_len=12, patch_size_range=(2, 12), seed=4)
    args.update(kw)
    return DynamicSpikeEEGDataset(clip_dir, None, anatomy, **args)


def test_shapes_and_configurations(clip_dir, anatomy):
    ds = make(clip_dir, anatomy)
    assert len(ds) == 12
    assert "DynamicSpikeEEGDataset(" in repr(ds)
    n_two = 0
    for i in range(len(ds)):
        eeg, source = ds[i]
        assert eeg.dtype == torch.float32 and tuple(eeg.shape) == (N_TIMES, 12)
        assert tuple(source.shape) == (N_TIMES, N_REGIONS)
        info = ds.sample_info(i)
        assert {"patches", "snr_db", "n_sources", "centres", "weights", "index"} <= set(info)
        assert 5 <= info["snr_db"] <= 20
        assert info["n_sources"] in (1, 2)
        n_two += info["n_sources"] == 2
        for p, w, (region, k) in zip(info["patches"], info["weights"], info["clips"]):
            assert p[0] in CLIP_REGIONS and region == p[0] and k in (1, 2)
            assert 2 <= len(p) <= 12 and is_connected(anatomy.adjacency, p)
            assert w[0] == 1.0 and (w <= 1).all() and (w > 0).all()
        if info["n_sources"] == 2:
            p1, p2 = info["patches"]
            assert not np.intersect1d(p1, p2).size
        labelled = np.zeros(N_REGIONS, bool)
        labelled[np.concatenate(info["patches"])] = True
        src = source.numpy()
        assert not src[:, ~labelled].any() and src.max() == pytest.approx(1.0)
    assert 0 < n_two < len(ds)


def test_matches_synthesize_sample(clip_dir, anatomy):
    ds = make(clip_dir, anatomy)
    for i in (0, 5, 11):
        cfg = ds.sample_config(i)
        _, noise = draw_sample_randomness(4, 0, i, 2, 1, N_TIMES, 12)
        clips = [clip(r, k) for r, k in cfg["clips"]]
        eeg, source = synthesize_sample(
            clips, cfg["patches"], cfg["weights"], cfg["scales"], anatomy.fwd, cfg["snr_db"], noise
        )
        got_eeg, got_source = ds[i]
        np.testing.assert_allclose(got_eeg.numpy(), eeg, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_source.numpy(), source, rtol=1e-5, atol=1e-6)


def test_scale_reaches_drawn_source_snr(clip_dir, anatomy):
    from esikit.head.snr import sensor_snr_db

    ds = make(clip_dir, anatomy, n_sources=1)
    for i in range(4):
        cfg = ds.sample_config(i)
        (r, k), p, w, a = cfg["clips"][0], cfg["patches"][0], cfg["weights"][0], cfg["scales"][0]
        x = clip(r, k)
        wave = x[:, p[0]] / x[:, p[0]].max()
        x[:, p] = a * wave[:, None] * w[None, :]
        index = np.arange(max(int(np.argmax(wave)) - 50, 0), N_TIMES)
        snr = sensor_snr_db(x, anatomy.fwd, p, index, weights=w, normalize_peak=False)
        assert snr == pytest.approx(cfg["source_snr_db"][0], abs=1e-6)
        assert 10 <= cfg["source_snr_db"][0] <= 20
    peak = make(clip_dir, anatomy, scale_mode="peak", scale_range=(2.0, 3.0))
    assert all(2 <= s <= 3 for i in range(4) for s in peak.sample_config(i)["scales"])


def test_determinism_and_epochs(clip_dir, anatomy):
    a = make(clip_dir, anatomy)
    b = make(clip_dir, anatomy)
    for i in (0, 7):
        np.testing.assert_array_equal(a[i][0].numpy(), b[i][0].numpy())
    first = a[3][0].numpy()
    cfg0 = a.sample_config(3)
    a.set_epoch(1)
    assert a.epoch == 1
    assert not np.array_equal(a[3][0].numpy(), first)
    cfg1 = a.sample_config(3)
    assert cfg1["epoch"] == 1 and (
        cfg1["snr_db"] != cfg0["snr_db"] or not np.array_equal(cfg1["patches"][0], cfg0["patches"][0])
    )
    np.testing.assert_array_equal(a.synthesize(3, epoch=0)[0], first)
    other_seed = make(clip_dir, anatomy, seed=5)
    assert not np.array_equal(other_seed[3][0].numpy(), first)
    # a frozen view keeps epoch 0; an unfrozen view follows its parent
    frozen = a.subset([3, 4], freeze_epoch=True)
    a.set_epoch(2)
    np.testing.assert_array_equal(frozen[0][0].numpy(), first)
    assert frozen.sample_info(0)["index"] == 3


def test_worker_processes_match(clip_dir, anatomy):
    ds = make(clip_dir, anatomy, dataset_len=8)
    ds.set_epoch(3)
    direct = torch.stack([ds[i][0] for i in range(8)])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    via_workers = torch.cat([eeg for eeg, _ in loader])
    torch.testing.assert_close(via_workers, direct)


def test_deepsif_patch_mode(clip_dir, anatomy):
    ds = make(clip_dir, anatomy, patch_mode="deepsif", n_sources=2)
    for i in range(3):
        info = ds.sample_info(i)
        assert all(is_connected(anatomy.adjacency, p) for p in info["patches"])


def test_errors(clip_dir, anatomy, tmp_path):
    with pytest.raises(ValueError, match="'scale_mode'"):
        make(clip_dir, anatomy, scale_mode="db")
    with pytest.raises(ValueError, match="'patch_mode'"):
        make(clip_dir, anatomy, patch_mode="rings")
    with pytest.raises(ValueError, match="'n_sources'"):
        make(clip_dir, anatomy, n_sources=(1, 3))
    with pytest.raises(ValueError, match="'snr_range_db'"):
        make(clip_dir, anatomy, snr_range_db=(20, 5))
    with pytest.raises(ValueError, match="'dataset_len'"):
        make(clip_dir, anatomy, dataset_len=0)
    with pytest.raises(ValueError, match="neither dimension is"):
        DynamicSpikeEEGDataset(clip_dir, np.random.default_rng(1).normal(size=(12, 30)), anatomy, 4)
    with pytest.raises(FileNotFoundError):
        DynamicSpikeEEGDataset(tmp_path / "none", None, anatomy, 4)
    ds = make(clip_dir, anatomy)
    with pytest.raises(IndexError):
        ds.sample_info(12)


def _as_metadata(ds, n, epoch):
    """The drawn configurations of samples 0..n-1 as raw DeepSIF metadata (15213 padding)."""
    cfgs = [ds.sample_config(i, epoch) for i in range(n)]
    width = max(len(p) for c in cfgs for p in c["patches"])
    sel = np.full((n, 2, width), 15213.0)
    mag = np.full((n, 2, width), 15213.0)
    ks, scale = np.zeros((n, 2)), np.ones((n, 2, 1))
    for i, c in enumerate(cfgs):
        for s, (p, w, (_, k), a) in enumerate(zip(c["patches"], c["weights"], c["clips"], c["scales"])):
            sel[i, s, :len(p)], mag[i, s, :len(p)], ks[i, s], scale[i, s, 0] = p, w, k, a
    return {"selected_region": sel, "mag_change": mag, "random_samples": ks, "scale_ratio": scale,
            "current_snr": np.array([c["snr_db"] for c in cfgs])}


def test_fast_kernel_matches_reference_and_independent_oracle(clip_dir, anatomy, tmp_path):
    from .reference import reference_sample

    fast = make(clip_dir, anatomy, cache_dir=tmp_path / "cache")
    ref = make(clip_dir, anatomy, synthesis="reference")
    assert fast._fast is not None and ref._fast is None
    fast.set_epoch(2)
    ref.set_epoch(2)
    meta = _as_metadata(ref, 12, 2)
    clips = {(r, k): clip(r, k) for r in CLIP_REGIONS for k in (1, 2)}
    eeg, src = fast.synthesize_batch(range(12))
    for i in range(12):
        assert fast.sample_config(i)["scales"] == ref.sample_config(i)["scales"]  # same clips, same peaks
        re, ry = ref.synthesize(i)
        oe, oy = reference_sample(meta, i, clips, anatomy.fwd, seed=4, epoch=2)
        for got, want in ((eeg[i].numpy(), re), (src[i].numpy(), ry), (re, oe), (ry, oy)):
            np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)
    compact = make(clip_dir, anatomy, cache_dir=tmp_path / "cache", target="compact")
    compact.set_epoch(2)
    from esikit.data.fast import expand_compact_target

    e2, (regions, values) = compact.synthesize_batch(range(12))
    assert torch.equal(e2, eeg) and torch.equal(expand_compact_target(regions, values, N_REGIONS), src)
    assert (tmp_path / "cache").is_dir()


@pytest.mark.parametrize("synthesis", ["fast", "reference"])
def test_unreadable_clip_policies(tmp_path, anatomy, synthesis, caplog):
    import logging
    import shutil

    root = tmp_path / "nmm_spikes"
    from esikit.io import save_mat_file

    for r in CLIP_REGIONS[:3]:
        (root / f"a{r}").mkdir(parents=True)
        for k in (1, 2):
            save_mat_file(root / f"a{r}" / f"nmm_{k}.mat", {"data": clip(r, k)})
    (root / "a10" / "nmm_2.mat").write_bytes(b"MATLAB 5.0" + b"\0" * 100)
    kw = dict(synthesis=synthesis, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"a10.nmm_2.mat.*missing_clips='error'"):
        make(root, anatomy, missing_clips="error", **kw)
    drop = make(root, anatomy, missing_clips="drop", dataset_len=40, **kw)
    assert all((r, k) != (10, 2) for i in range(40) for r, k in drop.sample_config(i)["clips"])
    with caplog.at_level(logging.WARNING):
        zeros = make(root, anatomy, missing_clips="zeros", dataset_len=40, **kw)
    if synthesis == "fast":  # the reference path finds unreadable clips when it meets them
        assert any("cannot be read" in r.getMessage() for r in caplog.records)
    hit = [i for i in range(40) if (10, 2) in zeros.sample_config(i)["clips"]]
    assert hit
    for i in hit[:2]:
        cfg = zeros.sample_config(i)
        eeg, src = zeros.synthesize(i)
        assert np.isfinite(eeg).all() and np.isfinite(src).all()
        dead = cfg["patches"][cfg["clips"].index((10, 2))]
        assert not src[:, dead].any()  # that source contributes nothing, not even its labels
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_recorded_noise_in_the_dynamic_mode(clip_dir, anatomy, tmp_path):
    from esikit.io import save_mat_file

    bank = np.random.default_rng(5).standard_normal((3, N_TIMES, 12))
    save_mat_file(tmp_path / "bank.mat", {"data": bank})
    kw = dict(noise="recorded", noise_bank_path=tmp_path / "bank.mat")
    fast = make(clip_dir, anatomy, cache_dir=tmp_path / "cache", **kw)
    ref = make(clip_dir, anatomy, synthesis="reference", **kw)
    white = make(clip_dir, anatomy, synthesis="reference")
    eeg, src = fast.synthesize_batch(range(6))
    for i in range(6):
        re, ry = ref.synthesize(i)
        np.testing.assert_allclose(eeg[i].numpy(), re, atol=2e-4 * np.abs(re).max(), rtol=0)
        np.testing.assert_allclose(src[i].numpy(), ry, atol=2e-4 * np.abs(ry).max(), rtol=0)
        assert not np.allclose(re, white.synthesize(i)[0], atol=1e-3)


# -- reproducibility: the same (seed, epoch, index) gives the same sample ------------------
# Fingerprints (tests/conftest.py array_fingerprint) of samples drawn before the drawer was
# rebuilt on esikit.head.configs: configurations and samples must stay as they were.

DYNAMIC_FINGERPRINTS = {
    "grow": "a0aed5bcfb5569ee9f887bca531f0950bbbf156bbc0494a2fc0af67f218846e8",
    "deepsif": "581bf17589a6a49920b34e340dd90f3920db7fe0d10aebbd20327633a24cdffe",
    "peak": "e08f6105385c47bb25569b20a67a3c910e6ed943c4a55c620715afd04ace7d45",
    "fast": "2bb657ec0cbe91873c214306ae40b50e166315309bf692452db4617be48a8c2f",
}


@pytest.mark.parametrize("case", sorted(DYNAMIC_FINGERPRINTS))
def test_dynamic_reproduces_pinned_fingerprint(case, clip_dir, anatomy, tmp_path, fingerprint):
    kw = {"grow": dict(synthesis="reference"), "deepsif": dict(synthesis="reference", patch_mode="deepsif"),
          "peak": dict(synthesis="reference", scale_mode="peak", scale_range=(1.0, 4.0), n_sources=2),
          "fast": dict(cache_dir=tmp_path / "cache", half_max_mm=(30.0, 50.0))}[case]
    ds = make(clip_dir, anatomy, **kw)
    ds.set_epoch(3)
    arrays = {}
    for i in (0, 4, 9, 11):
        cfg = ds.sample_config(i)
        for s in range(cfg["n_sources"]):
            arrays.update({f"{i}/{s}/patch": cfg["patches"][s], f"{i}/{s}/weights": cfg["weights"][s],
                           f"{i}/{s}/clip": np.array(cfg["clips"][s]), f"{i}/{s}/scale": np.array(cfg["scales"][s])})
        arrays[f"{i}/snr"] = np.array(cfg["snr_db"])
    eeg, src = ds.synthesize_batch([0, 4, 9, 11])
    arrays.update(eeg=np.asarray(eeg), src=np.asarray(src))
    assert fingerprint(arrays) == DYNAMIC_FINGERPRINTS[case]
