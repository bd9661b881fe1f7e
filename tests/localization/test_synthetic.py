"""Synthetic spike recordings (the demo's EDF) and the demo's localization step."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from esikit.io import save_mat_file
from esikit.localization.demo import demo_localization
from esikit.localization.synthetic import clips_from_folder, make_spike_recording, spike_waveform

from .conftest import CH_NAMES


def test_spike_recording_ground_truth_in_edf(tmp_path, anatomy):
    rec = make_spike_recording(anatomy.fwd, CH_NAMES, [2, 9], [1.5, 4.0], duration=6.0, snr_db=None,
                               background=0.0, peak_uv=80.0, path=tmp_path / "s.edf")
    raw = mne.io.read_raw_edf(rec.path, preload=True, verbose="error")
    assert raw.ch_names == CH_NAMES and raw.info["sfreq"] == 500.0 and raw.times[-1] == pytest.approx(6.0, abs=0.01)
    np.testing.assert_allclose(raw.annotations.onset, [1.5, 4.0], atol=1e-3)
    assert list(raw.annotations.description) == ["spike", "spike"]
    data = raw.get_data()
    assert np.abs(data).max() == pytest.approx(80e-6, rel=0.01)
    # the spike's topography is the spiking region's leadfield column
    topo = data[:, int(4.0 * 500)]
    assert np.corrcoef(topo, anatomy.fwd[:, 9])[0, 1] > 0.999
    assert int(np.argmax(spike_waveform())) == 250


def test_spike_recording_checks_input(anatomy):
    with pytest.raises(ValueError, match="regions must lie in"):
        make_spike_recording(anatomy.fwd, CH_NAMES, [99], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        make_spike_recording(anatomy.fwd, CH_NAMES, [1, 2], [1.0])


def _toy_clips(folder, anat, regions):
    from esikit.data.toy import toy_clip

    rng = np.random.default_rng(0)
    for r in regions:
        (folder / f"a{r}").mkdir(parents=True)
        save_mat_file(folder / f"a{r}" / "nmm_1.mat", {"data": toy_clip(rng, 500, anat.n_regions, r)})


def test_clips_place_their_peak_at_the_spike_time(tmp_path, anatomy):
    _toy_clips(tmp_path / "nmm", anatomy, [4])
    clips = clips_from_folder(tmp_path / "nmm", [4])
    rec = make_spike_recording(anatomy.fwd, CH_NAMES, [4], [2.0], duration=4.0, clips=clips, snr_db=None,
                               background=0.0)
    gfp = rec.raw.get_data().std(axis=0)
    assert abs(int(np.argmax(gfp)) - 1000) <= 2
    with pytest.raises(FileNotFoundError, match="a5"):
        clips_from_folder(tmp_path / "nmm", [5])


def test_demo_localization_reports_truth_against_found(tmp_path, anatomy, checkpoint, capsys):
    regions = [1, 4, 6, 9]
    _toy_clips(tmp_path / "nmm", anatomy, regions)
    s = demo_localization(checkpoint, tmp_path / "nmm", tmp_path / "demo", n_spikes=4, snr_db=30.0,
                           max_figures=1)
    assert sorted(r["true"] for r in s["rows"]) == regions
    assert s["n_exact"] == 4 and s["median_distance_mm"] == 0.0
    assert (tmp_path / "demo" / "spikes.edf").is_file() and (s["out"] / "report.html").is_file()
    text = capsys.readouterr().out
    assert "peak region exact for 4 of 4 spikes" in text
