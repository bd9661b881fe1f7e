"""Training: the loop, atomic checkpoints, resume (the commands are in :mod:`esikit.commands`)."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .trainer import NonFiniteLossError, Trainer, TrainState, load_model

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "TrainState",
    "Trainer",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
