"""The package version, in a module below every layer (``io`` writes it into Octave file headers)."""

__version__ = "0.1.0"
