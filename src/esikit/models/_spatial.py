"""DeepSIF's per-time-step spatial module (an MLP over the channels)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ._base import make_activation

logger = logging.getLogger(__name__)


class MLPSpatialFilter(nn.Module):
    """Per-time-step MLP over the EEG channels, as in DeepSIF (Sun et al., PNAS 2022).

    Structure (``act`` is the activation, ``C`` channels, ``H`` hidden units)::

        x = act(fc12(act(fc11(x))) + x)               # residual block C -> C
        x = act(fc22(act(fc21(x))) + fc23(x))         # residual block C -> H (linear skip)
        y = act(value(x))                             # H -> H

    The layer names match DeepSIF's ``MLPSpatialFilter`` so that DeepSIF's published
    weights load with ``load_state_dict``.

    Parameters
    ----------
    n_channels : int
        Number of EEG channels ``C``.
    n_hidden : int
        Output size ``H`` (500 in DeepSIF).
    activation : str
        Activation class name in ``torch.nn`` (``"ELU"`` in DeepSIF's training script).
    """

    def __init__(self, n_channels: int, n_hidden: int, activation: str = "ELU") -> None:
        super().__init__()
        self.fc11 = nn.Linear(n_channels, n_channels)
        self.fc12 = nn.Linear(n_channels, n_channels)
        self.fc21 = nn.Linear(n_channels, n_hidden)
        self.fc22 = nn.Linear(n_hidden, n_hidden)
        self.fc23 = nn.Linear(n_channels, n_hidden)
        self.value = nn.Linear(n_hidden, n_hidden)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., C)`` to ``(..., H)``; applied independently at each time step."""
        act = self.activation
        x = act(self.fc12(act(self.fc11(x))) + x)
        x = act(self.fc22(act(self.fc21(x))) + self.fc23(x))
        return act(self.value(x))
