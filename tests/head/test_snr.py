"""Tests for esikit.head.snr (DeepSIF's find_alpha and SNR definition)."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.head.snr import (
    deepsif_spike_window,
    find_alpha,
    peak_windows,
    sensor_snr_db,
    source_background_power,
)


def _reference_powers(data, fwd, patch, index, weights=None, normalize_peak=True):
    """Straight transcription of DeepSIF's calcualate_SNR on a modified copy of the clip."""
    nmm = np.array(data, dtype=float)
    patch = np.asarray(patch)
    wave = nmm[:, patch[0]].copy()
    if normalize_peak:
        wave = wave / wave.max()
    w = np.ones(len(patch)) if weights is None else np.asarray(weights, float)
    nmm[:, patch] = wave[:, None] * w[None, :]
    sig = (fwd[:, patch] @ nmm[:, patch].T).T
    sig = sig - sig.mean(axis=0)
    rest = np.setdiff1d(np.arange(nmm.shape[1]), patch)
    noise = (fwd[:, rest] @ nmm[:, rest].T).T
    noise = noise - noise.mean(axis=0)
    ps = np.linalg.norm(sig[index], "fro") ** 2 / len(index)
    pn = np.linalg.norm(noise[index], "fro") ** 2 / len(index)
    return ps, pn


def test_two_region_analytic():
    # region 0: source with a triangular spike; region 1: background square wave
    t = 8
    data = np.zeros((t, 2))
    data[:, 0] = [0, 0, 1, 2, 1, 0, 0, 0]
    data[:, 1] = [1, -1] * 4
    fwd = np.array([[2.0, 1.0], [0.0, 3.0]])  # two channels
    index = np.arange(t)
    # normalised waveform x = data0 / 2: mean 0.25, centred energy = sum(x^2) - t*mean^2
    x = data[:, 0] / 2
    energy = np.sum(x**2) - t * x.mean() ** 2
    topo_sq = 2.0**2 + 0.0**2  # column 0 of fwd
    ps_expected = energy * topo_sq / t
    pn_expected = np.sum(data[:, 1] ** 2) * (1.0**2 + 3.0**2) / t  # zero-mean background
    ps, pn = source_background_power(data, fwd, [0], index)
    assert ps == pytest.approx(ps_expected)
    assert pn == pytest.approx(pn_expected)
    alpha = find_alpha(data, fwd, [0], [0.0, 10.0, 20.0], time_index=index)
    expected = np.sqrt(10.0 ** (np.array([0.0, 10.0, 20.0]) / 10) * pn_expected / ps_expected)
    np.testing.assert_allclose(alpha, expected)
    # 10 dB more SNR = sqrt(10) times the amplitude
    assert alpha[1] / alpha[0] == pytest.approx(np.sqrt(10.0))


def test_alpha_reaches_target_snr_when_applied():
    rng = np.random.default_rng(0)
    t, r, c = 200, 12, 5
    data = rng.normal(size=(t, r))
    data[:, 3] = np.exp(-0.5 * ((np.arange(t) - 120) / 6.0) ** 2) * 4.0
    fwd = rng.normal(size=(c, r))
    patch = np.array([3, 4, 7])
    weights = np.array([1.0, 0.7, 0.4])
    for target in (5.0, 12.0, 20.0):
        alpha = float(find_alpha(data, fwd, patch, target, weights=weights))
        # build the synthesized clip and measure its SNR independently
        wave = data[:, 3] / data[:, 3].max()
        synth = data.copy()
        synth[:, patch] = alpha * wave[:, None] * weights[None, :]
        index = deepsif_spike_window(wave)
        ps, pn = _reference_powers(synth, fwd, patch, index, weights=weights / weights[0], normalize_peak=False)
        # _reference_powers takes the centre waveform from synth: it is alpha * wave
        assert 10 * np.log10(ps / pn) == pytest.approx(target, abs=1e-9)
        snr = sensor_snr_db(synth, fwd, patch, index, weights=weights, normalize_peak=False)
        assert snr == pytest.approx(target, abs=1e-9)


def test_matches_reference_transcription():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(100, 9))
    data[40, 2] = 10.0
    fwd = rng.normal(size=(4, 9))
    patch = [2, 0, 5]
    index = deepsif_spike_window(data[:, 2])
    assert index[0] == 0 and index[-1] == 99  # peak at 40 < 50: window starts at 0
    ps, pn = source_background_power(data, fwd, patch)
    ps_ref, pn_ref = _reference_powers(data, fwd, patch, index)
    assert ps == pytest.approx(ps_ref)
    assert pn == pytest.approx(pn_ref)
    # raw waveform (clip cutting) with peak windows
    idx = peak_windows([40], 100)
    ps, pn = source_background_power(data, fwd, [2], idx, normalize_peak=False)
    ps_ref, pn_ref = _reference_powers(data, fwd, [2], idx, normalize_peak=False)
    assert ps == pytest.approx(ps_ref)
    assert pn == pytest.approx(pn_ref)


def test_windows():
    wave = np.zeros(500)
    wave[200] = 1
    idx = deepsif_spike_window(wave)
    assert idx[0] == 150 and idx[-1] == 499 and len(idx) == 350
    idx = deepsif_spike_window(wave, before=50, after=50)
    np.testing.assert_array_equal(idx, np.arange(150, 251))
    wave[:] = 0
    wave[10] = 1
    assert deepsif_spike_window(wave)[0] == 0
    idx = peak_windows([5, 300], 310)
    assert idx.shape == (400,)
    assert idx.min() == 0 and idx.max() == 309
    np.testing.assert_array_equal(idx[200:], np.clip(np.arange(201, 401), 0, 309))


def test_errors():
    data = np.zeros((10, 3))
    fwd = np.ones((2, 3))
    with pytest.raises(ValueError, match="maximum"):
        find_alpha(data, fwd, [0], 10.0)
    data[5, 0] = 1
    with pytest.raises(ValueError, match="fwd must be"):
        find_alpha(data, np.ones((2, 4)), [0], 10.0)
    with pytest.raises(ValueError, match="duplicate"):
        find_alpha(data, fwd, [0, 0], 10.0)
    with pytest.raises(ValueError, match="lie in"):
        find_alpha(data, fwd, [0, 3], 10.0)
    with pytest.raises(ValueError, match="weights"):
        find_alpha(data, fwd, [0, 1], 10.0, weights=[1.0])
    # no background at all: alpha is 0 (any amplitude beats a silent background)
    assert float(find_alpha(data, fwd, [0], 10.0)) == 0.0
