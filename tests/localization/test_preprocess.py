"""Signal checks, band-pass limits, event times (annotations, CSV, GFP), windows and normalization."""

from __future__ import annotations

import logging

import mne
import numpy as np
import pytest

from esikit.localization.preprocess import (
    check_band,
    check_signal,
    events_from_annotations,
    events_from_csv,
    events_from_gfp,
    extract_windows,
    normalize_windows,
    prepare,
)
from esikit.localization.recording import Montage

from .conftest import CH_NAMES, spike_recording


def test_nan_and_flat_channels_are_named_with_times():
    sf = 100.0
    data = np.random.default_rng(0).standard_normal((3, 1000))
    data[0, 200:250] = np.nan
    data[2, 500:700] = 1.5  # flat for 2 s
    with pytest.raises(ValueError) as exc:
        check_signal(data, ["A", "B", "C"], sf, source="x.edf")
    msg = str(exc.value)
    assert "x.edf" in msg and "A: NaN/inf at 2.00-2.50 s" in msg and "C: flat at 5.00-7.00 s" in msg
    assert "B:" not in msg
    check_signal(data[1:2], ["B"], sf)  # a good channel passes


def test_sampling_rate_too_low_for_band_pass():
    with pytest.raises(ValueError, match="too low for the band-pass upper edge 40"):
        check_band(64.0, 500.0, 1.0, 40.0, "low.edf")
    with pytest.raises(ValueError, match="checkpoint's sampling rate 60"):
        check_band(500.0, 60.0, 1.0, 40.0)
    with pytest.raises(ValueError, match="must be below"):
        check_band(500.0, 500.0, 40.0, 1.0)
    check_band(256.0, 500.0, 1.0, 40.0)
    check_band(64.0, 500.0, 1.0, None)


def test_prepare_references_filters_resamples(anatomy):
    rec = spike_recording(anatomy, sfreq=256.0)
    raw = rec.raw.copy().reorder_channels(list(reversed(CH_NAMES)))
    out, match = prepare(raw, Montage(CH_NAMES, None, 500.0), l_freq=1.0, h_freq=40.0)
    assert out.info["sfreq"] == 500.0 and out.ch_names == CH_NAMES
    np.testing.assert_allclose(out.get_data().mean(axis=0), 0.0, atol=1e-12)  # average reference
    assert raw.info["sfreq"] == 256.0  # the input is untouched


def test_prepare_rejects_flat_channel(anatomy):
    raw = spike_recording(anatomy).raw
    raw._data[raw.ch_names.index("Pz"), 1000:2000] = 0.0
    with pytest.raises(ValueError, match="Pz: flat at 2.00-4.00 s"):
        prepare(raw, Montage(CH_NAMES, None, 500.0))
    raw.set_annotations(raw.annotations + mne.Annotations([1.9], [2.2], ["BAD_disconnected"]))
    prepare(raw, Montage(CH_NAMES, None, 500.0))  # the flat stretch is annotated BAD_: allowed
    raw.set_annotations(None)
    raw.info["bads"] = ["Pz"]  # marked bad: interpolated, no error
    prepare(raw, Montage(CH_NAMES, None, 500.0))
    raw.info["bads"] = []
    raw._data[raw.ch_names.index("Pz"), 1000:2000] = np.nan
    with pytest.raises(ValueError, match="Pz: NaN/inf at 2.00-4.00 s"):
        prepare(raw, Montage(CH_NAMES, None, 500.0))


def test_events_from_annotations():
    raw = mne.io.RawArray(np.zeros((1, 5000)), mne.create_info(["Cz"], 500.0, "eeg"))
    raw.set_annotations(mne.Annotations([1.0, 3.0, 5.0, 7.0], [0, 0, 1.0, 0], ["spike", "BAD_muscle", "sharp", "Spike"]))
    t, lab = events_from_annotations(raw)
    np.testing.assert_allclose(t, [1.0, 5.5, 7.0])
    assert lab == ["spike", "sharp", "Spike"]
    t, lab = events_from_annotations(raw, "^spike$")
    np.testing.assert_allclose(t, [1.0, 7.0])


def test_events_from_csv(tmp_path):
    p = tmp_path / "ev.csv"
    p.write_text("label,time\nb,3.5\na,1.25\n")
    t, lab = events_from_csv(p)
    np.testing.assert_allclose(t, [1.25, 3.5])
    assert lab == ["a", "b"]
    p.write_text("2.0\n4.0\n")
    np.testing.assert_allclose(events_from_csv(p)[0], [2.0, 4.0])
    p.write_text("time\n1.0\nx\n")
    with pytest.raises(ValueError, match="row 3"):
        events_from_csv(p)
    p.write_text("when\n1.0\n")
    with pytest.raises(ValueError, match="no column 'time'"):
        events_from_csv(p)


def test_events_from_gfp_finds_spikes_with_spacing(anatomy):
    rec = spike_recording(anatomy, regions=(1, 2, 5, 9), times=(1.5, 3.0, 3.3, 6.0), snr_db=20.0, duration=8.0)
    data = rec.raw.get_data()
    data = data - data.mean(axis=0)
    t = events_from_gfp(data, 500.0, min_spacing=1.0, k=5.0)
    # 3.0 and 3.3 are closer than the spacing: one peak
    assert len(t) == 3
    np.testing.assert_allclose(t[[0, 2]], [1.5, 6.0], atol=0.01)
    assert abs(t[1] - 3.0) < 0.01 or abs(t[1] - 3.3) < 0.01
    assert len(events_from_gfp(data, 500.0, min_spacing=0.1, k=5.0, max_events=2)) == 2


def test_windows_past_the_recording_skipped_with_one_warning(caplog):
    data = np.arange(2 * 2000, dtype=float).reshape(2, 2000)
    with caplog.at_level(logging.WARNING):
        w, kept = extract_windows(data, 500.0, np.array([0.1, 1.0, 3.9, 2.0]), source="r.edf")
    assert kept.tolist() == [1, 3] and w.shape == (2, 500, 2)
    assert w[0, 0, 0] == 500 - 250 and w[1, 250, 1] == 2000 + 1000
    assert caplog.text.count("skipped") == 1 and "2 of 4 events skipped" in caplog.text
    w, kept = extract_windows(data, 500.0, np.array([1.0]), centred=False)
    assert w[0, 0, 0] == 500


def test_normalization_is_the_training_one():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 500, 7)) * 5 + 2
    w[2] = 0.0
    n = normalize_windows(w)
    # reference: SAMPLE_CONTRACT.md, step by step
    e = w[0] - w[0].mean(axis=0)
    e = e - e.mean(axis=1, keepdims=True)
    e = e / np.abs(e).max()
    np.testing.assert_allclose(n[0], e, rtol=1e-5, atol=1e-6)
    assert np.abs(n[1]).max() == pytest.approx(1.0)
    assert not np.isnan(n[2]).any() and (n[2] == 0).all()
