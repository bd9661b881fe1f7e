"""Shared pieces of the esikit networks: config handling and input checks."""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import check_option

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("ELU", "ReLU", "GELU", "Tanh", "LeakyReLU", "SiLU")


def make_activation(name: str) -> nn.Module:
    """Build a torch activation module from its class name (e.g. ``"ELU"``).

    Parameters
    ----------
    name : str
        One of ``"ELU"``, ``"ReLU"``, ``"GELU"``, ``"Tanh"``, ``"LeakyReLU"``, ``"SiLU"``.

    Returns
    -------
    module : torch.nn.Module
    """
    check_option("activation", name, _ACTIVATIONS)
    return getattr(nn, name)()


class ESIModel(nn.Module):
    """Base class of the esikit source-imaging networks.

    A subclass maps EEG batches ``(B, T, C)`` to source activity ``(B, T, R)`` and
    records its constructor arguments so that :meth:`get_config` /
    :func:`esikit.models.model_from_config` rebuild the same architecture from a
    checkpoint.

    Subclasses set the class attribute ``name`` and call ``super().__init__()`` first,
    then ``self._record_config(locals())`` before building layers.
    """

    name: ClassVar[str] = ""

    n_channels: int
    n_regions: int

    def _record_config(self, local_vars: dict[str, Any]) -> None:
        # Keep exactly the constructor's parameters, so the config is the call signature.
        params = inspect.signature(type(self).__init__).parameters
        # numpy scalars (e.g. a shape read from a file) become plain Python: JSON-safe
        self._config = {
            k: (local_vars[k].item() if hasattr(local_vars[k], "item") else local_vars[k])
            for k in params
            if k != "self"
        }

    def get_config(self) -> dict[str, Any]:
        """Return the JSON-serializable configuration that rebuilds this model.

        Returns
        -------
        config : dict
            ``{"name": <registry name>, "n_channels": C, "n_regions": R, ...}`` with every
            constructor argument.
        """
        return {"name": self.name, **dict(self._config)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Estimate source activity.

        Parameters
        ----------
        x : torch.Tensor, shape (B, T, C)
            Normalized EEG.

        Returns
        -------
        torch.Tensor, shape (B, T, R)
        """
        self._check_input(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(
                f"{type(self).__name__}: input has shape {tuple(x.shape)}, expected "
                f"(batch, time, channels) with channels={self.n_channels}"
            )

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, n_regions={self.n_regions}"
