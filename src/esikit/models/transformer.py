"""Transformer encoder over time, on top of DeepSIF's spatial front."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ._base import ESIModel
from ._spatial import MLPSpatialFilter

logger = logging.getLogger(__name__)


def sinusoidal_positions(n_times: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal position encoding (Vaswani et al., 2017).

    Parameters
    ----------
    n_times : int
        Sequence length ``T``.
    d_model : int
        Embedding size (even).
    device : torch.device, optional

    Returns
    -------
    torch.Tensor, shape (T, d_model)
    """
    pos = torch.arange(n_times, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(n_times, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class TransformerNet(ESIModel):
    """Spatial MLP per time step, then a Transformer encoder over the time axis.

    EEG ``(B, T, C)`` -> :class:`~esikit.models._spatial.MLPSpatialFilter` (``C`` ->
    ``d_model``) + sinusoidal positions -> ``n_layers`` pre-norm encoder layers
    (``n_heads`` heads, feed-forward ``dim_feedforward``), full (non-causal) attention over
    the window -> linear ``d_model`` -> ``R`` -> ``(B, T, R)``.

    Parameters
    ----------
    n_channels : int
        Number of EEG channels ``C``.
    n_regions : int
        Number of source regions ``R``.
    d_model : int
        Embedding size (even, divisible by ``n_heads``).
    n_heads : int
        Attention heads.
    n_layers : int
        Encoder layers.
    dim_feedforward : int
        Hidden size of each layer's feed-forward block.
    dropout : float
        Dropout probability.
    activation : str
        Activation of the spatial module.
    """

    name = "transformer"

    def __init__(
        self,
        n_channels: int,
        n_regions: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        activation: str = "ELU",
    ) -> None:
        super().__init__()
        self._record_config(locals())
        if d_model % 2 or d_model % n_heads:
            raise ValueError(
                f"Invalid value for 'd_model': expected an even multiple of n_heads={n_heads}, got {d_model}."
            )
        self.n_channels = int(n_channels)
        self.n_regions = int(n_regions)
        self.d_model = int(d_model)
        self.spatial = MLPSpatialFilter(self.n_channels, self.d_model, activation)
        layer = nn.TransformerEncoderLayer(
            self.d_model,
            int(n_heads),
            int(dim_feedforward),
            float(dropout),
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only help with padding masks, which we never use.
        self.encoder = nn.TransformerEncoder(layer, int(n_layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.d_model)
        self.head = nn.Linear(self.d_model, self.n_regions)
        # Start from a near-zero output: targets are sparse (zero outside the patches),
        # so the first steps need not undo a random O(1) map over every region.
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(x)
        h = h + sinusoidal_positions(x.shape[1], self.d_model, device=x.device).to(h.dtype)
        return self.head(self.norm(self.encoder(h)))
