"""The fast path against the reference: draws, packed cache, batched and compact synthesis."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from esikit.data import SpikeEEGMetadataDataset, create_dataloaders_from_metadata
from esikit.data import _rng
from esikit.data.fast import collate_synthesized, expand_compact_target
from esikit.data.packed import PackedClipCache
from esikit.data.toy import make_toy_dataset
from esikit.io import save_mat_file

from .reference import reference_sample


def _close(a, b, rtol=2e-4):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, atol=rtol * scale, rtol=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("fast"), n_regions=30, n_channels=12, n_train=40, n_test=4,
                            max_patch=9, seed=11)


# -- draws -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, epoch, index, k, s, shape", [
    (0, 0, 0, 3, 2, (500, 75)),
    (7, 3, 123456, 5, 1, (37, 7)),
    (2**33 + 5, 1, 9, 1, 2, (11, 3)),  # a seed of two words, K = 1 draws nothing
    (1, 2**40, 3, 2**20, 3, (5, 5)),
])
def test_compiled_draws_equal_numpy(seed, epoch, index, k, s, shape):
    rng = np.random.default_rng([seed, epoch, index])
    want_c, want_n = rng.integers(0, k, size=s), rng.standard_normal(shape, dtype=np.float32)
    choice, noise = np.empty(s, np.int64), np.empty(shape, np.float32)
    _rng.sample_draws_into(seed, epoch, index, k, choice, noise)
    np.testing.assert_array_equal(choice, want_c)
    np.testing.assert_array_equal(noise, want_n)


def test_compiled_draws_many_samples():
    # 80 samples of 500 x 75: ~3 million normals, several hundred through the rare paths.
    idx = np.arange(1000, 1080)
    choice = np.empty((idx.size, 2), np.int64)
    noise = np.empty((idx.size, 500, 75), np.float32)
    _rng.batch_draws(4, 2, idx, 3, choice, noise)
    for b, i in enumerate(idx):
        rng = np.random.default_rng([4, 2, int(i)])
        np.testing.assert_array_equal(choice[b], rng.integers(0, 3, size=2))
        np.testing.assert_array_equal(noise[b], rng.standard_normal((500, 75), dtype=np.float32))


def test_ziggurat_tables_match_numpy_by_probing():
    # A buffered upper half is the next uint32 NumPy uses: feed chosen words, see which
    # are accepted at once (the state does not move) and which go to the rare paths.
    g = np.random.default_rng(0)
    base = g.bit_generator.state

    def accepted(idx, rabs):
        g.bit_generator.state = {"bit_generator": "PCG64", "state": dict(base["state"]), "has_uint32": 1,
                                 "uinteger": (rabs << 9) | idx}
        x = g.standard_normal(1, dtype=np.float32)[0]
        after = g.bit_generator.state
        return after["has_uint32"] == 0 and after["state"]["state"] == base["state"]["state"], x

    for idx in range(0, 256, 5):
        k = int(_rng._KI[idx])
        if k > 0:
            assert accepted(idx, k - 1)[0]
            assert accepted(idx, 1)[1] == _rng._WI[idx]
        assert not accepted(idx, k)[0]
    assert _rng.check_against_numpy()


# -- fast dataset path against the reference --------------------------------------------------


def test_fast_matches_reference_path_and_independent_reference(toy):
    fast = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=3)
    ref = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=3, synthesis="reference")
    assert fast._fast is not None and ref._fast is None
    fast.set_epoch(2)
    ref.set_epoch(2)
    for i in range(len(fast)):
        e, y = fast.synthesize(i)
        re, ry = ref.synthesize(i)
        _close(e, re)
        _close(y, ry)
        assert e.dtype == y.dtype == np.float32
    for i in (0, 7, 13):
        ie, iy = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"], seed=3, epoch=2)
        e, y = fast.synthesize(i)
        _close(e, ie)
        _close(y, iy)


def test_batches_equal_single_samples_and_compact_expands(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=1)
    pos = [5, 0, 17, 17, 33]
    eeg, src = ds.synthesize_batch(pos)
    assert eeg.shape == (5, 500, 12) and src.shape == (5, 500, 30)
    for b, i in enumerate(pos):
        e, y = ds.synthesize(i)
        np.testing.assert_array_equal(eeg[b].numpy(), e)
        np.testing.assert_array_equal(src[b].numpy(), y)
    e2, (regions, values) = ds.synthesize_batch(pos, target="compact")
    assert torch.equal(e2, eeg)
    assert regions.dtype == torch.int64 and values.shape[0] == 5 and values.shape[2] == 500
    assert torch.equal(expand_compact_target(regions, values, 30), src)


def test_overlapping_patches_one_source_rows_duplicates_and_flat_centres(tmp_path, toy):
    # Hand-made rows: patches overlapping between sources, a patch region that is the other
    # source's centre, a one-source row, a region listed twice, a centre that never rises.
    clips = toy["clips"]
    flat_key = (2, 1)
    save_mat_file(toy["nmm_spikes_dir"] / "a2" / "nmm_1.mat", {"data": -np.abs(clips[flat_key])})
    pad = 15213
    sel = np.full((5, 2, 6), pad, dtype=float)
    mag = np.full((5, 2, 6), pad, dtype=float)
    sel[0, 0, :4], sel[0, 1, :4] = [4, 5, 6, 7], [6, 7, 8, 9]          # overlap 6, 7
    sel[1, 0, :3], sel[1, 1, :3] = [10, 11, 12], [11, 10, 3]           # each centre in the other patch
    sel[2, 0, :5] = [20, 21, 22, 23, 24]                               # one source
    sel[3, 0, :4], sel[3, 1, :2] = [14, 15, 15, 16], [29, 28]          # 15 listed twice
    sel[4, 0, :2], sel[4, 1, :2] = [2, 3], [25, 26]                    # flat centre (max <= 0)
    for i in range(5):
        for s in range(2):
            n = int((sel[i, s] != pad).sum())
            mag[i, s, :n] = np.linspace(1.0, 0.4, n)
    meta = {"selected_region": sel, "mag_change": mag,
            "random_samples": np.where(sel[:, :, 0] != pad, 1, 0).astype(float),
            "scale_ratio": np.tile([[0.7, 1.9, 2.5]], (5, 2, 1)), "current_snr": np.array([[5.0], [10], [15], [20], [7]])}
    path = tmp_path / "hand.mat"
    save_mat_file(path, meta)
    keyed = dict(clips)
    keyed[flat_key] = -np.abs(clips[flat_key])
    for normalize in (True, False):
        ds = SpikeEEGMetadataDataset(path, toy["fwd_path"], toy["nmm_spikes_dir"], seed=9, normalize=normalize)
        eeg, src = ds.synthesize_batch(range(5))
        for i in range(5):
            ref = SpikeEEGMetadataDataset(path, toy["fwd_path"], toy["nmm_spikes_dir"], seed=9,
                                          normalize=normalize, synthesis="reference")
            re, ry = ref.synthesize(i)
            _close(eeg[i].numpy(), re)
            _close(src[i].numpy(), ry)
            assert np.isfinite(eeg[i].numpy()).all() and np.isfinite(src[i].numpy()).all()
        ie, iy = reference_sample(meta, 0, keyed, toy["fwd"], seed=9, normalize=normalize)
        _close(eeg[0].numpy(), ie)
        _close(src[0].numpy(), iy)
    save_mat_file(toy["nmm_spikes_dir"] / "a2" / "nmm_1.mat", {"data": clips[flat_key]})


@pytest.mark.parametrize("fmt, padding", [("v7.3", np.nan), ("octave-text", 999)])
def test_fast_matches_reference_other_formats(tmp_path, fmt, padding):
    toy = make_toy_dataset(tmp_path, n_regions=20, n_channels=8, n_train=8, n_test=2, metadata_format=fmt,
                           padding=padding, seed=2)
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=4)
    eeg, src = ds.synthesize_batch(range(len(ds)))
    for i in range(len(ds)):
        re, ry = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"], seed=4)
        _close(eeg[i].numpy(), re)
        _close(src[i].numpy(), ry)


def test_numpy_draws_fallback_gives_the_same_samples(toy, monkeypatch):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=2)
    want = ds.synthesize_batch([1, 2, 3])
    monkeypatch.setitem(_rng._CHECKED, "ok", False)
    got = ds.synthesize_batch([1, 2, 3])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# -- loaders -----------------------------------------------------------------------------------


def test_loader_batches_whole_and_workers_identical(toy):
    train, _, _, info = create_dataloaders_from_metadata(
        toy["train_metadata"], None, toy["fwd_path"], batch_size=6, val_split=0.0, num_workers=0, seed=5)
    single = [(e.clone(), y.clone()) for e, y in train]
    ds = info["train_dataset"]
    order = list(train.sampler)
    e0, y0 = ds.synthesize_batch(order[:6])
    assert torch.equal(single[0][0], e0) and torch.equal(single[0][1], y0)
    multi = DataLoader(ds, batch_size=6, sampler=train.sampler, num_workers=2, collate_fn=collate_synthesized)
    got = list(multi)
    assert len(got) == len(single)
    for (a, b), (c, d) in zip(single, got):
        assert torch.equal(a, c) and torch.equal(b, d)
    # A plain DataLoader (default collate) stacks the same samples.
    plain = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(plain[0], ds.synthesize_batch(range(4))[0])


def test_compact_target_through_loader(toy):
    train, _, _, info = create_dataloaders_from_metadata(
        toy["train_metadata"], None, toy["fwd_path"], batch_size=4, val_split=0.0, num_workers=0, seed=5,
        target="compact")
    eeg, (regions, values) = next(iter(train))
    ds = info["train_dataset"]
    assert ds.target == "compact"
    dense = ds.synthesize_batch(list(train.sampler)[:4], target="dense")[1]
    assert torch.equal(expand_compact_target(regions, values, 30), dense)
    with pytest.raises(ValueError, match="Invalid value for 'target'"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], target="sparse")
    with pytest.raises(ValueError, match="Invalid value for 'synthesis'"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], synthesis="slow")


# -- packed cache ------------------------------------------------------------------------------


def test_packed_cache_built_once_and_rebuilt_on_changes(tmp_path, caplog):
    toy = make_toy_dataset(tmp_path / "d", n_regions=12, n_channels=5, n_train=10, n_test=2, seed=3)
    spikes = toy["nmm_spikes_dir"]
    cache_dir = tmp_path / "cache"
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=cache_dir)
    cache = ds._fast.cache
    assert cache.folder == cache_dir and cache.n_clips == 24 and cache.valid.all()
    np.testing.assert_array_equal(cache.clips[0], toy["clips"][(0, 1)].T)
    stamp = (cache.generation / "clips.f32").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="esikit.data.packed"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=cache_dir)
    assert not any("Packing" in r.getMessage() for r in caplog.records)
    assert (cache.generation / "clips.f32").stat().st_mtime_ns == stamp

    # Change one clip (new size and mtime), add one, remove one: noticed and rebuilt.
    time.sleep(0.01)
    changed = toy["clips"][(3, 2)] * 2 + 1
    save_mat_file(spikes / "a3" / "nmm_2.mat", {"data": np.vstack([changed])})
    save_mat_file(spikes / "a5" / "nmm_3.mat", {"data": toy["clips"][(5, 1)]})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="esikit.data.packed"):
        ds2 = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=cache_dir)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "1 clip(s) added" in text and "1 changed" in text and "23 reused" in text
    c2 = ds2._fast.cache
    assert c2.n_clips == 25
    np.testing.assert_allclose(c2.clips[ds2.store.lookup(np.array(3), np.array(2))], changed.T, rtol=1e-6)
    os.remove(spikes / "a5" / "nmm_3.mat")
    ds3 = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=cache_dir)
    assert ds3._fast.cache.n_clips == 24
    for i in range(3):
        re, ry = reference_sample(toy["train_meta"], i, {**toy["clips"], (3, 2): changed}, toy["fwd"])
        e, y = ds3.synthesize(i)
        _close(e, re)
        _close(y, ry)


def test_cache_location_env_and_worker_pickling(tmp_path, monkeypatch):
    toy = make_toy_dataset(tmp_path / "d", n_regions=10, n_channels=4, n_train=6, n_test=2, seed=5)
    monkeypatch.setenv("ESIKIT_CACHE_DIR", str(tmp_path / "env_cache"))
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"])
    assert ds._fast.cache.folder.parent == tmp_path / "env_cache"
    import pickle

    blob = pickle.dumps(ds._fast.cache)
    assert len(blob) < 10_000  # file names, not arrays
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.clips, ds._fast.cache.clips)


def test_unreadable_clip_is_missing_and_policies_hold(tmp_path, caplog):
    toy = make_toy_dataset(tmp_path / "d", n_regions=14, n_channels=6, n_train=20, n_test=2, seed=8)
    sel, rs = toy["train_meta"]["selected_region"], toy["train_meta"]["random_samples"]
    victim = (int(sel[0, 0, 0]), int(rs[0, 0]))
    (toy["nmm_spikes_dir"] / f"a{victim[0]}" / f"nmm_{victim[1]}.mat").write_bytes(b"MATLAB 5.0" + b"\0" * 100)
    users = sorted({i for i in range(20) for s in range(2)
                    if sel[i, s, 0] < 14 and (int(sel[i, s, 0]), int(rs[i, s])) == victim})
    with caplog.at_level(logging.WARNING):
        ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=tmp_path / "c")
    warn = [r.getMessage() for r in caplog.records if "missing or unreadable" in r.getMessage()]
    assert len(warn) == 1 and f"nmm_{victim[1]}.mat" in warn[0]
    for i in users:
        re, ry = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"], missing={victim})
        e, y = ds.synthesize(i)
        _close(e, re)
        _close(y, ry)
    with pytest.raises(FileNotFoundError, match="missing_clips='error'"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=tmp_path / "c",
                                missing_clips="error")
    dropped = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=tmp_path / "c",
                                      missing_clips="drop")
    assert len(dropped) == 20 - len(users)


def test_h5_store_fast_path(tmp_path, toy):
    import h5py

    keys = sorted(toy["clips"])
    meta = {k: v.copy() for k, v in toy["train_meta"].items() if k != "random_samples"}
    sel = meta["selected_region"]
    for i in range(sel.shape[0]):
        for s in range(sel.shape[1]):
            if sel[i, s, 0] < 30:
                meta["nmm_idx"][i, s] = keys.index((int(sel[i, s, 0]), int(toy["train_meta"]["random_samples"][i, s])))
    save_mat_file(tmp_path / "train.mat", meta)
    with h5py.File(tmp_path / "train_nmm.h5", "w") as f:
        f["data"] = np.stack([toy["clips"][k] for k in keys])
    ds = SpikeEEGMetadataDataset(tmp_path / "train.mat", toy["fwd_path"])
    assert ds.clip_resolution == "h5" and ds._fast.cache.n_clips == len(keys)
    eeg, src = ds.synthesize_batch(range(6))
    for i in range(6):
        re, ry = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"])
        _close(eeg[i].numpy(), re)
        _close(src[i].numpy(), ry)


def test_real_leadfield_fast_matches_reference(tmp_path, deepsif_anatomy_dir):
    from esikit.io import load_forward_matrix

    fwd = load_forward_matrix(deepsif_anatomy_dir / "leadfield_75_20k.mat")
    toy = make_toy_dataset(tmp_path, fwd=fwd, clips_per_region=1, n_train=4, n_test=2, max_patch=70, seed=9,
                           clip_regions=np.arange(0, 994, 97))
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], deepsif_anatomy_dir / "leadfield_75_20k.mat")
    eeg, src = ds.synthesize_batch(range(4))
    for i in range(4):
        re, ry = reference_sample(toy["train_meta"], i, toy["clips"], fwd)
        _close(eeg[i].numpy(), re)
        _close(src[i].numpy(), ry)
