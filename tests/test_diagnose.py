"""``python test_metadata_loader.py``: passes on a good dataset, explains every broken one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from esikit.diagnose import main
from esikit.io import save_mat_file
from esikit.data.toy import make_toy_dataset


@pytest.fixture()
def toy(tmp_path):
    return make_toy_dataset(tmp_path / "ds", n_regions=20, n_channels=8, n_train=24, n_test=6, seed=2)


def _args(toy, **over):
    cfg = {
        "TRAIN_METADATA_PATH": toy["train_metadata"],
        "TEST_METADATA_PATH": toy["test_metadata"],
        "FWD_MATRIX_PATH": toy["fwd_path"],
        "NMM_SPIKES_DIR": toy["nmm_spikes_dir"],
        "BATCH_SIZE": 4,
    }
    cfg.update(over)
    return [f"{k}={v}" for k, v in cfg.items()]


def test_script_passes_on_a_good_dataset(toy, repo_root):
    out = subprocess.run([sys.executable, "test_metadata_loader.py", *_args(toy)], cwd=repo_root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for needle in ("forward matrix: 8 channels x 20 regions", "24 samples", "sources per sample",
                   "patch size", "SNR levels", "ms per sample", "one training batch: eeg (4, 500, 8)",
                   "All checks passed"):
        assert needle in out.stdout, needle


def test_wrong_path(toy, capsys):
    assert main(_args(toy, TRAIN_METADATA_PATH="/nowhere/train.mat")) != 0
    out = capsys.readouterr().out
    assert "TRAIN_METADATA_PATH: /nowhere/train.mat not found" in out and "fix:" in out


def test_empty_nmm_spikes(toy, capsys):
    empty = toy["root"] / "empty_spikes"
    empty.mkdir()
    assert main(_args(toy, NMM_SPIKES_DIR=empty)) != 0
    out = capsys.readouterr().out
    assert f"No mat files found in {empty}" in out and "NMM_SPIKES_DIR" in out


def test_forward_without_known_key(toy, capsys):
    path = toy["root"] / "anatomy" / "gain.mat"
    save_mat_file(path, {"G": toy["fwd"], "chan": np.arange(8.0)})
    assert main(_args(toy, FWD_MATRIX_PATH=path)) != 0
    out = capsys.readouterr().out
    assert f"Could not find forward matrix in file {path}: keys are ['G', 'chan']; expected one of fwd, forward, leadfield, L" in out


def test_metadata_with_bad_field(toy, capsys):
    raw = {k: v.copy() for k, v in toy["train_meta"].items()}
    raw["nmm_idx"] = raw["nmm_idx"][:3]
    raw["current_snr"][2] = np.nan
    path = toy["root"] / "source" / "bad.mat"
    save_mat_file(path, raw)
    assert main(_args(toy, TRAIN_METADATA_PATH=path)) != 0
    out = capsys.readouterr().out
    assert "field 'nmm_idx' has shape (3, 2), expected (N, S) with N=24, S=2" in out
    assert "field 'current_snr'" in out  # every problem, in one run


def test_bad_config_value_fails_before_data(toy, capsys):
    assert main(_args(toy, BATCH_SIZE=0, MISSING_CLIPS="skip")) == 2
    out = capsys.readouterr().out
    assert "'BATCH_SIZE'" in out and "'MISSING_CLIPS'" in out
