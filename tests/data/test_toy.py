"""Tests for esikit.data.toy (the small DeepSIF-layout dataset of tests and smoke runs)."""

from __future__ import annotations

import numpy as np

from esikit.data.toy import make_toy_dataset, make_toy_metadata, toy_patches

# Fingerprints (tests/conftest.py array_fingerprint) of toy data made before the sample
# configurations were rebuilt on esikit.head.configs: the same seed gives the same data.
TOY_METADATA_FINGERPRINT = "570b7b13c38263917f9c7b578299b86fa85f43ce24e33bd9fa1834174c757409"
TOY_DATASET_FINGERPRINT = "5027f5f114a107593c4d511cf5a05146bffc84c64161e3ea4add9d61d034898d"


def test_toy_metadata_layout_and_reproducibility(fingerprint):
    meta = make_toy_metadata(np.random.default_rng(4), 25, 20, 3, regions_with_clips=np.arange(2, 18))
    sel, mag = meta["selected_region"], meta["mag_change"]
    assert sel.shape == mag.shape == (25, 2, 8) and meta["scale_ratio"].shape == (25, 2, 3)
    present = sel[:, :, 0] != 15213
    assert present[:, 0].all() and 0 < present[:, 1].sum() < 25
    centres = sel[:, :, 0][present].astype(int)
    assert ((centres >= 2) & (centres < 18)).all()
    ks = meta["random_samples"][present]
    assert ((ks >= 1) & (ks <= 3)).all()
    np.testing.assert_array_equal(meta["nmm_idx"][present], (centres + 1) * 3 + ks + 1)
    assert fingerprint(meta) == TOY_METADATA_FINGERPRINT


def test_toy_patches_ring():
    np.testing.assert_array_equal(toy_patches(10, 9, 4), [9, 0, 8, 1])


def test_toy_dataset_reproduces(tmp_path, fingerprint):
    a = make_toy_dataset(tmp_path / "a", n_regions=12, n_channels=6, n_times=80, n_train=10, n_test=4, seed=2)
    b = make_toy_dataset(tmp_path / "b", n_regions=12, n_channels=6, n_times=80, n_train=10, n_test=4, seed=2)
    arrays = {"fwd": a["fwd"], **{f"train/{k}": v for k, v in a["train_meta"].items()},
              **{f"test/{k}": v for k, v in a["test_meta"].items()},
              **{f"clip/{r}/{k}": v for (r, k), v in a["clips"].items()}}
    assert fingerprint(arrays) == fingerprint({"fwd": b["fwd"], **{f"train/{k}": v for k, v in b["train_meta"].items()},
                                               **{f"test/{k}": v for k, v in b["test_meta"].items()},
                                               **{f"clip/{r}/{k}": v for (r, k), v in b["clips"].items()}})
    assert fingerprint(arrays) == TOY_DATASET_FINGERPRINT
