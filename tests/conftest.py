"""Shared pytest fixtures: paths to the reference data beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
DEEPSIF_ANATOMY_DIR = SHARED_DIR / "deepsif_anatomy"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def deepsif_anatomy_dir() -> Path:
    """The real DeepSIF template files in ../shared (never copied into the project)."""
    if not (DEEPSIF_ANATOMY_DIR / "leadfield_75_20k.mat").exists():
        pytest.skip(f"DeepSIF reference anatomy not found at {DEEPSIF_ANATOMY_DIR}")
    return DEEPSIF_ANATOMY_DIR
