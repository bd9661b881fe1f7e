"""Fixtures for the training tests."""

from __future__ import annotations

import pytest

from esikit.data.toy import make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 16-region, 8-channel toy dataset of 100-sample clips (24 train, 6 test rows)."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_regions=16, n_channels=8, n_times=100, n_train=24,
                            n_test=6, max_patch=4, seed=1)
