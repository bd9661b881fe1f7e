"""esikit.localize: windows, the network, regions, SourceEstimates."""

from __future__ import annotations

import logging

import mne
import numpy as np
import pytest

import esikit
from esikit.io import save_mat_file
from esikit.localization import localize
from esikit.models import build_model

from .conftest import CH_NAMES, make_checkpoint, spike_recording


def test_known_spikes_land_in_their_regions(tmp_path, anatomy, checkpoint):
    """Noiseless toy case: an exact linear inverse through the whole pipeline (EDF at 256 Hz)."""
    rec = spike_recording(anatomy, regions=(3, 7, 10, 0), times=(2.0, 5.0, 8.0, 11.0), sfreq=256.0,
                          path=tmp_path / "r.edf")
    res = localize(rec.path, checkpoint)
    assert res.n_events == 4 and res.sfreq == 500.0 and res.sources.shape == (4, 500, anatomy.n_regions)
    assert res.peak_region.tolist() == [3, 7, 10, 0]
    assert [a.tolist() for a in res.active] == [[3], [7], [10], [0]]
    np.testing.assert_allclose(res.peak_time, rec.times, atol=0.01)
    np.testing.assert_allclose(res.window_starts, rec.times - 0.5, atol=1e-9)
    assert res.region_labels[3] == "reg3" and res.centres.shape == (anatomy.n_regions, 3)
    assert res.activation_counts()[[0, 3, 7, 10]].tolist() == [1, 1, 1, 1]
    s = res.summary()
    assert s["events"][1]["peak_region_name"] == "reg7" and s["events"][1]["label"] == "spike"


def test_package_exports_localize():
    assert esikit.localize is localize


def test_channel_mismatch_and_missing_montage(tmp_path, anatomy, checkpoint):
    raw = spike_recording(anatomy).raw
    raw.rename_channels({c: f"X{i}" for i, c in enumerate(CH_NAMES)})
    with pytest.raises(ValueError, match="no channel name matches") as exc:
        localize(raw, checkpoint)
    assert "X0" in str(exc.value) and "Fp1" in str(exc.value)
    ck = make_checkpoint(tmp_path / "nomont" / "best.pt", anatomy, montage=False)
    raw = spike_recording(anatomy).raw
    with pytest.raises(ValueError, match="--montage"):
        localize(raw, ck)
    res = localize(raw, ck, montage="colin27_1020:" + ",".join(CH_NAMES))
    assert res.peak_region.tolist() == [3, 7, 10]


def test_interpolated_channel_still_localizes(anatomy, checkpoint):
    raw = spike_recording(anatomy).raw.drop_channels(["C4"])
    res = localize(raw, checkpoint)
    assert res.match.missing == ["C4"] and res.peak_region.tolist() == [3, 7, 10]


def test_event_sources(tmp_path, anatomy, checkpoint, caplog):
    raw = spike_recording(anatomy, snr_db=30.0).raw
    csv = tmp_path / "ev.csv"
    csv.write_text("time,label\n5.0,a\n9.8,late\n2.0,b\n")
    with caplog.at_level(logging.WARNING):
        res = localize(raw, checkpoint, events=csv)
    assert res.n_events == 2 and res.n_skipped == 1 and res.labels == ["b", "a"]
    assert "1 of 3 events skipped" in caplog.text
    res = localize(raw, checkpoint, window=4.5)
    assert res.n_events == 1 and res.window_starts[0] == 4.5 and res.peak_region[0] == 7
    res = localize(raw, checkpoint, events="gfp")
    np.testing.assert_allclose(res.event_times, [2.0, 5.0, 8.0], atol=0.01)
    assert res.labels == ["gfp"] * 3
    raw.set_annotations(None)  # no annotations: GFP peaks by default
    assert localize(raw, checkpoint).n_events == 3
    res = localize(raw, checkpoint, events=[5.0])
    assert res.peak_region.tolist() == [7]
    with pytest.raises(ValueError, match="every event's window"):
        localize(raw, checkpoint, events=[0.1])
    with pytest.raises(ValueError, match="no annotations;"):
        localize(raw, checkpoint, events="annotations")


def test_low_rate_recording_is_an_error(anatomy, checkpoint):
    raw = spike_recording(anatomy, sfreq=64.0).raw
    with pytest.raises(ValueError, match="too low for the band-pass"):
        localize(raw, checkpoint)


def test_epochs_evoked_and_mat_windows(tmp_path, anatomy, checkpoint):
    raw = spike_recording(anatomy).raw
    events = mne.events_from_annotations(raw, verbose="error")[0]
    ep = mne.Epochs(raw, events, tmin=-0.6, tmax=0.6, baseline=None, preload=True, verbose="error")
    res = localize(ep, checkpoint)
    assert res.peak_region.tolist() == [3, 7, 10]
    res = localize(ep[1].average(), checkpoint)
    assert res.peak_region.tolist() == [7]
    # DeepSIF's data*.mat windows: T x C in the leadfield's order
    d = raw.get_data().T
    win = np.stack([d[int(t * 500) - 250:int(t * 500) + 250] for t in (2.0, 8.0)])
    save_mat_file(tmp_path / "data1.mat", {"data": win})
    res = localize(tmp_path / "data1.mat", checkpoint)
    assert res.peak_region.tolist() == [3, 10]


def test_registry_network_runs(tmp_path, anatomy):
    net = build_model("deepsif", anatomy.n_channels, anatomy.n_regions)
    ck = make_checkpoint(tmp_path / "ds" / "best.pt", anatomy, model=net)
    res = localize(spike_recording(anatomy).raw, ck)
    assert res.sources.shape == (3, 500, anatomy.n_regions) and np.isfinite(res.sources).all()


def test_source_estimate_on_the_cortex(tmp_path, anatomy, checkpoint):
    res = localize(spike_recording(anatomy).raw, checkpoint)
    stc = res.to_stc(1)
    assert stc.data.shape == (len(anatomy.vertices), 500)
    assert stc.tmin == pytest.approx(4.5)
    # every vertex carries its region's time course
    v = np.flatnonzero(anatomy.vertex_region == 7)[0]
    row = np.flatnonzero(np.concatenate(stc.vertices) == v)
    assert len(row) == 1 and np.allclose(stc.data[row[0]], res.sources[1][:, 7])
    stc.save(tmp_path / "ev1", overwrite=True, verbose="error")
    back = mne.read_source_estimate(tmp_path / "ev1")
    np.testing.assert_allclose(back.data, stc.data, rtol=1e-5, atol=1e-6)
    assert res.to_stc().data.shape == stc.data.shape


def test_active_regions_follow_the_checkpoint_rule():
    from esikit.localization.run import active_regions, region_rule

    est = np.zeros((500, 6))
    est[200:260, 1] = 1.0
    est[200:260, 4] = -2.0  # DeepSIF's rule counts only positive output
    assert region_rule({}) == "deepsif"
    assert active_regions(est, {}).tolist() == [1]
    assert active_regions(est, {"REGION_RULE": "normalized"}).tolist() == [1, 4]
    assert active_regions(est, {"REGION_RULE": "normalized", "MIN_ACTIVE_SAMPLES": 100}).tolist() == []
    with pytest.raises(ValueError, match="'rule'"):
        region_rule({"REGION_RULE": "otsu2"})
