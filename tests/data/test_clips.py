"""Clip stores and clip resolution."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from esikit.data import FolderClipStore, H5ClipStore, decode_nmm_idx, infer_nper, metadata_from_arrays
from esikit.data.clips import ClipReadError, resolve_clip_ids
from esikit.data.toy import make_toy_metadata
from esikit.io import save_mat_file


def _write_clips(root, regions_ks, shape=(20, 6)):
    clips = {}
    for r, k in regions_ks:
        (root / f"a{r}").mkdir(parents=True, exist_ok=True)
        arr = np.full(shape, r * 100 + k, dtype=np.float32)
        save_mat_file(root / f"a{r}" / f"nmm_{k}.mat", {"data": arr})
        clips[(r, k)] = arr
    return clips


def test_folder_store_index_lookup_and_cache(tmp_path):
    clips = _write_clips(tmp_path, [(0, 1), (0, 2), (3, 1), (5, 7)])
    (tmp_path / "a9").mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    store = FolderClipStore(tmp_path, cache_bytes=20 * 6 * 4 * 2)
    assert len(store) == 4 and store.shape == (20, 6)
    assert list(store.regions_with_clips()) == [0, 3, 5]
    ids = store.lookup(np.array([[0, 3], [5, 4]]), np.array([[2, 1], [7, 1]]))
    assert ids[1, 1] == -1
    for (r, k), cid in zip([(0, 2), (3, 1), (5, 7)], ids.ravel()[:3]):
        np.testing.assert_array_equal(store.get(cid), clips[(r, k)])
    assert len(store._cache) <= 2  # bounded
    with pytest.raises(ValueError):
        store.get(0).__setitem__((0, 0), 1.0)  # read-only


def test_empty_folder_message(tmp_path):
    (tmp_path / "nmm_spikes").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No mat files found in .*nmm_spikes \(looked for a\*/nmm_\*\.mat\)"):
        FolderClipStore(tmp_path / "nmm_spikes")
    with pytest.raises(FileNotFoundError, match="esikit simulate"):
        FolderClipStore(tmp_path / "missing")


def test_unreadable_and_misshapen_clips(tmp_path):
    _write_clips(tmp_path, [(0, 1)])
    (tmp_path / "a1").mkdir()
    (tmp_path / "a1" / "nmm_1.mat").write_bytes(b"garbage that is not a mat file" * 10)
    _write_clips(tmp_path, [(2, 1)], shape=(20, 5))
    store = FolderClipStore(tmp_path)
    store.get(0)
    with pytest.raises(ClipReadError, match="a1/nmm_1.mat"):
        store.get(1)
    with pytest.raises(ClipReadError, match=r"shape \(20, 5\), expected \(20, 6\)"):
        store.get(2)


def test_shape_is_the_most_common_not_the_first_clips(tmp_path):
    _write_clips(tmp_path, [(0, 1)], shape=(10, 6))  # clip 0, the first one read, is the odd one
    _write_clips(tmp_path, [(1, 1), (2, 1), (3, 1)])
    store = FolderClipStore(tmp_path)
    assert store.shape == (20, 6)
    with pytest.raises(ClipReadError, match=r"a0/nmm_1\.mat: clip has shape \(10, 6\), expected \(20, 6\)"):
        store.get(0)


def test_h5_store(tmp_path):
    data = np.arange(4 * 10 * 3, dtype=np.float32).reshape(4, 10, 3)
    with h5py.File(tmp_path / "train_nmm.h5", "w") as f:
        f["data"] = data
    store = H5ClipStore(tmp_path / "train_nmm.h5")
    assert len(store) == 4 and store.shape == (10, 3)
    np.testing.assert_array_equal(store.get(2), data[2])
    np.testing.assert_array_equal(store.lookup_index(np.array([0, 3, 4, -1])), [0, 3, -1, -1])


def test_source_checksums(tmp_path):
    import zlib

    clips = _write_clips(tmp_path / "s", [(0, 1), (1, 1)])
    store = FolderClipStore(tmp_path / "s")
    path = tmp_path / "s" / "a1" / "nmm_1.mat"
    crc = store.source_checksum(1)
    assert crc == zlib.crc32(path.read_bytes())
    arr, crc2 = store.read_with_checksum(1)
    np.testing.assert_array_equal(arr, clips[(1, 1)])
    assert crc2 == crc
    st = path.stat()
    save_mat_file(path, {"data": clips[(1, 1)] + 1})  # same size, other bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and store.source_checksum(1) != crc
    path.unlink()
    with pytest.raises(ClipReadError, match="a1/nmm_1.mat: cannot read clip"):
        store.source_checksum(1)
    data = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    with h5py.File(tmp_path / "x_nmm.h5", "w") as f:
        f["data"] = data
    h5 = H5ClipStore(tmp_path / "x_nmm.h5")
    assert h5.source_checksum(1) == zlib.crc32(data[1].tobytes()) != h5.source_checksum(0)
    arr, crc = h5.read_with_checksum(1)
    np.testing.assert_array_equal(arr, data[1])
    assert crc == zlib.crc32(data[1].tobytes())


def test_infer_and_decode_nper():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 50, size=(200, 2))
    ks = rng.integers(1, 8, size=(200, 2))
    nper = 7
    idx = (centres + 1) * nper + ks + 1
    present = np.ones_like(centres, bool)
    ks[:, :] = np.where(present, ks, 0)
    assert infer_nper(idx, centres, present) == nper
    np.testing.assert_array_equal(decode_nmm_idx(idx, centres, nper), ks)
    # Centre 0 with nmm_idx 11 fits nper = 5 (k = 5) up to nper = 9 (k = 1).
    with pytest.raises(ValueError, match="every value from 5 to 9"):
        infer_nper(np.array([[11]]), np.array([[0]]), np.array([[True]]))
    bad = idx.copy()
    bad[0, 0] = 1  # no nper can give this
    with pytest.raises(ValueError, match="no value is consistent"):
        infer_nper(bad, centres, present)


def test_resolution_modes(tmp_path):
    _write_clips(tmp_path, [(r, k) for r in range(20) for k in (1, 2)])
    store = FolderClipStore(tmp_path)
    raw = make_toy_metadata(np.random.default_rng(1), 30, 20, 2)
    meta = metadata_from_arrays(raw, 20)
    a, miss_a, mode_a = resolve_clip_ids(meta, store)
    b, miss_b, mode_b = resolve_clip_ids(meta, store, "formula")
    assert mode_a == "random_samples" and mode_b == "formula"
    np.testing.assert_array_equal(a, b)
    assert not miss_a and not miss_b
    c, _, mode_c = resolve_clip_ids(meta, store, mapping=lambda i, s, centre: (centre, 1))
    assert mode_c == "mapping"
    np.testing.assert_array_equal(c[meta.present], store.lookup(meta.centres, np.ones_like(meta.centres))[meta.present])
    with pytest.raises(ValueError, match="Invalid value for 'clip_resolution'"):
        resolve_clip_ids(meta, store, "auto2")
    raw["random_samples"][0, 0] = 9  # a clip that does not exist
    meta = metadata_from_arrays(raw, 20)
    ids, miss, _ = resolve_clip_ids(meta, store)
    assert ids[0, 0] == -1 and miss[0].endswith(f"a{int(raw['selected_region'][0, 0, 0])}/nmm_9.mat")
