"""Tests of the batched Jansen-Rit integrator (esikit.simulate.batched)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from esikit.simulate._batched_numba import fast_exp
from esikit.simulate.batched import (
    BatchIntegrator,
    draw_initial_history,
    excited_A,
    network_structure,
    simulate_batch,
)
from esikit.simulate.nmm import JansenRitParams, simulate_network


def _tiny_network(n=6, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.random((n, n)) * (rng.random((n, n)) < 0.6) * 3.0
    lengths = rng.uniform(0.0, 60.0, (n, n))
    return w, lengths


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_batch_matches_single_variant_reference(backend):
    """Each variant retraces simulate_network's numpy reference with the same seed."""
    w, lengths = _tiny_network()
    excited, seeds = [1, 4, None], [7, 8, 9]
    out = simulate_batch(w, lengths, excited, 0.4, setting=2, seeds=seeds, backend=backend)
    assert out.shape == (3, 800, 6)
    for b in range(3):
        ref = simulate_network(w, lengths, excited[b], 0.4, setting=2, seed=seeds[b], backend="numpy")
        np.testing.assert_allclose(out[b], ref, rtol=1e-9, atol=1e-9)
    # the variants differ from each other (different A, noise)
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_numpy_batch_is_bitwise_single_reference():
    w, lengths = _tiny_network()
    out = simulate_batch(w, lengths, [2, 3], 0.2, seeds=[1, 2], backend="numpy", record_every=4)
    ref = simulate_network(w, lengths, 3, 0.2, seed=2, backend="numpy", record_every=4)
    np.testing.assert_array_equal(out[1], ref)


def test_variant_independent_of_batch_and_block():
    """A variant gives the same numbers alone or in a batch; blocks only reorder sums."""
    w, lengths = _tiny_network(8, seed=3)
    together = simulate_batch(w, lengths, [0, 5, 2, 7], 0.3, seeds=[11, 12, 13, 14])
    alone = simulate_batch(w, lengths, [2], 0.3, seeds=[13])
    np.testing.assert_array_equal(together[2], alone[0])
    unblocked = simulate_batch(w, lengths, [2], 0.3, seeds=[13], block=1)
    np.testing.assert_allclose(unblocked[0], alone[0], rtol=1e-10, atol=1e-10)


def test_state_roundtrip_select_and_backend_switch():
    w, lengths = _tiny_network()
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


def test_torch_device_noise_runs():
    torch = pytest.importorskip("torch")
    w, lengths = _tiny_network()
    p = JansenRitParams()
    st = network_structure(w, lengths, p)
    hist = np.stack([draw_initial_history(np.random.default_rng(0), st.horizon, st.n_nodes)] * 2)
    integ = BatchIntegrator(st, excited_A(st.n_nodes, [0, 1], p), p, hist, backend="torch",
                            device="cpu", torch_dtype="float32")
    out = integ.advance(None, n_steps=400, record_every=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 100, st.n_nodes) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="needs backend='torch'"):
        BatchIntegrator(st, excited_A(st.n_nodes, [0], p), p, hist[:1]).advance(None, 10)


def test_fast_exp_accuracy():
    x = np.concatenate([np.linspace(-700, 700, 20001), np.random.default_rng(0).normal(0, 30, 10000)])
    rel = np.abs(fast_exp(x) / np.exp(x) - 1.0)
    assert rel.max() < 5e-16
    assert fast_exp(np.array([800.0]))[0] == pytest.approx(math.exp(700.0))


def test_bad_arguments():
    w, lengths = _tiny_network()
    with pytest.raises(ValueError, match="Invalid value for 'backend'"):
        simulate_batch(w, lengths, [0], 0.1, backend="jax")
    with pytest.raises(ValueError, match="Invalid value for 'excited_nodes'"):
        simulate_batch(w, lengths, [9], 0.1)
    with pytest.raises(ValueError, match="one per variant"):
        simulate_batch(w, lengths, [0, 1], 0.1, seeds=[1])
    p = JansenRitParams()
    st = network_structure(w, lengths, p)
    with pytest.raises(ValueError, match="'history' has shape"):
        BatchIntegrator(st, excited_A(6, [0], p), p, np.zeros((1, 2, 6, 6)))


@pytest.mark.tvb
def test_batched_kernels_retrace_tvb():
    """Fed TVB's random stream, the numba and torch batched kernels retrace TVB 2.10."""
    pytest.importorskip("tvb.simulator.simulator", reason="tvb-library is not installed")
    from esikit.head.anatomy import load_default_anatomy
    from esikit.simulate.nmm import TVB_STATE_RANGES

    from .test_nmm import _tvb_run

    anat = load_default_anatomy()
    w, lengths = anat.weights, anat.tract_lengths
    n_steps, excited, setting = 600, 12, 1
    ref, p = _tvb_run(w, lengths, excited, setting, n_steps)
    st = network_structure(w, lengths, p)
    n = w.shape[0]
    for backend in ("numba", "torch"):
        rng = np.random.RandomState(42)  # TVB's default noise seed
        hist = np.empty((1, st.horizon, 6, n))
        for i, (lo, hi) in enumerate(TVB_STATE_RANGES):
            hist[0, :, i] = rng.uniform(low=lo, high=hi, size=(st.horizon, n, 1))[..., 0]
        z = np.stack([rng.normal(size=(6, n, 1))[4, :, 0] for _ in range(n_steps)])[None]
        integ = BatchIntegrator(st, excited_A(n, [excited], p), p, hist, backend=backend)
        ours = integ.advance(z, record_every=1, out_dtype=np.float64)[0]
        np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-7)


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

    from .test_nmm import _tvb_run

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
