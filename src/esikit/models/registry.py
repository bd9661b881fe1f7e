"""Model registry: build a network by name, and rebuild it from a checkpoint's config."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from .._validation import check_option
from ._base import ESIModel
from .deepsif import DeepSIFNet
from .tcn import TCNNet
from .transformer import TransformerNet

logger = logging.getLogger(__name__)

MODELS: dict[str, type[ESIModel]] = {
    DeepSIFNet.name: DeepSIFNet,
    TCNNet.name: TCNNet,
    TransformerNet.name: TransformerNet,
}


def _check_model_name(name: str) -> type[ESIModel]:
    check_option("MODEL", name, MODELS)
    return MODELS[name]


def build_model(name: str, n_channels: int, n_regions: int, **config: Any) -> nn.Module:
    """Build a source-imaging network by registry name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (``"deepsif"``, ``"tcn"``, ``"transformer"``).
    n_channels : int
        Number of EEG channels ``C``.
    n_regions : int
        Number of source regions ``R``.
    **config
        Extra constructor arguments of the model class (e.g. ``n_lstm_layers=3``).

    Returns
    -------
    model : torch.nn.Module
        Maps ``(B, T, C)`` to ``(B, T, R)``; has ``get_config()``.

    Examples
    --------
    >>> net = build_model("tcn", 63, 76, n_hidden=64)
    >>> net.get_config()["name"]
    'tcn'
    """
    cls = _check_model_name(name)
    try:
        model = cls(n_channels=n_channels, n_regions=n_regions, **config)
    except TypeError as err:
        raise TypeError(f"Invalid configuration for model {name!r}: {err}") from err
    logger.info("Built model %r (%d parameters)", name, model.count_parameters())
    return model


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from the dict returned by its ``get_config()``.

    Parameters
    ----------
    config : mapping
        Must contain ``"name"``, ``"n_channels"`` and ``"n_regions"``; other keys are
        constructor arguments.

    Returns
    -------
    model : torch.nn.Module
        A freshly initialized model with the same architecture (load the state dict
        separately).
    """
    cfg = dict(config)
    missing = [k for k in ("name", "n_channels", "n_regions") if k not in cfg]
    if missing:
        raise ValueError(f"Model config is missing {missing}; found keys {sorted(cfg)}")
    name = cfg.pop("name")
    return build_model(name, cfg.pop("n_channels"), cfg.pop("n_regions"), **cfg)
