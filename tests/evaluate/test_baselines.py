"""Tests of esikit.evaluate.baselines: recovery, MNE-Python agreement, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from esikit.evaluate.baselines import (
    ADAPTIVE_BASELINES,
    DEFAULT_LAMBDA2,
    LINEAR_BASELINES,
    Baselines,
    apply_inverse,
    check_baselines,
    clear_kernel_cache,
    estimate_sources,
    lambda2_from_snr,
    make_inverse_kernel,
)
from esikit.io import load_forward_matrix


def _avg_ref(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0, keepdims=True)


@pytest.fixture(scope="module")
def random_gain() -> np.ndarray:
    # More channels than regions: well conditioned, every method can localize.
    return np.random.default_rng(0).normal(size=(40, 25))


def test_lambda2_from_snr():
    assert lambda2_from_snr(20 * math.log10(3.0)) == pytest.approx(1 / 9)
    assert lambda2_from_snr(0) == 1.0
    assert lambda2_from_snr(20) == pytest.approx(0.01)


def test_invalid_arguments():
    G = np.ones((4, 3))
    with pytest.raises(ValueError, match="Invalid value for 'method': expected one of 'mne', 'dspm', 'sloreta', 'eloreta', got 'lcmv'."):
        make_inverse_kernel(G, "lcmv", 0.1)
    with pytest.raises(ValueError, match="Invalid value for 'lambda2'"):
        make_inverse_kernel(G, "mne", 0.0)
    with pytest.raises(ValueError, match=r"'noise_cov' has shape \(3, 3\)"):
        make_inverse_kernel(G, "mne", 0.1, noise_cov=np.eye(3))
    with pytest.raises(ValueError, match="'eeg' has 5 channels"):
        apply_inverse(np.zeros((10, 5)), np.zeros((3, 4)))


@pytest.mark.parametrize("method", LINEAR_BASELINES)
def test_single_noiseless_source_random_gain(method, random_gain):
    kernel = make_inverse_kernel(random_gain, method, lambda2_from_snr(30))
    assert kernel.shape == (25, 40)
    t = np.sin(np.linspace(0, 3, 50))
    for r in range(random_gain.shape[1]):
        eeg = _avg_ref(np.outer(t, random_gain[:, r]).T).T  # (T, C), average referenced
        est = apply_inverse(eeg, kernel)
        assert np.argmax(np.abs(est).max(axis=0)) == r


@pytest.mark.parametrize("method", ["sloreta", "eloreta"])
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_zero_localization_error_real_leadfield(method, snr_db, deepsif_anatomy_dir):
    G = load_forward_matrix(deepsif_anatomy_dir / "leadfield_75_20k.mat")
    assert G.shape == (75, 994)
    kernel = make_inverse_kernel(G, method, lambda2_from_snr(snr_db))
    # column r: estimate for a unit noiseless source at region r
    response = np.abs(kernel @ _avg_ref(G))
    assert np.array_equal(np.argmax(response, axis=0), np.arange(994))


def test_kernel_annihilates_common_mode(random_gain):
    for method in LINEAR_BASELINES:
        kernel = make_inverse_kernel(random_gain, method, 0.1)
        np.testing.assert_allclose(kernel @ np.ones(40), 0.0, atol=1e-10 * np.abs(kernel).max())
        # so the reference of G does not matter
        shifted = random_gain + np.random.default_rng(1).normal(size=(1, 25))
        np.testing.assert_allclose(make_inverse_kernel(shifted, method, 0.1), kernel, rtol=1e-7, atol=1e-9)


def test_dspm_has_unit_noise_variance(random_gain):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 40))
    cov = a @ a.T / 40 + 0.1 * np.eye(40)
    kernel = make_inverse_kernel(random_gain, "dspm", 0.3, noise_cov=cov)
    np.testing.assert_allclose(np.diag(kernel @ cov @ kernel.T), 1.0, rtol=1e-10)


def test_sloreta_is_mne_standardized_by_resolution_diagonal(random_gain):
    lam2 = 0.2
    k_mne = make_inverse_kernel(random_gain, "mne", lam2)
    k_slo = make_inverse_kernel(random_gain, "sloreta", lam2)
    resolution_diag = np.einsum("rc,cr->r", k_mne, random_gain)
    ratio = k_slo / (k_mne / np.sqrt(resolution_diag)[:, None])
    g_ref = _avg_ref(random_gain)
    scale = (random_gain.shape[0] - 1) / np.sum(g_ref**2)  # trace normalization
    np.testing.assert_allclose(ratio, math.sqrt(lam2 / scale), rtol=1e-8)


def test_mne_is_tikhonov_minimum_norm(random_gain):
    # K = s2 G^T (s2 G G^T + lam2 I)^-1 in the average-referenced, whitened (identity) space
    lam2 = 0.05
    q = scipy.linalg.null_space(np.ones((1, 40)))
    gw = q.T @ random_gain
    s2 = gw.shape[0] / np.sum(gw**2)
    expected = s2 * gw.T @ np.linalg.inv(s2 * gw @ gw.T + lam2 * np.eye(gw.shape[0])) @ q.T
    np.testing.assert_allclose(make_inverse_kernel(random_gain, "mne", lam2), expected, rtol=1e-8, atol=1e-12)


def test_kernel_cache(random_gain):
    clear_kernel_cache()
    k1 = make_inverse_kernel(random_gain, "eloreta", 0.1)
    assert make_inverse_kernel(random_gain.copy(), "eloreta", 0.1) is k1  # same content
    assert not k1.flags.writeable
    assert make_inverse_kernel(random_gain, "eloreta", 0.2) is not k1
    changed = random_gain.copy()
    changed[0, 0] += 1e-3
    assert make_inverse_kernel(changed, "eloreta", 0.1) is not k1


def test_apply_inverse_and_estimate_sources_shapes(random_gain):
    eeg = np.random.default_rng(3).normal(size=(3, 30, 40))
    est = estimate_sources(eeg, random_gain, "sloreta", snr_db=10)
    assert est.shape == (3, 30, 25)
    kernel = make_inverse_kernel(random_gain, "sloreta", lambda2_from_snr(10))
    np.testing.assert_allclose(est[1], apply_inverse(eeg[1], kernel))
    np.testing.assert_allclose(est[1], eeg[1] @ kernel.T)


# ----------------------------------------------------------------- MNE-Python agreement
@pytest.fixture(scope="module")
def mne_setup():
    """A small EEG sphere model with a discrete fixed-orientation source space."""
    mne = pytest.importorskip("mne")
    rng = np.random.default_rng(0)
    n_ch, n_src = 16, 12
    theta = rng.uniform(0.2, 1.3, n_ch)
    phi = rng.uniform(0, 2 * np.pi, n_ch)
    pos = 0.09 * np.c_[np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)]
    names = [f"E{i}" for i in range(n_ch)]
    with mne.utils.use_log_level("error"):
        montage = mne.channels.make_dig_montage(ch_pos=dict(zip(names, pos)), coord_frame="head")
        info = mne.create_info(names, 1000.0, "eeg")
        info.set_montage(montage)
        rr = rng.normal(size=(n_src, 3))
        rr *= 0.05 / np.linalg.norm(rr, axis=1, keepdims=True)
        nn = rng.normal(size=(n_src, 3))
        nn /= np.linalg.norm(nn, axis=1, keepdims=True)
        src = mne.setup_volume_source_space(pos=dict(rr=rr, nn=nn))
        sphere = mne.make_sphere_model(r0=(0.0, 0.0, 0.0), head_radius=0.09)
        fwd = mne.make_forward_solution(info, None, src, sphere, eeg=True, meg=False)
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True)
        # identity data: the estimate is the kernel itself
        evoked = mne.EvokedArray(np.eye(n_ch), info, nave=1)
        evoked.set_eeg_reference(projection=True)
    return mne, fwd, evoked, rng


@pytest.mark.parametrize("diagonal_cov", [False, True])
def test_agreement_with_mne_python(mne_setup, diagonal_cov):
    mne, fwd, evoked, rng = mne_setup
    n_ch = len(evoked.ch_names)
    cov_data = np.diag(np.random.default_rng(5).uniform(0.5, 2.0, n_ch)) if diagonal_cov else np.eye(n_ch)
    cov = mne.Covariance(cov_data, evoked.ch_names, [], [], nfree=1)
    gain = fwd["sol"]["data"].copy()
    assert gain.shape == (n_ch, 12)
    lam2 = 1.0 / 9.0
    with mne.utils.use_log_level("error"):
        inv = mne.minimum_norm.make_inverse_operator(evoked.info, fwd, cov, loose=0.0, depth=None, fixed=True)
        for mne_name, ours in [("MNE", "mne"), ("dSPM", "dspm"), ("sLORETA", "sloreta"), ("eLORETA", "eloreta")]:
            params = {"eps": 1e-10, "max_iter": 200} if ours == "eloreta" else None
            stc = mne.minimum_norm.apply_inverse(evoked, inv, lam2, method=mne_name, method_params=params)
            kernel = make_inverse_kernel(gain, ours, lam2, noise_cov=None if not diagonal_cov else cov_data, eps=1e-10, max_iter=200)
            np.testing.assert_allclose(kernel, stc.data, rtol=1e-7, atol=1e-9 * np.abs(stc.data).max(), err_msg=ours)


def test_depth_prior_is_mne_compute_depth_prior(mne_setup, random_gain):
    # MNE's fixed-orientation inverse needs a free-orientation forward for depth weighting;
    # a region leadfield has none, so the prior is MNE's compute_depth_prior of the fixed gain.
    from esikit.evaluate.baselines import depth_prior

    mne, fwd, evoked, rng = mne_setup
    with mne.utils.use_log_level("error"):
        # the minimum-norm code calls it with limit_depth_chs=True (the C code's limit rule)
        expected = mne.forward.compute_depth_prior(fwd, evoked.info, exp=0.8, limit=10.0, limit_depth_chs=True)
    np.testing.assert_allclose(depth_prior(fwd["sol"]["data"], 0.8), expected, rtol=1e-6)  # MNE: float32
    # and the kernel is the minimum norm with that source covariance (trace normalized)
    lam2 = 0.05
    prior = depth_prior(random_gain, 0.8)
    q = scipy.linalg.null_space(np.ones((1, 40)))
    gw = q.T @ random_gain
    r = prior * gw.shape[0] / np.sum(gw**2 * prior)
    expected_k = (r[:, None] * gw.T) @ np.linalg.inv((gw * r) @ gw.T + lam2 * np.eye(gw.shape[0])) @ q.T
    np.testing.assert_allclose(make_inverse_kernel(random_gain, "mne", lam2, depth=0.8), expected_k, rtol=1e-8,
                               atol=1e-12)
    assert not np.allclose(make_inverse_kernel(random_gain, "mne", lam2, depth=0.8),
                           make_inverse_kernel(random_gain, "mne", lam2))


def test_depth_prior_limit():
    from esikit.evaluate.baselines import depth_prior

    G = np.diag([1.0, 0.5, 0.01])  # column norms^2: 1, 0.25, 1e-4 -> weights 1, 4, 1e4
    # weights above 100 x the smallest are capped at the first such weight (MNE's C-code rule)
    np.testing.assert_allclose(depth_prior(G, 1.0), [1e-4, 4e-4, 1.0])
    np.testing.assert_allclose(depth_prior(G, 1.0, limit=None), [1.0, 4.0, 1e4])
    np.testing.assert_allclose(depth_prior(G, 0.5, limit=None), [1.0, 2.0, 100.0])
    with pytest.raises(ValueError, match="Invalid value for 'depth'"):
        make_inverse_kernel(G, "mne", 0.1, depth=-1.0)


def test_baselines_fixed_lambda_batches_and_oracle(random_gain):
    eeg = np.random.default_rng(8).normal(size=(4, 30, 40))
    snr = [5.0, 20.0, 5.0, 10.0]
    fixed = Baselines(random_gain, ["mne", "sloreta"])
    est = fixed.estimate(eeg, snr)
    kernel = make_inverse_kernel(random_gain, "sloreta", DEFAULT_LAMBDA2)
    np.testing.assert_allclose(est["sloreta"], eeg @ kernel.T)  # one kernel: the true SNR is not used
    assert "not used" in fixed.describe()["mne"]
    oracle = Baselines(random_gain, ["mne", "sloreta"], oracle=True, depth=0.8)
    est = oracle.estimate(eeg, snr)
    for b in range(4):
        np.testing.assert_allclose(est["mne"][b], estimate_sources(eeg[b], random_gain, "mne", snr[b], depth=0.8))
    assert "oracle" in oracle.describe()["mne"] and "depth weighting 0.8" in oracle.describe()["mne"]
    with pytest.raises(ValueError, match="need 'snr_db'"):
        oracle.estimate(eeg)


def test_check_baselines_lists_every_unknown_name():
    assert check_baselines(["MNE", "lcmv", "gamma-map"]) == ["mne", "lcmv", "gamma-map"]
    with pytest.raises(ValueError, match=r"got \['nope', 'lcmvv'\]"):
        check_baselines(["mne", "nope", "lcmvv"])


@pytest.fixture(scope="module")
def small_problem():
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    gain = rng.normal(size=(32, 16))
    centres = np.c_[np.arange(16) * 10.0, np.zeros(16), np.zeros(16)]
    adjacency = sp.diags([np.ones(15), np.ones(15)], [1, -1], shape=(16, 16))
    return gain, centres, adjacency


@pytest.mark.parametrize("method", ADAPTIVE_BASELINES)
def test_invertmeeg_baselines_recover_one_noiseless_region(method, small_problem):
    gain, centres, adjacency = small_problem
    solvers = Baselines(gain, [method], centres=centres, adjacency=adjacency)
    t = np.sin(np.linspace(0, 3, 120))
    for r in (0, 7, 15):
        eeg = np.outer(t, gain[:, r])[None]  # (1, T, C), noiseless, one region
        est = solvers.estimate(eeg)[method]
        assert est.shape == (1, 120, 16)
        assert np.argmax(np.abs(est[0]).max(axis=0)) == r, (method, r)
    assert "data-driven" in solvers.describe()[method]


def test_region_forward_carries_the_adjacency(small_problem):
    pytest.importorskip("invert")
    from invert.util import build_source_adjacency

    from esikit.evaluate.adaptive import region_forward

    gain, centres, adjacency = small_problem
    fwd, info = region_forward(gain, centres, adjacency)
    np.testing.assert_allclose(fwd["sol"]["data"], gain - gain.mean(axis=0))  # average referenced
    assert fwd["nsource"] == 16 and len(info.ch_names) == 32
    np.testing.assert_allclose(fwd["source_rr"], centres / 1000.0)
    import logging

    logging.getLogger("invert").setLevel(logging.ERROR)
    adj = build_source_adjacency(fwd["src"], adjacency_type="spatial")
    assert (adj != 0).toarray().tolist() == (adjacency.toarray() != 0).tolist()
    with pytest.raises(ValueError, match=r"'adjacency' has shape \(3, 3\)"):
        region_forward(gain, centres, np.eye(3))


def test_champagne_on_compressed_data_equals_invertmeeg_on_the_full_data(small_problem):
    import mne
    from invert import Solver

    from esikit.evaluate.adaptive import quiet_solvers, compress_time

    gain, centres, adjacency = small_problem
    rng = np.random.default_rng(2)
    y = rng.normal(size=(32, 300))
    yc = compress_time(y)
    assert yc.shape[1] <= 32
    np.testing.assert_allclose(yc @ yc.T / yc.shape[1], y @ y.T / 300, rtol=1e-10, atol=1e-12)
    eeg = np.outer(np.hanning(200), gain[:, 3] + 0.7 * gain[:, 9]) + 0.3 * rng.normal(size=(200, 32))
    ours = Baselines(gain, ["champagne"], centres=centres, adjacency=adjacency).estimate(eeg[None])["champagne"][0]
    from esikit.evaluate.adaptive import region_forward

    fwd, info = region_forward(gain, centres, adjacency)
    with quiet_solvers():
        evoked = mne.EvokedArray((eeg - eeg.mean(axis=1, keepdims=True)).T, info)
        solver = Solver("champagne", verbose=0)
        solver.make_inverse_operator(fwd, evoked, alpha="auto", max_iter=200)  # esikit's cap (adaptive.py)
        plain = solver.apply_inverse_operator(evoked).data.T
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
