"""Tests for esikit.data.loaders: the dynamic mode's loaders (the metadata ones: test_dataset.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from esikit.data import create_dynamic_dataloaders
from esikit.data.toy import make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 16-region toy dataset and a ring anatomy over its regions (saved as ``ring.npz``)."""
    from esikit.head.anatomy import Anatomy

    root = tmp_path_factory.mktemp("loaders")
    toy = make_toy_dataset(root / "toy", n_regions=16, n_channels=8, n_times=100, n_train=8, n_test=4,
                           clips_per_region=3, seed=3)
    ring = sp.diags([1.0, 1.0], [1, -1], shape=(16, 16), dtype=float).tolil()
    ring[0, 15] = ring[15, 0] = 1
    anatomy = Anatomy(name="ring", fwd=toy["fwd"], channel_names=[f"E{i}" for i in range(8)],
                      centres=np.c_[np.cos(np.arange(16)), np.sin(np.arange(16)), np.zeros(16)] * 50,
                      adjacency=ring.tocsr(), weights=np.zeros((16, 16)), tract_lengths=np.zeros((16, 16)),
                      node_of_region=np.arange(16), region_labels=[str(i) for i in range(16)])
    anatomy.save(root / "ring.npz")
    return {**toy, "anatomy": anatomy, "anatomy_path": root / "ring.npz"}


def test_dynamic_loaders_pass_every_dataset_option(toy):
    # the training, validation and (metadata) test sets all get the data options
    _, val, test, info = create_dynamic_dataloaders(
        toy["nmm_spikes_dir"], toy["fwd_path"], toy["anatomy"], train_dataset_len=8,
        test_metadata_path=toy["test_metadata"], patch_size_range=(1, 3), batch_size=4, val_split=0.25,
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


def test_dynamic_loaders_without_test_file(toy):
    train, val, test, info = create_dynamic_dataloaders(
        toy["nmm_spikes_dir"], toy["fwd_path"], toy["anatomy"], train_dataset_len=6, test_dataset_len=5,
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
        create_dynamic_dataloaders(toy["nmm_spikes_dir"], toy["fwd_path"], toy["anatomy"], batch_size=0)
