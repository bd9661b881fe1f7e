"""Smoke tests of the dataset pipeline and the ``esikit simulate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esikit.io import load_mat_file
from esikit.commands.simulate import config_lines, main, parse_index_list
from esikit.simulate.pipeline import make_dataset

REGIONS = [10, 48, 60]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "ds"
    summary = make_dataset(out, regions=REGIONS, duration_s=8.0, n_workers=2, seed=0,
                           n_train=40, n_test=8, progress=False)
    return out, summary


def test_layout_and_summary(small_dataset):
    out, summary = small_dataset
    assert summary["status"] == "complete"
    assert not (out / ".simulate_config.json").exists()  # only while a run is in progress
    assert (out / "anatomy" / "anatomy.npz").exists()
    fwd = load_mat_file(out / "anatomy" / "leadfield_63_76.mat")["fwd"]
    assert fwd.shape == (63, 76)
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk["n_clips"] == summary["n_clips"] > 0
    assert on_disk["config"]["regions"] == REGIONS
    assert on_disk["simulated_s"] == pytest.approx(3 * 3 * 8.0)
    for r in REGIONS:
        n = on_disk["clips_per_region"][str(r)]
        files = sorted((out / "source" / "nmm_spikes" / f"a{r}").glob("nmm_*.mat"))
        assert len(files) == n
        assert [int(f.stem.split("_")[1]) for f in files] == sorted(range(1, n + 1))
    assert set(on_disk["regions_without_clips"]) == {
        r for r in REGIONS if on_disk["clips_per_region"][str(r)] == 0}
    train = load_mat_file(out / "source" / "train_sample_source1.mat")
    assert train["selected_region"].shape[0] == 40
    test = load_mat_file(out / "source" / "test_sample_source1.mat")
    assert test["selected_region"].shape[0] == 8
    # every centre used has clips
    centres = np.unique(train["selected_region"][:, :, 0])
    with_clips = {r for r in REGIONS if on_disk["clips_per_region"][str(r)] > 0}
    assert set(centres[centres != 15213].astype(int)) <= with_clips


#: sha256 (first 16 hex digits) of every clip's ``data`` of the small dataset (2 Dask worker
#: processes), recorded with the per-region driver esikit had before issue 11: the clips of
#: ``--duration`` must not change when the code that makes them does.
SMALL_DATASET_CLIPS = {
    "a10/nmm_1.mat": "e6d9d78d2b498a31", "a10/nmm_2.mat": "56b3a51fc4958f16",
    "a48/nmm_1.mat": "29af7dc815044544", "a48/nmm_2.mat": "96851d99e90e703b",
    "a48/nmm_3.mat": "23536c2e7ae1d504", "a60/nmm_1.mat": "2ffd89314ab3086b",
}


def test_clips_bit_identical_to_recorded(small_dataset):
    from tests.simulate.test_distributed import clip_fingerprints

    out, summary = small_dataset
    assert clip_fingerprints(out / "source" / "nmm_spikes") == SMALL_DATASET_CLIPS
    spikes = summary["spikes"]
    assert spikes["peaks_per_region_and_setting"] == {"10": [1, 0, 1], "48": [1, 0, 2], "60": [1, 0, 0]}
    alpha = spikes["alpha_per_region_and_setting"]
    assert alpha["48"][1] is None and alpha["48"][2] == pytest.approx(14.163165703097444, rel=1e-12)


def test_loads_through_dataset(small_dataset):
    data = pytest.importorskip("esikit.data", reason="esikit.data (the lead's package) not present")
    out, summary = small_dataset
    ds = data.SpikeEEGMetadataDataset(out / "source" / "train_sample_source1.mat",
                                      out / "anatomy" / "leadfield_63_76.mat",
                                      nmm_spikes_dir=out / "source" / "nmm_spikes",
                                      missing_clips="error")
    eeg, source = ds[0]
    assert tuple(eeg.shape) == (500, 63) and tuple(source.shape) == (500, 76)
    assert np.isfinite(eeg.numpy()).all() and source.numpy().max() > 0


def test_reuse_and_config_mismatch(small_dataset):
    out, summary = small_dataset
    before = (out / "dataset.json").stat().st_mtime_ns
    again = make_dataset(out, regions=REGIONS, duration_s=8.0, n_workers=1, seed=0,
                         n_train=40, n_test=8, progress=False)
    assert again == json.loads((out / "dataset.json").read_text())
    assert (out / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="another configuration"):
        make_dataset(out, regions=REGIONS, duration_s=9.0, n_workers=1, seed=0,
                     n_train=40, n_test=8, progress=False)


def test_cli_prints_config_lines(small_dataset, capsys):
    out, summary = small_dataset
    code = main(["simulate", str(out), "--regions", "10,48,60", "--duration", "8", "--workers", "1",
                 "--n-train", "40", "--n-test", "8", "--seed", "0", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    for line in config_lines(summary):
        assert line in text
    assert "FWD_MATRIX_PATH" in text and "leadfield_63_76.mat" in text


def test_parse_index_list():
    assert parse_index_list("all") is None
    assert parse_index_list("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="Invalid value for 'regions'"):
        parse_index_list("3-x")


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    """A run that dies after its first region leaves no dataset.json; a rerun finishes it."""
    import esikit.simulate.pipeline as pipeline

    out = tmp_path / "ds"
    kw = dict(regions=[48], duration_s=6.0, settings=(2,), n_workers=1, seed=3,
              n_train=10, n_test=4, progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("esikit.simulate.metadata.make_metadata_files", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        pipeline.make_dataset(out, **kw)
    assert not (out / "dataset.json").exists()
    assert (out / ".simulate_config.json").exists()
    assert (out / "source" / "nmm_spikes" / "a48" / ".done").exists()
    with pytest.raises(ValueError, match="another configuration"):
        pipeline.make_dataset(out, **{**kw, "seed": 4})
    monkeypatch.undo()
    summary = pipeline.make_dataset(out, **kw)
    assert summary["status"] == "complete" and (out / "dataset.json").exists()
    assert summary["simulation_wall_s"] == 0.0  # the region was not simulated again
