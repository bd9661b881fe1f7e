"""Temporal convolutional network: DeepSIF's spatial front, then dilated 1-D convolutions."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ._base import ESIModel, make_activation
from ._spatial import MLPSpatialFilter

logger = logging.getLogger(__name__)


class _TimeLayerNorm(nn.LayerNorm):
    """LayerNorm over the feature axis of a ``(B, F, T)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _DilatedResidualBlock(nn.Module):
    """Two non-causal dilated convolutions with a residual connection (length kept)."""

    def __init__(self, width: int, kernel_size: int, dilation: int, activation: str, dropout: float) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv1 = nn.Conv1d(width, width, kernel_size, dilation=dilation, padding=pad)
        self.conv2 = nn.Conv1d(width, width, kernel_size, dilation=dilation, padding=pad)
        # Layer norm over the features at each time step: batch-size free and local in
        # time, so the receptive field stays what the dilations say.
        self.norm1 = _TimeLayerNorm(width)
        self.norm2 = _TimeLayerNorm(width)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.act(self.norm1(self.conv1(x))))
        y = self.norm2(self.conv2(y))
        return self.act(x + y)


class TCNNet(ESIModel):
    """Spatial MLP per time step, then a stack of dilated residual temporal convolutions.

    EEG ``(B, T, C)`` -> :class:`~esikit.models._spatial.MLPSpatialFilter` (``C`` ->
    ``n_hidden``) -> ``n_blocks`` residual blocks of two non-causal 1-D convolutions
    (kernel ``kernel_size``, dilation ``2**b`` in block ``b``, ``n_hidden`` channels,
    length preserved) -> linear ``n_hidden`` -> ``R`` at every time step -> ``(B, T, R)``.

    The receptive field is ``1 + 2 * (kernel_size - 1) * (2**n_blocks - 1)`` samples
    (253 with the defaults), i.e. about half of a 500-sample window. The convolutions are
    non-causal because the whole window is available at inference, unlike an LSTM that
    only sees the past. Small enough to train on CPU: about 0.18 M parameters at
    C=63, R=76 with the defaults.

    Parameters
    ----------
    n_channels : int
        Number of EEG channels ``C``.
    n_regions : int
        Number of source regions ``R``.
    n_hidden : int
        Width of the spatial module and of the convolutions.
    n_blocks : int
        Number of residual blocks (dilations 1, 2, 4, ...).
    kernel_size : int
        Odd convolution kernel size.
    activation : str
        Activation class name in ``torch.nn``.
    dropout : float
        Dropout probability inside the blocks.
    """

    name = "tcn"

    def __init__(
        self,
        n_channels: int,
        n_regions: int,
        n_hidden: int = 64,
        n_blocks: int = 6,
        kernel_size: int = 3,
        activation: str = "ELU",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self._record_config(locals())
        if kernel_size % 2 != 1:
            raise ValueError(f"Invalid value for 'kernel_size': expected an odd integer, got {kernel_size}.")
        self.n_channels = int(n_channels)
        self.n_regions = int(n_regions)
        self.spatial = MLPSpatialFilter(self.n_channels, int(n_hidden), activation)
        self.blocks = nn.Sequential(
            *[
                _DilatedResidualBlock(int(n_hidden), int(kernel_size), 2**b, activation, float(dropout))
                for b in range(int(n_blocks))
            ]
        )
        self.head = nn.Linear(int(n_hidden), self.n_regions)
        # Start from a near-zero output: targets are sparse (zero outside the patches),
        # so the first steps need not undo a random O(1) map over every region.
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    @property
    def receptive_field(self) -> int:
        """Number of input time samples that influence one output sample."""
        k = self._config["kernel_size"]
        return 1 + 2 * (k - 1) * (2 ** self._config["n_blocks"] - 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(x)  # (B, T, H)
        h = self.blocks(h.transpose(1, 2)).transpose(1, 2)  # convolve over time
        return self.head(h)
