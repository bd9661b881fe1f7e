"""Training: loss goes down, resume is exact, NaN stops safely, bad config fails early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from esikit.config import ConfigError, default_config, validate_config
from esikit.train import CheckpointError, NonFiniteLossError, load_checkpoint
from esikit.train.checkpoint import RunLockedError
from esikit.commands.train import build_loaders, main, train
from esikit.train.trainer import DataLoaderWorkerError, ResumeConfigError, Trainer, choose_amp


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


# -- issue 10: resume, locks, crashes, AMP, workers ---------------------------------------------


def test_resume_refuses_a_changed_config_and_force_applies_and_records_it(toy, tmp_path):
    first = _cfg(toy, tmp_path, NUM_EPOCHS=1)
    _trainer(first).fit()
    run = tmp_path / "ckpt" / "t"
    changed = validate_config(dict(first, NUM_EPOCHS=2, LEARNING_RATE=1e-2, SEED=3, BATCH_SIZE=2))
    with pytest.raises(ResumeConfigError) as err:
        _trainer(changed).fit(resume=True)
    text = str(err.value)
    for line in ("LEARNING_RATE: 0.003 -> 0.01", "SEED: 0 -> 3", "BATCH_SIZE: 4 -> 2", "--resume --force"):
        assert line in text, line
    assert "NUM_EPOCHS" not in text and str(run / "last.pt") in text
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # nothing written

    # Keys that do not change the weights may change freely; the change is recorded.
    free = validate_config(dict(first, NUM_EPOCHS=2, EVAL_MAX_SAMPLES=3))
    t = _trainer(free)
    t.fit(resume=True)
    assert t.state.epoch == 2
    assert t.state.config_changes == [{"epoch": 1, "forced": False,
                                       "changes": {"EVAL_MAX_SAMPLES": [None, 3], "NUM_EPOCHS": [1, 2]}}]

    forced = validate_config(dict(free, NUM_EPOCHS=3, LEARNING_RATE=1e-2, WEIGHT_DECAY=1e-4))
    t = _trainer(forced)
    t.fit(resume=True, force=True)
    assert t.state.history["lr"] == [3e-3, 3e-3, 1e-2]  # the new rate is really used from epoch 3
    assert t.optimizer.param_groups[0]["weight_decay"] == 1e-4
    state = load_checkpoint(run / "last.pt")
    assert state["config"]["LEARNING_RATE"] == 1e-2
    change = state["train_state"]["config_changes"][-1]
    assert change["epoch"] == 2 and change["forced"] is True
    assert change["changes"]["LEARNING_RATE"] == [3e-3, 1e-2] and change["changes"]["WEIGHT_DECAY"] == [0.0, 1e-4]
    assert json.loads((run / "history.json").read_text())["config_changes"][-1] == change


def test_resume_compares_paths_where_each_run_started(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(toy["fwd_path"].parent)
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=1, FWD_MATRIX_PATH=toy["fwd_path"].name)
    _trainer(cfg).fit()
    monkeypatch.chdir(tmp_path)  # the same file by its absolute path, from elsewhere
    t = _trainer(validate_config(dict(cfg, FWD_MATRIX_PATH=str(toy["fwd_path"]), NUM_EPOCHS=2)))
    t.fit(resume=True)
    assert t.state.epoch == 2


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_kill_between_the_best_and_last_writes_resumes_exactly(toy, tmp_path, monkeypatch, caplog):
    t = _trainer(_cfg(toy, tmp_path / "a", NUM_EPOCHS=3))
    t.fit()
    reference = {k: v.clone() for k, v in t.model.state_dict().items()}

    from esikit.train import trainer as trainer_module

    real_save = trainer_module.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if path.name == "best.pt" and state["epoch"] >= 2:
            raise _Killed  # after best.pt, before last.pt

    cfg = _cfg(toy, tmp_path / "b", NUM_EPOCHS=3)
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        _trainer(cfg).fit()
    monkeypatch.undo()
    run = tmp_path / "b" / "ckpt" / "t"
    killed_at = load_checkpoint(run / "best.pt")["epoch"]
    assert load_checkpoint(run / "last.pt")["epoch"] == killed_at - 1  # the state a kill leaves

    t2 = _trainer(cfg)
    with caplog.at_level("WARNING"):
        t2.fit(resume=True)
    assert "stopped between the two writes" in caplog.text
    for k, v in t2.model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    for key in ("train_loss", "val_loss", "lr"):
        assert t2.state.history[key] == t.state.history[key], key
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["epoch"] == 3 and last["train_state"]["best_epoch"] == best["epoch"]


def test_best_behind_last_is_repaired_on_resume(toy, tmp_path):
    """What the old write order left after a kill: last.pt says it is the best, best.pt is older."""
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=1)
    _trainer(cfg).fit()
    run = tmp_path / "ckpt" / "t"
    old_best = (run / "best.pt").read_bytes()
    cfg2 = dict(cfg, NUM_EPOCHS=2)
    t = _trainer(cfg2)
    t.fit(resume=True)
    assert t.state.best_epoch == 2, "the fixture's epoch 2 should improve"
    (run / "best.pt").write_bytes(old_best)  # best.pt one epoch behind
    _trainer(cfg2).fit(resume=True)  # nothing left to train; repairs
    assert load_checkpoint(run / "best.pt")["epoch"] == 2


def test_truncated_last_falls_back_to_best_else_clear_error(toy, tmp_path, caplog):
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=2)
    _trainer(cfg).fit()
    run = tmp_path / "ckpt" / "t"
    best_epoch = load_checkpoint(run / "best.pt")["epoch"]
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 3])
    t = _trainer(cfg)
    with caplog.at_level("WARNING"):
        t.fit(resume=True)
    assert f"resuming from best.pt (epoch {best_epoch})" in caplog.text
    assert t.state.epoch == 2 and load_checkpoint(run / "last.pt")["epoch"] == 2
    for name in ("last.pt", "best.pt"):
        (run / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot resume, no readable checkpoint") as err:
        _trainer(cfg).fit(resume=True)
    assert "last.pt" in str(err.value) and "best.pt" in str(err.value)


# Another run's side of RunLock (flock on <run>/.lock holding the PID), without importing torch.
_HOLD = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
f = open(os.path.join(sys.argv[1], ".lock"), "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
f.truncate(0)
f.write(str(os.getpid()))
f.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_stops_with_the_holder(toy, tmp_path, capsys):
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=1)
    run = tmp_path / "ckpt" / "t"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"{run}: another training run \(PID {proc.pid}\)"):
            train(cfg, show_progress=False)
        assert main(_argv(cfg)) == 4
        assert f"PID {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()
    assert not (run / "last.pt").exists()
    train(cfg, show_progress=False)  # released with the killed holder
    assert (run / "last.pt").exists()


def test_cpu_amp_is_one_rule_not_a_timing(toy, tmp_path):
    cpu = torch.device("cpu")
    assert choose_amp(cpu, True) is None and choose_amp(cpu, False) is None
    assert choose_amp(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        choose_amp(cpu, "fp16")
    runs = [train(_cfg(toy, tmp_path / str(i), NUM_EPOCHS=1, USE_AMP=True), show_progress=False) for i in range(2)]
    a, b = (load_checkpoint(r["run_dir"] / "last.pt") for r in runs)
    assert a["amp_dtype"] is None
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    t = _trainer(_cfg(toy, tmp_path / "bf", NUM_EPOCHS=1, USE_AMP="bf16"))
    t.fit()
    assert t.amp_dtype is torch.bfloat16 and load_checkpoint(t.run_dir / "last.pt")["amp_dtype"] == "torch.bfloat16"


class _DiesInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
        return torch.zeros(100, 8), torch.zeros(100, 16)


def test_killed_dataloader_worker_is_a_clear_error(toy, tmp_path):
    cfg = _cfg(toy, tmp_path, NUM_WORKERS=1)
    loader = torch.utils.data.DataLoader(_DiesInWorker(), batch_size=4, num_workers=1)
    info = {"n_channels": 8, "n_regions": 16, "n_times": 100}
    t = Trainer(cfg, loader, None, info, tmp_path / "run", tmp_path / "logs", show_progress=False)
    with pytest.raises(DataLoaderWorkerError) as err:
        t.fit()
    text = str(err.value)
    assert "DataLoader worker process died" in text and "NUM_WORKERS=0" in text and str(tmp_path / "run") in text
    # The dead worker is unregistered: the next child process exit raises nothing.
    subprocess.run(["true"], check=True)
    time.sleep(0.2)


def _argv(cfg, **over):
    return [f"{k}={v}" if isinstance(v, str) else f"{k}={v!r}" for k, v in {**cfg, **over}.items() if v is not None]


def test_train_command_resume_force_and_disk_full(toy, tmp_path, capsys, monkeypatch):
    cfg = _cfg(toy, tmp_path, NUM_EPOCHS=1)
    assert main(_argv(cfg)) == 0
    assert main(_argv(cfg, NUM_EPOCHS=2, LEARNING_RATE=1e-2) + ["--resume"]) == 2
    assert "LEARNING_RATE: 0.003 -> 0.01" in capsys.readouterr().err
    assert main(_argv(cfg) + ["--force"]) == 2
    assert "--force only goes with --resume" in capsys.readouterr().err

    from esikit.io import atomic

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_write_all", disk_full)
    assert main(_argv(cfg, NUM_EPOCHS=2, LEARNING_RATE=1e-2) + ["--resume", "--force"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err
    monkeypatch.undo()
    run = tmp_path / "ckpt" / "t"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint is intact
    assert main(_argv(cfg, NUM_EPOCHS=2, LEARNING_RATE=1e-2) + ["--resume", "--force"]) == 0
    assert load_checkpoint(run / "last.pt")["config"]["LEARNING_RATE"] == 1e-2


def test_resume_from_a_checkpoint_of_the_previous_esikit(toy, tmp_path, monkeypatch):
    """Old checkpoints: numpy RNG state as arrays, python state as tuples, no run_cwd."""
    import numpy as np

    reference = _trainer(_cfg(toy, tmp_path / "a", NUM_EPOCHS=2))
    reference.fit()
    monkeypatch.chdir(toy["fwd_path"].parent)
    cfg = _cfg(toy, tmp_path / "b", NUM_EPOCHS=1, FWD_MATRIX_PATH=toy["fwd_path"].name)
    _trainer(cfg).fit()
    path = tmp_path / "b" / "ckpt" / "t" / "last.pt"
    state = load_checkpoint(path)
    del state["run_cwd"]
    rng = state["rng_states"]
    version, internal, gauss = rng["python"]
    npd = rng["numpy"]
    rng["python"] = (version, tuple(internal), gauss)
    rng["numpy"] = (npd["bit_generator"], np.asarray(npd["state"]["key"], dtype=np.uint32), npd["state"]["pos"],
                    npd["has_gauss"], npd["gauss"])
    torch.save(state, path)  # as the previous save_checkpoint wrote it
    t = _trainer(dict(cfg, NUM_EPOCHS=2))
    t.fit(resume=True)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, reference.model.state_dict()[k]), k
