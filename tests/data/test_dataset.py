"""The metadata dataset: determinism, epochs, workers, missing clips, errors."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from esikit.data import MetadataError, SpikeEEGMetadataDataset, create_dataloaders_from_metadata
from esikit.data.toy import make_toy_dataset
from esikit.io import save_mat_file

from .reference import reference_sample


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_regions=24, n_channels=10, n_train=40, n_test=8,
                            seed=4)


def test_defaults_find_clips_beside_metadata(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd"].T)  # R x C is transposed back
    assert len(ds) == 40 and ds.n_regions == 24 and ds.n_channels == 10 and ds.n_times == 500
    text = repr(ds)
    for part in ("train_sample_source1.mat", "samples=40", "regions=24", "channels=10", "random_samples",
                 "missing_clip_sources=0"):
        assert part in text


def test_deterministic_per_seed_epoch_index(toy):
    a = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=1)
    b = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=1)
    for i in (5, 0, 17):  # any order
        assert torch.equal(a[i][0], b[i][0])
    a.set_epoch(1)
    assert not torch.equal(a[3][0], b[3][0])
    b.set_epoch(1)
    assert torch.equal(a[3][0], b[3][0])
    c = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=2)
    assert not torch.equal(c[3][0], b[3][0])


def test_sample_info_without_synthesis(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], dataset_len=10)
    assert len(ds) == 10
    info = ds.sample_info(3)
    sel = toy["train_meta"]["selected_region"][3]
    assert info["centres"] == [int(row[0]) for row in sel if row[0] < 24]
    assert info["snr_db"] == float(toy["train_meta"]["current_snr"][3, 0])
    assert info["n_sources"] == len(info["patches"])
    with pytest.raises(ValueError, match="dataset_len"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], dataset_len=41)


def test_views_share_arrays_and_freeze_epoch(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"])
    val = ds.subset([2, 4], freeze_epoch=True)
    ref = val[1][0]
    assert torch.equal(ref, ds[4][0])
    ds.set_epoch(5)
    val.set_epoch(5)
    assert val.epoch == 0 and torch.equal(val[1][0], ref)
    assert val.metadata is ds.metadata


def _collect(loader):
    return [torch.cat([e.flatten() for e in batch]) for batch in loader]


def test_workers_give_identical_samples(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=3)
    ds.set_epoch(2)
    single = _collect(DataLoader(ds, batch_size=4, num_workers=0))
    multi = _collect(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(single) == len(multi)
    for x, y in zip(single, multi):
        assert torch.equal(x, y)


def _batch_and_probe(batch):
    info = torch.utils.data.get_worker_info()
    md = info.dataset.metadata
    shared = md._shared_tensors["regions"]
    same_memory = md.regions.ctypes.data == shared.data_ptr()
    return batch, shared.is_shared() and same_memory, info.dataset.epoch


def test_spawned_persistent_workers_see_set_epoch_and_map_shared_metadata(toy):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"])
    loader = DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True,
                        multiprocessing_context="spawn", collate_fn=_batch_and_probe)
    ref0 = ds[0][0]
    batch, shared, epoch = next(iter(loader))
    assert torch.equal(batch[0][0], ref0) and shared and epoch == 0
    ds.set_epoch(3)
    batch, shared, epoch = next(iter(loader))
    assert epoch == 3 and torch.equal(batch[0][0], ds[0][0]) and not torch.equal(batch[0][0], ref0)


def test_missing_clip_policies(tmp_path, caplog):
    toy = make_toy_dataset(tmp_path, n_regions=20, n_channels=8, n_train=30, n_test=4, seed=6)
    sel = toy["train_meta"]["selected_region"]
    rs = toy["train_meta"]["random_samples"]
    victim = (int(sel[0, 0, 0]), int(rs[0, 0]))
    os.remove(toy["nmm_spikes_dir"] / f"a{victim[0]}" / f"nmm_{victim[1]}.mat")
    users = [i for i in range(30) for s in range(2)
             if sel[i, s, 0] < 20 and (int(sel[i, s, 0]), int(rs[i, s])) == victim]
    with caplog.at_level(logging.WARNING):
        ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"])
    warnings = [r for r in caplog.records if "missing or unreadable" in r.getMessage()]
    assert len(warnings) == 1 and f"nmm_{victim[1]}.mat" in warnings[0].getMessage()
    assert f"in {len(set(users))} of 30 samples" in warnings[0].getMessage()
    for i in set(users):
        e, y = ds.synthesize(i)
        ref_e, ref_y = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"], missing={victim})
        np.testing.assert_allclose(e, ref_e, atol=2e-4)
        np.testing.assert_allclose(y, ref_y, atol=2e-4)
        assert np.isfinite(e).all() and np.isfinite(y).all()
    with pytest.raises(FileNotFoundError, match="missing_clips='error'"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], missing_clips="error")
    dropped = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], missing_clips="drop")
    assert len(dropped) == 30 - len(set(users))
    assert not set(users) & {dropped.sample_index(i) for i in range(len(dropped))}
    with pytest.raises(ValueError, match="Invalid value for 'missing_clips'"):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], missing_clips="skip")


def test_verify_clips_finds_unreadable_files(tmp_path):
    toy = make_toy_dataset(tmp_path, n_regions=12, n_channels=6, n_train=20, n_test=2, seed=8)
    sel, rs = toy["train_meta"]["selected_region"], toy["train_meta"]["random_samples"]
    bad = toy["nmm_spikes_dir"] / f"a{int(sel[0, 0, 0])}" / f"nmm_{int(rs[0, 0])}.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(FileNotFoundError, match=str(bad.name)):
        SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], verify_clips=True, missing_clips="error")


def test_clip_and_forward_mismatch_is_explained(toy):
    with pytest.raises(ValueError, match=r"shape \(10, 30\), expected \(C, R\).*R=24 .*clips of .* are 500 x 24"):
        SpikeEEGMetadataDataset(toy["train_metadata"], np.ones((10, 30)))


def test_bad_metadata_field_is_reported(tmp_path, toy):
    raw = dict(toy["train_meta"])
    raw["scale_ratio"] = raw["scale_ratio"].copy()
    raw["scale_ratio"][0] = 0.0
    path = tmp_path / "bad.mat"
    save_mat_file(path, raw)
    with pytest.raises(MetadataError, match="'scale_ratio'"):
        SpikeEEGMetadataDataset(path, toy["fwd_path"], toy["nmm_spikes_dir"])


def test_h5_store_through_dataset(tmp_path, toy):
    # A DeepSIF consolidated store: clip c = nmm_idx, so write clips in nmm_idx order.
    meta = {k: v for k, v in toy["train_meta"].items() if k != "random_samples"}
    meta = {k: v.copy() for k, v in meta.items()}
    sel = meta["selected_region"]
    keys = sorted(toy["clips"])
    clips = np.stack([toy["clips"][k] for k in keys])
    for i in range(sel.shape[0]):
        for s in range(sel.shape[1]):
            if sel[i, s, 0] < 24:
                k = int(toy["train_meta"]["random_samples"][i, s])
                meta["nmm_idx"][i, s] = keys.index((int(sel[i, s, 0]), k))
    save_mat_file(tmp_path / "train.mat", meta)
    with h5py.File(tmp_path / "train_nmm.h5", "w") as f:
        f["data"] = clips
    ds = SpikeEEGMetadataDataset(tmp_path / "train.mat", toy["fwd_path"])
    assert ds.clip_resolution == "h5"
    for i in range(5):
        ref_e, _ = reference_sample(toy["train_meta"], i, toy["clips"], toy["fwd"])
        np.testing.assert_allclose(ds[i][0].numpy(), ref_e, atol=2e-4)


def test_create_dataloaders(toy):
    train, val, test, info = create_dataloaders_from_metadata(
        toy["train_metadata"], toy["test_metadata"], toy["fwd_path"], batch_size=4, val_split=0.25, num_workers=0,
        seed=3,
    )
    assert info["n_train"] == 30 and info["n_val"] == 10 and info["n_test"] == 8
    assert info["n_channels"] == 10 and info["n_regions"] == 24 and info["fwd"].shape == (10, 24)
    eeg, src = next(iter(train))
    assert eeg.shape == (4, 500, 10) and src.shape == (4, 500, 24)
    train_rows = {info["train_dataset"].sample_index(i) for i in range(30)}
    val_rows = {info["val_dataset"].sample_index(i) for i in range(10)}
    assert not train_rows & val_rows and len(train_rows | val_rows) == 40
    # Validation and test draws are those of epoch 0, whatever the training epoch.
    v0 = next(iter(val))[0]
    from esikit.data import set_loader_epoch

    set_loader_epoch(train, 4)
    set_loader_epoch(val, 4)
    assert torch.equal(next(iter(val))[0], v0)
    assert info["train_dataset"].epoch == 4
    # Same split for the same seed.
    _, _, _, info2 = create_dataloaders_from_metadata(
        toy["train_metadata"], None, toy["fwd_path"], batch_size=4, val_split=0.25, num_workers=0, seed=3)
    assert {info2["val_dataset"].sample_index(i) for i in range(10)} == val_rows
    with pytest.raises(ValueError, match="VAL_SPLIT"):
        create_dataloaders_from_metadata(toy["train_metadata"], None, toy["fwd_path"], val_split=1.0)
