"""Applying a trained network to recordings: ``esikit localize`` and ``esikit noise-bank``.

- :mod:`.recording`: reading what MNE reads (and DeepSIF's ``data*.mat`` windows) and
  matching channels by name to a network's montage (one implementation for both commands);
- :mod:`.preprocess`: average reference, band-pass, resampling, event windows, the
  training normalization;
- :mod:`.run`: :func:`localize`;
- :mod:`.report`: the output folder (arrays, tables, SourceEstimate, figures, HTML report);
- :mod:`.noise_bank`: spike-free background segments in DeepSIF's ``realistic_noise.mat`` layout;
- :mod:`.synthetic`: recordings with known spikes (demo and tests).
"""

from .noise_bank import NoiseBank, make_noise_bank, write_noise_bank
from .recording import ChannelMatch, Montage, match_channels, montage_from_spec, read_recording
from .run import LocalizationResult, active_regions, localize, localize_file
from .synthetic import SpikeRecording, make_spike_recording

__all__ = [
    "ChannelMatch",
    "LocalizationResult",
    "Montage",
    "NoiseBank",
    "SpikeRecording",
    "active_regions",
    "localize",
    "localize_file",
    "make_noise_bank",
    "make_spike_recording",
    "match_channels",
    "montage_from_spec",
    "read_recording",
    "write_noise_bank",
]
