"""The packed clip cache: generations, pinning, checksums, errors not cached, disk full."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
from collections import namedtuple

import numpy as np
import pytest

from esikit.data import packed
from esikit.data.clips import ClipReadError, FolderClipStore, H5ClipStore
from esikit.data.packed import CacheError, PackedClipCache
from esikit.io import save_mat_file

T, R = 20, 6


def _write(root, region, k, arr):
    (root / f"a{region}").mkdir(parents=True, exist_ok=True)
    save_mat_file(root / f"a{region}" / f"nmm_{k}.mat", {"data": arr})


@pytest.fixture
def clips(tmp_path):
    """A store of 6 distinct random clips (T=20, R=6) and their values by clip id."""
    rng = np.random.default_rng(0)
    root = tmp_path / "nmm_spikes"
    values = {}
    for region in range(3):
        for k in (1, 2):
            arr = rng.standard_normal((T, R)).astype(np.float32)
            _write(root, region, k, arr)
            values[(region, k)] = arr
    return root, values


def _expected(store, values):
    return np.stack([values[(int(r), int(k))].T for r, k in zip(store.clip_regions, store.clip_ks)])


def _gens(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("gen-"))


def test_build_layout_checksums_and_reopen(clips, tmp_path, caplog):
    root, values = clips
    store = FolderClipStore(root)
    cache = PackedClipCache.open(store, tmp_path / "c")
    np.testing.assert_array_equal(cache.clips, _expected(store, values))
    assert cache.folder == tmp_path / "c" and cache.generation.parent == cache.folder
    assert (cache.folder / "current").read_text().strip() == cache.generation.name
    manifest = packed._read_json(cache.generation / "manifest.json")
    assert len(manifest["crc"]) == len(manifest["source_crc"]) == 6
    fwd = np.random.default_rng(1).standard_normal((4, R)).astype(np.float32)
    proj = cache.projections(fwd)
    np.testing.assert_allclose(proj, np.matmul(cache.clips.transpose(0, 2, 1), fwd.T), rtol=1e-5, atol=1e-6)
    with caplog.at_level(logging.INFO, logger="esikit.data.packed"):
        again = PackedClipCache.open(FolderClipStore(root), tmp_path / "c", verify=True)
    assert again.generation == cache.generation and again.repairs == []
    assert not any("Packing" in r.getMessage() or "Rebuilding" in r.getMessage() for r in caplog.records)
    # Leftovers of a killed build are removed by the next open that can take the lock.
    (cache.folder / "gen-0123456789ab.tmp").mkdir()
    (cache.folder / "gen-0123456789ab.tmp" / "clips.f32").write_bytes(b"\0" * 64)
    PackedClipCache.open(FolderClipStore(root), tmp_path / "c")
    assert _gens(cache.folder) == [cache.generation.name]


@pytest.mark.parametrize("step", ["_write_json", "_commit_folder", "_write_pointer"])
def test_kill_between_steps_never_leaves_a_cache_read_as_valid(clips, tmp_path, monkeypatch, step):
    """Issue 10 case 3: a kill (no cleanup runs) at any step of a rebuild after a clip changed."""
    root, values = clips
    folder = tmp_path / "c"
    PackedClipCache.open(FolderClipStore(root), folder).close()
    new = values[(1, 2)] + 1.0  # the symptom was every sample off by about 1.0
    _write(root, 1, 2, new)
    values[(1, 2)] = new

    class Killed(BaseException):
        pass

    real = getattr(packed, step)

    def die(*args, **kwargs):
        if step != "_write_json":
            real(*args, **kwargs)  # the step completes, the kill comes right after it
        raise Killed

    monkeypatch.setattr(packed, step, die)
    monkeypatch.setattr(packed, "_discard", lambda path: None)  # a kill runs no cleanup
    with pytest.raises(Killed):
        PackedClipCache.open(FolderClipStore(root), folder)
    monkeypatch.undo()
    store = FolderClipStore(root)
    cache = PackedClipCache.open(store, folder, verify=True)
    np.testing.assert_array_equal(cache.clips, _expected(store, values))
    assert cache.repairs == []  # nothing damaged was ever current
    assert not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_open_dataset_keeps_its_generation_while_another_process_rebuilds(clips, tmp_path):
    """Issue 10 case 4: a rebuild elsewhere does not change what an open cache (or its workers) read."""
    root, values = clips
    folder = tmp_path / "c"
    store_a = FolderClipStore(root)
    a = PackedClipCache.open(store_a, folder)
    old = _expected(store_a, values)
    fwd = np.eye(R, dtype=np.float32)[:3]
    a.projections(fwd)
    _write(root, 0, 1, values[(0, 1)] * 3)
    values[(0, 1)] = values[(0, 1)] * 3
    store_b = FolderClipStore(root)
    b = PackedClipCache.open(store_b, folder)  # "another process"
    assert b.generation != a.generation
    np.testing.assert_array_equal(b.clips, _expected(store_b, values))
    np.testing.assert_array_equal(a.clips, old)
    np.testing.assert_array_equal(a.projections(fwd), old.transpose(0, 2, 1)[:, :, :3])
    worker = pickle.loads(pickle.dumps(a))  # a new DataLoader worker (spawn)
    assert worker.generation == a.generation
    np.testing.assert_array_equal(worker.clips, old)
    np.testing.assert_array_equal(worker.projections(fwd), old.transpose(0, 2, 1)[:, :, :3])
    # Pinned: a further build keeps it; once closed by every user, it is removed.
    c = PackedClipCache.open(FolderClipStore(root), folder, verify=True)
    assert a.generation.name in _gens(folder) and c.generation == b.generation
    worker.close()
    a.close()
    assert _gens(folder) == [b.generation.name]
    # A generation removed under a worker is a named error, not wrong data.
    shutil.rmtree(b.generation)
    with pytest.raises(CacheError, match="was removed while the dataset was open"):
        pickle.loads(pickle.dumps(b))


def test_same_size_and_mtime_rewrite_is_found_by_verify(clips, tmp_path):
    """Issue 10 case 5a."""
    root, values = clips
    folder = tmp_path / "c"
    PackedClipCache.open(FolderClipStore(root), folder).close()
    path = root / "a2" / "nmm_1.mat"
    st = path.stat()
    new = values[(2, 1)][::-1].copy()  # same size on disk
    _write(root, 2, 1, new)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    values[(2, 1)] = new
    store = FolderClipStore(root)
    stale = PackedClipCache.open(store, folder)  # the cheap check trusts size and mtime (documented)
    assert not np.array_equal(stale.clips, _expected(store, values))
    fixed = PackedClipCache.open(store, folder, verify=True)
    assert len(fixed.repairs) == 1 and "a2/nmm_1.mat" in fixed.repairs[0] and "size" in fixed.repairs[0]
    np.testing.assert_array_equal(fixed.clips, _expected(store, values))


def test_corrupt_clips_and_projection_are_found_and_rebuilt(clips, tmp_path, caplog):
    """Issue 10 case 5b: finite corruption (a changed value, not NaN) of the data files."""
    root, values = clips
    folder = tmp_path / "c"
    store = FolderClipStore(root)
    fwd = np.random.default_rng(2).standard_normal((3, R)).astype(np.float32)
    cache = PackedClipCache.open(store, folder)
    want_proj = np.array(cache.projections(fwd))
    gen = cache.generation
    cache.close()
    # Row 1 is not one of the rows checked on every open: only verify finds it.
    data = np.fromfile(gen / "clips.f32", dtype=np.float32)
    data[R * T + 5] += 0.5
    data.tofile(gen / "clips.f32")
    proj_file = next(gen.glob("proj_*.f32"))
    pdata = np.fromfile(proj_file, dtype=np.float32)
    pdata[T * 3 + 7] *= 1.01
    pdata.tofile(proj_file)
    with caplog.at_level(logging.WARNING, logger="esikit.data.packed"):
        fixed = PackedClipCache.open(store, folder, verify=True)
    text = " ".join(fixed.repairs)
    assert "1 packed clip(s) do not match" in text and "proj_" in text
    assert any("Rebuilding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(fixed.clips, _expected(store, values))
    np.testing.assert_array_equal(fixed.projections(fwd), want_proj)
    # Damage in a row checked on every open (the last) is found without verify.
    fixed.close()
    data = np.fromfile(fixed.generation / "clips.f32", dtype=np.float32)
    data[-1] += 1.0
    data.tofile(fixed.generation / "clips.f32")
    again = PackedClipCache.open(store, folder)
    assert again.generation != fixed.generation and "does not match its checksum" in again.repairs[0]
    np.testing.assert_array_equal(again.clips, _expected(store, values))


def test_truncated_files_are_rebuilt(clips, tmp_path):
    """Issue 10 case 5d: a truncated clips.f32 (or projection) is rebuilt, not a failure every run."""
    root, values = clips
    folder = tmp_path / "c"
    store = FolderClipStore(root)
    fwd = np.ones((2, R), dtype=np.float32)
    cache = PackedClipCache.open(store, folder)
    want = np.array(cache.projections(fwd))
    gen = cache.generation
    cache.close()
    proj_file = next(gen.glob("proj_*.f32"))
    os.truncate(proj_file, proj_file.stat().st_size // 2)
    reopened = PackedClipCache.open(store, folder)
    assert reopened.generation == gen
    np.testing.assert_array_equal(reopened.projections(fwd), want)  # rebuilt in place
    assert "truncated" in reopened.repairs[0]
    reopened.close()
    os.truncate(gen / "clips.f32", 100)
    fixed = PackedClipCache.open(store, folder)
    assert "truncated" in fixed.repairs[0] and fixed.generation != gen
    np.testing.assert_array_equal(fixed.clips, _expected(store, values))


def test_read_errors_are_not_cached(clips, tmp_path, monkeypatch):
    """Issue 10 case 5c: a clip unreadable at build (permission denied) is tried again."""
    root, values = clips
    folder = tmp_path / "c"
    victim = str(root / "a1" / "nmm_1.mat")
    real = FolderClipStore.source_checksum

    def denied(self, cid):
        if self.describe(cid) == victim:
            raise ClipReadError(f"{victim}: cannot read clip ([Errno 13] Permission denied)")
        return real(self, cid)

    monkeypatch.setattr(FolderClipStore, "source_checksum", denied)
    store = FolderClipStore(root)
    first = PackedClipCache.open(store, folder)
    bad = int(np.nonzero(~first.valid)[0][0])
    assert store.describe(bad) == victim and "Permission denied" in first.errors[bad]
    assert not first.clips[bad].any()
    again = PackedClipCache.open(store, folder)  # still denied: same generation, same error
    assert again.generation == first.generation and not again.valid[bad]
    monkeypatch.undo()  # the permission is fixed; size and mtime did not change
    fixed = PackedClipCache.open(FolderClipStore(root), folder)
    assert fixed.valid.all() and fixed.generation != first.generation
    np.testing.assert_array_equal(fixed.clips, _expected(store, values))


def test_not_enough_free_space_is_a_named_error_before_writing(clips, tmp_path, monkeypatch):
    """Issue 10 case 11: the free-space check."""
    root, _ = clips
    folder = tmp_path / "c"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(packed.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CacheError) as info:
        PackedClipCache.open(FolderClipStore(root), folder)
    text = str(info.value)
    needed = 6 * T * R * 4
    assert str(folder) in text and f"({needed} bytes)" in text and "(1000 bytes) are free" in text
    assert "CACHE_DIR" in text and "SYNTHESIS='reference'" in text
    assert _gens(folder) == [] and not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_disk_full_while_writing_removes_the_partial_build(clips, tmp_path, monkeypatch):
    """Issue 10 case 11: ENOSPC halfway (no SIGBUS: ordinary writes), old cache still good."""
    root, values = clips
    folder = tmp_path / "c"
    store = FolderClipStore(root)
    good = PackedClipCache.open(store, folder)
    good.close()
    _write(root, 0, 2, values[(0, 2)] * 2)
    values[(0, 2)] = values[(0, 2)] * 2

    def full(fh, nbytes):  # no fallocate here: the write itself fails, as on such file systems
        real_write = fh.write
        state = {"n": 0}

        def write(data):
            state["n"] += 1
            if state["n"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(data)

        fh.write = write

    monkeypatch.setattr(packed, "_reserve", full)
    with pytest.raises(CacheError, match="disk filled up") as info:
        PackedClipCache.open(FolderClipStore(root), folder)
    assert str(folder) in str(info.value) and "CACHE_DIR" in str(info.value)
    assert _gens(folder) == [good.generation.name]
    assert not any(p.name.endswith(".tmp") for p in folder.rglob("*"))
    monkeypatch.undo()
    store = FolderClipStore(root)
    np.testing.assert_array_equal(PackedClipCache.open(store, folder).clips, _expected(store, values))


def test_fallocate_enospc_and_projection_disk_full(clips, tmp_path, monkeypatch):
    root, _ = clips
    folder = tmp_path / "c"

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packed.os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(CacheError, match="disk filled up"):
        PackedClipCache.open(FolderClipStore(root), folder)
    assert _gens(folder) == []
    monkeypatch.undo()
    cache = PackedClipCache.open(FolderClipStore(root), folder)
    monkeypatch.setattr(packed.os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(CacheError, match="clip projections"):
        cache.projections(np.ones((2, R), np.float32))
    assert not list(cache.generation.glob("proj_*"))


def test_killed_projection_build_leaves_no_temporary_behind(clips, tmp_path):
    """A kill mid-projection leaves io.atomic's temporary; the next build removes it."""
    root, values = clips
    store = FolderClipStore(root)
    cache = PackedClipCache.open(store, tmp_path / "c")
    fwd = np.arange(3 * R, dtype=np.float32).reshape(3, R)
    name = f"proj_{packed.forward_key(fwd)}.f32"
    stale = cache.generation / f".{name}.abc123.tmp"
    stale.write_bytes(b"\0" * 64)  # what a killed writer leaves
    proj = cache.projections(fwd)
    np.testing.assert_allclose(proj, _expected(store, values).transpose(0, 2, 1) @ fwd.T, rtol=1e-6)
    assert not stale.exists()
    assert sorted(p.name for p in cache.generation.glob("*proj_*")) == [name, name[:-4] + ".json"]


def test_unwritable_cache_folder_names_the_fix(clips, tmp_path):
    root, _ = clips
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="cannot create the packed clip cache folder.*CACHE_DIR"):
        PackedClipCache.open(FolderClipStore(root), blocker / "c")


def test_version_1_cache_is_replaced(clips, tmp_path):
    root, values = clips
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "clips.f32").write_bytes(b"\0" * 16)
    (folder / "manifest.json").write_text('{"version": 1}')
    (folder / "proj_0123.f32").write_bytes(b"")
    store = FolderClipStore(root)
    cache = PackedClipCache.open(store, folder)
    np.testing.assert_array_equal(cache.clips, _expected(store, values))
    assert sorted(p.name for p in folder.iterdir()) == sorted(["current", "lock", cache.generation.name])


def test_h5_store_checksums(tmp_path):
    import h5py

    rng = np.random.default_rng(4)
    data = rng.standard_normal((4, T, R)).astype(np.float32)
    path = tmp_path / "x_nmm.h5"
    with h5py.File(path, "w") as f:
        f["data"] = data
    store = H5ClipStore(path)
    cache = PackedClipCache.open(store, tmp_path / "c")
    np.testing.assert_array_equal(cache.clips, data.transpose(0, 2, 1))
    store._file.close()  # HDF5 refuses a writer while a reader has the file open
    st = path.stat()
    with h5py.File(path, "r+") as f:
        f["data"][2] = data[2] * 2
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fixed = PackedClipCache.open(H5ClipStore(path), tmp_path / "c", verify=True)
    assert "x_nmm.h5[2]" in fixed.repairs[0]
    np.testing.assert_array_equal(fixed.clips[2], (data[2] * 2).T)


# -- the data check (esikit.commands.check) ------------------------------------------------------------


def _check_args(toy, cache_dir, *extra):
    cfg = {"TRAIN_METADATA_PATH": toy["train_metadata"], "TEST_METADATA_PATH": toy["test_metadata"],
           "FWD_MATRIX_PATH": toy["fwd_path"], "NMM_SPIKES_DIR": toy["nmm_spikes_dir"], "BATCH_SIZE": 4,
           "CACHE_DIR": cache_dir}
    return [f"{k}={v}" for k, v in cfg.items()] + list(extra)


def test_data_check_verify_clips_finds_and_repairs_a_damaged_cache(tmp_path, capsys):
    """Issue 10 case 3/5: the check with --verify-clips no longer passes over a wrong cache."""
    from esikit.data.toy import make_toy_dataset
    from esikit.commands.check import main

    toy = make_toy_dataset(tmp_path / "d", n_regions=12, n_channels=5, n_train=8, n_test=4, seed=3)
    folder = tmp_path / "c"
    assert main(_check_args(toy, folder, "--verify-clips")) == 0
    out = capsys.readouterr().out
    assert "match their checksums" in out and "found and rebuilt" not in out
    gen = folder / (folder / "current").read_text().strip()
    data = np.fromfile(gen / "clips.f32", dtype=np.float32)
    row = data.size // 24  # 24 clips; row 1 is not among the rows checked on every open
    data[row: 2 * row] += 1.0
    data.tofile(gen / "clips.f32")
    assert main(_check_args(toy, folder, "--verify-clips")) == 0
    out = capsys.readouterr().out
    assert "found and rebuilt" in out and "1 packed clip(s) do not match their checksums" in out
    store = FolderClipStore(toy["nmm_spikes_dir"])
    fixed = PackedClipCache.open(store, folder, verify=True)
    assert fixed.repairs == []
    np.testing.assert_array_equal(fixed.clips[1], store.get(1).T)


def test_data_check_names_the_cache_fix(tmp_path, capsys, monkeypatch):
    from esikit.data.toy import make_toy_dataset
    from esikit.commands.check import main

    toy = make_toy_dataset(tmp_path / "d", n_regions=12, n_channels=5, n_train=8, n_test=4, seed=3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(packed.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    assert main(_check_args(toy, tmp_path / "c")) != 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'c'}: not enough free disk space for the packed clip cache" in out
    assert "fix: set CACHE_DIR" in out and "Traceback" not in out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataset_and_new_workers_keep_their_clips_during_a_rebuild(tmp_path, context):
    """Issue 10 case 4 end to end: samples of an open dataset, in the main process and in
    workers started after another process rebuilt the cache, stay those it opened with."""
    import torch
    from torch.utils.data import DataLoader

    from esikit.data import SpikeEEGMetadataDataset
    from esikit.data.toy import make_toy_dataset

    if context not in torch.multiprocessing.get_all_start_methods():
        pytest.skip(f"no '{context}' start method here")
    toy = make_toy_dataset(tmp_path / "d", n_regions=12, n_channels=5, n_train=6, n_test=2, seed=4)
    folder = tmp_path / "c"
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=folder)
    before = [ds[i] for i in range(4)]
    for path in sorted(toy["nmm_spikes_dir"].glob("a*/nmm_*.mat")):  # another run rewrites every clip
        arr = toy["clips"][(int(path.parent.name[1:]), int(path.stem.split("_")[1]))]
        save_mat_file(path, {"data": arr + 1.0})
    other = PackedClipCache.open(FolderClipStore(toy["nmm_spikes_dir"]), folder)
    assert other.generation != ds._fast.cache.generation
    for i in range(4):
        for a, b in zip(ds[i], before[i]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context=context)
    eeg, src = next(iter(loader))
    torch.testing.assert_close(eeg, torch.stack([b[0] for b in before]), rtol=0, atol=0)
    torch.testing.assert_close(src, torch.stack([b[1] for b in before]), rtol=0, atol=0)
    del loader  # the worker has exited: the dataset's pin must outlive it
    save_mat_file(toy["nmm_spikes_dir"] / "a0" / "nmm_1.mat", {"data": toy["clips"][(0, 1)] * 5})
    third = PackedClipCache.open(FolderClipStore(toy["nmm_spikes_dir"]), folder)
    assert (ds._fast.cache.generation / "clips.f32").is_file()
    assert third.generation.name in _gens(folder)


_KILL_SCRIPT = """
import os, signal, sys
from esikit.data import packed
from esikit.data.clips import FolderClipStore

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

packed._write_json = kill  # clips.f32 of the new build is written; its manifest is next
packed.PackedClipCache.open(FolderClipStore(sys.argv[1]), sys.argv[2])
"""


def test_sigkill_before_the_manifest_is_written(clips, tmp_path):
    """Issue 10 case 3 with a real SIGKILL at the moment the issue names."""
    import signal
    import subprocess
    import sys

    root, values = clips
    folder = tmp_path / "c"
    PackedClipCache.open(FolderClipStore(root), folder).close()
    new = values[(0, 1)] + 1.0
    _write(root, 0, 1, new)
    values[(0, 1)] = new
    out = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root), str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert any(p.name.endswith(".tmp") for p in folder.iterdir())  # the killed build's partial folder
    store = FolderClipStore(root)
    cache = PackedClipCache.open(store, folder)
    np.testing.assert_array_equal(cache.clips, _expected(store, values))
    assert cache.repairs == [] and not any(p.name.endswith(".tmp") for p in folder.iterdir())
    assert _gens(folder) == [cache.generation.name]


def test_damaged_pointer_or_manifest_is_rebuilt(clips, tmp_path):
    root, values = clips
    folder = tmp_path / "c"
    store = FolderClipStore(root)
    first = PackedClipCache.open(store, folder)
    first.close()
    (first.generation / "manifest.json").write_text('{"version": 2, "n_cl')  # torn by hand
    second = PackedClipCache.open(store, folder)
    assert "manifest.json is missing or unreadable" in second.repairs[0]
    np.testing.assert_array_equal(second.clips, _expected(store, values))
    second.close()
    (folder / "current").write_text("../../etc")
    third = PackedClipCache.open(store, folder)
    assert "does not name a generation" in third.repairs[0]
    np.testing.assert_array_equal(third.clips, _expected(store, values))
    assert _gens(folder) == [third.generation.name]
