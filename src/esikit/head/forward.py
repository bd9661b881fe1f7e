"""Region leadfields for any electrode cap, computed with MNE-Python.

A new cap needs only a new leadfield: clips and metadata do not depend on the electrodes.
:func:`make_forward_model` places a montage's electrodes on an anatomy's scalp, builds a
three-layer boundary-element model (BEM) of the head, computes MNE's EEG forward solution
for a dipole at every cortex vertex, oriented normal to the cortex, and sums the vertices
of each region into one column, as DeepSIF built ``leadfield_75_20k.mat``.

Head surfaces
-------------
* DeepSIF's fsaverage5 template (any anatomy other than ``tvb76``): the fsaverage head
  and inner skull surfaces and the head <-> MRI transform that MNE ships in
  ``mne/data/fsaverage``; the anatomy's coordinates are fsaverage's surface RAS.
* tvb-data's default anatomy (``tvb76``): tvb-data's 1082-vertex scalp. Its inner skull,
  outer skull and skin surfaces (4096 vertices) are not used: they lie within 1-2 mm of
  each other, in another frame than the cortex, and cut through it.

The three BEM layers share one icosahedral mesh (:func:`layered_head_surfaces`): along
each of its directions from the head centre, the scalp is where the ray meets the scalp
surface, the inner skull where it meets the inner skull surface (without one, 12 mm
inside the scalp), but always at least 2 mm outside every cortex vertex, and the outer
skull midway between them, at most 7 mm above the inner skull (under the face and neck
the rest is soft tissue). Such radial surfaces are nested and never intersect, so MNE's
BEM always works.

Montage alignment
-----------------
The montage's positions are brought to MNE's head frame by their fiducials (MNE's
``set_montage``). When the montage shares at least :data:`MIN_SHARED_NAMES` channel names
with the anatomy's reference electrodes (fsaverage: MNE's ``fsaverage_1005``; tvb76:
tvb-data's 65 EEG sensors), a similarity transform (rotation, translation, one scale)
fitted on those names carries it to the anatomy; otherwise the anatomy's head -> MRI
transform does (MNE's built-in montages are aligned with fsaverage's head). Each electrode
is then moved along the ray from the head centre onto the scalp.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from esikit._validation import check_option
from esikit.io.forward_model import ForwardModel

from .anatomy import Anatomy, open_zip_text, tvb_data_dir

logger = logging.getLogger(__name__)

__all__ = [
    "CONDUCTIVITY",
    "HeadGeometry",
    "MIN_SHARED_NAMES",
    "align_electrodes",
    "default_channel_positions",
    "head_geometry",
    "icosphere",
    "layered_head_surfaces",
    "leadfield_agreement",
    "make_forward_model",
    "read_eeglab_chanlocs",
    "read_montage",
    "region_leadfield",
    "tvb_sensor_montage",
    "vertex_normals",
]

#: Conductivities of brain, skull and scalp in S/m (MNE's defaults).
CONDUCTIVITY: tuple[float, float, float] = (0.3, 0.006, 0.3)
#: Fewest channel names a montage must share with the anatomy's reference electrodes for
#: the name-based fit (fewer: the head -> MRI transform alone).
MIN_SHARED_NAMES = 8
#: The inner skull lies at least this far outside the cortex (m).
CORTEX_MARGIN_M = 0.002
#: Inner skull depth below the scalp when the anatomy has no inner skull surface (m):
#: about 6 mm of scalp and 6 mm of skull.
SKULL_AND_SCALP_M = 0.012
#: Thickest skull allowed (m); beyond it the space to the scalp is soft tissue.
MAX_SKULL_M = 0.007
#: Thinnest skull or scalp layer allowed (m).
MIN_LAYER_M = 0.001

# tvb-data's surfaces and sensors have x anterior, y left; load_default_anatomy rotates
# the cortex to RAS with this matrix, so everything else must be rotated the same way.
_TVB_TO_RAS = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------- geometry helpers
def icosphere(grade: int) -> tuple[np.ndarray, np.ndarray]:
    """A unit icosahedral sphere subdivided ``grade`` times.

    Parameters
    ----------
    grade : int
        Subdivisions: 3 gives 642 vertices, 4 gives 2562, 5 gives 10242.

    Returns
    -------
    rr : numpy.ndarray, shape (10 * 4**grade + 2, 3)
        Unit vectors.
    tris : numpy.ndarray of int, shape (20 * 4**grade, 3)
        Triangles, counter-clockwise seen from outside (normals point outward).
    """
    t = (1.0 + 5 ** 0.5) / 2.0
    rr = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
          [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    tris = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
            [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
            [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [np.array(v, float) / np.linalg.norm(v) for v in rr]
    for _ in range(int(grade)):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in tris:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        tris = new
    rr = np.array(verts)
    tris = np.array(tris, dtype=np.int64)
    # Orient every triangle outward (the normal points away from the centre).
    fn = np.cross(rr[tris[:, 1]] - rr[tris[:, 0]], rr[tris[:, 2]] - rr[tris[:, 0]])
    flip = np.einsum("ij,ij->i", fn, rr[tris].mean(axis=1)) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    return rr, tris


def ray_distances(origin: np.ndarray, directions: np.ndarray, rr: np.ndarray, tris: np.ndarray,
                  *, surface: str = "surface", return_index: bool = False):
    """Distance from ``origin`` along each direction to its first crossing of a surface.

    Parameters
    ----------
    origin : numpy.ndarray, shape (3,)
        Ray origin (same units as ``rr``), inside the surface.
    directions : numpy.ndarray, shape (n, 3)
        Unit vectors.
    rr : numpy.ndarray, shape (n_vertices, 3)
        Surface vertices.
    tris : numpy.ndarray of int, shape (n_faces, 3)
        Surface triangles.
    surface : str
        Name for the error message.
    return_index : bool
        Also return the triangle each ray crosses.

    Returns
    -------
    t : numpy.ndarray, shape (n,)
        Distances (Moller-Trumbore intersection, nearest hit).
    index : numpy.ndarray of int, shape (n,)
        Only with ``return_index``: the triangle crossed.

    Raises
    ------
    ValueError
        If some ray never meets the surface (the surface is open there or the origin is
        outside it).
    """
    v0 = rr[tris[:, 0]] - origin
    e1 = rr[tris[:, 1]] - rr[tris[:, 0]]
    e2 = rr[tris[:, 2]] - rr[tris[:, 0]]
    q = np.cross(-v0, e1)  # origin at 0: tvec = -v0
    out = np.full(len(directions), np.inf)
    index = np.zeros(len(directions), dtype=np.int64)
    chunk = max(1, 2_000_000 // max(len(tris), 1))
    for s in range(0, len(directions), chunk):
        d = directions[s:s + chunk]
        p = np.cross(d[:, None, :], e2[None, :, :])
        det = np.einsum("mk,nmk->nm", e1, p)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            u = np.einsum("mk,nmk->nm", -v0, p) * inv
            v = (d @ q.T) * inv
            t = np.einsum("mk,mk->m", e2, q)[None, :] * inv
            ok = (np.abs(det) > 1e-15) & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 0)
        t = np.where(ok, t, np.inf)
        index[s:s + chunk] = t.argmin(axis=1)
        out[s:s + chunk] = t[np.arange(len(d)), index[s:s + chunk]]
    missing = ~np.isfinite(out)
    if missing.any():
        raise ValueError(f"{surface}: {int(missing.sum())} of {len(out)} rays from the head centre never "
                         "meet it; expected a closed surface around the centre")
    return (out, index) if return_index else out


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unit normals of a cortex mesh, pointing out of the brain.

    Area-weighted means of the face normals; the sign is chosen so that most normals
    point away from the mesh centroid (a mesh wound inward is flipped as a whole).

    Parameters
    ----------
    vertices : numpy.ndarray, shape (V, 3)
    triangles : numpy.ndarray of int, shape (F, 3)

    Returns
    -------
    numpy.ndarray, shape (V, 3)
    """
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    nn = np.zeros_like(v)
    for k in range(3):
        np.add.at(nn, t[:, k], fn)
    norm = np.linalg.norm(nn, axis=1, keepdims=True)
    nn = nn / np.where(norm > 0, norm, 1.0)
    if np.mean(np.einsum("ij,ij->i", nn, v - v.mean(axis=0)) > 0) < 0.5:
        nn = -nn
    return nn


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """4 x 4 similarity (rotation, translation, one scale) taking ``src`` onto ``dst`` (Umeyama)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # no reflection
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / a.var(axis=0).sum())
    out = np.eye(4)
    out[:3, :3] = scale * rot
    out[:3, 3] = mu_d - scale * rot @ mu_s
    return out


def _apply(trans: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return pos @ trans[:3, :3].T + trans[:3, 3]


# ----------------------------------------------------------------- head geometry
@dataclass
class HeadGeometry:
    """What is known about an anatomy's head, in the anatomy's frame, metres.

    Parameters
    ----------
    name : str
        Which head (``"fsaverage"`` or ``"tvb76"``).
    scalp_rr, scalp_tris : numpy.ndarray
        The scalp surface, (n, 3) metres and (m, 3) vertex indices.
    inner_skull_rr, inner_skull_tris : numpy.ndarray | None
        The inner skull surface when known.
    centre : numpy.ndarray, shape (3,)
        The head centre rays are cast from (metres).
    head_to_anatomy : numpy.ndarray, shape (4, 4)
        Similarity from MNE's head frame (metres) to the anatomy frame (metres).
    ref_names : list of str
        Reference electrodes of the name-based montage fit.
    ref_pos : numpy.ndarray, shape (len(ref_names), 3)
        Their positions in the anatomy frame (metres).
    """

    name: str
    scalp_rr: np.ndarray
    scalp_tris: np.ndarray
    inner_skull_rr: np.ndarray | None
    inner_skull_tris: np.ndarray | None
    centre: np.ndarray
    head_to_anatomy: np.ndarray
    ref_names: list[str] = field(default_factory=list)
    ref_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


@contextlib.contextmanager
def _quiet_mne():
    import mne

    with warnings.catch_warnings(), mne.utils.use_log_level("error"):
        warnings.simplefilter("ignore", FutureWarning)  # MNE 1.13 renames standard_10xx
        yield


def _fsaverage_dir() -> Path:
    import mne

    return Path(mne.__file__).resolve().parent / "data" / "fsaverage"


def _montage_head_positions(montage) -> tuple[list[str], np.ndarray]:
    """Channel names and positions in MNE's head frame (metres), via the montage's fiducials."""
    import mne

    names = list(montage.ch_names)
    with _quiet_mne():
        info = mne.create_info(names, 1000.0, "eeg")
        info.set_montage(montage, on_missing="ignore")
    pos = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    return names, pos


def _fsaverage_geometry() -> HeadGeometry:
    import mne

    d = _fsaverage_dir()
    with _quiet_mne():
        head = mne.read_bem_surfaces(d / "fsaverage-head.fif")[0]
        inner = mne.read_bem_surfaces(d / "fsaverage-inner_skull-bem.fif")[0]
        trans = mne.read_trans(d / "fsaverage-trans.fif")
        ref = mne.channels.make_standard_montage("fsaverage_1005")
    head_to_mri = trans["trans"] if trans["from"] == mne.io.constants.FIFF.FIFFV_COORD_HEAD \
        else np.linalg.inv(trans["trans"])
    names, pos_head = _montage_head_positions(ref)
    return HeadGeometry(
        name="fsaverage", scalp_rr=head["rr"], scalp_tris=head["tris"], inner_skull_rr=inner["rr"],
        inner_skull_tris=inner["tris"], centre=inner["rr"].mean(axis=0), head_to_anatomy=head_to_mri,
        ref_names=names, ref_pos=_apply(head_to_mri, pos_head))


def _tvb_sensors_raw() -> tuple[list[str], np.ndarray]:
    """tvb-data's 65 EEG sensor names (first of ``T8/T4`` style pairs) and positions (mm, RAS)."""
    path = tvb_data_dir() / "sensors" / "eeg_brainstorm_65.txt"
    names, pos = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            names.append(parts[0].split("/")[0])
            pos.append([float(x) for x in parts[1:4]])
    return names, np.asarray(pos) @ _TVB_TO_RAS.T


def _tvb_geometry() -> HeadGeometry:
    root = tvb_data_dir()
    with zipfile.ZipFile(root / "surfaceData" / "scalp_1082.zip") as zf:
        scalp = np.loadtxt(open_zip_text(zf, "vertices.txt")) @ _TVB_TO_RAS.T / 1000.0
        tris = np.loadtxt(open_zip_text(zf, "triangles.txt"), dtype=np.int64)
    names, pos = _tvb_sensors_raw()
    pos = pos / 1000.0
    # The sensors are in Brainstorm's SCS frame (origin between the ears), the surfaces
    # centred on the brain: fit the translation that puts the sensors on the scalp
    # (iterated closest points; median residual about 4 mm).
    tree = cKDTree(scalp)
    shift = scalp.mean(axis=0) - pos.mean(axis=0)
    for _ in range(100):
        _, idx = tree.query(pos + shift)
        step = (scalp[idx] - (pos + shift)).mean(axis=0)
        shift += step
        if np.linalg.norm(step) < 1e-7:
            break
    pos = pos + shift
    centre = scalp.mean(axis=0)
    geom = HeadGeometry(name="tvb76", scalp_rr=scalp, scalp_tris=tris, inner_skull_rr=None,
                        inner_skull_tris=None, centre=centre, head_to_anatomy=np.eye(4),
                        ref_names=names, ref_pos=pos)
    # MNE's head frame -> this anatomy: fit fsaverage's 10-05 positions to the sensors.
    import mne

    with _quiet_mne():
        ref = mne.channels.make_standard_montage("fsaverage_1005")
    ref_names, ref_head = _montage_head_positions(ref)
    src, dst = _shared(ref_names, ref_head, names, pos)
    geom.head_to_anatomy = _similarity_fit(src, dst)
    return geom


def _shared(names_a: Sequence[str], pos_a: np.ndarray, names_b: Sequence[str],
            pos_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the channels two sets share by name (case-insensitive), paired."""
    index_b = {n.lower(): i for i, n in enumerate(names_b)}
    pairs = [(i, index_b[n.lower()]) for i, n in enumerate(names_a)
             if n.lower() in index_b and np.all(np.isfinite(pos_a[i]))]
    if not pairs:
        return np.zeros((0, 3)), np.zeros((0, 3))
    ia, ib = np.array(pairs).T
    return pos_a[ia], pos_b[ib]


_GEOMETRY_CACHE: dict[str, HeadGeometry] = {}


def head_geometry(anatomy: Anatomy) -> HeadGeometry:
    """The head surfaces and frames of an anatomy (see the module notes).

    Parameters
    ----------
    anatomy : Anatomy
        ``tvb76`` gets tvb-data's scalp; any other anatomy is taken to be in fsaverage's
        frame (DeepSIF's template) and gets MNE's fsaverage head.

    Returns
    -------
    HeadGeometry

    Raises
    ------
    ValueError
        If the anatomy has no cortex mesh (a cortex in another frame than the head's is
        caught by :func:`layered_head_surfaces`).
    """
    if anatomy.vertices is None or anatomy.triangles is None or anatomy.vertex_region is None:
        raise ValueError(f"anatomy {anatomy.name!r} has no cortex mesh and region map; a leadfield "
                         "needs vertices, triangles and vertex_region")
    key = "tvb76" if anatomy.name == "tvb76" else "fsaverage"
    if key not in _GEOMETRY_CACHE:
        _GEOMETRY_CACHE[key] = _tvb_geometry() if key == "tvb76" else _fsaverage_geometry()
    return _GEOMETRY_CACHE[key]


# ----------------------------------------------------------------- BEM surfaces
def _triangle_of_direction(dirs: np.ndarray, u: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Index of the unit-sphere mesh triangle whose cone holds each direction."""
    n_tri = len(tris)
    incident = [[] for _ in range(len(u))]
    for f, tri in enumerate(tris):
        for v in tri:
            incident[v].append(f)
    width = max(len(x) for x in incident)
    table = np.array([x + [x[0]] * (width - len(x)) for x in incident], dtype=np.int64)
    _, nearest = cKDTree(u).query(dirs)
    cand = table[nearest]  # (n, width): the triangles around the nearest mesh vertex
    a, b, c = (u[tris[cand][..., k]] for k in range(3))
    # Inside the cone: the direction is on the inner side of the three planes through 0.
    inside = np.ones(cand.shape, dtype=bool)
    for p, q in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("nwk,nk->nw", np.cross(p, q), dirs) >= -1e-12
    found = inside.any(axis=1)
    out = cand[np.arange(len(dirs)), inside.argmax(axis=1)]
    if not found.all():  # numerically on an edge far from the nearest vertex: search all
        _, out[~found] = ray_distances(np.zeros(3), dirs[~found], u, tris, surface="unit sphere",
                                       return_index=True)
    assert out.max() < n_tri
    return out


def _plane_distance(dirs: np.ndarray, rr: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Distance from the origin along each direction to the plane of its triangle."""
    p0, p1, p2 = rr[tri[:, 0]], rr[tri[:, 1]], rr[tri[:, 2]]
    n = np.cross(p1 - p0, p2 - p0)
    return np.einsum("nk,nk->n", n, p0) / np.einsum("nk,nk->n", n, dirs)


def layered_head_surfaces(geom: HeadGeometry, cortex: np.ndarray, grade: int = 4
                          ) -> tuple[list[np.ndarray], np.ndarray]:
    """Inner skull, outer skull and scalp on one icosahedral mesh (metres).

    Parameters
    ----------
    geom : HeadGeometry
        The head.
    cortex : numpy.ndarray, shape (V, 3)
        Cortex vertices in metres; the inner skull passes at least
        :data:`CORTEX_MARGIN_M` outside every one of them (checked on the flat
        triangles, not only at the mesh vertices). The outer skull lies midway to the
        scalp, at most :data:`MAX_SKULL_M` above the inner skull.
    grade : int
        Icosahedral subdivision (3: 642 vertices per layer, 4: 2562).

    Returns
    -------
    layers : list of numpy.ndarray, each (n, 3)
        Inner skull, outer skull, scalp vertices.
    tris : numpy.ndarray of int, shape (m, 3)
        Their common triangles (outward).

    Raises
    ------
    ValueError
        If the cortex reaches the scalp in more than a tenth of the directions (a cortex
        in another frame than the head's).
    """
    u, tris = icosphere(grade)
    c = geom.centre
    r_scalp = ray_distances(c, u, geom.scalp_rr, geom.scalp_tris, surface=f"{geom.name} scalp")
    if geom.inner_skull_rr is not None:
        r_in = ray_distances(c, u, geom.inner_skull_rr, geom.inner_skull_tris,
                             surface=f"{geom.name} inner skull")
    else:
        r_in = r_scalp - SKULL_AND_SCALP_M
    # The inner skull must pass outside every cortex vertex: each vertex pushes out the
    # three mesh vertices of the triangle its direction crosses, then the flat triangles
    # are checked along the vertices' own directions and pushed out where they cut in.
    d = cortex - c
    r = np.linalg.norm(d, axis=1)
    dirs = d / r[:, None]
    tri_of = _triangle_of_direction(dirs, u, tris)
    env = np.zeros(len(u))
    for k in range(3):
        np.maximum.at(env, tris[tri_of, k], r)
    r_in = np.maximum(r_in, env + CORTEX_MARGIN_M)
    for _ in range(50):
        # A radial surface meets the ray along v in the triangle whose cone holds v, the
        # same triangle as on the unit sphere: intersect with that triangle's plane.
        t = _plane_distance(dirs, u * r_in[:, None], tris[tri_of])
        deficit = r + CORTEX_MARGIN_M - t
        if deficit.max() <= 1e-9:
            break
        bad = deficit > 0
        bump = np.zeros(len(u))
        for k in range(3):
            np.maximum.at(bump, tris[tri_of[bad], k], deficit[bad])
        r_in += 1.1 * bump + 1e-6
    squeezed = int((r_scalp < r_in + 2 * MIN_LAYER_M).sum())
    if squeezed > 0.1 * len(u):
        raise ValueError(f"the cortex reaches the {geom.name} scalp in {squeezed} of {len(u)} directions; "
                         f"expected a cortex in {geom.name}'s frame (mm, RAS) well inside its head")
    if squeezed:
        logger.info("%s: scalp moved out in %d of %d directions to leave room for the skull", geom.name,
                    squeezed, len(u))
    r_scalp = np.maximum(r_scalp, r_in + 2 * MIN_LAYER_M)
    # The skull is the inner half of the gap, at most MAX_SKULL_M thick: under the face and
    # the neck the rest is soft tissue (scalp conductivity), not bone.
    r_out = r_in + np.minimum((r_scalp - r_in) / 2.0, MAX_SKULL_M)
    return [c + u * rad[:, None] for rad in (r_in, r_out, r_scalp)], tris


def _make_bem_solution(layers: Sequence[np.ndarray], tris: np.ndarray,
                       conductivity: Sequence[float]):
    """MNE's BEM solution for three nested surfaces (metres, anatomy frame = MRI frame)."""
    import mne

    with tempfile.TemporaryDirectory(prefix="esikit_bem_") as tmp:
        bem_dir = Path(tmp) / "head" / "bem"
        bem_dir.mkdir(parents=True)
        for name, rr in zip(("inner_skull", "outer_skull", "outer_skin"), layers):
            # FreeSurfer surfaces are in mm; make_bem_model reads them from subjects_dir.
            mne.write_surface(str(bem_dir / f"{name}.surf"), rr * 1000.0, tris, overwrite=True)
        with _quiet_mne():
            model = mne.make_bem_model("head", ico=None, conductivity=tuple(conductivity), subjects_dir=tmp)
            return mne.make_bem_solution(model)


# ----------------------------------------------------------------- montages
def read_eeglab_chanlocs(path: str | os.PathLike, variable: str | None = None):
    """An EEGLAB channel-location struct in a MAT file (e.g. DeepSIF's ``electrode_75.mat``).

    Parameters
    ----------
    path : str | os.PathLike
        MAT file holding a struct array with fields ``labels``, ``X``, ``Y``, ``Z``
        (EEGLAB's axes: X anterior, Y left, Z up; millimetres).
    variable : str | None
        The struct's name (default: the first struct with those fields).

    Returns
    -------
    mne.channels.DigMontage
        Positions converted to RAS metres, frame ``head`` (the name-based fit aligns them).
    """
    import mne

    from esikit.io import load_mat_file

    data = load_mat_file(path)
    names = [variable] if variable else list(data)
    for name in names:
        s = np.asarray(data.get(name))
        if s.dtype.names and {"labels", "X", "Y", "Z"} <= set(s.dtype.names):
            break
    else:
        raise ValueError(f"{path}: no EEGLAB channel struct (fields labels, X, Y, Z) in "
                         f"{sorted(data)}")
    labels, pos = [], []
    for e in s.ravel():
        lab = np.asarray(e["labels"]).ravel()
        labels.append(str(lab[0]) if lab.size else "")
        x, y, z = (float(np.asarray(e[k]).ravel()[0]) for k in ("X", "Y", "Z"))
        pos.append([-y, x, z])
    pos = np.asarray(pos) / 1000.0
    with _quiet_mne():
        return mne.channels.make_dig_montage(dict(zip(labels, pos)), coord_frame="head")


_MONTAGE_SUFFIXES = (".elc", ".sfp", ".csd", ".elp", ".hpts", ".loc", ".locs", ".eloc", ".bvef",
                     ".txt", ".ced", ".xyz")


def _montage_of_recording(path: Path):
    """The EEG channel positions of a recording MNE reads (or of a ``.fif`` digitization)."""
    import mne

    try:
        raw = mne.io.read_raw(path, preload=False)
    except Exception as err:  # MNE raises many types for unreadable files
        if path.suffix.lower() == ".fif":  # a digitization file (DigMontage.save)
            with contextlib.suppress(Exception):
                return mne.channels.read_dig_fif(path)
        raise ValueError(f"{path}: not a montage or recording MNE can read ({err})") from err
    raw.pick("eeg", exclude=())
    montage = raw.get_montage()
    if montage is None or not montage.ch_names:
        raise ValueError(f"{path}: the recording has no channel positions; give a montage with --montage "
                         "(e.g. standard_1020) instead")
    return montage


def read_montage(spec, channels: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Channel names and positions (MNE's head frame, metres) of a montage.

    Parameters
    ----------
    spec : str | os.PathLike | mne.channels.DigMontage
        A montage MNE ships (``standard_1020``, ``biosemi64``, ``GSN-HydroCel-128``, ...;
        see ``mne.channels.get_builtin_montages()``), a montage file MNE reads
        (``.elc``, ``.sfp``, ``.loc``, ``.bvef``, ...; ``.fif`` digitization), an EEGLAB
        channel struct in a ``.mat`` file, or a recording MNE reads (its own positions).
    channels : sequence of str | None
        Keep only these channels, in this order (names matched case-insensitively).

    Returns
    -------
    ch_names : list of str
    ch_pos : numpy.ndarray, shape (C, 3)

    Raises
    ------
    ValueError
        If the montage cannot be read, has no positions, or lacks requested channels
        (all of them are listed).
    """
    import mne

    if isinstance(spec, mne.channels.DigMontage):
        montage, what = spec, "montage"
    else:
        what = str(spec)
        path = Path(spec)
        with _quiet_mne():
            if path.is_file():
                suffix = path.suffix.lower()
                if suffix in _MONTAGE_SUFFIXES:
                    montage = mne.channels.read_custom_montage(path)
                elif suffix == ".mat":
                    montage = read_eeglab_chanlocs(path)
                else:
                    montage = _montage_of_recording(path)
            else:
                try:
                    montage = mne.channels.make_standard_montage(str(spec))
                except ValueError as err:
                    raise ValueError(
                        f"Invalid value for 'montage': {str(spec)!r} is neither a file nor a montage MNE "
                        f"ships ({', '.join(mne.channels.get_builtin_montages())})") from err
    names, pos = _montage_head_positions(montage)
    keep = np.all(np.isfinite(pos), axis=1) & (np.abs(pos).sum(axis=1) > 0)
    if channels is not None:
        lower = {n.lower(): i for i, n in enumerate(names)}
        missing = [c for c in channels if c.lower() not in lower]
        no_pos = [c for c in channels if c.lower() in lower and not keep[lower[c.lower()]]]
        if missing or no_pos:
            msg = []
            if missing:
                msg.append(f"channels {missing} are not in it (it has {len(names)}: {', '.join(names[:20])}"
                           f"{', ...' if len(names) > 20 else ''})")
            if no_pos:
                msg.append(f"channels {no_pos} have no position")
            raise ValueError(f"montage {what}: " + "; ".join(msg))
        idx = [lower[c.lower()] for c in channels]
        return [names[i] for i in idx], pos[idx]
    if not keep.all():
        logger.warning("montage %s: %d channels without a position dropped", what, int((~keep).sum()))
    if not keep.any():
        raise ValueError(f"montage {what}: no channel has a position")
    return [n for n, k in zip(names, keep) if k], pos[keep]


def align_electrodes(ch_names: Sequence[str], ch_pos: np.ndarray, geom: HeadGeometry
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """Electrode positions on the anatomy's scalp, in its frame (metres).

    Parameters
    ----------
    ch_names : sequence of str
    ch_pos : numpy.ndarray, shape (C, 3)
        MNE's head frame, metres.
    geom : HeadGeometry

    Returns
    -------
    pos : numpy.ndarray, shape (C, 3)
        On the scalp, anatomy frame, metres.
    info : dict
        ``method`` (``"names"`` or ``"head frame"``), ``n_shared`` and ``fit_rms_mm``
        (residual of the name-based fit).
    """
    src, dst = _shared(list(ch_names), ch_pos, geom.ref_names, geom.ref_pos)
    info: dict[str, Any] = {"n_shared": len(src)}
    if len(src) >= MIN_SHARED_NAMES:
        trans = _similarity_fit(src, dst)
        info["method"] = "names"
        info["fit_rms_mm"] = float(np.sqrt(((_apply(trans, src) - dst) ** 2).sum(axis=1).mean()) * 1000)
    else:
        trans = geom.head_to_anatomy
        info["method"] = "head frame"
    pos = _apply(trans, np.asarray(ch_pos, dtype=np.float64))
    d = pos - geom.centre
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    r = ray_distances(geom.centre, u, geom.scalp_rr, geom.scalp_tris, surface=f"{geom.name} scalp")
    info["moved_mm_median"] = float(np.median(np.abs(np.linalg.norm(d, axis=1) - r)) * 1000)
    return geom.centre + u * r[:, None], info


def tvb_sensor_montage():
    """tvb-data's 65 EEG sensors (``eeg_brainstorm_65.txt``) as a montage in MNE's head frame.

    Their positions are put on the tvb76 scalp (see :func:`head_geometry`) and carried to
    MNE's head frame by the inverse of the fsaverage 10-05 fit, so that they align back
    exactly by name.

    Returns
    -------
    mne.channels.DigMontage
    """
    import mne

    geom = _GEOMETRY_CACHE.get("tvb76") or _GEOMETRY_CACHE.setdefault("tvb76", _tvb_geometry())
    pos = _apply(np.linalg.inv(geom.head_to_anatomy), geom.ref_pos)
    with _quiet_mne():
        return mne.channels.make_dig_montage(dict(zip(geom.ref_names, pos)), coord_frame="head")


def default_channel_positions(anatomy: Anatomy) -> np.ndarray | None:
    """Head-frame positions (C x 3, metres) of an anatomy's own channels, when known.

    tvb76: tvb-data's sensors (:func:`tvb_sensor_montage`); otherwise MNE's
    ``fsaverage_1005`` positions of the channel names when all of them are there.

    Parameters
    ----------
    anatomy : Anatomy

    Returns
    -------
    numpy.ndarray, shape (anatomy.n_channels, 3) | None
    """
    import mne

    if anatomy.name == "tvb76":
        names, pos = _montage_head_positions(tvb_sensor_montage())
    else:
        with _quiet_mne():
            names, pos = _montage_head_positions(mne.channels.make_standard_montage("fsaverage_1005"))
    index = {n.lower(): i for i, n in enumerate(names)}
    want = [c.split("/")[0].lower() for c in anatomy.channel_names]
    if not all(w in index for w in want):
        return None
    return pos[[index[w] for w in want]]


# ----------------------------------------------------------------- the forward model
def region_leadfield(anatomy: Anatomy, ch_names: Sequence[str], elec_pos: np.ndarray,
                     geom: HeadGeometry | None = None, *, head_model: str = "bem", grade: int = 4,
                     conductivity: Sequence[float] = CONDUCTIVITY) -> tuple[np.ndarray, dict[str, Any]]:
    """Region leadfield for electrodes placed in the anatomy's frame.

    Parameters
    ----------
    anatomy : Anatomy
        Cortex mesh (mm) and ``vertex_region``.
    ch_names : sequence of str
        C names.
    elec_pos : numpy.ndarray, shape (C, 3)
        Electrodes in the anatomy's frame, metres (on the scalp).
    geom : HeadGeometry | None
        The head (needed for ``"bem"``).
    head_model : {'bem', 'sphere'}
        ``'bem'``: three layers from :func:`layered_head_surfaces`; ``'sphere'``: MNE's
        three-shell sphere fitted to the electrodes (cortex outside its inner shell is
        dropped, as the reference figure in ``DEEPSIF_TEMPLATE.md`` notes).
    grade : int
        Icosahedral subdivision of the BEM layers (4: 2562 vertices each).
    conductivity : tuple of 3 float
        Brain, skull, scalp, S/m.

    Returns
    -------
    fwd : numpy.ndarray, shape (C, R)
        V/(A m): column r is the sum of the fixed-orientation (cortex-normal) gains of
        region r's vertices, as DeepSIF summed its Brainstorm gains.
    info : dict
        ``n_sources``, ``n_dropped`` (vertices MNE could not use), ``head_model``.
    """
    import mne

    check_option("head_model", head_model, ("bem", "sphere"))
    verts = np.asarray(anatomy.vertices, dtype=np.float64) / 1000.0
    nn = vertex_normals(verts, anatomy.triangles)
    with _quiet_mne():
        info = mne.create_info(list(ch_names), 1000.0, "eeg")
        info.set_montage(mne.channels.make_dig_montage(dict(zip(ch_names, elec_pos)), coord_frame="head"))
        if head_model == "bem":
            if geom is None:
                raise ValueError("head_model='bem' needs the head geometry")
            layers, tris = layered_head_surfaces(geom, verts, grade)
            bem = _make_bem_solution(layers, tris, conductivity)
        else:
            bem = mne.make_sphere_model("auto", "auto", info)
        src = mne.setup_volume_source_space(pos=dict(rr=verts, nn=nn))
        trans = mne.transforms.Transform("head", "mri")  # electrodes are in the anatomy (MRI) frame
        fwd = mne.make_forward_solution(info, trans, src, bem, meg=False, eeg=True, mindist=0.0, n_jobs=1)
    kept = np.asarray(fwd["src"][0]["vertno"])
    gain = fwd["sol"]["data"].reshape(len(ch_names), len(kept), 3)
    # Fixed orientation: project the free-orientation gain on each vertex's normal.
    fixed = np.einsum("cvk,vk->cv", gain, nn[kept])
    region = np.asarray(anatomy.vertex_region)[kept]
    ok = region >= 0
    out = np.zeros((len(ch_names), anatomy.n_regions))
    np.add.at(out.T, region[ok], fixed[:, ok].T)
    n_dropped = len(verts) - len(kept)
    if n_dropped:
        logger.warning("%s: %d of %d cortex vertices are outside the %s's inner compartment and add nothing",
                       anatomy.name, n_dropped, len(verts), head_model)
    return out, {"n_sources": int(len(kept)), "n_dropped": int(n_dropped), "head_model": head_model}


def make_forward_model(anatomy: Anatomy, montage, channels: Sequence[str] | None = None, *,
                       head_model: str = "bem", grade: int = 4,
                       conductivity: Sequence[float] = CONDUCTIVITY) -> tuple[ForwardModel, dict[str, Any]]:
    """The region leadfield of an anatomy for an electrode cap.

    Parameters
    ----------
    anatomy : Anatomy
        With its cortex mesh and region map (see :func:`esikit.head.load_anatomy`).
    montage : str | os.PathLike | mne.channels.DigMontage
        See :func:`read_montage`.
    channels : sequence of str | None
        A subset of the montage's channels, in this order.
    head_model, grade, conductivity
        See :func:`region_leadfield`.

    Returns
    -------
    model : ForwardModel
        ``fwd`` (C, R) in V/(A m), ``ch_names``, ``ch_pos`` (the montage's positions in
        MNE's head frame, metres).
    info : dict
        How the electrodes were aligned and what the forward computation dropped.
    """
    names, pos_head = read_montage(montage, channels)
    geom = head_geometry(anatomy)
    elec, align = align_electrodes(names, pos_head, geom)
    fwd, details = region_leadfield(anatomy, names, elec, geom, head_model=head_model, grade=grade,
                                    conductivity=conductivity)
    logger.info("%s: %d channels aligned by %s (%d shared names), %d sources", anatomy.name, len(names),
                align["method"], align["n_shared"], details["n_sources"])
    return ForwardModel(fwd, names, pos_head), {**align, **details, "head": geom.name}


def leadfield_agreement(fwd: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """How well a leadfield matches a reference, both average-referenced.

    Parameters
    ----------
    fwd, ref : numpy.ndarray, shape (C, R)
        Same channels and regions in the same order.

    Returns
    -------
    dict
        ``corr_median`` and ``corr_p5``: per-region topography correlation (median, 5th
        percentile); ``rel_error``: ``||fwd - ref|| / ||ref||`` (Frobenius);
        ``rel_error_scaled``: the same after the best single scale factor on ``fwd``;
        ``scale``: that factor.
    """
    a = np.asarray(fwd, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"leadfields differ in shape: {a.shape} vs reference {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    valid = (na > 0) & (nb > 0)
    corr = (a * b).sum(axis=0)[valid] / (na * nb)[valid]
    scale = float((a * b).sum() / (a * a).sum())
    norm = np.linalg.norm(b)
    return {
        "corr_median": float(np.median(corr)),
        "corr_p5": float(np.percentile(corr, 5)),
        "rel_error": float(np.linalg.norm(a - b) / norm),
        "rel_error_scaled": float(np.linalg.norm(scale * a - b) / norm),
        "scale": scale,
    }
