"""esikit: DeepSIF-style EEG source imaging, trained from metadata on the fly."""

__version__ = "0.1.0"
