"""esikit: DeepSIF-style EEG source imaging, trained from metadata on the fly."""

from ._version import __version__  # noqa: F401  (one definition, below every layer)


def __getattr__(name: str):
    # ``esikit.localize`` without importing torch and MNE on ``import esikit``
    if name == "localize":
        from .localization import localize

        return localize
    raise AttributeError(f"module 'esikit' has no attribute {name!r}")
