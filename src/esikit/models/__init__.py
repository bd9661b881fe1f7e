"""Source-imaging networks: DeepSIF's TemporalInverseNet and alternatives.

Every model maps normalized EEG ``(B, T, C)`` to source activity ``(B, T, R)`` and
records a serializable config (``get_config()``) from which :func:`model_from_config`
rebuilds it.
"""

from ._base import ESIModel
from ._spatial import MLPSpatialFilter
from .deepsif import DeepSIFNet, TemporalInverseNet
from .registry import MODELS, build_model, model_from_config
from .tcn import TCNNet
from .transformer import TransformerNet

__all__ = [
    "ESIModel",
    "MLPSpatialFilter",
    "DeepSIFNet",
    "TemporalInverseNet",
    "TCNNet",
    "TransformerNet",
    "MODELS",
    "build_model",
    "model_from_config",
]
