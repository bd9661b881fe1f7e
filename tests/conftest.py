"""Shared pytest fixtures: paths to the reference data beside the project, a grid anatomy, fingerprints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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


def make_grid_anatomy(nx: int = 8, ny: int = 8, spacing_mm: float = 10.0, n_channels: int = 16, seed: int = 0):
    """A flat ``nx x ny`` grid of regions: 4-neighbour adjacency, ``spacing_mm`` apart.

    Returns a namespace with ``adjacency`` (symmetric CSR, bool), ``centres``
    (``(nx * ny, 3)`` mm) and a random ``fwd`` (``(n_channels, nx * ny)``), which is what
    the patch growers, the metadata generator and the dynamic dataset read from an
    anatomy.
    """
    import numpy as np
    import scipy.sparse as sp

    idx = np.arange(nx * ny).reshape(nx, ny)
    rows, cols = [], []
    for a, b in ((idx[:-1, :], idx[1:, :]), (idx[:, :-1], idx[:, 1:])):
        rows += a.ravel().tolist()
        cols += b.ravel().tolist()
    adj = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(nx * ny, nx * ny))
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    centres = np.stack([xx.ravel() * spacing_mm, yy.ravel() * spacing_mm, np.zeros(nx * ny)], axis=1)
    fwd = np.random.default_rng(seed).normal(size=(n_channels, nx * ny))
    return SimpleNamespace(adjacency=(adj + adj.T).tocsr(), centres=centres, fwd=fwd)


@pytest.fixture(scope="session")
def grid_anatomy():
    """:func:`make_grid_anatomy`, the small test anatomy of the head, simulate and data tests."""
    return make_grid_anatomy


def array_fingerprint(arrays: dict) -> str:
    """sha256 of named arrays: integers and booleans exactly, floats as text.

    Floats are written with 9 significant digits (float64) or 6 (float32), so that a
    last-bit difference of a math library on another CPU does not fail a reproducibility
    test, while any real change of a value does.
    """
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        if a.dtype.kind == "f":
            fmt = "%.6g" if a.dtype.itemsize <= 4 else "%.9g"
            h.update(" ".join(np.char.mod(fmt, a.astype(np.float64).ravel()).tolist()).encode())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def fingerprint():
    """:func:`array_fingerprint`."""
    return array_fingerprint


@pytest.fixture(scope="session")
def ring_toy(tmp_path_factory):
    """A 16-region toy dataset (:func:`esikit.data.toy.make_toy_dataset`) and a ring anatomy
    over its regions, as an Anatomy (``anatomy``) and saved (``anatomy_path``): what the
    dynamic mode needs."""
    import numpy as np
    import scipy.sparse as sp

    from esikit.data.toy import make_toy_dataset
    from esikit.head.anatomy import Anatomy

    root = tmp_path_factory.mktemp("ring_toy")
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


@pytest.fixture()
def single_torch_thread():
    """torch on one intra-op thread for the test (restored after).

    Tiny tensors gain nothing from threads, and on a loaded machine (CI's 2 shared cores)
    OpenMP spin-waiting made one LSTM test 100x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
