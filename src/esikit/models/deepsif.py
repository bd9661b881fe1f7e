"""DeepSIF's TemporalInverseNet: spatial MLP per time step, then a stacked LSTM."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from ._base import ESIModel
from ._spatial import MLPSpatialFilter

logger = logging.getLogger(__name__)


class _TemporalLSTM(nn.Module):
    # Holds the LSTM in a ModuleList named ``rnns`` like DeepSIF's TemporalFilter, so the
    # state_dict keys (``temporal.rnns.0.weight_ih_l0`` ...) match DeepSIF checkpoints.
    def __init__(self, input_size: int, n_regions: int, n_layers: int) -> None:
        super().__init__()
        self.rnns = nn.ModuleList(
            [nn.LSTM(input_size, n_regions, num_layers=n_layers, batch_first=True)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for rnn in self.rnns:
            rnn.flatten_parameters()
            x, _ = rnn(x)
        return x


class DeepSIFNet(ESIModel):
    """DeepSIF's TemporalInverseNet (Sun et al., PNAS 2022).

    EEG ``(B, T, C)`` -> :class:`MLPSpatialFilter` at every time step (two residual
    blocks, linear to ``n_hidden`` units, activation) -> LSTM over time with
    ``n_lstm_layers`` layers whose hidden size is the number of regions ``R``
    (batch-first) -> source activity ``(B, T, R)``. The output is the last LSTM layer's
    hidden state, so it lies in ``(-1, 1)`` like DeepSIF's.

    State-dict keys follow DeepSIF's ``network.py`` (``spatial.fc11.weight``,
    ``temporal.rnns.0.weight_ih_l0``, ...), so weights trained with DeepSIF load
    directly (see :meth:`load_deepsif_state_dict`).

    Parameters
    ----------
    n_channels : int
        Number of EEG channels ``C`` (75 for DeepSIF's template).
    n_regions : int
        Number of source regions ``R`` (994 for DeepSIF's template).
    n_hidden : int
        Width of the spatial module's output, the LSTM input size (500 in DeepSIF).
    n_lstm_layers : int
        Number of stacked LSTM layers (3 in the paper).
    activation : str
        Activation of the spatial module (``"ELU"`` in DeepSIF's training script).

    Examples
    --------
    >>> net = DeepSIFNet(n_channels=63, n_regions=76)
    >>> net(torch.zeros(2, 500, 63)).shape
    torch.Size([2, 500, 76])
    """

    name = "deepsif"

    def __init__(
        self,
        n_channels: int,
        n_regions: int,
        n_hidden: int = 500,
        n_lstm_layers: int = 3,
        activation: str = "ELU",
    ) -> None:
        super().__init__()
        self._record_config(locals())
        self.n_channels = int(n_channels)
        self.n_regions = int(n_regions)
        self.spatial = MLPSpatialFilter(self.n_channels, int(n_hidden), activation)
        self.temporal = _TemporalLSTM(int(n_hidden), self.n_regions, int(n_lstm_layers))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(x))

    def load_deepsif_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load weights from a DeepSIF checkpoint's ``state_dict``.

        Parameters
        ----------
        state_dict : mapping
            ``torch.load(path)["state_dict"]`` of a checkpoint written by DeepSIF's
            ``main.py`` (a ``"module."`` prefix from DataParallel is stripped).
        """
        cleaned = {k.removeprefix("module."): v for k, v in state_dict.items()}
        self.load_state_dict(cleaned, strict=True)


# DeepSIF's own class name, for readers coming from its code.
TemporalInverseNet = DeepSIFNet
