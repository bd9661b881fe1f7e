"""The sample synthesis against the independent reference, sample by sample."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.data import SampleSpecs, SpikeEEGMetadataDataset, draw_sample_randomness, synthesize_sample, synthesize_spec
from esikit.data.synthesis import normalize_eeg, scale_centre_waveform
from esikit.data.toy import make_toy_dataset

from .reference import reference_draws, reference_sample


def _close(a, b, rtol=2e-4):
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, atol=rtol * scale, rtol=0)


@pytest.mark.parametrize("fmt", ["v5", "v7.3", "octave-text"])
@pytest.mark.parametrize("padding", [15213, 999, np.nan])
def test_dataset_matches_reference_all_formats(tmp_path, fmt, padding):
    toy = make_toy_dataset(tmp_path, n_regions=30, n_channels=12, n_train=12, n_test=4,
                           metadata_format=fmt, padding=padding, seed=3)
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=5)
    assert ds.clip_resolution == "random_samples"
    for i in range(len(ds)):
        eeg, src = ds[i]
        ref_e, ref_y = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"], seed=5)
        assert eeg.shape == (500, 12) and src.shape == (500, 30)
        assert eeg.dtype == src.dtype == np.float32 or str(eeg.dtype) == "torch.float32"
        _close(eeg.numpy(), ref_e)
        _close(src.numpy(), ref_y)


def test_formula_resolution_matches_reference(tmp_path):
    toy = make_toy_dataset(tmp_path, n_regions=25, n_channels=10, n_train=10, clips_per_region=3, seed=1)
    meta = dict(toy["train_meta"])
    meta.pop("random_samples")
    from esikit.io import save_mat_file

    path = tmp_path / "source" / "formula_only.mat"
    save_mat_file(path, meta)
    ds = SpikeEEGMetadataDataset(path, toy["fwd"], toy["nmm_spikes_dir"], seed=2)
    assert ds.clip_resolution == "formula"
    for i in range(len(ds)):
        ref_e, ref_y = reference_sample(meta, i, toy["clips"], toy["fwd"], seed=2, nper=3, use="nmm_idx")
        eeg, src = ds.synthesize(i)
        _close(eeg, ref_e)
        _close(src, ref_y)


def test_real_leadfield_matches_reference(tmp_path, deepsif_anatomy_dir):
    from esikit.io import load_forward_matrix

    fwd = load_forward_matrix(deepsif_anatomy_dir / "leadfield_75_20k.mat")
    assert fwd.shape == (75, 994)
    toy = make_toy_dataset(tmp_path, fwd=fwd, clips_per_region=1, n_train=4, n_test=2, max_patch=70, seed=9,
                           clip_regions=np.arange(0, 994, 97))
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], deepsif_anatomy_dir / "leadfield_75_20k.mat")
    for i in range(len(ds)):
        eeg, src = ds[i]
        assert eeg.shape == (500, 75) and src.shape == (500, 994)
        ref_e, ref_y = reference_sample(toy["train_meta"], i, toy["clips"], fwd)
        _close(eeg.numpy(), ref_e)
        _close(src.numpy(), ref_y)


def test_draws_follow_the_documented_order():
    choice, noise = draw_sample_randomness(7, 3, 11, 2, 5, 500, 16)
    rc, rn = reference_draws(7, 3, 11, 2, 5, 500, 16)
    np.testing.assert_array_equal(choice, rc)
    np.testing.assert_array_equal(noise, rn)
    c2, n2 = draw_sample_randomness(7, 4, 11, 2, 5, 500, 16)
    assert not np.array_equal(noise, n2)


def test_one_source_patch_follows_centre_waveform():
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((50, 6)).astype(np.float32)
    clip[20, 2] = 10.0
    fwd = rng.standard_normal((4, 6))
    noise = np.zeros((50, 4), np.float32)
    eeg, src = synthesize_sample([clip], [np.array([2, 3])], [np.array([1.0, 0.5])], [4.0], fwd, 10.0, noise,
                                 normalize=False)
    np.testing.assert_allclose(src[:, 2], clip[:, 2] / 10.0 * 4.0, rtol=1e-6)
    np.testing.assert_allclose(src[:, 3], clip[:, 2] / 10.0 * 2.0, rtol=1e-6)
    assert np.all(src[:, [0, 1, 4, 5]] == 0)
    x = clip.astype(np.float64).copy()
    x[:, 2], x[:, 3] = src[:, 2], src[:, 3]
    np.testing.assert_allclose(eeg, x @ fwd.T, rtol=1e-4, atol=1e-4)


def test_overlapping_sources_sum_background_into_target():
    rng = np.random.default_rng(1)
    c1 = rng.uniform(0.1, 1, (40, 5)).astype(np.float32)
    c2 = rng.uniform(0.1, 1, (40, 5)).astype(np.float32)
    fwd = rng.standard_normal((3, 5))
    noise = np.zeros((40, 3), np.float32)
    _, src = synthesize_sample([c1, c2], [np.array([0]), np.array([4])], [np.ones(1), np.ones(1)], [1.0, 1.0],
                               fwd, 20.0, noise, normalize=False)
    # Region 0 carries source 1's scaled waveform plus clip 2's background there.
    np.testing.assert_allclose(src[:, 0], c1[:, 0] / c1[:, 0].max() + c2[:, 0], rtol=1e-5)


def test_noise_level_matches_snr_definition():
    rng = np.random.default_rng(2)
    clip = rng.standard_normal((2000, 8)).astype(np.float32) + 3
    fwd = rng.standard_normal((6, 8))
    noise = rng.standard_normal((2000, 6)).astype(np.float32)
    clean, _ = synthesize_sample([clip], [np.array([1])], [np.ones(1)], [5.0], fwd, 10.0, np.zeros_like(noise),
                                 normalize=False)
    noisy, _ = synthesize_sample([clip], [np.array([1])], [np.ones(1)], [5.0], fwd, 10.0, noise, normalize=False)
    sigma = np.sqrt(10 ** (-10.0 / 10) * np.mean(clean.astype(np.float64) ** 2, axis=0) / 2)
    np.testing.assert_allclose(noisy - clean, noise * sigma[None, :], rtol=1e-3, atol=1e-4 * sigma.max())


def test_degenerate_inputs_never_give_nan():
    fwd = np.ones((3, 4))
    noise = np.zeros((10, 3), np.float32)
    eeg, src = synthesize_sample([], [], [], [], fwd, 10.0, noise)
    assert np.all(eeg == 0) and np.all(src == 0)
    flat = np.zeros((10, 4), np.float32)
    eeg, src = synthesize_sample([flat], [np.array([1])], [np.ones(1)], [2.0], fwd, 10.0, noise)
    assert np.isfinite(eeg).all() and np.isfinite(src).all()
    assert np.all(scale_centre_waveform(-np.ones(5), 3.0) == 0)
    z = np.zeros((5, 4), np.float32)
    assert np.all(normalize_eeg(z) == 0)


def test_spec_row_gives_synthesize_sample():
    # One spec row through synthesize_spec = the contract function on that row's lists.
    rng = np.random.default_rng(3)
    clips = {0: rng.standard_normal((40, 6)).astype(np.float32) + 1, 1: rng.standard_normal((40, 6)).astype(np.float32)}
    fwd = rng.standard_normal((4, 6))
    specs = SampleSpecs.from_sources([7], [[np.array([2, 3, 4]), np.array([5])]], [[np.array([1, .5, .2]), np.ones(1)]],
                                     [[0, 1]], [[2.0, 3.0]], [10.0], n_sources=3)
    assert specs.regions.shape == (1, 3, 3) and specs.regions[0, 2, 0] == -1 and specs.noise_segment[0] == -1
    eeg, src = synthesize_spec(specs, 0, clips.get, fwd, seed=1, epoch=2, n_times=40)
    _, noise = draw_sample_randomness(1, 2, 7, 3, 1, 40, 4)
    want = synthesize_sample([clips[0], clips[1]], [np.array([2, 3, 4]), np.array([5])],
                             [np.array([1, .5, .2]), np.ones(1)], [2.0, 3.0], fwd, 10.0, noise)
    np.testing.assert_array_equal(eeg, want[0])
    np.testing.assert_array_equal(src, want[1])
    # A missing clip (None, or id -1) drops its source, as in the contract.
    specs.clip_ids[0, 1] = -1
    e2, _ = synthesize_spec(specs, 0, clips.get, fwd, seed=1, epoch=2, n_times=40)
    want2 = synthesize_sample([clips[0]], [np.array([2, 3, 4])], [np.array([1, .5, .2])], [2.0], fwd, 10.0, noise)
    np.testing.assert_array_equal(e2, want2[0])
    c = specs.contiguous()
    assert c.regions.dtype == np.int32 and c.clip_ids.dtype == np.int64 and c.regions.flags.c_contiguous
