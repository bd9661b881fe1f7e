"""``python test_metadata_loader.py``: passes on a good dataset, explains every broken one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from esikit.commands.check import main
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


def _reference_clip(toy, centre=None, k=None, sample=0):
    """Make sample ``sample``'s first source use clip a{centre}/nmm_{k}; return its path and metadata."""
    raw = {key: v.copy() for key, v in toy["train_meta"].items()}
    if centre is not None:
        raw["selected_region"][sample, 0, :] = 15213
        raw["selected_region"][sample, 0, 0] = centre
        raw["mag_change"][sample, 0, 0] = 1.0
        raw["random_samples"][sample, 0] = k
    c, k = int(raw["selected_region"][sample, 0, 0]), int(raw["random_samples"][sample, 0])
    path = toy["root"] / "source" / "referenced.mat"
    save_mat_file(path, raw)
    return toy["nmm_spikes_dir"] / f"a{c}" / f"nmm_{k}.mat", path, c, k


def test_unreadable_clips_fail_the_check_unless_allowed(toy, capsys):
    clip, meta, _, _ = _reference_clip(toy)
    clip.write_bytes(b"not a mat file")
    args = _args(toy, TRAIN_METADATA_PATH=meta, CACHE_DIR=toy["root"] / "cache")
    assert main(args) != 0
    out = capsys.readouterr().out
    assert "missing or unreadable clip(s)" in out and clip.name in out and "--allow-missing-clips" in out
    assert "All checks passed" not in out
    assert main([*args, "--allow-missing-clips"]) == 0
    out = capsys.readouterr().out
    assert "allowed by --allow-missing-clips" in out and "All checks passed" in out
    from esikit.cli import main as esikit_main

    assert esikit_main(["check", "--allow-missing-clips", *args]) == 0  # the flag before the overrides too
    assert esikit_main(["check", *args]) != 0


def test_first_clip_defect_is_a_missing_clip_like_any_other(toy, capsys):
    # clip 0 (a0/nmm_1.mat) with 19 regions: a bad clip, named, not "the forward matrix has 20"
    clip, meta, c, k = _reference_clip(toy, centre=0, k=1)
    save_mat_file(clip, {"data": toy["clips"][(0, 1)][:, :19]})
    args = _args(toy, TRAIN_METADATA_PATH=meta, CACHE_DIR=toy["root"] / "cache")
    assert main(args) != 0
    out = capsys.readouterr().out
    assert "forward matrix: 8 channels x 20 regions" in out
    assert "a0/nmm_1.mat: clip has shape (500, 19), expected (500, 20)" in out and "missing or unreadable" in out
    assert "must match" not in out and "same dataset" not in out
    assert main([*args, "--allow-missing-clips"]) == 0


def test_centre_waveform_never_above_zero_fails(toy, capsys):
    clip, meta, c, k = _reference_clip(toy)
    data = toy["clips"][(c, k)].copy()
    data[:, c] = -np.abs(data[:, c]) - 1.0
    save_mat_file(clip, {"data": data})
    assert main(_args(toy, TRAIN_METADATA_PATH=meta, CACHE_DIR=toy["root"] / "cache")) != 0
    out = capsys.readouterr().out
    assert f"{clip}: the waveform of centre region {c} never rises above zero" in out and "--verify-clips" in out


def test_leadfield_with_more_channels_than_regions(tmp_path, capsys):
    toy = make_toy_dataset(tmp_path / "tall", n_regions=20, n_channels=24, n_train=12, n_test=4, seed=4)
    assert main(_args(toy, CACHE_DIR=tmp_path / "cache")) == 0
    out = capsys.readouterr().out
    assert "forward matrix: 24 channels x 20 regions (oriented by the clips' 20 regions)" in out


@pytest.mark.parametrize("kind", ["zeros", "constant column", "wrong size"])
def test_unusable_leadfield_is_refused(toy, capsys, kind):
    fwd = {"zeros": np.zeros((8, 20)), "wrong size": toy["fwd"][:, :19]}.get(kind)
    if fwd is None:
        fwd = toy["fwd"].copy()
        fwd[:, 6] = 0.0
    path = toy["root"] / "anatomy" / "lf.mat"
    save_mat_file(path, {"fwd": fwd})
    assert main(_args(toy, FWD_MATRIX_PATH=path)) != 0
    out = capsys.readouterr().out
    needle = {"zeros": "is all zeros", "constant column": "(regions 6, 0-based)",
              "wrong size": "has shape (8, 19), expected (C, R) (or (R, C)) with R=20 regions"}[kind]
    assert needle in out and "R=20 like the clips" in out
    assert "All checks passed" not in out


def test_one_based_metadata_is_named(toy, capsys):
    raw = {k: v.copy() for k, v in toy["train_meta"].items()}
    sel = raw["selected_region"]
    sel[sel < 20] += 1
    path = toy["root"] / "source" / "one_based.mat"
    save_mat_file(path, raw)
    assert main(_args(toy, TRAIN_METADATA_PATH=path)) != 0
    assert "labels look 1-based" in capsys.readouterr().out


def test_auto_batch_size_is_checked_with_one_cpu_batch(toy, capsys):
    from esikit.train.speed import CPU_AUTO_BATCH_SIZE

    assert main(_args(toy, BATCH_SIZE="auto")) == 0
    assert f"one training batch: eeg ({CPU_AUTO_BATCH_SIZE}, 500, 8)" in capsys.readouterr().out
