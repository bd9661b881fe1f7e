"""Constants shared by several layers (no imports, so any module may use them)."""

from __future__ import annotations

#: Sampling rate of DeepSIF's clips and of every sample esikit synthesizes, in Hz.
#: DeepSIF's TVB runs integrate at dt = 0.5 ms (2000 Hz) and keep every 4th point, so a
#: 500-sample clip is one second. A trained network expects EEG at this rate.
SFREQ_HZ: float = 500.0
