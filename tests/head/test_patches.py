"""Tests for esikit.head.patches (DeepSIF-style region growing)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from esikit.head.patches import (
    CandidatePatches,
    as_adjacency,
    candidate_patches,
    grow_patch,
    is_connected,
    smooth_patch,
)


def graph(anatomy):
    """``(adjacency, centres)`` of the shared grid anatomy (tests/conftest.py, 10 mm spacing)."""
    return anatomy.adjacency, anatomy.centres


def load_deepsif_adjacency(folder):
    """The DeepSIF template adjacency and region centres, read independently with scipy."""
    scipy_io = pytest.importorskip("scipy.io")
    nbs = scipy_io.loadmat(folder / "fs_cortex_20k_region_mapping.mat")["nbs"]
    centres = scipy_io.loadmat(folder / "fs_cortex_20k_inflated.mat")["centre"]
    n = nbs.shape[1]
    rows, cols = [], []
    for i in range(n):
        for j in np.asarray(nbs[0, i]).ravel():
            rows.append(i)
            cols.append(int(j) - 1)  # 1-based in the file
    adj = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n))
    return adj, np.asarray(centres, float)


def check_patch(adj, patch, centre, max_size):
    patch = np.asarray(patch)
    assert patch.dtype.kind == "i"
    assert patch[0] == centre
    assert len(np.unique(patch)) == len(patch)
    assert 1 <= len(patch) <= max_size
    assert patch.min() >= 0 and patch.max() < adj.shape[0]
    assert is_connected(adj, patch)


def test_is_connected(grid_anatomy):
    adj, _ = graph(grid_anatomy(3, 3))
    assert is_connected(adj, [0, 1, 2, 5])
    assert not is_connected(adj, [0, 2])
    assert is_connected(adj, [4])


def test_smooth_patch_fills_holes_and_removes_strays(grid_anatomy):
    adj, _ = graph(grid_anatomy(7, 7))
    # a ring around region 24 (the middle) has a hole at 24; 10 hangs on by one edge
    ring = [16, 17, 18, 23, 25, 30, 31, 32]
    add, remove = smooth_patch(adj, np.array(ring + [10]), centre=16)
    assert add.tolist() == [24]
    assert remove.tolist() == [10]  # its only neighbour in the patch is 17
    # the centre is never removed, even when dangling
    add, remove = smooth_patch(adj, np.array([0, 1]), centre=0)
    assert 0 not in remove.tolist()
    assert 1 in remove.tolist()


def test_as_adjacency_symmetrises_and_checks():
    adj = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1]], bool))
    sym, c = as_adjacency(adj, np.zeros((3, 3)))
    assert (sym != sym.T).nnz == 0
    assert sym.diagonal().sum() == 0
    with pytest.raises(ValueError, match="centres"):
        as_adjacency(adj, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="centres must be given"):
        as_adjacency(adj)


@pytest.mark.parametrize("centre", [0, 33, 55, 119])
def test_candidates_on_grid(centre, grid_anatomy):
    adj, centres = graph(grid_anatomy(12, 10))
    cands = candidate_patches(adj, centres, centre, seed=1)
    n_ring1 = len(adj[centre].indices)
    assert len(cands) == 2 * 5 * int(np.ceil(n_ring1 / 2))
    for p in cands:
        check_patch(adj, p, centre, 70)
        # the whole first ring is always in (smoothing never removes it on a grid:
        # every first-ring region touches the centre and a second-ring or other region)
    sizes = [len(p) for p in cands]
    assert max(sizes) > 1 + n_ring1  # some growth beyond the first ring
    # three-ring candidates are at least as large on average as two-ring ones
    half = len(cands) // 2
    assert np.mean(sizes[half:]) >= np.mean(sizes[:half])
    # deterministic for a seed, different for another
    again = candidate_patches(adj, centres, centre, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(cands, again))
    other = candidate_patches(adj, centres, centre, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(cands, other))


def test_candidate_cache_is_order_independent(grid_anatomy):
    adj, centres = graph(grid_anatomy(12, 10))
    a = CandidatePatches(adj, centres, seed=3)
    b = CandidatePatches(adj, centres, seed=3)
    last = a.count(40) - 1
    pa = a.get(40, last)
    b.get(41, 0)
    b.get(40, 0)
    assert np.array_equal(pa, b.get(40, last))
    with pytest.raises(IndexError, match="candidate patches"):
        a.get(40, last + 1)
    assert "CandidatePatches(" in repr(a)


def test_isolated_region():
    adj = sp.csr_matrix((np.ones(1, bool), ([1], [2])), shape=(4, 4))
    centres = np.zeros((4, 3))
    assert [p.tolist() for p in candidate_patches(adj, centres, 0)] == [[0]]
    assert grow_patch(adj, centres, 0, 10, 0).tolist() == [0]
    assert sorted(grow_patch(adj, centres, 1, 10, 0).tolist()) == [1, 2]


@pytest.mark.parametrize("size", [1, 2, 4, 5, 9, 20, 45, 70])
def test_grow_patch_on_grid(size, grid_anatomy):
    adj, centres = graph(grid_anatomy(12, 10))
    rng = np.random.default_rng(size)
    for centre in rng.choice(adj.shape[0], 8, replace=False):
        p = grow_patch(adj, centres, int(centre), size, np.random.default_rng([size, int(centre)]))
        check_patch(adj, p, int(centre), size)
        assert len(p) == size  # a 120-region grid always has room
        p2 = grow_patch(adj, centres, int(centre), size, np.random.default_rng([size, int(centre)]))
        assert np.array_equal(p, p2)


def test_grow_patch_component_smaller_than_size(grid_anatomy):
    adj, centres = graph(grid_anatomy(3, 3))
    p = grow_patch(adj, centres, 4, 70, 0)
    assert sorted(p.tolist()) == list(range(9))


def test_grow_patch_is_elongated(grid_anatomy):
    # patches grown along an axis should be longer than wide on average
    adj, centres = graph(grid_anatomy(30, 30))
    ratios = []
    for seed in range(20):
        p = grow_patch(adj, centres, 15 * 30 + 15, 30, seed)
        xy = centres[p, :2] - centres[p, :2].mean(0)
        ev = np.linalg.eigvalsh(np.cov(xy.T))
        ratios.append(ev[1] / max(ev[0], 1e-9))
    assert np.median(ratios) > 1.3


def test_grow_patch_errors(grid_anatomy):
    adj, centres = graph(grid_anatomy(3, 3))
    with pytest.raises(ValueError, match="size"):
        grow_patch(adj, centres, 0, 0, 0)
    with pytest.raises(ValueError, match="centre"):
        grow_patch(adj, centres, 9, 3, 0)


def test_deepsif_template(deepsif_anatomy_dir):
    adj, centres = load_deepsif_adjacency(deepsif_anatomy_dir)
    assert adj.shape == (994, 994)
    sym, _ = as_adjacency(adj, centres)
    cp = CandidatePatches(adj, centres, seed=0)
    rng = np.random.default_rng(0)
    sizes = []
    for centre in rng.choice(994, 25, replace=False).tolist():
        cands = cp.all(centre)
        assert len(cands) >= 10
        for p in cands:
            check_patch(sym, p, centre, 70)
            # the first ring survives smoothing except dangling regions
            sizes.append(len(p))
        for size in (3, 17, 70):
            g = grow_patch(adj, centres, centre, size, rng)
            check_patch(sym, g, centre, size)
            assert len(g) == size
    sizes = np.asarray(sizes)
    # DeepSIF's two/three-ring patches: a few to a few dozen regions
    assert 4 <= sizes.min() and sizes.max() <= 70
    assert 10 <= np.median(sizes) <= 40


@pytest.mark.parametrize("use_candidates", [False, True])
def test_pick_second_patch(use_candidates, grid_anatomy):
    from esikit.head.patches import pick_second_patch

    adj, centres = graph(grid_anatomy(12, 12))
    sym, _ = as_adjacency(adj, centres)
    cands = CandidatePatches(adj, centres, seed=0) if use_candidates else None
    rng = np.random.default_rng(0)
    allowed = np.zeros(144, bool)
    allowed[::5] = True
    for _ in range(20):
        first = grow_patch(adj, centres, int(rng.integers(144)), 15, rng)
        second = pick_second_patch(adj, centres, first, allowed, rng, candidates=cands, size_range=(3, 20),
                                   min_centre_distance_mm=30.0)
        assert second is not None
        assert allowed[second[0]]
        assert np.linalg.norm(centres[second[0]] - centres[first[0]]) >= 30.0
        assert not np.intersect1d(first, second).size
        assert sym[first][:, second].nnz == 0  # not touching
        assert is_connected(sym, second)
    # nowhere to go: every allowed centre is in or next to the first patch
    first = np.array([0, 1, 12])
    assert pick_second_patch(adj, centres, first, np.array([0, 1, 2, 13, 24]), rng) is None


def _lists_to_csr(lists):
    n = len(lists)
    rows = [r for r, nb in enumerate(lists) for _ in nb]
    cols = [c for nb in lists for c in nb]
    return sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n))


def test_as_adjacency_as_given_keeps_one_way_lists():
    directed = _lists_to_csr([[1, 0], [2], [0], []])  # 0 -> 1 one way, a self loop at 0
    centres = np.zeros((4, 3))
    kept, _ = as_adjacency(directed, centres, symmetrize=False)
    assert kept[0].indices.tolist() == [1] and kept[1].indices.tolist() == [2] and kept[2].indices.tolist() == [0]
    sym, _ = as_adjacency(directed, centres)
    assert (sym != sym.T).nnz == 0 and sym[1].indices.tolist() == [0, 2]


def test_smooth_patch_as_given_follows_deepsif_lists():
    # 5 lists 0 but nobody in the patch lists 5; 3 lists only 4, which stays outside
    lists = [[1, 2], [0, 2], [0, 1, 3], [4], [5, 6, 7], [0, 4], [4], [4]]
    directed = _lists_to_csr(lists)
    patch = np.array([0, 1, 2, 3])
    add, remove = smooth_patch(directed, patch, 0, as_given=True)
    # DeepSIF: 5 is no candidate (unlisted by the patch); 3 has no listed region inside,
    # which is not "exactly one", so it stays
    assert add.tolist() == [] and remove.tolist() == []
    sym, _ = as_adjacency(directed, np.zeros((8, 3)))
    add, remove = smooth_patch(sym, patch, 0)
    assert add.tolist() == [5] and remove.tolist() == [3]


def test_candidates_as_given_flat_ring_selects_none():
    # the second ring is a single region: DeepSIF's min-max scaling gives 0/0, never selected
    lists = [[1, 2], [0, 2, 3], [0, 1, 3], [1, 2, 4, 5], [3], [3]]
    centres = np.array([[0, 0, 0], [10, 5, 0], [10, -5, 0], [20, 0, 0], [30, 5, 0], [30, -5, 0.0]])
    adj = _lists_to_csr(lists)
    given = CandidatePatches(adj, centres, seed=0, symmetrize=False)
    assert all(p.tolist() == [0, 1, 2] for p in given.all(0))
    default = CandidatePatches(adj, centres, seed=0)
    assert all(3 in p.tolist() for p in default.all(0))
    assert "as given" in repr(given) and "symmetric" in repr(default)


def test_candidates_default_ignores_list_direction(grid_anatomy):
    """symmetrize=True (the default) sees one-way lists as their symmetric closure."""
    adj, centres = graph(grid_anatomy(6, 6))
    directed = sp.triu(adj).tocsr()  # every pair listed one way only
    a = CandidatePatches(directed, centres, seed=4)
    b = CandidatePatches(adj, centres, seed=4)
    for c in (0, 7, 14, 35):
        assert a.count(c) == b.count(c)
        for pa, pb in zip(a.all(c), b.all(c)):
            np.testing.assert_array_equal(pa, pb)
    given = CandidatePatches(directed, centres, seed=4, symmetrize=False)
    assert given.count(35) == 1  # the last region lists nobody: alone, as DeepSIF would have no ring


def test_gaussian_magnitude_from_distance_matrix():
    from esikit.head.patches import gaussian_magnitude

    centres = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0.0]])
    dist = np.array([[0, 50, 20], [50, 0, 5], [20, 5, 0.0]])
    w = gaussian_magnitude(None, np.array([0, 1, 2]), 50.0, distances=dist)
    assert w[0] == 1.0 and w[1] == pytest.approx(0.5, abs=1e-3) and w[2] > w[1]
    euclid = np.abs(centres[:, :1] - centres[:, 0])
    np.testing.assert_allclose(gaussian_magnitude(centres, np.array([1, 0]), 50.0),
                               gaussian_magnitude(None, np.array([1, 0]), 50.0, distances=euclid))


def test_deepsif_template_lists_as_given(deepsif_anatomy_dir):
    """DeepSIF's one-way pairs change the first ring, hence the candidate count, of 104 centres."""
    adj, centres = load_deepsif_adjacency(deepsif_anatomy_dir)
    given = CandidatePatches(adj, centres, seed=0, symmetrize=False)
    default = CandidatePatches(adj, centres, seed=0)
    assert sum(given.count(c) != default.count(c) for c in range(994)) == 104
    for p in given.all(100)[:4]:
        assert p[0] == 100 and len(np.unique(p)) == len(p) and 4 <= len(p) <= 70
