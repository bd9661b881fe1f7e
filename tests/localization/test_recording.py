"""Reading recordings and matching channels to a montage."""

from __future__ import annotations

import logging

import mne
import numpy as np
import pytest

from esikit.io import save_mat_file
from esikit.localization.recording import (
    Montage,
    canonical_channel_name,
    conform_channels,
    match_channels,
    montage_from_checkpoint,
    montage_from_spec,
    read_recording,
)

from .conftest import CH_NAMES, spike_recording


def test_canonical_names_drop_decorations_and_resolve_aliases():
    assert canonical_channel_name("EEG T3-REF") == "t7"
    assert canonical_channel_name("FP1") == "fp1"
    assert canonical_channel_name("t6") == "p8"
    assert canonical_channel_name("EEG Cz-LE") == "cz"
    assert canonical_channel_name("Cz") == "cz"


def test_match_aliases_case_and_prefixes():
    rec = ["EEG " + n.upper() + "-REF" for n in CH_NAMES]
    rec = [r.replace("T7", "T3").replace("P8", "T6") for r in rec]
    m = match_channels(rec, CH_NAMES)
    assert not m.missing and not m.extra
    assert m.source_of["T7"] == "EEG T3-REF" and m.source_of["P8"] == "EEG T6-REF"
    assert m.renamed["EEG FP1-REF"] == "Fp1"


def test_dual_names_match_either_half():
    m = match_channels(["T7/T3", "P8/T6", "Cz"], ["T7", "P8", "Cz"])
    assert m.source_of == {"T7": "T7/T3", "P8": "P8/T6", "Cz": "Cz"} and not m.extra
    m = match_channels(["T3", "Cz"], ["T7/T3", "Cz"])
    assert m.source_of["T7/T3"] == "T3"


def test_literal_name_wins_over_alias():
    m = match_channels(["T3", "T7", "Cz"], ["T7", "Cz"])
    assert m.source_of["T7"] == "T7" and m.extra == ["T3"]


def test_no_common_channel_lists_both_sets():
    with pytest.raises(ValueError) as exc:
        match_channels(["A", "B"], ["Fp1", "Fp2"], source="rec.edf")
    msg = str(exc.value)
    assert "rec.edf" in msg and "A, B" in msg and "Fp1, Fp2" in msg


def test_too_many_missing_lists_them():
    rec = CH_NAMES[3:]  # 3 of 20 missing: more than 10 %
    with pytest.raises(ValueError) as exc:
        match_channels(rec, CH_NAMES)
    assert "Fp1, Fp2, F7" in str(exc.value) and "3 of" in str(exc.value)
    assert match_channels(rec, CH_NAMES, max_missing=0.2).missing == ["Fp1", "Fp2", "F7"]


def test_bad_channels_count_as_missing():
    m = match_channels(CH_NAMES, CH_NAMES, bads=["Cz"])
    assert m.missing == ["Cz"] and m.bad == ["Cz"] and "Cz" not in m.source_of


def _conform(raw, **kw):
    mont = Montage(CH_NAMES, None, raw.info["sfreq"], "toy")
    return conform_channels(raw, mont, **kw)


def test_missing_channel_interpolated_by_splines(anatomy, caplog):
    raw = spike_recording(anatomy).raw
    truth = raw.get_data(picks="Cz")[0]
    raw2 = raw.copy().drop_channels(["Cz"]).reorder_channels(list(reversed([c for c in CH_NAMES if c != "Cz"])))
    with caplog.at_level(logging.WARNING):
        out, m = _conform(raw2)
    assert out.ch_names == CH_NAMES and m.missing == ["Cz"] and out.info["bads"] == []
    assert "interpolating 1" in caplog.text and "Cz" in caplog.text
    assert np.corrcoef(out.get_data(picks="Cz")[0], truth)[0, 1] > 0.8
    # the other channels are untouched, in the montage's order
    np.testing.assert_allclose(out.get_data(picks="O1"), raw.get_data(picks="O1"))


def test_bad_channel_in_file_is_interpolated(anatomy):
    raw = spike_recording(anatomy).raw
    truth = raw.get_data(picks="C3")[0]
    raw._data[raw.ch_names.index("C3")] = np.random.default_rng(0).standard_normal(len(raw.times)) * 1e-3
    raw.info["bads"] = ["C3"]
    out, m = _conform(raw)
    assert m.bad == ["C3"]
    assert np.corrcoef(out.get_data(picks="C3")[0], truth)[0, 1] > 0.8


def test_extra_channels_dropped_and_listed(anatomy, caplog):
    raw = spike_recording(anatomy).raw
    extra = mne.io.RawArray(np.zeros((2, len(raw.times))), mne.create_info(["EKG", "EMG1"], raw.info["sfreq"], "misc"))
    raw.add_channels([extra], force_update_info=True)
    with caplog.at_level(logging.WARNING):
        out, m = _conform(raw)
    assert m.extra == ["EKG", "EMG1"] and out.ch_names == CH_NAMES
    assert "EKG, EMG1" in caplog.text


def test_checkpoint_without_montage_says_how_to_attach():
    with pytest.raises(ValueError, match="--montage"):
        montage_from_checkpoint({"config": {}}, "ck.pt")
    m = montage_from_checkpoint({"montage": {"ch_names": ["Fp1", "Fp2"], "ch_pos": None, "sfreq": 250}}, "ck.pt")
    assert m.ch_names == ["Fp1", "Fp2"] and m.sfreq == 250
    with pytest.raises(ValueError, match="takes 3 input channels"):
        montage_from_checkpoint({"montage": {"ch_names": ["Fp1", "Fp2"]}}, "ck.pt", n_channels=3)


def test_montage_spec_name_and_channels(tmp_path):
    m = montage_from_spec("standard_1020:Fp1,Fp2,Cz", n_channels=3)
    assert m.ch_names == ["Fp1", "Fp2", "Cz"] and np.isfinite(m.ch_pos).all()
    names = tmp_path / "names.txt"
    names.write_text("Fp1\nCz\n")
    assert montage_from_spec(f"standard_1020:{names}").ch_names == ["Fp1", "Cz"]
    with pytest.raises(ValueError, match="not an MNE montage"):
        montage_from_spec("nosuchmontage:Fp1")
    with pytest.raises(ValueError, match="network takes 4"):
        montage_from_spec(["Fp1"], n_channels=4)


def test_read_fif_and_edf(tmp_path, anatomy):
    rec = spike_recording(anatomy, path=tmp_path / "r.edf")
    raw = read_recording(rec.path)
    assert raw.ch_names == CH_NAMES
    np.testing.assert_allclose(raw.annotations.onset, rec.times, atol=1e-3)
    rec.raw.save(tmp_path / "r_raw.fif")
    assert read_recording(tmp_path / "r_raw.fif").ch_names == CH_NAMES
    with pytest.raises(FileNotFoundError):
        read_recording(tmp_path / "none.edf")


def test_read_deepsif_mat_windows(tmp_path):
    mont = Montage(CH_NAMES, None, 500.0)
    data = np.random.default_rng(0).standard_normal((3, 500, len(CH_NAMES)))
    save_mat_file(tmp_path / "data1.mat", {"data": data})
    ep = read_recording(tmp_path / "data1.mat", mont)
    assert isinstance(ep, mne.BaseEpochs) and ep.get_data().shape == (3, len(CH_NAMES), 500)
    np.testing.assert_allclose(ep.get_data()[1].T, data[1])
    save_mat_file(tmp_path / "bad.mat", {"eeg": data})
    with pytest.raises(ValueError, match="no field 'data'"):
        read_recording(tmp_path / "bad.mat", mont)
    save_mat_file(tmp_path / "bad2.mat", {"data": data[:, :, :5]})
    with pytest.raises(ValueError, match="C=20"):
        read_recording(tmp_path / "bad2.mat", mont)
