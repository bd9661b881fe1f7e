"""Training: loss goes down, resume is exact, NaN stops safely, bad config fails early."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from esikit.config import ConfigError, default_config, validate_config
from esikit.data.toy import make_toy_dataset
from esikit.train import NonFiniteLossError, load_checkpoint
from esikit.train.cli import build_loaders, train
from esikit.train.trainer import Trainer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_regions=16, n_channels=8, n_times=100, n_train=24,
                            n_test=6, max_patch=4, seed=1)


def _cfg(toy, tmp_path, **over):
    cfg = default_config()
    cfg.update(
        TRAIN_METADATA_PATH=str(toy["train_metadata"]), TEST_METADATA_PATH=str(toy["test_metadata"]),
        FWD_MATRIX_PATH=str(toy["fwd_path"]), NMM_SPIKES_DIR=str(toy["nmm_spikes_dir"]),
        MODEL="deepsif", MODEL_KWARGS={"n_hidden": 16, "n_lstm_layers": 1}, BATCH_SIZE=4, NUM_EPOCHS=2,
        LEARNING_RATE=3e-3, NUM_WORKERS=0, USE_AMP=False, VAL_SPLIT=0.25, EVALUATE=False,
        LOG_DIR=str(tmp_path / "logs"), CHECKPOINT_DIR=str(tmp_path / "ckpt"), RUN_NAME="t",
    )
    cfg.update(over)
    return validate_config(cfg)


def _trainer(cfg):
    train_loader, val_loader, _, info = build_loaders(cfg)
    run = f"{cfg['CHECKPOINT_DIR']}/{cfg['RUN_NAME']}"
    return Trainer(cfg, train_loader, val_loader, info, run, f"{cfg['LOG_DIR']}/{cfg['RUN_NAME']}", show_progress=False)


def test_training_reduces_loss_and_writes_everything(toy, tmp_path):
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=4)
    result = train(cfg, show_progress=False)
    hist = result["state"].history
    assert len(hist["train_loss"]) == 4
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert all(0.0 <= f <= 1.0 for f in hist["data_wait_fraction"])
    run = tmp_path / "ckpt" / "t"
    for name in ("last.pt", "best.pt", "history.json"):
        assert (run / name).is_file()
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 4 and state["model_config"]["name"] == "deepsif"
    assert state["config"]["BATCH_SIZE"] == 4 and state["data"]["n_regions"] == 16
    for key in ("optimizer_state", "scaler_state", "rng_states"):
        assert key in state
    assert list((tmp_path / "logs" / "t").glob("events.out.tfevents*"))
    assert json.loads((run / "history.json").read_text())["val_loss"] == hist["val_loss"]


def test_resume_is_identical_to_an_uninterrupted_run(toy, tmp_path):
    straight = _cfg(toy, tmp_path / "a", NUM_EPOCHS=3)
    t = _trainer(straight)
    t.fit()
    reference = {k: v.clone() for k, v in t.model.state_dict().items()}

    first = _cfg(toy, tmp_path / "b", NUM_EPOCHS=1)
    _trainer(first).fit()
    resumed_cfg = dict(first, NUM_EPOCHS=3)
    t2 = _trainer(resumed_cfg)
    t2.fit(resume=True)
    assert t2.state.epoch == 3
    for k, v in t2.model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert t2.state.history["train_loss"] == t.state.history["train_loss"]


class _Poison(torch.nn.Module):
    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        self.calls += 1
        out = self.model(x)
        return out * float("nan") if self.calls > self.after else out


def test_nan_loss_stops_with_batch_indices_and_keeps_last_good_checkpoint(toy, tmp_path):
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=3)
    t = _trainer(cfg)
    # Epoch 1 (training and validation calls) is clean; the first batch of epoch 2 is not.
    t.net = _Poison(t.model, after=len(t.train_loader) + len(t.val_loader))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 0 \(metadata samples \[") as err:
        t.fit()
    assert "nothing was saved over the last good checkpoint" in str(err.value)
    state = load_checkpoint(tmp_path / "ckpt" / "t" / "last.pt")
    assert state["epoch"] == 1
    for v in state["model_state"].values():
        assert torch.isfinite(v).all()


def test_bad_config_fails_before_any_data(tmp_path):
    cfg = default_config()
    cfg.update(BATCH_SIZE=0, MODEL="resnet", LOSS_REDUCTION="max", TRAIN_METADATA_PATH="/does/not/exist.mat",
               NUM_EPOCHS=2.5, BATCHSIZE=3)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    for needle in ("'BATCH_SIZE'", "'MODEL': expected one of 'deepsif'", "'LOSS_REDUCTION'", "'NUM_EPOCHS'",
                   "unknown key 'BATCHSIZE' (did you mean BATCH_SIZE?)"):
        assert needle in text, needle
    assert "exist.mat" not in text  # paths are checked by the data code, not here


def test_train_script_reports_bad_config(repo_root):
    out = subprocess.run([sys.executable, "train.py", "BATCH_SIZE=-1", "--NUM_WORKERS", "x"], cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "'BATCH_SIZE'" in out.stderr and "'NUM_WORKERS'" in out.stderr


def test_dynamic_mode_trains_and_evaluates(toy, tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from esikit.head.anatomy import Anatomy

    r = 16
    ring = sp.diags([1.0, 1.0], [1, -1], shape=(r, r), dtype=float).tolil()
    ring[0, r - 1] = ring[r - 1, 0] = 1
    anat = Anatomy(name="ring", fwd=toy["fwd"], channel_names=[f"E{i}" for i in range(8)],
                   centres=np.c_[np.cos(np.arange(r)), np.sin(np.arange(r)), np.zeros(r)] * 50,
                   adjacency=ring.tocsr(), weights=np.zeros((r, r)), tract_lengths=np.zeros((r, r)),
                   node_of_region=np.arange(r), region_labels=[str(i) for i in range(r)])
    anat.save(tmp_path / "ring.npz")
    cfg = _cfg(toy, tmp_path, USE_METADATA_LOADER=False, ANATOMY=str(tmp_path / "ring.npz"), TRAIN_DATASET_LEN=16,
               TEST_METADATA_PATH=None, TEST_DATASET_LEN=4, NUM_EPOCHS=1, EVALUATE=True, BASELINES=("mne",),
               DYNAMIC_PATCH_SIZE_RANGE=(1, 3))
    result = train(cfg, show_progress=False)
    assert result["state"].epoch == 1
    assert result["evaluation"]["n_samples"] == 4
    assert (tmp_path / "ckpt" / "t" / "results.json").is_file()


def test_torchrun_two_processes_on_cpu(toy, tmp_path, repo_root):
    """DDP with gloo: ranks share the epoch's permutation, only rank 0 writes."""
    args = [f"TRAIN_METADATA_PATH={toy['train_metadata']}", f"TEST_METADATA_PATH={toy['test_metadata']}",
            f"FWD_MATRIX_PATH={toy['fwd_path']}", "NMM_SPIKES_DIR=None", "MODEL=deepsif", "MODEL_KWARGS={'n_hidden': 8, 'n_lstm_layers': 1}",
            "BATCH_SIZE=4", "NUM_EPOCHS=1", "NUM_WORKERS=0", "USE_AMP=False", "EVALUATE=False",
            f"LOG_DIR={tmp_path / 'logs'}", f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", "RUN_NAME=ddp", "DEVICE=cpu"]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *args], cwd=repo_root, capture_output=True, text=True, timeout=240,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    state = load_checkpoint(tmp_path / "ckpt" / "ddp" / "last.pt")
    assert state["epoch"] == 1
    assert out.stdout.count("epoch 1/1:") == 1  # rank 0 reports alone


def test_compact_target_trains_like_the_dense_one(toy, tmp_path):
    dense = train(_cfg(toy, tmp_path / "d", NUM_EPOCHS=1), show_progress=False)["state"].history
    cfg = _cfg(toy, tmp_path / "c", NUM_EPOCHS=1, TARGET="compact")
    regions, values = next(iter(build_loaders(cfg)[0]))[1]  # the loader really sends the compact form
    assert regions.ndim == 2 and values.ndim == 3
    compact = train(cfg, show_progress=False)["state"].history
    assert compact["train_loss"] == pytest.approx(dense["train_loss"], rel=1e-5)
    assert compact["val_loss"] == pytest.approx(dense["val_loss"], rel=1e-5)


def test_reference_synthesis_trains_like_the_fast_one(toy, tmp_path):
    fast = train(_cfg(toy, tmp_path / "f", NUM_EPOCHS=1), show_progress=False)["state"].history
    cfg = _cfg(toy, tmp_path / "r", NUM_EPOCHS=1, SYNTHESIS="reference")
    assert build_loaders(cfg)[3]["train_dataset"]._fast is None
    ref = train(cfg, show_progress=False)["state"].history
    assert ref["train_loss"] == pytest.approx(fast["train_loss"], rel=1e-4)
