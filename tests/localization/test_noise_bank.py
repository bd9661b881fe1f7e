"""esikit noise-bank: spike-free segments in DeepSIF's realistic_noise.mat layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from esikit.cli import main
from esikit.localization import make_noise_bank, write_noise_bank

from .conftest import CH_NAMES, spike_recording

TARGET = list(reversed(CH_NAMES))  # the leadfield's order differs from the recording's


@pytest.fixture
def recording(anatomy):
    # marked spikes at 5, 15, 25 s; one unmarked spike at 35.5 s; 40 s of background
    rec = spike_recording(anatomy, regions=(3, 7, 10, 5), times=(5.0, 15.0, 25.0, 35.5), duration=40.0,
                          background=0.1, snr_db=10.0)
    ann = rec.raw.annotations
    rec.raw.set_annotations(ann[:3])  # the spike at 35.5 s is not marked
    return rec


def test_noise_segments_avoid_spikes(recording):
    bank = make_noise_bank(recording.raw, TARGET, event_margin=1.0, k=4.0)
    k, t, c = bank.data.shape
    assert t == 500 and c == len(TARGET) and bank.ch_names == TARGET and bank.sfreq == 500.0
    starts, stops = bank.starts, bank.starts + 1.0
    for spike in recording.times[:3]:  # no kept segment within 1 s of a marked spike
        assert not ((starts < spike + 1.0) & (stops > spike - 1.0)).any(), spike
    assert not ((starts <= 35.5) & (stops > 35.5)).any()  # the unmarked spike is caught by its GFP peak
    assert bank.rejected["near_event"] == 6 and bank.rejected["gfp_peak"] >= 1
    assert k == 40 - 6 - bank.rejected["gfp_peak"] - bank.rejected["bad_annotation"]
    # channels in the leadfield's order, microvolts, average reference
    raw = recording.raw
    i = int(round(starts[0] * 500))
    ref = raw.get_data(start=i, stop=i + 500)
    ref = ref - ref.mean(axis=0)
    for j in (0, 7):  # each output column is most like its own recording channel
        corr = [np.corrcoef(bank.data[0][:, j], r)[0, 1] for r in ref]
        assert int(np.argmax(corr)) == CH_NAMES.index(TARGET[j])
    assert 1 < np.abs(bank.data).max() < 1000  # microvolts
    np.testing.assert_allclose(bank.data.mean(axis=2), 0.0, atol=1e-9)
    np.testing.assert_allclose(bank.npower, (bank.data ** 2).sum(axis=1))


def test_bad_annotations_and_limits(recording):
    raw = recording.raw
    raw.set_annotations(raw.annotations + __import__("mne").Annotations([30.2], [2.0], ["BAD_move"]))
    bank = make_noise_bank(raw, TARGET, max_segments=5)
    assert len(bank.data) == 5 and bank.rejected["bad_annotation"] == 3
    assert not ((bank.starts >= 30.0) & (bank.starts < 33.0)).any()
    with pytest.raises(ValueError, match="no spike-free segment"):
        make_noise_bank(raw, TARGET, event_margin=100.0)


def test_written_in_deepsif_layout(tmp_path, recording):
    bank = make_noise_bank(recording.raw, TARGET)
    path = write_noise_bank(bank, tmp_path / "realistic_noise.mat")
    d = scipy.io.loadmat(path)
    assert d["data"].shape == bank.data.shape and d["npower"].shape == (len(bank.data), len(TARGET))
    assert [str(np.asarray(x).ravel()[0]) for x in d["ch_names"].ravel()] == TARGET
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_noise_bank(bank, path)


def test_noise_bank_command(tmp_path, anatomy, recording, capsys):
    import mne

    edf = tmp_path / "r.edf"
    mne.export.export_raw(edf, recording.raw, fmt="edf", verbose="error")
    out = tmp_path / "noise.mat"
    fwd = "colin27_1020:" + ",".join(TARGET)
    assert main(["noise-bank", str(edf), str(out), "--forward", fwd]) == 0
    assert "noise segments of 500 samples x 20 channels" in capsys.readouterr().out
    assert scipy.io.loadmat(out)["data"].shape[1:] == (500, 20)
    assert main(["noise-bank", str(edf), str(out), "--forward", fwd]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["noise-bank", str(edf), str(out), "--forward", "colin27_1020:A,B,C", "--overwrite"]) == 1
    assert "no channel name matches" in capsys.readouterr().err


def test_forward_file_with_channel_names(tmp_path, recording):
    from esikit.io.forward_model import save_forward_model

    fwd = np.random.default_rng(0).standard_normal((20, 40))
    save_forward_model(tmp_path / "lf.mat", fwd, TARGET)
    bank = make_noise_bank(recording.raw, tmp_path / "lf.mat")
    assert bank.ch_names == TARGET
    save_forward_model(tmp_path / "plain.mat", fwd)  # DeepSIF's plain file: no names
    with pytest.raises(ValueError, match="no channel names"):
        make_noise_bank(recording.raw, tmp_path / "plain.mat")
