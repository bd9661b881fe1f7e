"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_torch_thread():
    # The tiny tensors here gain nothing from intra-op threads, and on a loaded machine
    # (CI with 2 shared cores) OpenMP spin-waiting made one LSTM test 100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
