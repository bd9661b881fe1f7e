"""The on-disk conventions shared by simulate and data."""

from __future__ import annotations

from pathlib import PurePath

import numpy as np

from esikit.head.layout import CLIP_FILE, DEEPSIF_PADDING, PADDING_VALUES, REGION_DIR, clip_relpath


def test_clip_layout_round_trips():
    rel = clip_relpath(993, 12)
    assert rel == PurePath("a993", "nmm_12.mat")
    assert int(REGION_DIR.match(rel.parts[0]).group(1)) == 993
    assert int(CLIP_FILE.match(rel.parts[1]).group(1)) == 12
    assert REGION_DIR.match("a12x") is None and CLIP_FILE.match("nmm_3.mat.tmp") is None


def test_padding_values():
    assert DEEPSIF_PADDING == 15213 and PADDING_VALUES == (15213, 999, -1)


def test_simulate_and_data_read_the_same_layout(tmp_path):
    # A folder written through the layout is what both readers list.
    from esikit.data.clips import FolderClipStore
    from esikit.io import save_mat_file
    from esikit.simulate.metadata import index_clips

    for r, k in ((3, 1), (3, 2), (7, 1)):
        path = tmp_path / clip_relpath(r, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mat_file(path, {"data": np.zeros((5, 9), np.float32)})
    assert {r: ks.tolist() for r, ks in index_clips(tmp_path).items()} == {3: [1, 2], 7: [1]}
    store = FolderClipStore(tmp_path)
    assert store.path(7, 1) == tmp_path / "a7" / "nmm_1.mat" and len(store) == 3
