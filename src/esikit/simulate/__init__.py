"""Simulation of DeepSIF-style training data: anatomy, neural masses, spike clips."""

from .anatomy import (
    Anatomy,
    load_anatomy,
    load_deepsif_anatomy,
    load_default_anatomy,
)

__all__ = [
    "Anatomy",
    "load_anatomy",
    "load_deepsif_anatomy",
    "load_default_anatomy",
]
