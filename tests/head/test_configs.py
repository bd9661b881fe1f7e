"""Tests for esikit.head.configs (the clip index and the source drawer both config sources use)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from esikit.head.configs import ClipIndex, SourceDrawer, read_clip_file, source_counts
from esikit.head.layout import clip_relpath
from esikit.head.patches import CandidatePatches, is_connected


@pytest.fixture()
def clip_folder(tmp_path):
    from esikit.io import save_mat_file

    for r, k in ((7, 2), (3, 1), (7, 1), (3, 4), (12, 1)):
        path = tmp_path / clip_relpath(r, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mat_file(path, {"data": np.full((5, 20), r + k / 10)})
    (tmp_path / "a9").mkdir()  # no clip: not a centre
    (tmp_path / "notes.txt").write_text("not a clip")
    (tmp_path / "a3" / "readme.mat").write_text("not a clip name")
    return tmp_path


def test_clip_index_scan_and_lookups(clip_folder):
    idx = ClipIndex.scan(clip_folder)
    assert len(idx) == 5 and "regions=3" in repr(idx)
    np.testing.assert_array_equal(idx.regions, [3, 3, 7, 7, 12])
    np.testing.assert_array_equal(idx.ks, [1, 4, 1, 2, 1])
    np.testing.assert_array_equal(idx.centres, [3, 7, 12])
    assert {r: ks.tolist() for r, ks in idx.as_dict().items()} == {3: [1, 4], 7: [1, 2], 12: [1]}
    assert read_clip_file(clip_folder / "a7" / "nmm_2.mat")[0, 0] == pytest.approx(7.2)
    assert idx.load(12, 1).dtype == np.float64
    sub = idx.select(idx.regions != 7)
    np.testing.assert_array_equal(sub.ids, [0, 1, 4])  # the ids of the rows kept
    with pytest.raises(FileNotFoundError, match="not found"):
        ClipIndex.scan(clip_folder / "nope")
    with pytest.raises(FileNotFoundError, match=r"a\*/nmm_\*\.mat"):
        ClipIndex.scan(clip_folder / "a9")
    with pytest.raises(ValueError, match="no clip folder"):
        ClipIndex.from_mapping({3: [1]}).load(3, 1)


def test_read_clip_file_errors_name_the_file_and_field(tmp_path):
    from esikit.io import save_mat_file

    save_mat_file(tmp_path / "a.mat", {"other": np.zeros((3, 4))})
    save_mat_file(tmp_path / "b.mat", {"data": np.zeros((3, 4, 2))})
    with pytest.raises(ValueError, match=r"a\.mat: no field 'data' \(fields: \['other'\]\)"):
        read_clip_file(tmp_path / "a.mat")
    with pytest.raises(ValueError, match=r"b\.mat: field 'data' has shape \(3, 4, 2\), expected \(T, R\)"):
        read_clip_file(tmp_path / "b.mat")


def test_clip_index_draws():
    idx = ClipIndex.from_mapping({5: [2, 1, 2], 1: [3], 9: [1, 2, 3, 4]})
    np.testing.assert_array_equal(idx.ks, [3, 1, 2, 1, 2, 3, 4])  # duplicates once, sorted by (region, k)
    # one draw: rng.integers over the centre's clips
    rows = [idx.draw(9, np.random.default_rng([1, i])) for i in range(40)]
    want = [3 + int(np.random.default_rng([1, i]).integers(4)) for i in range(40)]
    assert rows == want and set(idx.regions[rows]) == {9}
    # vectorized: clip floor(u * n) of the centre's n clips, u = 1 - eps included
    got = idx.pick(np.array([9, 9, 5, 1, 9]), np.array([0.0, 0.49, 0.5, 0.99, np.nextafter(1.0, 0)]))
    np.testing.assert_array_equal(idx.ks[got], [1, 2, 2, 3, 4])


def test_source_drawer_grow(grid_anatomy):
    anat = grid_anatomy(9, 9)
    drawer = SourceDrawer(anat, np.array([10, 40, 70]), size_range=(3, 6), max_size=70)
    assert drawer.allowed.sum() == 3
    rng = np.random.default_rng(0)
    for _ in range(10):
        p = drawer.patch(40, rng)
        assert p[0] == 40 and 3 <= p.size <= 6 and is_connected(anat.adjacency, p)
        q = drawer.second(p, rng)
        assert q is not None and q[0] in (10, 70)
        touching = anat.adjacency[p].toarray().any(axis=0)
        assert not np.isin(q, p).any() and not touching[q].any()  # neither overlapping nor touching
    w = drawer.weights(p, 10.0)
    assert w[0] == 1.0 and (w[1:] < 1).all() and (w > 0).all()
    with pytest.raises(ValueError, match="'patch_mode'"):
        SourceDrawer(anat, [1], patch_mode="rings")


def test_source_drawer_deepsif_candidates_and_partner(grid_anatomy):
    anat = grid_anatomy(9, 9)
    drawer = SourceDrawer(anat, [20, 60], patch_mode="deepsif", seed=3)
    cands = CandidatePatches(anat, seed=3)
    n = cands.count(40)
    # a variation takes its candidate while there are that many, a random one after
    for v in (0, n - 1):
        np.testing.assert_array_equal(drawer.patch(40, np.random.default_rng(1), variation=v), cands.get(40, v))
    j = int(np.random.default_rng(1).integers(n))
    np.testing.assert_array_equal(drawer.patch(40, np.random.default_rng(1), variation=n), cands.get(40, j))
    # DeepSIF's partner: a patch on it, overlap allowed, from the same stream as patch()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(drawer.second(cands.get(40, 0), a, partner=41), drawer.patch(41, b))
    # weights from a distance matrix when given
    dist = np.full((81, 81), 50.0)
    np.fill_diagonal(dist, 0)
    far = SourceDrawer(anat, [20], distances=dist)
    np.testing.assert_allclose(far.weights(np.array([4, 5]), 50.0), [1.0, 0.5], atol=1e-3)
    # the candidate cache is not pickled (workers rebuild it)
    assert drawer._candidates is not None
    assert pickle.loads(pickle.dumps(drawer))._candidates is None


def test_source_counts():
    assert source_counts(2) == (2,) and source_counts((1, 2, 2)) == (1, 2, 2)
    assert source_counts(np.array([1, 2])) == (1, 2)
    for bad in (3, (), (1, 3), None, 1.5):
        with pytest.raises(ValueError, match="'n_sources'"):
            source_counts(bad)
