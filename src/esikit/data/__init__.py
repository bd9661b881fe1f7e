"""Metadata validation, clip stores, the sample synthesis, datasets and loaders."""

from .clips import (
    ClipReadError,
    FolderClipStore,
    H5ClipStore,
    decode_nmm_idx,
    infer_nper,
    open_clip_store,
    resolve_clip_ids,
)
from .dataset import SpikeEEGMetadataDataset, find_clip_location, resolve_forward
from .dynamic import DynamicSpikeEEGDataset
from .fast import FastSynthesizer, collate_synthesized, expand_compact_target
from .packed import PackedClipCache
from .loaders import (
    EpochShuffleSampler,
    create_dataloaders_from_metadata,
    create_dynamic_dataloaders,
    set_loader_epoch,
    split_indices,
)
from .metadata import DEEPSIF_PADDING, MetadataError, SampleMetadata, metadata_from_arrays, read_metadata
from .noise import NOISE_MODES, load_noise_bank
from .synthesis import SampleSpecs, draw_sample_randomness, synthesize_sample, synthesize_spec

__all__ = [
    "ClipReadError",
    "DEEPSIF_PADDING",
    "DynamicSpikeEEGDataset",
    "FastSynthesizer",
    "PackedClipCache",
    "collate_synthesized",
    "expand_compact_target",
    "EpochShuffleSampler",
    "FolderClipStore",
    "H5ClipStore",
    "MetadataError",
    "SampleMetadata",
    "SpikeEEGMetadataDataset",
    "create_dataloaders_from_metadata",
    "create_dynamic_dataloaders",
    "decode_nmm_idx",
    "draw_sample_randomness",
    "find_clip_location",
    "infer_nper",
    "metadata_from_arrays",
    "open_clip_store",
    "read_metadata",
    "resolve_clip_ids",
    "resolve_forward",
    "set_loader_epoch",
    "split_indices",
    "synthesize_sample",
    "synthesize_spec",
    "SampleSpecs",
    "NOISE_MODES",
    "load_noise_bank",
]
