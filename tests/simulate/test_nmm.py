"""Tests for the Jansen-Rit network integrator (esikit.simulate.nmm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from esikit.simulate import _nmm_numba
from esikit.head.anatomy import load_default_anatomy
from esikit.simulate.nmm import (
    NOISE_SETTINGS,
    JansenRitParams,
    _integrate_chunk_numpy,
    simulate_network,
)


def _tiny_network(n=5, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.random((n, n)) * (rng.random((n, n)) < 0.6) * 3.0
    lengths = rng.uniform(0.0, 60.0, (n, n))
    return w, lengths


def test_params_match_deepsif():
    p = JansenRitParams().with_setting(1)
    assert (p.mu, p.noise_scale) == NOISE_SETTINGS[1] == (0.08, 1.7)
    assert p.A == 3.25 and p.A_excited == 3.5 and p.v0 == 6.0
    assert (p.p_min, p.p_max) == (0.03, 0.15)
    assert p.coupling_r == 1.0 and p.coupling_a == 1.0 and p.speed == 3.0
    # DeepSIF: (a * 3.25 * (p_max - p_min) * 0.5 * scale) ** 2 / 2
    assert p.nsig == pytest.approx((0.1 * 3.25 * 0.12 * 0.5 * 1.7) ** 2 / 2)
    with pytest.raises(ValueError, match="Invalid value for 'setting'"):
        JansenRitParams().with_setting(3)


@pytest.mark.parametrize("setting", [0, 2])
def test_numba_matches_numpy(setting):
    w, lengths = _tiny_network()
    kw = dict(excited_node=1, duration_s=0.4, setting=setting, seed=7)
    ref = simulate_network(w, lengths, backend="numpy", **kw)
    fast = simulate_network(w, lengths, backend="numba", **kw)
    assert ref.shape == fast.shape == (800, 5)
    np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-9)
    # A different seed gives a different trajectory.
    other = simulate_network(w, lengths, backend="numba", **{**kw, "seed": 8})
    assert np.abs(other - fast).max() > 1e-3


def test_record_every_and_seed_reproducible():
    w, lengths = _tiny_network()
    full = simulate_network(w, lengths, 0, 0.2, seed=3)
    sub = simulate_network(w, lengths, 0, 0.2, seed=3, record_every=4)
    assert sub.shape == (100, 5)
    np.testing.assert_array_equal(sub, full[::4])
    np.testing.assert_array_equal(simulate_network(w, lengths, 0, 0.2, seed=3), full)


def _sig(v, p):
    return 2.0 * p.nu_max / (1.0 + math.exp(p.r * (p.v0 - v)))


def test_uncoupled_node_converges_to_fixed_point():
    """Without noise or coupling, one node settles where all derivatives vanish.

    The fixed point solves y0 = (A/a) S(y1 - y2), y1 = (A/a)(mu + a2 J S(a1 J y0)),
    y2 = (B/b) a4 J S(a3 J y0): a scalar equation in y0 solved with brentq.
    """
    for A in (3.25, 3.5):
        p = JansenRitParams(A=A, noise_scale=0.0)

        def v_of(y0):
            y1 = A / p.a * (p.mu + p.a_2 * p.J * _sig(p.a_1 * p.J * y0, p))
            y2 = p.B / p.b * p.a_4 * p.J * _sig(p.a_3 * p.J * y0, p)
            return y1 - y2

        y0 = brentq(lambda y0: y0 - A / p.a * _sig(v_of(y0), p), 0.0, 1.0)
        v = simulate_network(np.zeros((1, 1)), np.zeros((1, 1)), None, 3.0, setting=None,
                             params=p, seed=0)
        assert v[-1, 0] == pytest.approx(v_of(y0), abs=1e-6)


def _hand_dfun(y, c, A, p):
    y0, y1, y2, y3, y4, y5 = y
    return np.array([
        y3, y4, y5,
        A * p.a * _sig(y1 - y2, p) - 2 * p.a * y3 - p.a ** 2 * y0,
        A * p.a * (p.mu + p.a_2 * p.J * _sig(p.a_1 * p.J * y0, p) + c) - 2 * p.a * y4 - p.a ** 2 * y1,
        p.B * p.b * p.a_4 * p.J * _sig(p.a_3 * p.J * y0, p) - 2 * p.b * y5 - p.b ** 2 * y2,
    ])


@pytest.mark.parametrize("kernel", [_integrate_chunk_numpy, _nmm_numba.integrate_chunk_numba])
def test_one_heun_step_by_hand(kernel):
    """Two nodes, node 0 receives node 1 with a 2-step delay; compare one step."""
    p = JansenRitParams(coupling_scale=1.0)
    dt = 0.5
    pvec = p.scalar_vector(dt)
    y = np.array([[0.1, 0.05], [12.0, 9.0], [10.0, 2.0], [0.3, -0.2], [1.0, 0.5], [-2.0, 1.0]])
    horizon, step0 = 3, 7
    hist = np.array([[0.001, 0.002], [0.003, 0.004], [0.0005, 0.0045]])  # (slot, node)
    sbuf = np.concatenate([hist.T, hist.T], axis=1)  # kernels hold (node, slot), ring twice
    # CSC: source 0 -> node 1 (w=1.5, delay 0); source 1 -> node 0 (w=2.5, delay 2)
    colptr = np.array([0, 1, 2])
    targets = np.array([1, 0])
    wdata = np.array([1.5, 2.5])
    delays = np.array([0, 2])
    z = np.array([[0.7, -1.3]])
    A = np.array([3.25, 3.5])
    out = np.zeros((step0 + 1, 2))  # global sample index n - 1 = step0
    y_before = y.copy()
    kernel(y, sbuf, step0, z, A, pvec, colptr, targets, wdata, delays, out, 1)

    n = step0 + 1
    # coupling of node 0: history slot of step n-1-2, node 1; node 1: slot of step n-1, node 0
    c = [2.5 * [0.001, 0.002, 0.003, 0.004, 0.0005, 0.0045][((n - 3) % 3) * 2 + 1],
         1.5 * [0.001, 0.002, 0.003, 0.004, 0.0005, 0.0045][((n - 1) % 3) * 2 + 0]]
    eta = math.sqrt(2 * p.nsig) * math.sqrt(dt) * z[0]
    for k in range(2):
        x = y_before[:, k]
        k1 = _hand_dfun(x, c[k], A[k], p)
        inter = x + dt * k1
        inter[4] += eta[k]
        k2 = _hand_dfun(inter, c[k], A[k], p)
        expected = x + dt / 2 * (k1 + k2)
        expected[4] += eta[k]
        np.testing.assert_allclose(y[:, k], expected, rtol=1e-12, atol=1e-14)
        assert out[step0, k] == pytest.approx(expected[1] - expected[2], rel=1e-12)
        diff = expected[1] - expected[2]
        assert sbuf[k, n % 3] == pytest.approx(0.005 / (1 + math.exp(1.0 * (6.0 - diff))), rel=1e-12)
        assert sbuf[k, n % 3 + 3] == sbuf[k, n % 3]


def test_bad_arguments():
    w, lengths = _tiny_network()
    with pytest.raises(ValueError, match="Invalid value for 'backend'"):
        simulate_network(w, lengths, 0, 0.1, backend="torch")
    with pytest.raises(ValueError, match="out of range"):
        simulate_network(w, lengths, 9, 0.1)
    with pytest.raises(ValueError, match="must both have shape"):
        simulate_network(w, lengths[:3], 0, 0.1)


def test_spikes_on_default_anatomy():
    """The excited region spikes (peaks > 8 mV), the rest of the network stays quiet."""
    anat = load_default_anatomy()
    region = 48
    v = simulate_network(anat.weights, anat.tract_lengths, region, 12.0, setting=2, seed=5,
                         record_every=4)[250:]  # drop 500 ms, 500 Hz
    x = np.where(v[:, region] < 8, 0, v[:, region])
    peaks = np.flatnonzero((x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])) + 1
    assert len(peaks) >= 1
    others = np.delete(v, region, axis=1)
    assert (others > 8).mean() < 1e-3
    # background around 1 mV as in DeepSIF's data
    assert 0.0 < np.median(others) < 3.0


def _tvb_run(weights, lengths, excited, setting, n_steps, coupling_r=1.0):
    """TVB with DeepSIF's generate_tvb_data.py settings (r passed explicitly)."""
    from tvb.datatypes import connectivity
    from tvb.simulator import coupling, integrators, models, monitors, noise, simulator

    p = JansenRitParams().with_setting(setting)
    n = weights.shape[0]
    conn = connectivity.Connectivity(
        weights=weights, tract_lengths=lengths, centres=np.zeros((n, 3)),
        region_labels=np.array([f"r{i}" for i in range(n)]), speed=np.array([3.0]))
    conn.configure()
    A = np.full(n, 3.25)
    A[excited] = 3.5
    model = models.JansenRit(A=A, mu=np.array([p.mu]), v0=np.array([6.0]),
                             p_max=np.array([0.15]), p_min=np.array([0.03]))
    sigma = np.zeros(6)
    sigma[4] = p.nsig
    sim = simulator.Simulator(
        model=model, connectivity=conn,
        coupling=coupling.SigmoidalJansenRit(a=np.array([1.0]), r=np.array([coupling_r])),
        integrator=integrators.HeunStochastic(dt=0.5, noise=noise.Additive(nsig=sigma)),
        monitors=(monitors.Raw(),)).configure()
    (t, data), = sim.run(simulation_length=n_steps * 0.5)
    return data[:, 1, :, 0] - data[:, 2, :, 0], p


@pytest.mark.tvb
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_same_trajectory_as_tvb(backend):
    """Fed TVB's own random stream (RandomState(42)), the integrator retraces TVB's run."""
    pytest.importorskip("tvb.simulator.simulator", reason="tvb-library is not installed")
    from esikit.simulate.nmm import TVB_STATE_RANGES, _run_network

    anat = load_default_anatomy()
    w, lengths = anat.weights, anat.tract_lengths
    n_steps, excited, setting = 600, 12, 1
    ref, p = _tvb_run(w, lengths, excited, setting, n_steps)

    rng = np.random.RandomState(42)  # TVB's default noise seed

    def history(horizon):
        h = np.empty((horizon, 6, w.shape[0]))
        for i, (lo, hi) in enumerate(TVB_STATE_RANGES):  # Model.initial order
            h[:, i] = rng.uniform(low=lo, high=hi, size=(horizon, w.shape[0], 1))[..., 0]
        return h

    def noise(m):  # TVB draws all six state variables each step; y4 gets noise
        return np.stack([rng.normal(size=(6, w.shape[0], 1))[4, :, 0] for _ in range(m)])

    A = np.full(w.shape[0], 3.25)
    A[excited] = 3.5
    ours = _run_network(w, lengths, A, p, 0.5, n_steps, backend, 1, history, noise)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-7)
