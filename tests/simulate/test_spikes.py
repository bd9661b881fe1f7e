"""Tests for spike detection and clip cutting (esikit.simulate.spikes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esikit.io import load_mat_file
from esikit.simulate.spikes import (
    CLIP_LENGTH,
    ClipStream,
    find_spike_times,
    rescale_spike_channel,
    save_clip,
    select_clips,
    spike_alpha,
)


def _bump(n, t, amp, width=6.0):
    x = np.arange(n)
    return amp * np.exp(-0.5 * ((x - t) / width) ** 2)


def _traces(n, peaks, n_regions=3, base=1.0):
    """Background ``base`` mV plus Gaussian bumps: peaks = [(time, region, amplitude)]."""
    x = np.full((n, n_regions), base)
    for t, r, amp in peaks:
        x[:, r] += _bump(n, t, amp)
    return x


def test_find_spike_times_rules():
    n = 3000
    peaks = [
        (100, 0, 20.0),    # too close to the start (1-based 101 - 249 <= 0)
        (600, 0, 20.0),    # kept
        (700, 1, 7.5),     # below 8 mV: ignored entirely
        (1000, 1, 15.0),   # kept
        (1050, 2, 15.0),   # only 50 after the previous peak: dropped
        (1150, 0, 15.0),   # exactly 100 after the dropped one: dropped (needs > 100)
        (1251, 1, 15.0),   # 101 after: kept
        (n - 251, 2, 15.0),  # 1-based t = n - 250: t + 250 < n fails: dropped
    ]
    x = _traces(n, peaks)
    times, regions = find_spike_times(x)
    assert times.tolist() == [600, 1000, 1251]
    assert regions.tolist() == [0, 1, 1]
    # 1-based t = n - 251 is the last allowed
    times, _ = find_spike_times(_traces(n, [(n - 252, 2, 15.0)]))
    assert times.tolist() == [n - 252]
    # 1-based t = 250 is the first allowed
    times, _ = find_spike_times(_traces(n, [(249, 2, 15.0), (248 + 400, 1, 15.0)]))
    assert times.tolist() == [249, 648]


def test_find_spike_times_strict_and_threshold():
    x = np.zeros((1000, 2))
    x[400:403, 0] = 10.0          # plateau: no strict maximum
    x[600, 1] = 9.0               # isolated sample above threshold next to zeros
    times, regions = find_spike_times(x)
    assert times.tolist() == [600] and regions.tolist() == [1]


def test_select_clips_alignment_and_isolation():
    n = 5000
    times = np.array([600, 1499, 2200, 3050, 3400])
    regions = np.array([0, 0, 0, 1, 1])
    spike_times, starts = select_clips(times, regions, 0, n)
    # t0=600 -> 1-based 601 -> block 501..1000 -> start 500
    # t0=1499 -> 1-based 1500 = 3*500: DeepSIF's block 1501..2000 (after the peak)
    # t0=2200 -> block start 2000; window 1800..2699 holds no other peak
    assert spike_times.tolist() == [600, 1499, 2200]
    assert starts.tolist() == [500, 1500, 2000]
    for t, s in zip([600, 2200], [500, 2000]):
        assert s <= t < s + CLIP_LENGTH
    # other-region peak window: 0-based [start - 200, start + 699]
    for other, kept in [(2000 - 200, False), (2000 - 201, True), (2000 + 699, False),
                        (2000 + 700, True)]:
        st, _ = select_clips(np.array([2200, other]), np.array([0, 1]), 0, n)
        assert (st.tolist() == [2200]) == kept, other
    # a clip must fit in the recording
    st, _ = select_clips(np.array([4600]), np.array([0]), 0, 4900)
    assert st.size == 0


def test_spike_alpha_matches_hand_computation():
    rng = np.random.default_rng(0)
    n, r_count, c_count = 1500, 4, 3
    nmm = rng.normal(1.0, 0.3, (n, r_count))
    nmm[:, 2] += _bump(n, 600, 30.0) + _bump(n, 1000, 25.0)
    fwd = rng.normal(size=(c_count, r_count))
    alpha = spike_alpha(nmm, fwd, 2, np.array([600, 1000]), 15.0)
    # DeepSIF calcualate_SNR with explicit loops
    idx = [t + o for t in (600, 1000) for o in range(-99, 101)]
    sig = np.outer(nmm[:, 2], fwd[:, 2])
    sig -= sig.mean(axis=0)
    rest = [0, 1, 3]
    noise = nmm[:, rest] @ fwd[:, rest].T
    noise -= noise.mean(axis=0)
    ps = sum((sig[i] ** 2).sum() for i in idx) / len(idx)
    pn = sum((noise[i] ** 2).sum() for i in idx) / len(idx)
    assert alpha == pytest.approx(np.sqrt(10 ** 1.5 * pn / ps), rel=1e-10)
    assert np.isnan(spike_alpha(nmm, fwd, 2, np.array([], dtype=int)))


def test_rescale_spike_channel():
    n = 1500
    nmm = _traces(n, [(600, 1, 20.0)], n_regions=3, base=1.0)
    # make the spike biphasic so it has a trough after the peak
    nmm[:, 1] -= _bump(n, 600 + 90, 3.0, width=15.0)
    out = rescale_spike_channel(nmm, 1, np.array([600]), 3.0)
    np.testing.assert_array_equal(out[:, [0, 2]], nmm[:, [0, 2]])
    mean = nmm[:, 1].mean()
    ratio = (out[:, 1] - mean) / np.where(nmm[:, 1] - mean == 0, 1, nmm[:, 1] - mean)
    changed = np.flatnonzero(~np.isclose(out[:, 1], nmm[:, 1]))
    # one contiguous span around the peak, scaled by exactly alpha, inside the 500 window
    assert changed.min() >= 600 - 249 and changed.max() <= 600 + 250
    assert changed.min() < 600 < changed.max()
    np.testing.assert_allclose(ratio[changed.min():changed.max() + 1], 3.0)
    assert out[600, 1] - mean == pytest.approx(3.0 * (nmm[600, 1] - mean))
    np.testing.assert_allclose(rescale_spike_channel(nmm, 1, np.array([600]), 1.0), nmm)


def test_save_clip_atomic(tmp_path):
    clip = np.arange(500 * 4, dtype=np.float64).reshape(500, 4)
    path = save_clip(tmp_path / "nmm_3.mat", clip)
    data = load_mat_file(path)["data"]
    assert data.dtype == np.float32 and data.shape == (500, 4)
    np.testing.assert_array_equal(data, clip.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nmm_3.mat"]


def _random_recording(rng, n_regions=4):
    n = int(rng.integers(800, 5000))
    x = rng.normal(1.0, 1.0, (n, n_regions))
    for _ in range(int(rng.integers(5, 40))):
        t = int(rng.integers(0, n))
        r = 0 if rng.random() < 0.5 else int(rng.integers(0, n_regions))
        x[t, r] = rng.uniform(9.0, 20.0)
        if t + 1 < n and rng.random() < 0.3:  # plateaus are not strict maxima
            x[t + 1, r] = x[t, r]
    return x


def test_stream_rules_equal_batch_rules():
    """Fed in random pieces, the stream keeps exactly the clips of the whole-recording rules."""
    rng = np.random.default_rng(1)
    total = 0
    for _ in range(40):
        x = _random_recording(rng)
        times, regions = find_spike_times(x)
        spikes, starts = select_clips(times, regions, 0, len(x))
        stream, got, pos = ClipStream(region=0), [], 0
        whole = rng.random() < 0.25  # the "duration" mode feeds the whole recording at once
        while pos < len(x):
            m = len(x) if whole else int(rng.integers(1, 900))
            for t, block, ctx, c0 in stream.feed(x[pos:pos + m], final=pos + m >= len(x)):
                got.append((t, block))
                # the context holds the clip and the spike's rescaling window
                np.testing.assert_array_equal(ctx[block - c0:block - c0 + 500], x[block:block + 500])
            pos += m
        assert got == list(zip(spikes.tolist(), starts.tolist()))
        assert stream.n_peaks == int(np.sum(regions == 0))
        total += len(got)
        assert whole or len(stream.buf) < 3000  # bounded memory
    assert total > 20
