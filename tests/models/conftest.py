"""Fixtures for the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_torch_thread(single_torch_thread):
    """Every model test on one torch thread (tests/conftest.py)."""
