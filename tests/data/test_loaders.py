"""Tests for esikit.data.loaders: the dynamic mode's loaders (the metadata ones: test_dataset.py)."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.data import create_dynamic_dataloaders


def test_dynamic_loaders_pass_every_dataset_option(ring_toy):
    # the training, validation and (metadata) test sets all get the data options
    _, val, test, info = create_dynamic_dataloaders(
        ring_toy["nmm_spikes_dir"], ring_toy["fwd_path"], ring_toy["anatomy"], train_dataset_len=8,
        test_metadata_path=ring_toy["test_metadata"], patch_size_range=(1, 3), batch_size=4, val_split=0.25,
        num_workers=0, seed=0, normalize=False, synthesis="reference", missing_clips="drop", nper=3,
        clip_resolution="formula", cache_dir=None, noise="white", noise_bank_path=None, target="dense")
    for name in ("train_dataset", "val_dataset", "test_dataset"):
        ds = info[name]
        assert ds._fast is None and ds.missing_clips == "drop" and ds.normalize is False, name
    test_ds = info["test_dataset"]
    assert test_ds.clip_resolution == "formula" and test_ds.synthesis_mode == "reference"
    assert (info["n_train"], info["n_val"], info["n_test"]) == (8, 2, 4)
    assert info["train_dataset"].patch_size_range == (1, 3) and info["n_regions"] == 16
    assert len(val.dataset) == 2 and len(test.dataset) == 4


def test_dynamic_loaders_without_test_file(ring_toy):
    train, val, test, info = create_dynamic_dataloaders(
        ring_toy["nmm_spikes_dir"], ring_toy["fwd_path"], ring_toy["anatomy"], train_dataset_len=6, test_dataset_len=5,
        val_split=0.0, batch_size=3, num_workers=0, seed=7, synthesis="reference")
    train_ds, test_ds = info["train_dataset"], info["test_dataset"]
    assert val is None and info["n_val"] == 0
    # the test set is another dynamic set (seed + 2), frozen at epoch 0
    assert test_ds.seed == 9 and len(test_ds) == 5 and train_ds.seed == 7
    # default patch sizes: DeepSIF's 70 of 994 regions, scaled to 16 regions
    assert train_ds.patch_size_range == (1, 1)
    eeg, _src = next(iter(train))
    assert tuple(eeg.shape) == (3, 100, 8)
    with pytest.raises(ValueError, match="'BATCH_SIZE'"):
        create_dynamic_dataloaders(ring_toy["nmm_spikes_dir"], ring_toy["fwd_path"], ring_toy["anatomy"], batch_size=0)
