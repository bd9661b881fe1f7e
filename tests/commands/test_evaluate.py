"""``esikit evaluate`` on a checkpoint: from any folder, and clear errors on data that does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from esikit.config import default_config, validate_config
from esikit.data.toy import make_toy_dataset
from esikit.train import load_checkpoint, save_checkpoint
from esikit.commands.evaluate import main as evaluate_main
from esikit.commands.train import train


class _Args:
    def __init__(self, checkpoint, out=None):
        self.checkpoint, self.out, self.max_samples, self.test_metadata = str(checkpoint), out, 3, None


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder trained with relative paths (as configs/config.py has them)."""
    root = tmp_path / "project"
    toy = make_toy_dataset(root / "data", n_regions=12, n_channels=6, n_times=100, n_train=8, n_test=4, seed=0)
    monkeypatch.chdir(root)
    rel = {k: str(Path(toy[v]).relative_to(root)) for k, v in (
        ("TRAIN_METADATA_PATH", "train_metadata"), ("TEST_METADATA_PATH", "test_metadata"),
        ("FWD_MATRIX_PATH", "fwd_path"), ("NMM_SPIKES_DIR", "nmm_spikes_dir"))}
    cfg = default_config()
    cfg.update(rel, MODEL_KWARGS={"n_hidden": 8, "n_lstm_layers": 1}, BATCH_SIZE=4, NUM_EPOCHS=1, NUM_WORKERS=0,
               USE_AMP=False, EVALUATE=False, RUN_NAME="r", BASELINES=(), VAL_SPLIT=0.25)
    train(validate_config(cfg), show_progress=False)
    return root


def test_evaluate_from_another_folder_resolves_paths_where_training_ran(project, tmp_path, monkeypatch, capsys):
    ckpt = project / "checkpoints" / "r" / "best.pt"
    assert not Path(load_checkpoint(ckpt)["config"]["FWD_MATRIX_PATH"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluate_main(_Args(ckpt, out=str(elsewhere / "ev"))) == 0, capsys.readouterr().err
    assert json.loads((elsewhere / "ev" / "results.json").read_text())
    # The whole project moved: found beside the checkpoint's CHECKPOINT_DIR.
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    assert evaluate_main(_Args(moved / "checkpoints" / "r" / "best.pt", out=str(elsewhere / "ev2"))) == 0
    # Nowhere to be found: an error naming the file, not a traceback.
    shutil.rmtree(moved / "data" / "anatomy")
    assert evaluate_main(_Args(moved / "checkpoints" / "r" / "best.pt", out=str(elsewhere / "ev3"))) == 1
    assert "leadfield_6_12.mat" in capsys.readouterr().err


def test_evaluate_on_a_leadfield_with_other_channels_names_both_shapes(project, capsys):
    ckpt = project / "checkpoints" / "r" / "best.pt"
    state = load_checkpoint(ckpt)
    scipy.io.savemat(project / "other_fwd.mat", {"fwd": np.random.default_rng(0).standard_normal((9, 12))})
    state["config"]["FWD_MATRIX_PATH"] = "other_fwd.mat"
    save_checkpoint(state, project / "other.pt")
    assert evaluate_main(_Args(project / "other.pt")) == 1
    err = capsys.readouterr().err
    assert "the model takes 6 channels" in err and "(6, 12)" in err and "(9, 12)" in err and "other_fwd.mat" in err


def test_evaluate_refuses_a_crafted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import torch

    torch.save({"format": "esikit-checkpoint-v1", "model_state": {}, "model_config": {}, "epoch": 0,
                "config": {}, "x": Payload()}, tmp_path / "best.pt")
    assert evaluate_main(_Args(tmp_path / "best.pt")) == 1
    assert "refused" in capsys.readouterr().err and not marker.exists()


def test_evaluate_several_test_files_as_one(project, capsys):
    """``--test-metadata A B``: every sample of both files, each with its own file's labels."""
    from esikit.commands.evaluate import JoinedTestSets
    from esikit.data import SpikeEEGMetadataDataset

    ckpt = project / "checkpoints" / "r" / "best.pt"
    files = [str(project / "data" / "source" / n) for n in ("test_sample_source1.mat", "train_sample_source1.mat")]
    args = _Args(ckpt, out=str(project / "ev"))
    args.test_metadata, args.max_samples = files, None
    assert evaluate_main(args) == 0, capsys.readouterr().err
    rows = (project / "ev" / "results_samples.csv").read_text().splitlines()
    fwd = str(project / "data" / "anatomy" / "leadfield_6_12.mat")
    parts = [SpikeEEGMetadataDataset(f, fwd) for f in files]
    joined = JoinedTestSets(parts)
    assert len(joined) == 4 + 8
    # position 5 is the second file's row 1: same labels and the same synthesized sample
    a, b = joined.sample_info(5), parts[1].sample_info(1)
    assert (a["index"], a["snr_db"], a["n_sources"], a["centres"]) == (b["index"], b["snr_db"], b["n_sources"],
                                                                       b["centres"])
    assert np.array_equal(joined[5][0], parts[1][1][0])
    with pytest.raises(IndexError):
        joined.sample_info(12)
    assert len(rows) - 1 == 12  # one row per sample (the network only: no baselines in this project)
    assert "Test results on 12 samples" in capsys.readouterr().out
    # a missing second file: an error naming it, nothing evaluated
    args.test_metadata = [files[0], str(project / "missing.mat")]
    assert evaluate_main(args) == 1
    assert "missing.mat" in capsys.readouterr().err
