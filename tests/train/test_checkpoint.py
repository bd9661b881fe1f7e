"""Checkpoints: atomic writes, clear disk-full errors, loading that runs no code, one run per folder."""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from esikit.io import atomic
from esikit.io.atomic import remove_stale_temporaries
from esikit.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    RunLock,
    RunLockedError,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)
from esikit.train.trainer import restore_rng_states, rng_states


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
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1.0), tmp_path / "last.pt")

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(CheckpointWriteError, match="no space left") as err:
        save_checkpoint(_state(5.0), path)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.full((10,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_mid_write_is_a_clear_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1.0), tmp_path / "last.pt")

    def half_then_full(fd, data):  # the disk fills up half way through the file
        os.write(fd, bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_write_all", half_then_full)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(_state(5.0, 100_000), path)
    text = str(err.value)
    assert str(path) in text and "no space left on the device" in text
    # Both sizes named, with a unit (the wording of esikit._validation.format_bytes).
    assert re.search(r"it needs [\d.]+ [kMGT]?B, [\d.]+ [kMGT]?B free in ", text), text
    assert "the previous last.pt is intact" in text and "--resume" in text
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.full((10,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    # Another write error (permissions) also names the file.
    monkeypatch.setattr(atomic, "_write_all", lambda fd, data: (_ for _ in ()).throw(
        OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(CheckpointWriteError, match=r"last\.pt: cannot write the checkpoint \(Permission denied\)"):
        save_checkpoint(_state(5.0), path)


# -- loading never runs code --------------------------------------------------------------------


class _Payload:
    """Pickles to 'call open(marker, "w")', i.e. create the marker file, when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_crafted_checkpoint_is_refused_without_running_its_payload(tmp_path, layout):
    marker = tmp_path / "pwned"
    crafted = {"format": "esikit-checkpoint-v1", "model_state": {}, "model_config": {"name": "deepsif"},
               "epoch": 1, "config": {}, "evil": _Payload(marker)}
    path = tmp_path / "best.pt"
    if layout == "zip":
        torch.save(crafted, path)
    else:  # a bare pickle, as torch.load also accepts
        path.write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(err.value)
    if layout == "zip":
        assert "refused" in str(err.value) and "open" in str(err.value)


def test_state_is_stored_as_plain_data(tmp_path):
    state = _state(1.0)
    state["extra"] = {"positions": np.arange(6.0).reshape(2, 3), "n": np.int64(3), "where": tmp_path,
                      "names": ("Fp1", "Fp2")}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "a.pt"))
    assert loaded["extra"] == {"positions": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "n": 3, "where": str(tmp_path),
                               "names": ("Fp1", "Fp2")}
    assert type(loaded["extra"]["n"]) is int
    state["extra"] = {"ok": [1, {"bad": object()}]}
    with pytest.raises(TypeError, match=r"state\['extra'\]\['ok'\]\[1\]\['bad'\]: a builtins.object cannot"):
        save_checkpoint(state, tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()
    assert to_plain({1: (np.float32(0.5),)}) == {1: (0.5,)}


def test_checkpoint_of_an_older_esikit_still_loads(tmp_path):
    """Older checkpoints held numpy RNG state (arrays): read with only numpy arrays allowed."""
    state = _state(3.0)
    state.update(format="esikit-checkpoint-v1",
                 rng_states={"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()})
    torch.save(state, tmp_path / "old.pt")  # what the previous save_checkpoint wrote
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(loaded["rng_states"]["numpy"][1], np.ndarray)
    np.random.seed(1)
    restore_rng_states(loaded["rng_states"])  # restores from the old form
    assert np.random.get_state()[2] == state["rng_states"]["numpy"][2]
    assert np.array_equal(np.random.get_state()[1], state["rng_states"]["numpy"][1])


def test_rng_states_round_trip_as_plain_data(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.standard_normal()  # a cached gaussian is part of the state
    state = _state(1.0)
    state["rng_states"] = rng_states()
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "r.pt"))
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(2).tolist())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng_states(loaded["rng_states"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(2).tolist()) == expected


# -- one run per folder ---------------------------------------------------------------------------

_HOLD = textwrap.dedent("""
    import sys, time
    from esikit.train.checkpoint import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_run_lock_names_the_holder_and_is_released_when_it_is_killed(tmp_path):
    run = tmp_path / "checkpoints" / "r"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as err:
            with RunLock(run):
                pass
        assert str(run) in str(err.value) and f"PID {proc.pid}" in str(err.value)
    finally:
        proc.kill()
        proc.wait()
    with RunLock(run):  # the OS released the killed holder's lock
        with RunLock(run):  # re-entrant within a process
            pass
        assert (run / ".lock").read_text() == str(os.getpid())
    with RunLock(run):
        pass
