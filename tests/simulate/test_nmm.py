"""Tests of the Jansen-Rit network integrator (esikit.simulate.nmm, ._nmm_numba)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from scipy.optimize import brentq

from esikit.head.anatomy import load_default_anatomy
from esikit.simulate._nmm_numba import fast_exp
from esikit.simulate.nmm import (
    NOISE_SETTINGS,
    TVB_STATE_RANGES,
    BatchIntegrator,
    JansenRitParams,
    NetworkStructure,
    draw_initial_history,
    excited_A,
    network_structure,
    simulate_batch,
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


@pytest.mark.parametrize("backend, block, exact", [("numpy", 1, False), ("numba", 1, True),
                                                   ("numba", 16, False)])
def test_one_heun_step_by_hand(backend, block, exact):
    """Two nodes, node 0 receives node 1 with a 2-step delay; compare one step."""
    p = JansenRitParams(coupling_scale=1.0)
    dt = 0.5
    y = np.array([[0.1, 0.05], [12.0, 9.0], [10.0, 2.0], [0.3, -0.2], [1.0, 0.5], [-2.0, 1.0]])
    horizon, step0 = 3, 7
    hist = np.array([[0.001, 0.002], [0.003, 0.004], [0.0005, 0.0045]])  # (slot, node)
    # CSC: source 0 -> node 1 (w=1.5, delay 0); source 1 -> node 0 (w=2.5, delay 2)
    st = NetworkStructure(colptr=np.array([0, 1, 2]), targets=np.array([1, 0], np.int32),
                          wdata=np.array([1.5, 2.5]), delays=np.array([0, 2], np.int32),
                          horizon=horizon, n_nodes=2)
    A = np.array([3.25, 3.5])
    state = {"y": y[:, :, None], "ring": hist.T[:, :, None], "A": A[:, None], "step": step0}
    integ = BatchIntegrator.from_state(st, p, state, dt, backend, block=block, exact=exact)
    z = np.array([[[0.7, -1.3]]])
    rec = integ.advance(z, record_every=1, out_dtype=np.float64)
    after = integ.get_state()

    n = step0 + 1
    # coupling of node 0: history slot of step n-1-2, node 1; node 1: slot of step n-1, node 0
    c = [2.5 * hist[(n - 3) % 3, 1], 1.5 * hist[(n - 1) % 3, 0]]
    eta = math.sqrt(2 * p.nsig) * math.sqrt(dt) * z[0, 0]
    for k in range(2):
        x = y[:, k]
        k1 = _hand_dfun(x, c[k], A[k], p)
        inter = x + dt * k1
        inter[4] += eta[k]
        k2 = _hand_dfun(inter, c[k], A[k], p)
        expected = x + dt / 2 * (k1 + k2)
        expected[4] += eta[k]
        np.testing.assert_allclose(after["y"][:, k, 0], expected, rtol=1e-12, atol=1e-14)
        diff = expected[1] - expected[2]
        assert rec[0, 0, k] == pytest.approx(diff, rel=1e-12)
        assert after["ring"][k, n % 3, 0] == pytest.approx(0.005 / (1 + math.exp(1.0 * (6.0 - diff))),
                                                          rel=1e-12)
    assert after["step"] == n


def test_bad_arguments():
    w, lengths = _tiny_network()
    with pytest.raises(ValueError, match="Invalid value for 'backend'"):
        simulate_network(w, lengths, 0, 0.1, backend="torch")
    with pytest.raises(ValueError, match="Invalid value for 'excited_nodes'"):
        simulate_network(w, lengths, 9, 0.1)
    with pytest.raises(ValueError, match="must both have shape"):
        simulate_network(w, lengths[:3], 0, 0.1)
    with pytest.raises(ValueError, match="one per variant"):
        simulate_batch(w, lengths, [0, 1], 0.1, seeds=[1])
    p = JansenRitParams()
    st = network_structure(w, lengths, p)
    with pytest.raises(ValueError, match="'history' has shape"):
        BatchIntegrator(st, excited_A(5, [0], p), p, np.zeros((1, 2, 6, 5)))
    with pytest.raises(ValueError, match="'z' has shape"):
        BatchIntegrator(st, excited_A(5, [0], p), p, np.zeros((1, st.horizon, 6, 5))).advance(
            np.zeros((2, 10, 5)))


def test_single_variant_trajectory_unchanged():
    """simulate_network's numbers (and so the clips of --duration) are those of esikit's
    former single-variant kernel: fingerprints recorded with it."""
    anat = load_default_anatomy()
    v = simulate_network(anat.weights, anat.tract_lengths, 48, 3.0, setting=2, seed=[0, 48, 2],
                         record_every=4)
    assert hashlib.sha256(v.astype(np.float32).tobytes()).hexdigest() == (
        "f49ea19a7cdb5b05350d502804583cca98ee2d72fd24aeacf37faf1fa0fafa5d")
    w, lengths = _tiny_network(6)
    v = simulate_network(w, lengths, 1, 0.4, setting=2, seed=7, backend="numpy")
    assert hashlib.sha256(v.tobytes()).hexdigest() == (
        "4e8a93cee3637b8477a0e22d72f5b9cb019da3e679b9b8063239e6a2c1ebcc23")


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


def _tvb_run(weights, lengths, excited, setting, n_steps):
    """TVB with DeepSIF's generate_tvb_data.py settings (r passed explicitly)."""
    from esikit.simulate._tvb import build_tvb_simulator

    p = JansenRitParams().with_setting(setting)
    sim = build_tvb_simulator(weights, lengths, p, excited_node=excited)
    (t, data), = sim.run(simulation_length=n_steps * 0.5)
    return data[:, 1, :, 0] - data[:, 2, :, 0], p


@pytest.mark.tvb
@pytest.mark.parametrize("backend, block, exact", [("numpy", 1, False), ("numba", 1, True),
                                                   ("numba", 16, False)])
def test_same_trajectory_as_tvb(backend, block, exact):
    """Fed TVB's own random stream (RandomState(42)), the kernels retrace TVB 2.10's run."""
    pytest.importorskip("tvb.simulator.simulator", reason="tvb-library is not installed")
    anat = load_default_anatomy()
    w, lengths = anat.weights, anat.tract_lengths
    n_steps, excited, setting = 600, 12, 1
    ref, p = _tvb_run(w, lengths, excited, setting, n_steps)
    st = network_structure(w, lengths, p)
    n = w.shape[0]
    rng = np.random.RandomState(42)  # TVB's default noise seed
    hist = np.empty((1, st.horizon, 6, n))
    for i, (lo, hi) in enumerate(TVB_STATE_RANGES):  # Model.initial order
        hist[0, :, i] = rng.uniform(low=lo, high=hi, size=(st.horizon, n, 1))[..., 0]
    # TVB draws all six state variables each step; y4 gets noise
    z = np.stack([rng.normal(size=(6, n, 1))[4, :, 0] for _ in range(n_steps)])[None]
    integ = BatchIntegrator(st, excited_A(n, [excited], p), p, hist, backend=backend, block=block,
                            exact=exact)
    ours = integ.advance(z, record_every=1, out_dtype=np.float64)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_batch_matches_single_variant_reference(backend):
    """Each variant retraces simulate_network's numpy reference with the same seed."""
    w, lengths = _tiny_network(6)
    excited, seeds = [1, 4, None], [7, 8, 9]
    out = simulate_batch(w, lengths, excited, 0.4, setting=2, seeds=seeds, backend=backend)
    assert out.shape == (3, 800, 6)
    for b in range(3):
        ref = simulate_network(w, lengths, excited[b], 0.4, setting=2, seed=seeds[b], backend="numpy")
        np.testing.assert_allclose(out[b], ref, rtol=1e-9, atol=1e-9)
    # the variants differ from each other (different A, noise)
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_variant_independent_of_batch_and_block():
    """A variant gives the same numbers alone or in a batch; blocks only reorder sums."""
    w, lengths = _tiny_network(8, seed=3)
    together = simulate_batch(w, lengths, [0, 5, 2, 7], 0.3, seeds=[11, 12, 13, 14])
    alone = simulate_batch(w, lengths, [2], 0.3, seeds=[13])
    np.testing.assert_array_equal(together[2], alone[0])
    unblocked = simulate_batch(w, lengths, [2], 0.3, seeds=[13], block=1)
    np.testing.assert_allclose(unblocked[0], alone[0], rtol=1e-10, atol=1e-10)


def test_state_roundtrip_select_and_backend_switch():
    w, lengths = _tiny_network(6)
    p = JansenRitParams().with_setting(1)
    st = network_structure(w, lengths, p)
    rngs = [np.random.default_rng(s) for s in (3, 4, 5)]
    hist = np.stack([draw_initial_history(r, st.horizon, st.n_nodes) for r in rngs])
    z = np.stack([r.standard_normal((400, st.n_nodes)) for r in rngs])
    A = excited_A(st.n_nodes, [0, 1, 2], p)

    ref = BatchIntegrator(st, A, p, hist, backend="numba")
    full = ref.advance(z, record_every=2, out_dtype=np.float64)

    part = BatchIntegrator(st, A, p, hist, backend="numba")
    first = part.advance(z[:, :200], record_every=2, out_dtype=np.float64)
    state = part.get_state()
    assert state["step"] == 200 and state["ring"].shape == (st.n_nodes, st.horizon, 3)
    # continue variants 2 and 0 only, in the numpy reference
    other = BatchIntegrator(st, A[[2, 0]], p, hist[[2, 0]], backend="numpy")
    sub = {k: (v[..., [2, 0]] if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    other.set_state(sub)
    second = other.advance(z[[2, 0], 200:], record_every=2, out_dtype=np.float64)
    np.testing.assert_array_equal(first, full[:, :100])
    np.testing.assert_allclose(second, full[[2, 0], 100:], rtol=1e-9, atol=1e-9)
    part.select([1])
    assert part.n_batch == 1
    np.testing.assert_array_equal(part.advance(z[[1], 200:], record_every=2, out_dtype=np.float64),
                                  full[[1], 100:])


def test_fast_exp_accuracy():
    x = np.concatenate([np.linspace(-700, 700, 20001), np.random.default_rng(0).normal(0, 30, 10000)])
    rel = np.abs(fast_exp(x) / np.exp(x) - 1.0)
    assert rel.max() < 5e-16
    assert fast_exp(np.array([800.0]))[0] == pytest.approx(math.exp(700.0))


def _stats(v, region):
    """Spike count, mean peak height, background median and normalized spectrum (500 Hz)."""
    from esikit.simulate.spikes import find_spike_times

    times, regions = find_spike_times(v)
    own = times[regions == region]
    others = np.delete(v, region, axis=1)
    f = np.fft.rfftfreq(v.shape[0], 1 / 500.0)
    psd = np.abs(np.fft.rfft(others - others.mean(axis=0), axis=0)) ** 2
    band = [(psd[(f >= lo) & (f < hi)].sum()) for lo, hi in ((0.5, 4), (4, 8), (8, 13), (13, 30))]
    return len(own), (v[own, region].mean() if len(own) else np.nan), np.median(others), \
        np.array(band) / np.sum(band)


@pytest.mark.tvb
@pytest.mark.slow
def test_statistics_match_tvb():
    """Other seeds than TVB's: same spike rate, peak height, background and spectrum."""
    pytest.importorskip("tvb.simulator.simulator", reason="tvb-library is not installed")
    from esikit.head.anatomy import load_default_anatomy

    anat = load_default_anatomy()
    w, lengths = anat.weights, anat.tract_lengths
    region, setting, seconds = 48, 2, 40.0
    tvb, _ = _tvb_run(w, lengths, region, setting, int(seconds * 2000))
    tvb = tvb[1000::4]
    ours = simulate_batch(w, lengths, [region] * 4, seconds, setting=setting, seeds=[1, 2, 3, 4],
                          record_every=4)[:, 250:]
    n_tvb, peak_tvb, bg_tvb, spec_tvb = _stats(tvb, region)
    res = [_stats(v, region) for v in ours]
    rate_ours = np.mean([r[0] for r in res])
    assert n_tvb >= 1 and rate_ours >= 1
    # Poisson counts: within a factor 3 of each other
    assert 1 / 3 < (n_tvb + 1) / (rate_ours + 1) < 3
    peaks = [r[1] for r in res if np.isfinite(r[1])]
    assert np.mean(peaks) == pytest.approx(peak_tvb, rel=0.25)
    assert np.mean([r[2] for r in res]) == pytest.approx(bg_tvb, rel=0.2, abs=0.2)
    np.testing.assert_allclose(np.mean([r[3] for r in res], axis=0), spec_tvb, atol=0.1)
