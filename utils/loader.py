"""The metadata loader API, as documented for users: re-exported from :mod:`esikit.data`.

    from utils.loader import SpikeEEGMetadataDataset, create_dataloaders_from_metadata
"""

from esikit.data import (  # noqa: F401
    SpikeEEGMetadataDataset,
    create_dataloaders_from_metadata,
    set_loader_epoch,
)

__all__ = ["SpikeEEGMetadataDataset", "create_dataloaders_from_metadata", "set_loader_epoch"]
