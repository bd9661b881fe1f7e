"""Checkpoints are written atomically: a killed writer never leaves a half-written file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from esikit.train.checkpoint import CheckpointError, cleanup_stale_temporaries, load_checkpoint, save_checkpoint


def _state(value: float, size: int = 10):
    return {"model_state": {"w": torch.full((size,), value)}, "model_config": {"name": "x"}, "epoch": 1,
            "config": {}}


def test_round_trip_and_marker(tmp_path):
    path = save_checkpoint(_state(2.0), tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model_state"]["w"], torch.full((10,), 2.0))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an esikit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint({"epoch": 1}, tmp_path / "bad.pt")


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(_state(1.0, 100_000), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_killed_writer_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    # A child writes big checkpoints in a loop; kill it at an arbitrary moment, many times.
    code = textwrap.dedent(f"""
        import torch
        from esikit.train.checkpoint import save_checkpoint
        i = 2.0
        while True:
            save_checkpoint({{"model_state": {{"w": torch.full((3_000_000,), i)}}, "model_config": {{"name": "x"}},
                             "epoch": int(i), "config": {{}}}}, {str(path)!r})
            i += 1
    """)
    for delay in (0.8, 1.1, 1.5):
        proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)  # always a complete checkpoint, old or new
        w = state["model_state"]["w"]
        assert torch.all(w == w[0]) and int(w[0]) == state["epoch"]
    cleanup_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1.0), tmp_path / "last.pt")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(_state(5.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.full((10,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
