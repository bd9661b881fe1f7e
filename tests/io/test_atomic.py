"""esikit.io.atomic: one rename, nothing half-written, no temporaries left behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from esikit.io import atomic
from esikit.io.atomic import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    free_bytes,
    is_disk_full,
    remove_stale_temporaries,
)


def test_writes_create_folders_and_replace_whole_files(tmp_path):
    path = atomic_write_bytes(tmp_path / "a" / "b.bin", b"x" * 10)
    assert path.read_bytes() == b"x" * 10
    atomic_write_text(path, "é")
    assert path.read_text(encoding="utf-8") == "é"
    atomic_write_json(tmp_path / "c.json", {"a": np.float32(1.5)}, default=float)
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 1.5}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "c.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "f.bin", b"old")

    def half_then_full(fd, data):
        os.write(fd, bytes(data)[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_write_all", half_then_full)
    with pytest.raises(OSError) as err:
        atomic_write_bytes(path, b"new contents")
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_unserializable_json_leaves_the_file_untouched(tmp_path):
    path = atomic_write_json(tmp_path / "s.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_atomic_output_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    path = tmp_path / "arr.npz"
    with atomic_output(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".arr.npz.") and tmp.suffix == ".npz"
        np.savez(tmp, x=np.arange(3))  # np.savez would append .npz to any other name
        assert not path.exists()
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        np.savez(tmp, x=np.arange(5))
        raise RuntimeError("writer failed")
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["arr.npz"]


def test_killed_writer_leaves_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "big.json"
    atomic_write_json(path, {"i": 0, "pad": "x"})
    code = textwrap.dedent(f"""
        from esikit.io.atomic import atomic_write_json
        i = 1
        while True:
            atomic_write_json({str(path)!r}, {{"i": i, "pad": "x" * 2_000_000}})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.5)
    proc.kill()
    proc.wait()
    assert isinstance(json.loads(path.read_text())["i"], int)  # complete, old or new
    (tmp_path / ".other.mat.abc.tmp.mat").write_bytes(b"")
    n = remove_stale_temporaries(tmp_path, "big.json")
    assert {p.name for p in tmp_path.iterdir()} == {"big.json", ".other.mat.abc.tmp.mat"}
    assert n <= 1 and remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]


def test_free_bytes_and_disk_full(tmp_path):
    free = free_bytes(tmp_path)
    assert isinstance(free, int) and free >= 0
    assert free_bytes(tmp_path / "missing") is None  # unreadable: None, not an error
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("not an OSError"))
