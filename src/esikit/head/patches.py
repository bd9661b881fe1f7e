"""Source patches grown over the region adjacency, the DeepSIF way.

DeepSIF (``forward/generate_sythetic_source.m``) makes extended sources by region
growing from a centre region:

1. the first ring (every neighbour of the centre) is always part of the patch;
2. a growth axis is taken from the centre towards one first-ring neighbour; the
   candidate axes are the half of the first-ring neighbours whose directions are
   closest in angle to the first one;
3. second-ring regions (neighbours of the first ring) join at random with probability
   ``(d - min d) / (max d - min d) + bias``, ``d = |cos|`` of the angle between the axis
   and the direction centre -> region, so patches stretch along the axis instead of
   being concentric rings (bias 0 for two-ring patches; 0.1 for the second ring of
   three-ring patches);
4. three-ring patches then take neighbours of the selected second-ring regions the
   same way (bias -0.15);
5. the patch is smoothed once: an outside region with at most one neighbour outside
   the patch joins (holes), and a patch region with at most one neighbour in the patch
   leaves (strays and dangling regions; DeepSIF removes regions with exactly one).

Each centre gets 5 repetitions x (number of candidate axes) two-ring patches and as
many three-ring patches (:func:`candidate_patches`); DeepSIF's metadata draws the
patch of a sample from this list, which is where its size distribution comes from.
:func:`grow_patch` grows a patch of a requested size with the same directional rule
(used when sizes are drawn from a range).

Neighbour lists as given (``symmetrize=False``): DeepSIF's template lists 212 one-way
pairs (``r`` lists ``q`` but ``q`` does not list ``r``; 104 of 994 centres then get a
different first ring, hence candidate count). By default esikit symmetrizes the
adjacency (``A | A.T``), so that "neighbour" means the same from both sides, patches are
connected both ways and the rules below are well defined on any parcellation (the
76-region default, meshes). With ``symmetrize=False`` the lists are used exactly as
DeepSIF's ``generate_sythetic_source.m`` reads them, rules included:

* rings are the union of the listed neighbours of the previous ring (row ``r`` of the
  adjacency is the list of ``r``);
* smoothing considers the regions listed by patch regions; one joins when at most one
  region of *its own* list is outside the patch; a patch region leaves when *exactly* one
  region of its list is in the patch (a region listing none stays, as in DeepSIF; the
  symmetric default removes regions with at most one);
* a ring whose candidates are all equally aligned with the axis (e.g. a single one)
  selects none of them (DeepSIF's ``0/0`` probability), where the default takes them as
  best aligned;
* the patch is not pruned to the centre's connected component (it is only cut, in
  growth order, if it exceeds ``max_size``, which DeepSIF's template never reaches).

The centre is kept in both modes (DeepSIF would drop a centre listing a single
neighbour; no template region does).

Region ids are 0-based everywhere; every patch lists its centre first.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import check_positive_int

logger = logging.getLogger(__name__)

__all__ = [
    "as_adjacency",
    "smooth_patch",
    "CandidatePatches",
    "candidate_patches",
    "grow_patch",
    "pick_second_patch",
    "is_connected",
]

#: Bias added to the direction probability of each ring (ring 2, 3, 4, ...) by
#: :func:`grow_patch`, from DeepSIF's three- and (disabled) four-ring settings.
GROW_BIASES = (0.1, -0.15, -0.35)


def as_adjacency(
    anatomy_or_adjacency: Any, centres: np.ndarray | None = None, symmetrize: bool = True
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Boolean CSR adjacency and region centres from an Anatomy or a matrix.

    Every function here that takes ``anatomy_or_adjacency, centres`` reads them through
    this one, with the meaning below.

    Parameters
    ----------
    anatomy_or_adjacency : Anatomy | sparse matrix | array, shape (n_regions, n_regions)
        An object with ``adjacency`` and ``centres`` attributes (an Anatomy), or the
        adjacency itself.
    centres : array, shape (n_regions, 3) | None
        Region centres in mm; None takes them from the Anatomy (an error for a bare
        adjacency).
    symmetrize : bool
        True (default): ``A | A.T``. False: row ``r`` stays the neighbour list of ``r``
        as given (DeepSIF's ``nbs``, possibly one-way).

    Returns
    -------
    adjacency : scipy.sparse.csr_matrix of bool, shape (n_regions, n_regions)
        Symmetrised (``A | A.T``) or as given, without self loops.
    centres : array of float64, shape (n_regions, 3)
    """
    adj = getattr(anatomy_or_adjacency, "adjacency", anatomy_or_adjacency)
    if centres is None:
        centres = getattr(anatomy_or_adjacency, "centres", None)
        if centres is None:
            raise ValueError("centres must be given when the first argument is an adjacency matrix, not an Anatomy")
    adj = sp.csr_matrix(adj, dtype=bool)
    if adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square (n_regions, n_regions), got shape {adj.shape}")
    adj = (adj + adj.T).tocsr() if symmetrize else adj.copy()
    adj.setdiag(False)
    adj.eliminate_zeros()
    adj.sort_indices()
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[0] != adj.shape[0]:
        raise ValueError(f"centres has shape {centres.shape}, expected ({adj.shape[0]}, 3) to match the adjacency")
    return adj, centres


def _neighbours(adj: sp.csr_matrix, regions: np.ndarray, exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted unique neighbours of ``regions``, without those in ``exclude_mask``."""
    regions = np.asarray(regions, dtype=np.int64)
    if regions.size == 0:
        return regions
    parts = [adj.indices[adj.indptr[r] : adj.indptr[r + 1]] for r in regions]
    nb = np.unique(np.concatenate(parts)).astype(np.int64)
    if exclude_mask is not None:
        nb = nb[~exclude_mask[nb]]
    return nb


def _mask(n: int, regions) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[np.asarray(regions, dtype=np.int64)] = True
    return m


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _direction_probability(
    axis: np.ndarray, origin: np.ndarray, points: np.ndarray, bias: float, flat_selects: bool = True
) -> np.ndarray:
    """DeepSIF's selection probability: min-max scaled |cos(axis, origin->point)| + bias.

    ``flat_selects``: candidates all equally aligned (e.g. a single one) count as best
    aligned (True) or get DeepSIF's ``0/0`` probability, NaN, never selected (False).
    """
    d = np.abs(_unit(points - origin) @ axis)
    span = d.max() - d.min()
    if span > 0:
        scaled = (d - d.min()) / span
    else:
        scaled = np.ones_like(d) if flat_selects else np.full_like(d, np.nan)
    return scaled + bias


def smooth_patch(
    adjacency: sp.csr_matrix,
    regions: np.ndarray,
    centre: int | np.ndarray | None = None,
    max_outside: int = 1,
    as_given: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """DeepSIF's one-pass patch clean-up: regions to add (holes) and to remove (strays).

    Parameters
    ----------
    adjacency : csr_matrix of bool, shape (n_regions, n_regions)
        Symmetric region adjacency.
    regions : array of int, shape (n_patch,)
        The patch.
    centre : int | array of int | None
        Region(s) never removed (the patch centre; :func:`grow_patch` also keeps the
        first ring).
    max_outside : int
        An outside region joins when at most this many of its neighbours are outside
        the patch (DeepSIF: 1, i.e. ``in-patch neighbours > degree - 2``).
    as_given : bool
        ``adjacency`` rows are neighbour lists used as given (possibly one-way):
        candidates are the regions listed by patch regions, each judged by its own
        list, and a region leaves when exactly one region of its list is in the patch
        (DeepSIF's ``smooth_region``). False: symmetric adjacency, a region leaves with
        at most one neighbour in the patch.

    Returns
    -------
    add : array of int
        Outside neighbours of the patch that join, ascending.
    remove : array of int
        Patch regions with at most one neighbour in the patch after the additions,
        ascending (never ``centre``).
    """
    n = adjacency.shape[0]
    inside = _mask(n, regions)
    degree = np.diff(adjacency.indptr)
    counts = adjacency @ inside.astype(np.int64)  # regions of each list inside the patch
    # candidates: listed by a patch region (the same as counts > 0 when symmetric)
    listed = (adjacency.T @ inside.astype(np.int64)) > 0 if as_given else counts > 0
    add = ~inside & listed & (counts >= degree - max_outside)
    counts2 = adjacency @ (inside | add).astype(np.int64)
    remove = inside & ((counts2 == 1) if as_given else (counts2 <= 1))
    if centre is not None:
        remove[np.asarray(centre, dtype=np.int64)] = False
    return np.flatnonzero(add), np.flatnonzero(remove)


def _connected_prefix(adj: sp.csr_matrix, order: list[int] | np.ndarray, size: int) -> np.ndarray:
    """Up to ``size`` regions of ``order`` (first = centre) forming a connected patch.

    Regions are taken in ``order`` when they touch a region already taken; passes repeat
    until nothing more can join, so order is kept as far as connectivity allows.
    """
    order_arr = np.asarray(order, dtype=np.int64)
    if order_arr.size <= size:
        # everything fits: keep the centre's connected component within the set, in order
        inside = _mask(adj.shape[0], order_arr)
        reached = _mask(adj.shape[0], order_arr[:1])
        frontier = reached.copy()
        while frontier.any():
            frontier = (adj @ frontier) & inside & ~reached
            reached |= frontier
        return order_arr[reached[order_arr]]
    order = order_arr.tolist()
    taken = [order[0]]
    inside = np.zeros(adj.shape[0], dtype=bool)
    inside[order[0]] = True
    pending = order[1:]
    while pending and len(taken) < size:
        left = []
        for r in pending:
            if len(taken) >= size:
                break
            if inside[adj.indices[adj.indptr[r] : adj.indptr[r + 1]]].any():
                taken.append(r)
                inside[r] = True
            else:
                left.append(r)
        if len(left) == len(pending):
            break
        pending = left
    return np.asarray(taken, dtype=np.int64)


def _finalize(
    adj: sp.csr_matrix, centre: int, layers: list[np.ndarray], max_size: int, as_given: bool = False
) -> np.ndarray:
    """Smooth ``[centre, *layers]`` once, keep it connected, cap it at ``max_size``.

    ``as_given``: DeepSIF's smoothing of one-way lists and no pruning to the centre's
    component (only the cut at ``max_size``).
    """
    current = np.concatenate([[centre], *layers]).astype(np.int64)
    # the layers are disjoint by construction; keep first occurrences just in case
    _, first = np.unique(current, return_index=True)
    current = current[np.sort(first)]
    add, remove = smooth_patch(adj, current, centre, as_given=as_given)
    keep = ~_mask(adj.shape[0], remove)[current]
    order = np.concatenate([current[keep], add])
    if as_given and order.size <= max_size:
        return order.astype(np.int64)
    return _connected_prefix(adj, order, max_size)


def _growth_axes(adj: sp.csr_matrix, centres: np.ndarray, centre: int) -> tuple[np.ndarray, np.ndarray]:
    """First ring of ``centre`` and DeepSIF's candidate growth axes (unit vectors)."""
    n = adj.shape[0]
    if not 0 <= centre < n:
        raise ValueError(f"centre must lie in [0, {n}), got {centre}")
    ring1 = _neighbours(adj, [centre], _mask(n, [centre]))
    if ring1.size == 0:
        return ring1, np.zeros((0, 3))
    v0 = _unit(centres[ring1] - centres[centre])
    cos = np.clip(v0 @ v0[0], -1.0, 1.0)
    # the half of the first-ring directions closest in angle to the first one
    order = np.argsort(np.degrees(np.arccos(cos)), kind="stable")
    return ring1, v0[order[: int(np.ceil(ring1.size / 2))]]


def _one_candidate(
    adj: sp.csr_matrix,
    centres: np.ndarray,
    centre: int,
    ring1: np.ndarray,
    axis: np.ndarray,
    n_rings: int,
    rng: np.random.Generator,
    max_size: int,
    as_given: bool = False,
) -> np.ndarray:
    """One DeepSIF patch: whole first ring, directional second (and third) ring, smoothed."""
    n = adj.shape[0]
    origin = centres[centre]
    inner = _mask(n, np.concatenate([[centre], ring1]))
    ring2 = _neighbours(adj, ring1, inner)
    sel2 = ring2
    if ring2.size:
        bias2 = 0.0 if n_rings == 2 else 0.1
        prob2 = _direction_probability(axis, origin, centres[ring2], bias2, flat_selects=not as_given)
        sel2 = ring2[rng.random(ring2.size) < prob2]
    layers = [ring1, sel2]
    if n_rings == 3:
        # candidates of the third ring: neighbours of the selected second ring only
        ring3 = _neighbours(adj, sel2, inner | _mask(n, sel2))
        sel3 = ring3
        if ring3.size:
            prob3 = _direction_probability(axis, origin, centres[ring3], -0.15, flat_selects=not as_given)
            sel3 = ring3[rng.random(ring3.size) < prob3]
        layers.append(sel3)
    return _finalize(adj, centre, layers, max_size, as_given)


class CandidatePatches:
    """DeepSIF's candidate patches of every centre, made lazily and cached.

    Centre ``r`` has ``2 * n_repeats * ceil(n_first_ring / 2)`` candidates (a single
    ``[r]`` when it has no neighbour): index ``j`` with ``j < half`` is a two-ring patch,
    otherwise a three-ring one; within each half, repetition-major then axis, as in
    DeepSIF's loops. Candidate ``(r, j)`` draws from ``numpy.random.default_rng([seed,
    r, j])``, so it is the same whichever candidates are asked for and in which order.

    Parameters
    ----------
    anatomy_or_adjacency, centres
        The region graph, as in :func:`as_adjacency`.
    seed : int
        Base seed.
    n_repeats : int
        Repetitions per growth axis and per ring count (DeepSIF: 5).
    max_size : int
        Largest patch (DeepSIF: 70); a larger grown patch keeps its first ``max_size``
        regions in growth order that stay connected (DeepSIF's 994-region template never
        needs it).
    symmetrize : bool
        True (default): symmetrize the adjacency. False: neighbour lists as given, with
        DeepSIF's literal rules (module docstring).
    """

    def __init__(
        self,
        anatomy_or_adjacency: Any,
        centres: np.ndarray | None = None,
        seed: int = 0,
        n_repeats: int = 5,
        max_size: int = 70,
        symmetrize: bool = True,
    ) -> None:
        self.adjacency, self.centres = as_adjacency(anatomy_or_adjacency, centres, symmetrize=symmetrize)
        self.as_given = not symmetrize
        self.seed = int(seed)
        self.n_repeats = int(n_repeats)
        self.max_size = int(max_size)
        self._axes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"CandidatePatches(n_regions={self.adjacency.shape[0]}, seed={self.seed}, n_repeats={self.n_repeats}, "
            f"max_size={self.max_size}, neighbours={'as given' if self.as_given else 'symmetric'}, "
            f"cached={len(self._cache)})"
        )

    def _ring_axes(self, centre: int) -> tuple[np.ndarray, np.ndarray]:
        if centre not in self._axes:
            self._axes[centre] = _growth_axes(self.adjacency, self.centres, centre)
        return self._axes[centre]

    def count(self, centre: int) -> int:
        """Number of candidates of ``centre``."""
        ring1, axes = self._ring_axes(int(centre))
        return max(1, 2 * self.n_repeats * len(axes))

    def get(self, centre: int, j: int) -> np.ndarray:
        """Candidate ``j`` of ``centre``: array of int64, centre first."""
        centre, j = int(centre), int(j)
        key = (centre, j)
        patch = self._cache.get(key)
        if patch is None:
            ring1, axes = self._ring_axes(centre)
            n_cand = self.count(centre)
            if not 0 <= j < n_cand:
                raise IndexError(f"centre {centre} has {n_cand} candidate patches, asked for index {j}")
            if ring1.size == 0:
                patch = np.array([centre], dtype=np.int64)
            else:
                half = n_cand // 2
                n_rings = 2 if j < half else 3
                axis = axes[(j % half) % len(axes)]
                rng = np.random.default_rng([self.seed, centre, j])
                patch = _one_candidate(
                    self.adjacency, self.centres, centre, ring1, axis, n_rings, rng, self.max_size, self.as_given
                )
            self._cache[key] = patch
        return patch

    def all(self, centre: int) -> list[np.ndarray]:
        """Every candidate of ``centre``."""
        return [self.get(centre, j) for j in range(self.count(centre))]


def candidate_patches(
    anatomy_or_adjacency: Any,
    centres: np.ndarray | None,
    centre: int,
    seed: int = 0,
    n_repeats: int = 5,
    max_size: int = 70,
) -> list[np.ndarray]:
    """DeepSIF's candidate source patches around one centre region.

    Parameters
    ----------
    anatomy_or_adjacency, centres, seed, n_repeats, max_size
        As in :class:`CandidatePatches` (symmetric adjacency).
    centre : int
        0-based centre region.

    Returns
    -------
    patches : list of arrays of int64
        ``2 * n_repeats * ceil(n_first_ring / 2)`` patches, first the two-ring ones then
        the three-ring ones, centre first in each; ``[centre]`` alone for a region
        without neighbours.
    """
    return CandidatePatches(anatomy_or_adjacency, centres, seed, n_repeats, max_size).all(int(centre))


def grow_patch(
    anatomy_or_adjacency: Any,
    centres: np.ndarray | None,
    centre: int,
    size: int,
    rng: np.random.Generator | int | None = None,
    biases: tuple[float, ...] = GROW_BIASES,
) -> np.ndarray:
    """Grow a connected patch of (up to) ``size`` regions along a random axis.

    The first ring is taken whole (its regions most aligned with the axis first when
    it alone exceeds ``size``); each further ring takes neighbours of the previous one
    with DeepSIF's direction probability (``biases[k]`` for ring ``k + 2``, the last
    bias for rings beyond), always at least the best-aligned one, until ``size`` is
    reached; then the patch is smoothed once (holes filled, strays beyond the first
    ring removed) and cut
    back to ``size`` in growth order keeping it connected. The result is smaller than
    ``size`` only when the centre's connected component is.

    Parameters
    ----------
    anatomy_or_adjacency, centres
        The region graph, as in :func:`as_adjacency`.
    centre : int
        0-based centre region.
    size : int
        Wanted number of regions (>= 1), e.g. drawn from ``[1, 70]``.
    rng : numpy.random.Generator | int | None
        Random generator or seed.
    biases : tuple of float
        Direction-probability bias per ring from the second on.

    Returns
    -------
    patch : array of int64, shape (n_patch,)
        0-based regions, centre first, no duplicates, ``n_patch <= size``.
    """
    adj, centres = as_adjacency(anatomy_or_adjacency, centres)
    rng = np.random.default_rng(rng)
    n = adj.shape[0]
    centre = int(centre)
    size = int(size)
    if not 0 <= centre < n:
        raise ValueError(f"centre must lie in [0, {n}), got {centre}")
    check_positive_int("size", size)
    inside = _mask(n, [centre])
    ring1 = _neighbours(adj, [centre], inside)
    if size == 1 or ring1.size == 0:
        return np.array([centre], dtype=np.int64)
    origin = centres[centre]
    axis = _unit(centres[ring1[rng.integers(ring1.size)]] - origin)
    order = [centre] + ring1[np.argsort(-np.abs(_unit(centres[ring1] - origin) @ axis), kind="stable")].tolist()
    if size <= len(order):
        return np.asarray(order[:size], dtype=np.int64)
    inside[ring1] = True
    frontier = ring1
    ring = 0
    for _attempt in range(3):
        while len(order) < size:
            cand = _neighbours(adj, frontier, inside)
            if cand.size == 0:
                cand = _neighbours(adj, np.flatnonzero(inside), inside)
                if cand.size == 0:
                    break  # the centre's component is exhausted
            bias = biases[min(ring, len(biases) - 1)]
            prob = _direction_probability(axis, origin, centres[cand], bias)
            chosen = cand[rng.random(cand.size) < prob]
            if chosen.size == 0:
                chosen = cand[[int(np.argmax(prob))]]
            chosen = chosen[np.argsort(-prob[np.searchsorted(cand, chosen)], kind="stable")]
            order.extend(chosen.tolist())
            inside[chosen] = True
            frontier = chosen
            ring += 1
        # unlike DeepSIF's candidates, the first ring is kept whole here
        add, remove = smooth_patch(adj, np.asarray(order), np.concatenate([[centre], ring1]))
        if remove.size:
            rm = set(remove.tolist())
            order = [r for r in order if r not in rm]
            inside[remove] = False
        order.extend(add.tolist())
        inside[add] = True
        if len(order) >= size:
            break
        frontier = np.asarray(order, dtype=np.int64)
        if _neighbours(adj, frontier, inside).size == 0:
            break
    return _connected_prefix(adj, order, size)


def pick_second_patch(
    anatomy_or_adjacency: Any,
    centres: np.ndarray | None,
    first: np.ndarray,
    allowed_centres: np.ndarray,
    rng: np.random.Generator,
    *,
    candidates: CandidatePatches | None = None,
    size_range: tuple[int, int] = (1, 70),
    min_centre_distance_mm: float = 0.0,
    max_size: int = 70,
    n_tries: int = 20,
) -> np.ndarray | None:
    """A second source patch that neither overlaps nor touches ``first``.

    Its centre is drawn among ``allowed_centres`` outside ``first`` and its neighbours
    (and at least ``min_centre_distance_mm`` from the first centre); its patch is a
    random DeepSIF candidate (``candidates`` given) or grown to a size drawn from
    ``size_range``. After ``n_tries`` patches that touch the first one, the last is cut
    to its regions away from ``first`` (kept connected).

    Parameters
    ----------
    anatomy_or_adjacency, centres
        The region graph, as in :func:`as_adjacency` (unused when ``candidates`` is
        given: its graph is used).
    first : array of int
        The first patch.
    allowed_centres : array of bool, shape (n_regions,) | array of int
        Regions that may be the second centre (e.g. those with clips).
    rng : numpy.random.Generator
    candidates : CandidatePatches | None
        Draw among DeepSIF candidates instead of growing.
    size_range : (int, int)
        Inclusive size range when growing.
    min_centre_distance_mm : float
    max_size : int
    n_tries : int

    Returns
    -------
    patch : array of int64 | None
        Centre first; None when no allowed centre lies away from ``first``.
    """
    if candidates is not None:
        adj, centres = candidates.adjacency, candidates.centres
    else:
        adj, centres = as_adjacency(anatomy_or_adjacency, centres)
    n = adj.shape[0]
    first = np.asarray(first, dtype=np.int64)
    allowed = np.asarray(allowed_centres)
    if allowed.dtype != bool:
        allowed = _mask(n, allowed)
    blocked = _mask(n, first)
    blocked[_neighbours(adj, first)] = True  # regions touching the first patch
    ok = allowed & ~blocked
    if min_centre_distance_mm > 0:
        ok &= np.linalg.norm(centres - centres[first[0]], axis=1) >= min_centre_distance_mm
    choices = np.flatnonzero(ok)
    if choices.size == 0:
        return None
    lo, hi = (int(v) for v in size_range)
    patch = None
    for _ in range(n_tries):
        c2 = int(choices[rng.integers(choices.size)])
        if candidates is not None:
            patch = candidates.get(c2, int(rng.integers(candidates.count(c2))))
        else:
            patch = grow_patch(adj, centres, c2, int(rng.integers(lo, hi + 1)), rng)
        if not blocked[patch].any():
            return patch
    keep = [r for r in patch.tolist() if not blocked[r]]  # type: ignore[union-attr]
    return _connected_prefix(adj, keep, max_size)


def is_connected(adjacency: Any, patch: np.ndarray) -> bool:
    """Whether ``patch`` is connected over ``adjacency`` (breadth-first search inside it).

    Parameters
    ----------
    adjacency : sparse matrix, shape (n_regions, n_regions)
    patch : array of int, shape (n_patch,)

    Returns
    -------
    connected : bool
    """
    adj = sp.csr_matrix(adjacency, dtype=bool)
    adj = (adj + adj.T).tocsr()
    patch = np.asarray(patch, dtype=np.int64)
    if patch.size == 0:
        return False
    inside = _mask(adj.shape[0], patch)
    seen = _mask(adj.shape[0], patch[:1])
    queue = [int(patch[0])]
    while queue:
        r = queue.pop()
        for nb in adj.indices[adj.indptr[r] : adj.indptr[r + 1]]:
            if inside[nb] and not seen[nb]:
                seen[nb] = True
                queue.append(int(nb))
    return bool(seen[patch].all())


def gaussian_magnitude(
    centres: np.ndarray | None, patch: np.ndarray, half_max_mm: float, distances: np.ndarray | None = None
) -> np.ndarray:
    """DeepSIF's ``mag_change``: ``exp(-d^2 / (2 sigma^2))``, ``sigma = 0.8493 * half_max_mm``.

    Parameters
    ----------
    centres : array, shape (n_regions, 3) | None
        Region centres in mm (unused when ``distances`` is given).
    patch : array of int, shape (n_patch,)
        Patch regions, centre first.
    half_max_mm : float
        Distance from the centre at which the weight is 1/2.
    distances : array, shape (n_regions, n_regions) | None
        Region-to-region distances in mm (DeepSIF reads ``d`` from such a matrix,
        ``dis_matrix_fs_20k.mat``); None: Euclidean distances between ``centres``.

    Returns
    -------
    weights : array of float64, shape (n_patch,)
        1 at the centre, decreasing with the distance from it.
    """
    patch = np.asarray(patch, dtype=np.int64)
    if distances is not None:
        d = np.asarray(distances, dtype=np.float64)[patch[0], patch]
    else:
        d = np.linalg.norm(centres[patch] - centres[patch[0]], axis=1)
    sigma = 0.8493 * float(half_max_mm)  # sqrt(2 ln 2) * sigma = half-width at half maximum
    return np.exp(-(d**2) / (2.0 * sigma**2))
