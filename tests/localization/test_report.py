"""The output folder, the HTML report and the esikit localize command."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
import scipy.io

from esikit.cli import main
from esikit.localization import localize
from esikit.localization.report import write_outputs

from .conftest import spike_recording


@pytest.fixture
def result(anatomy, checkpoint):
    return localize(spike_recording(anatomy).raw, checkpoint)


def test_outputs_written(tmp_path, result, anatomy):
    out = write_outputs(result, tmp_path / "loc", max_figures=2, recording="toy.edf")
    with np.load(out / "sources.npz") as z:
        assert z["sources"].shape == (3, 500, anatomy.n_regions)
        assert z["active"].shape == (3, anatomy.n_regions) and z["active"][1, 7]
        assert z["peak_region"].tolist() == [3, 7, 10]
        assert list(z["ch_names"]) == anatomy.channel_names
    all_out = scipy.io.loadmat(out / "all_out.mat")["all_out"]
    np.testing.assert_allclose(all_out, result.sources)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_events"] == 3 and summary["events"][2]["peak_region"] == 10
    assert summary["events"][2]["peak_region_centre_mm"] == pytest.approx(result.centres[10].tolist())
    assert {r["region"] for r in summary["regions"]} == {3, 7, 10}
    events = (out / "events.csv").read_text().splitlines()
    assert len(events) == 4 and events[0].startswith("index,label,time_s")
    regions = (out / "regions.csv").read_text().splitlines()
    assert len(regions) == 4
    stc = mne.read_source_estimate(out / "stc" / "mean")
    assert stc.data.shape == (len(anatomy.vertices), 500)
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["event_000_cortex.png", "event_000_eeg.png", "event_001_cortex.png", "event_001_eeg.png",
                    "region_frequency.png"]
    html = (out / "report.html").read_text()
    assert "Summary" in html and "reg7" in html and "toy.edf" in html
    assert not list(tmp_path.glob(".loc.tmp-*"))


def test_nothing_overwritten_without_overwrite(tmp_path, result):
    out = tmp_path / "loc"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_outputs(result, out)
    assert (out / "keep.txt").read_text() == "mine"
    write_outputs(result, out, overwrite=True, max_figures=0, stc="none")
    assert not (out / "keep.txt").exists() and (out / "report.html").is_file() and not (out / "stc").exists()


def test_every_event_stc(tmp_path, result):
    out = write_outputs(result, tmp_path / "loc", max_figures=0, stc="all")
    assert sorted(p.name for p in (out / "stc").glob("*-lh.stc")) == [f"event_00{k}-lh.stc" for k in range(3)]
    with pytest.raises(ValueError, match="'stc'"):
        write_outputs(result, tmp_path / "x", stc="every")


def test_localize_command(tmp_path, anatomy, checkpoint, capsys):
    rec = spike_recording(anatomy, path=tmp_path / "r.edf")
    out = tmp_path / "res"
    argv = ["localize", str(rec.path), "--checkpoint", str(checkpoint), "--out", str(out), "--max-figures", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 events localized (0 skipped)" in text and "reg7 (7): active in 1 of 3" in text
    assert (out / "report.html").is_file()
    assert main(argv) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--window", "4.5"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_events"] == 1
    assert main(argv + ["--overwrite", "--h-freq", "300"]) == 1
    assert "too low for the band-pass" in capsys.readouterr().err
