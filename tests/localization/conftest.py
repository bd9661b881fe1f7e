"""Fixtures for localization tests: a toy head, a linear 'network' that inverts it exactly, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial import ConvexHull
from torch import nn

from esikit.head.anatomy import Anatomy
from esikit.localization.recording import standard_positions
from esikit.models import registry
from esikit.models._base import ESIModel
from esikit.train.checkpoint import save_checkpoint

CH_NAMES = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz", "P4",
            "P8", "O1", "O2", "Oz"]
N_REG = 12
SFREQ = 500.0


class LinearNet(ESIModel):
    """Output = input @ W.T: set W to the pseudo-inverse of the leadfield for an exact inverse."""

    name = "test_linear"

    def __init__(self, n_channels: int, n_regions: int):
        super().__init__()
        self._record_config(locals())
        self.n_channels, self.n_regions = n_channels, n_regions
        self.lin = nn.Linear(n_channels, n_regions, bias=False)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _fibonacci_sphere(n: int, radius: float) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return radius * np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


def toy_anatomy() -> Anatomy:
    """12 regions on a 70 mm sphere, 20 standard channels, a smooth leadfield, a 300-vertex mesh."""
    pos = standard_positions(CH_NAMES)  # metres, head frame
    elec = pos / np.linalg.norm(pos, axis=1, keepdims=True) * 90.0  # mm on a 90 mm sphere
    centres = _fibonacci_sphere(N_REG, 70.0)
    d2 = ((elec[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    fwd = np.exp(-d2 / (2 * 45.0 ** 2))
    verts = _fibonacci_sphere(300, 70.0)
    tri = ConvexHull(verts).simplices.astype(np.int64)
    vr = np.argmin(((verts[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    dist = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    adj = scipy.sparse.csr_matrix((dist < 45.0) & (dist > 0))
    return Anatomy(name="toy12", fwd=fwd, channel_names=CH_NAMES, centres=centres, adjacency=adj,
                   weights=np.ones((N_REG, N_REG)) - np.eye(N_REG), tract_lengths=dist,
                   node_of_region=np.arange(N_REG), region_labels=[f"reg{r}" for r in range(N_REG)],
                   vertices=verts, triangles=tri, vertex_region=vr)


@pytest.fixture(autouse=True)
def _register_linear(monkeypatch):
    monkeypatch.setitem(registry.MODELS, LinearNet.name, LinearNet)


@pytest.fixture
def anatomy() -> Anatomy:
    return toy_anatomy()


def make_checkpoint(path: Path, anat: Anatomy, *, montage: bool = True, model: nn.Module | None = None) -> Path:
    """A checkpoint whose network inverts the toy leadfield exactly (after average reference)."""
    anat_path = anat.save(path.parent / "anatomy.npz")
    if model is None:
        model = LinearNet(anat.n_channels, anat.n_regions)
        fa = anat.fwd - anat.fwd.mean(axis=0, keepdims=True)
        with torch.no_grad():
            model.lin.weight.copy_(torch.from_numpy(np.linalg.pinv(fa)).float())
    state = {"model_state": model.state_dict(), "model_config": model.get_config(), "epoch": 0,
             "config": {"ANATOMY": str(anat_path), "FWD_MATRIX_PATH": None}}
    if montage:
        state["montage"] = {"ch_names": list(anat.channel_names), "ch_pos": None, "sfreq": SFREQ}
    return save_checkpoint(state, path)


@pytest.fixture
def checkpoint(tmp_path, anatomy) -> Path:
    return make_checkpoint(tmp_path / "ckpt" / "best.pt", anatomy)


def spike_recording(anat: Anatomy, regions=(3, 7, 10), times=(2.0, 5.0, 8.0), **kw):
    """A toy recording with spikes at known regions and times (noiseless unless ``snr_db`` is given)."""
    from esikit.localization.synthetic import make_spike_recording

    kw.setdefault("snr_db", None)
    kw.setdefault("background", 0.02)
    return make_spike_recording(anat.fwd, anat.channel_names, list(regions), list(times), **kw)
