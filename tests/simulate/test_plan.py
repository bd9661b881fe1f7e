"""The harvest plan's expected cost per (region, setting), against a direct simulation."""

import numpy as np
import pytest

from esikit.simulate.plan import expected_variant_cost


def _simulate_variants(rate, share, chunk_s, max_chunks, discard_s, n, seed=0):
    """Draw spike arrivals and run the harvest's stopping rule chunk by chunk."""
    rng = np.random.default_rng(seed)
    # enough arrivals to pass the cap in (almost) every draw
    n_arr = int(rate * max_chunks * chunk_s * 3 + 20)
    times = discard_s + np.cumsum(rng.exponential(1.0 / rate, (n, n_arr)), axis=1)
    simulated = np.full(n, max_chunks * chunk_s)
    clips = np.zeros(n)
    running = np.ones(n, bool)
    for j in range(1, max_chunks + 1):
        got = (times <= j * chunk_s).sum(axis=1)
        stop = running & ((got >= share) | (j == max_chunks))
        simulated[stop] = j * chunk_s
        clips[stop] = np.minimum(share, got[stop])
        running &= ~stop
    return simulated, clips


@pytest.mark.parametrize("rate,share,chunk_s,max_chunks", [(0.091, 1, 5.0, 6), (0.05, 2, 2.0, 20),
                                                            (0.4, 3, 5.0, 4)])
def test_expected_variant_cost_matches_simulation(rate, share, chunk_s, max_chunks):
    sim, clips = _simulate_variants(rate, share, chunk_s, max_chunks, 0.5, 20000)
    e_sim, e_clips, p_cap = expected_variant_cost(rate, share, chunk_s, max_chunks, discard_s=0.5)
    assert e_sim == pytest.approx(sim.mean(), rel=0.02)
    assert e_clips == pytest.approx(clips.mean(), rel=0.02)
    capped = (clips < share).mean()
    assert p_cap == pytest.approx(capped, abs=0.01)


def test_whole_chunks_cost_more_than_the_inverted_rate():
    # the old estimate (share / rate + discard) missed the end of the last chunk
    e_sim, _, _ = expected_variant_cost(0.091, 1, 5.0, 6)
    assert e_sim > 12.5
    assert expected_variant_cost(0.091, 1, 0.002, 15000)[0] == pytest.approx(
        (1 - np.exp(-0.091 * 29.5)) / 0.091 + 0.5, rel=0.01)
    # no spikes at all: every chunk up to the cap, no clips
    assert expected_variant_cost(0.0, 1, 5.0, 6) == (30.0, 0.0, 1.0)
