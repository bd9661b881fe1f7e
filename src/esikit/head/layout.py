"""DeepSIF's on-disk conventions, defined once: padding values and the clip folder layout.

``simulate`` writes these files and ``data`` reads them (see ``docs/SAMPLE_CONTRACT.md``):

- a patch label is a region only when it is an integer in ``[0, R)``; DeepSIF pads
  ``selected_region`` and ``mag_change`` with :data:`DEEPSIF_PADDING` (15213), other tools
  with 999 or NaN, esikit's normalized labels with -1 (:data:`PADDING_VALUES`, and NaN);
- clip ``k`` (from 1) of region ``r`` is field :data:`CLIP_FIELD` of
  ``nmm_spikes/a{r}/nmm_{k}.mat`` (:func:`clip_relpath`).
"""

from __future__ import annotations

import re
from pathlib import PurePath

#: Value DeepSIF writes for padded patch positions.
DEEPSIF_PADDING = 15213
#: Label values that mean "no region here", besides NaN: DeepSIF's, other tools' and the
#: -1 of esikit's normalized labels.
PADDING_VALUES = (DEEPSIF_PADDING, 999, -1)
#: Field holding the ``T x R`` array of a clip file.
CLIP_FIELD = "data"
#: Folder name of region ``r`` (``a{r}``) and file name of clip ``k`` (``nmm_{k}.mat``).
REGION_DIR = re.compile(r"^a(\d+)$")
CLIP_FILE = re.compile(r"^nmm_(\d+)\.mat$")


def region_dirname(region: int) -> str:
    """``a{region}``: the folder of one region's clips."""
    return f"a{int(region)}"


def clip_filename(k: int) -> str:
    """``nmm_{k}.mat``: clip ``k`` (from 1) within its region's folder."""
    return f"nmm_{int(k)}.mat"


def clip_relpath(region: int, k: int) -> PurePath:
    """``a{region}/nmm_{k}.mat``, relative to the ``nmm_spikes`` folder."""
    return PurePath(region_dirname(region), clip_filename(k))


__all__ = ["DEEPSIF_PADDING", "PADDING_VALUES", "CLIP_FIELD", "REGION_DIR", "CLIP_FILE", "region_dirname",
           "clip_filename", "clip_relpath"]
