"""Head and brain anatomy for simulation: region leadfield, connectome, mesh.

An :class:`Anatomy` bundles everything the simulation and the metadata
generation need about one head model:

* the region-level EEG forward matrix ``fwd`` (channels x regions),
* the region centres and the region adjacency (to grow source patches),
* the structural connectome the neural masses are simulated on (``N`` nodes),
  with ``node_of_region`` mapping each forward-model region to the simulated
  node whose activity it takes,
* optionally the cortical mesh and the vertex-to-region map.

Two built-in sources exist:

* :func:`load_default_anatomy`: the 76-region TVB default shipped in the
  ``tvb-data`` package (63 EEG channels), used by ``make demo``;
* :func:`load_deepsif_anatomy`: DeepSIF's fsaverage5 template (75 channels,
  994 regions, simulated on the 998-node connectome).
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from ..io import load_mat_field, mat_strings
from ..io.atomic import atomic_output

logger = logging.getLogger(__name__)

__all__ = [
    "Anatomy",
    "AnatomyFileError",
    "DEEPSIF_EXTRA_NODES",
    "load_anatomy",
    "load_deepsif_anatomy",
    "load_default_anatomy",
    "region_adjacency_from_mesh",
]

#: DeepSIF's 998 -> 994 mapping (``process_raw_nmm.m``): forward-model regions
#: 8, 326, 922, 950 (1-based) take simulated nodes 995, 998, 997, 996 (1-based).
#: Stored 0-based as ``{region: node}``.
DEEPSIF_EXTRA_NODES: dict[int, int] = {7: 994, 325: 997, 921: 996, 949: 995}

# Rows of tvb-data's 65-channel EEG projection that are all NaN (IO1, IO2).
_TVB_EEG_NAN_ROWS = (18, 19)

_ANATOMY_FILE_FIX = (
    "It is a copy written from the source anatomy: delete it and run again the command that wrote it "
    "('esikit simulate' writes a dataset's anatomy/anatomy.npz from its --anatomy, a harvest rewrites "
    ".harvest/anatomy.npz when it is missing), or point ANATOMY at 'default' or the DeepSIF anatomy folder"
)


class AnatomyFileError(ValueError):
    """An anatomy ``.npz`` that cannot be read: truncated, damaged or not written by
    :meth:`Anatomy.save` (a ``ValueError``)."""


@dataclass
class Anatomy:
    """One head model: region leadfield, region geometry and the connectome.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"tvb76"`` or ``"deepsif994"``.
    fwd : ndarray, shape (n_channels, n_regions)
        Region-level EEG forward matrix (float64).
    channel_names : list of str, length n_channels
        EEG channel labels in the row order of ``fwd``.
    centres : ndarray, shape (n_regions, 3)
        Region centres in mm (float64).
    adjacency : scipy.sparse.csr_matrix, shape (n_regions, n_regions)
        Boolean, symmetric region adjacency without self loops.
    weights : ndarray, shape (n_nodes, n_nodes)
        Connectome weights of the simulated network; ``weights[k, j]`` is the
        strength from node ``j`` to node ``k`` (TVB's convention).
    tract_lengths : ndarray, shape (n_nodes, n_nodes)
        Fibre tract lengths in mm.
    node_of_region : ndarray of int, shape (n_regions,)
        Simulated node whose activity is region ``r``'s.
    region_labels : list of str, length n_regions
        Region names.
    vertices : ndarray, shape (n_vertices, 3) | None
        Cortical mesh vertices in mm.
    triangles : ndarray of int, shape (n_faces, 3) | None
        Mesh triangles, 0-based vertex indices.
    vertex_region : ndarray of int, shape (n_vertices,) | None
        Region of each vertex (-1 for none).
    """

    name: str
    fwd: np.ndarray
    channel_names: list[str]
    centres: np.ndarray
    adjacency: scipy.sparse.csr_matrix
    weights: np.ndarray
    tract_lengths: np.ndarray
    node_of_region: np.ndarray
    region_labels: list[str]
    vertices: np.ndarray | None = None
    triangles: np.ndarray | None = None
    vertex_region: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.fwd = np.asarray(self.fwd, dtype=np.float64)
        self.centres = np.asarray(self.centres, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.tract_lengths = np.asarray(self.tract_lengths, dtype=np.float64)
        self.node_of_region = np.asarray(self.node_of_region, dtype=np.int64)
        self.adjacency = scipy.sparse.csr_matrix(self.adjacency, dtype=bool)
        self.channel_names = [str(c) for c in self.channel_names]
        self.region_labels = [str(c) for c in self.region_labels]
        self._validate()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        n_ch, n_reg = self.fwd.shape if self.fwd.ndim == 2 else (None, None)
        if self.fwd.ndim != 2:
            raise ValueError(f"Anatomy {self.name!r}: 'fwd' has shape {self.fwd.shape}, "
                             "expected (n_channels, n_regions)")
        checks = [
            ("channel_names", (len(self.channel_names),), (n_ch,)),
            ("centres", self.centres.shape, (n_reg, 3)),
            ("adjacency", self.adjacency.shape, (n_reg, n_reg)),
            ("node_of_region", self.node_of_region.shape, (n_reg,)),
            ("region_labels", (len(self.region_labels),), (n_reg,)),
        ]
        n_nodes = self.weights.shape[0] if self.weights.ndim == 2 else -1
        checks += [
            ("weights", self.weights.shape, (n_nodes, n_nodes)),
            ("tract_lengths", self.tract_lengths.shape, (n_nodes, n_nodes)),
        ]
        for fname, found, expected in checks:
            if tuple(found) != tuple(expected):
                raise ValueError(f"Anatomy {self.name!r}: field {fname!r} has shape {tuple(found)}, "
                                 f"expected {tuple(expected)} (n_channels={n_ch}, "
                                 f"n_regions={n_reg}, n_nodes={n_nodes})")
        if n_reg and (self.node_of_region.min() < 0 or self.node_of_region.max() >= n_nodes):
            raise ValueError(f"Anatomy {self.name!r}: 'node_of_region' values must lie in "
                             f"[0, {n_nodes}), got [{self.node_of_region.min()}, "
                             f"{self.node_of_region.max()}]")

    # ------------------------------------------------------------- properties
    @property
    def n_channels(self) -> int:
        """Number of EEG channels (rows of ``fwd``)."""
        return int(self.fwd.shape[0])

    @property
    def n_regions(self) -> int:
        """Number of forward-model regions (columns of ``fwd``)."""
        return int(self.fwd.shape[1])

    @property
    def n_nodes(self) -> int:
        """Number of simulated connectome nodes."""
        return int(self.weights.shape[0])

    def neighbours(self, r: int) -> np.ndarray:
        """Regions adjacent to region ``r``.

        Parameters
        ----------
        r : int
            Region index, 0-based.

        Returns
        -------
        ndarray of int, shape (n_neighbours,)
            Sorted 0-based indices of the neighbouring regions.
        """
        r = int(r)
        if not 0 <= r < self.n_regions:
            raise IndexError(f"region {r} out of range [0, {self.n_regions})")
        a = self.adjacency
        return np.sort(a.indices[a.indptr[r]:a.indptr[r + 1]]).astype(np.int64)

    def __repr__(self) -> str:
        mesh = (f", mesh={len(self.vertices)} vertices/{len(self.triangles)} triangles"
                if self.vertices is not None and self.triangles is not None else "")
        return (f"<Anatomy {self.name!r}: {self.n_channels} channels, {self.n_regions} regions, "
                f"{self.n_nodes} simulated nodes{mesh}>")

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write everything into one ``.npz`` file (no pickles).

        Parameters
        ----------
        path : str | Path
            Destination; ``.npz`` is appended by numpy when missing.

        Returns
        -------
        Path
            The file written.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        adj = self.adjacency.tocsr()
        arrays = dict(
            format_version=np.array(1),
            name=np.array(self.name),
            fwd=self.fwd,
            channel_names=np.array(self.channel_names, dtype=str),
            centres=self.centres,
            adjacency_indptr=adj.indptr.astype(np.int64),
            adjacency_indices=adj.indices.astype(np.int64),
            adjacency_shape=np.array(adj.shape, dtype=np.int64),
            weights=self.weights,
            tract_lengths=self.tract_lengths,
            node_of_region=self.node_of_region,
            region_labels=np.array(self.region_labels, dtype=str),
        )
        for key in ("vertices", "triangles", "vertex_region"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        with atomic_output(path) as tmp:  # a crash never leaves half a file
            np.savez_compressed(tmp, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Anatomy":
        """Read an anatomy written by :meth:`save`.

        Parameters
        ----------
        path : str | Path
            The ``.npz`` file.

        Returns
        -------
        Anatomy
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such anatomy file")
        try:
            # Every member is read (and CRC-checked) here, so a truncated or damaged file
            # fails in one place with one message, not as a zip or zlib traceback later.
            with np.load(path, allow_pickle=False) as z:
                z_ = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise AnatomyFileError(f"{path}: cannot read the anatomy file, it is truncated or damaged "
                                   f"({type(exc).__name__}: {exc}). {_ANATOMY_FILE_FIX}") from exc
        required = ("name", "fwd", "channel_names", "centres", "adjacency_indptr",
                    "adjacency_indices", "adjacency_shape", "weights", "tract_lengths",
                    "node_of_region", "region_labels")
        missing = [k for k in required if k not in z_]
        if missing:
            raise AnatomyFileError(f"{path}: not an Anatomy file, missing fields {missing} "
                                   "(write one with Anatomy.save)")
        n_ind = len(z_["adjacency_indices"])
        adj = scipy.sparse.csr_matrix(
            (np.ones(n_ind, dtype=bool), z_["adjacency_indices"], z_["adjacency_indptr"]),
            shape=tuple(int(s) for s in z_["adjacency_shape"]))
        optional = {k: z_.get(k) for k in ("vertices", "triangles", "vertex_region")}
        return cls(
            name=str(z_["name"]),
            fwd=z_["fwd"],
            channel_names=[str(c) for c in z_["channel_names"]],
            centres=z_["centres"],
            adjacency=adj,
            weights=z_["weights"],
            tract_lengths=z_["tract_lengths"],
            node_of_region=z_["node_of_region"],
            region_labels=[str(c) for c in z_["region_labels"]],
            **optional,
        )


# ---------------------------------------------------------------- helpers
def region_adjacency_from_mesh(triangles: np.ndarray, vertex_region: np.ndarray,
                               n_regions: int) -> scipy.sparse.csr_matrix:
    """Region adjacency from mesh edges whose two vertices lie in different regions.

    Parameters
    ----------
    triangles : ndarray of int, shape (n_faces, 3)
        0-based vertex indices.
    vertex_region : ndarray of int, shape (n_vertices,)
        Region of each vertex; negative values (no region) are ignored.
    n_regions : int
        Number of regions.

    Returns
    -------
    scipy.sparse.csr_matrix of bool, shape (n_regions, n_regions)
        Symmetric, no self loops.
    """
    tri = np.asarray(triangles, dtype=np.int64)
    vr = np.asarray(vertex_region, dtype=np.int64)
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    ra, rb = vr[edges[:, 0]], vr[edges[:, 1]]
    keep = (ra != rb) & (ra >= 0) & (rb >= 0)
    ra, rb = ra[keep], rb[keep]
    rows = np.concatenate([ra, rb])
    cols = np.concatenate([rb, ra])
    adj = scipy.sparse.coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)),
                                  shape=(n_regions, n_regions)).tocsr()
    adj.sum_duplicates()
    adj.data[:] = True
    adj.sort_indices()
    return adj


def open_zip_text(zf: zipfile.ZipFile, name: str) -> io.TextIOWrapper:
    """Member ``name`` of a TVB zip as UTF-8 text; matched by basename (some zips nest a folder)."""
    for info in zf.infolist():
        if Path(info.filename).name == name:
            return io.TextIOWrapper(zf.open(info), encoding="utf-8")
    raise FileNotFoundError(f"{zf.filename}: no member named {name!r} "
                            f"(members: {[i.filename for i in zf.infolist()]})")


def load_tvb_connectivity(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Weights, tract lengths, centre labels and centres (mm) of a TVB connectivity zip."""
    with zipfile.ZipFile(path) as zf:
        weights = np.loadtxt(open_zip_text(zf, "weights.txt"))
        tracts = np.loadtxt(open_zip_text(zf, "tract_lengths.txt"))
        labels, centres = [], []
        for line in open_zip_text(zf, "centres.txt"):
            parts = line.split()
            if len(parts) >= 4:
                labels.append(parts[0])
                centres.append([float(v) for v in parts[1:4]])
    centres = np.asarray(centres, dtype=np.float64)
    n = weights.shape[0]
    if weights.shape != (n, n) or tracts.shape != (n, n) or centres.shape != (n, 3):
        raise ValueError(f"{path}: inconsistent connectivity: weights {weights.shape}, "
                         f"tract_lengths {tracts.shape}, centres {centres.shape}; "
                         f"expected (N, N), (N, N), (N, 3)")
    return weights, tracts, labels, centres


def tvb_data_dir() -> Path:
    """The installed ``tvb-data`` package's folder (connectomes, surfaces, sensors, projections)."""
    try:
        import tvb_data
    except ImportError as err:  # pragma: no cover - tvb-data is a hard dependency
        raise ImportError("The default anatomy needs the 'tvb-data' package "
                          "(pip install tvb-data).") from err
    return Path(tvb_data.__file__).resolve().parent


def _sensor_names(path: Path, n: int) -> list[str]:
    names = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts:
                names.append(parts[0])
    if len(names) != n:
        logger.warning("%s: %d sensor names for %d projection rows; using E1..E%d",
                       path, len(names), n, n)
        names = [f"E{i + 1}" for i in range(n)]
    return names


# ------------------------------------------------------------- loaders
def load_default_anatomy() -> Anatomy:
    """The 76-region TVB default anatomy from the ``tvb-data`` package.

    Connectome ``connectivity/connectivity_76.zip`` (the one DeepSIF ships),
    cortex ``surfaceData/cortex_16384.zip``, region mapping
    ``regionMapping/regionMapping_16k_76.txt`` and the EEG projection
    ``projectionMatrix/projection_eeg_65_surface_16k.npy``. The projection rows
    of IO1 and IO2 (all NaN) are dropped, leaving 63 channels named after
    ``sensors/eeg_brainstorm_65.txt``. The region leadfield sums the projection
    columns of each region's vertices. ``node_of_region`` is the identity.

    Returns
    -------
    Anatomy
        ``fwd`` (63, 76), mesh of 16384 vertices.
    """
    root = tvb_data_dir()
    weights, tracts, labels, centres = load_tvb_connectivity(
        root / "connectivity" / "connectivity_76.zip")
    n_reg = weights.shape[0]
    with zipfile.ZipFile(root / "surfaceData" / "cortex_16384.zip") as zf:
        vertices = np.loadtxt(open_zip_text(zf, "vertices.txt"))
        triangles = np.loadtxt(open_zip_text(zf, "triangles.txt"), dtype=np.int64)
    vertex_region = np.loadtxt(root / "regionMapping" / "regionMapping_16k_76.txt").astype(np.int64)
    proj_path = root / "projectionMatrix" / "projection_eeg_65_surface_16k.npy"
    proj = np.load(proj_path)
    if proj.shape[1] != len(vertices) or len(vertex_region) != len(vertices):
        raise ValueError(f"{proj_path}: projection has shape {proj.shape}, expected "
                         f"(n_channels, {len(vertices)}); region mapping has "
                         f"{len(vertex_region)} entries")
    names_all = _sensor_names(root / "sensors" / "eeg_brainstorm_65.txt", proj.shape[0])
    bad = np.isnan(proj).any(axis=1)
    if not np.array_equal(np.flatnonzero(bad), np.array(_TVB_EEG_NAN_ROWS)):
        logger.warning("%s: NaN rows %s (expected %s)", proj_path, np.flatnonzero(bad),
                       _TVB_EEG_NAN_ROWS)
    proj = proj[~bad]
    channel_names = [n for n, b in zip(names_all, bad) if not b]
    # Region leadfield: one column per region = sum of its vertices' columns
    # (each vertex a unit dipole: the region's activity drives all of them).
    fwd = np.zeros((proj.shape[0], n_reg))
    np.add.at(fwd.T, vertex_region, proj.T)
    adjacency = region_adjacency_from_mesh(triangles, vertex_region, n_reg)
    # tvb-data's surface and centres have x anterior, y left, z superior; rotate them to
    # RAS (x right, y anterior, z superior) like DeepSIF's template, so plots and
    # positions mean the same thing for both anatomies (distances are unchanged).
    to_ras = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vertices = vertices @ to_ras.T
    centres = np.asarray(centres, dtype=np.float64) @ to_ras.T
    return Anatomy(
        name="tvb76", fwd=fwd, channel_names=channel_names, centres=centres,
        adjacency=adjacency, weights=weights, tract_lengths=tracts,
        node_of_region=np.arange(n_reg), region_labels=labels,
        vertices=vertices, triangles=triangles, vertex_region=vertex_region)


def cell_to_lists(cell) -> list[np.ndarray]:
    """Flatten a MATLAB 1 x n cell array of numeric vectors into a list of arrays."""
    arr = np.asarray(cell, dtype=object)
    return [np.asarray(x, dtype=np.int64).ravel() for x in arr.ravel()]


def _eeglab_labels(eloc) -> list[str]:
    arr = np.asarray(eloc)
    if arr.dtype.names and "labels" in arr.dtype.names:
        return mat_strings(arr["labels"])
    # io loaders may return a dict-like struct
    if isinstance(eloc, dict) and "labels" in eloc:
        return mat_strings(eloc["labels"])
    raise ValueError(f"electrode struct without a 'labels' field (got {type(eloc)})")


def load_deepsif_anatomy(folder: str | Path) -> Anatomy:
    """DeepSIF's fsaverage5 template anatomy (75 channels, 994 regions, 998 nodes).

    Parameters
    ----------
    folder : str | Path
        Folder laid out like DeepSIF's ``anatomy/``: ``leadfield_75_20k.mat``
        (``fwd``), ``fs_cortex_20k_region_mapping.mat`` (``rm`` 0-based region
        per vertex, ``nbs`` 1-based neighbour lists), ``fs_cortex_20k.mat``
        (``pos`` mm, ``tri`` 1-based), ``fs_cortex_20k_inflated.mat``
        (``centre``, the region centres DeepSIF grows patches with),
        ``electrode_75.mat`` (``eloc75``) and ``connectivity_998.zip``.

    Returns
    -------
    Anatomy
        ``fwd`` (75, 994); ``weights`` (998, 998); ``node_of_region`` the
        identity except regions 7, 325, 921, 949 (0-based), which take nodes
        994, 997, 996, 995 as in DeepSIF's ``process_raw_nmm.m``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DeepSIF anatomy folder not found: {folder}")
    lf_path = next(iter(sorted(folder.glob("leadfield_*.mat"))), None)
    if lf_path is None:
        raise FileNotFoundError(f"{folder}: no leadfield_*.mat (expected leadfield_75_20k.mat "
                                "with field 'fwd')")
    fwd = np.asarray(load_mat_field(lf_path, "fwd"), dtype=np.float64)
    n_ch, n_reg = fwd.shape
    rm_path = folder / "fs_cortex_20k_region_mapping.mat"
    vertex_region = np.asarray(load_mat_field(rm_path, "rm")).ravel().astype(np.int64)
    nbs = cell_to_lists(load_mat_field(rm_path, "nbs"))
    if len(nbs) != n_reg:
        raise ValueError(f"{rm_path}: field 'nbs' has {len(nbs)} entries, expected {n_reg} "
                         f"(columns of {lf_path.name})")
    rows = np.concatenate([np.full(len(nb), r) for r, nb in enumerate(nbs)])
    cols = np.concatenate(nbs) - 1  # 1-based in the file
    keep = rows != cols
    adjacency = scipy.sparse.coo_matrix((np.ones(keep.sum(), dtype=bool), (rows[keep], cols[keep])),
                                        shape=(n_reg, n_reg)).tocsr()
    asym = (adjacency != adjacency.T).nnz
    if asym:
        logger.info("%s: 'nbs' is not symmetric (%d one-way pairs); symmetrizing", rm_path, asym)
        adjacency = (adjacency + adjacency.T).tocsr()
    adjacency.sum_duplicates()
    adjacency.data[:] = True
    adjacency.sort_indices()

    mesh_path = folder / "fs_cortex_20k.mat"
    vertices = triangles = None
    if mesh_path.exists():
        vertices = np.asarray(load_mat_field(mesh_path, "pos"), dtype=np.float64)
        triangles = np.asarray(load_mat_field(mesh_path, "tri"), dtype=np.int64) - 1
    centres = np.asarray(load_mat_field(folder / "fs_cortex_20k_inflated.mat", "centre"),
                         dtype=np.float64)
    elec_path = folder / "electrode_75.mat"
    if elec_path.exists():
        channel_names = _eeglab_labels(scipy.io.loadmat(elec_path)["eloc75"])
    else:
        channel_names = [f"E{i + 1}" for i in range(n_ch)]
    if len(channel_names) != n_ch:
        logger.warning("%s: %d labels for %d channels; using E1..", elec_path, len(channel_names), n_ch)
        channel_names = [f"E{i + 1}" for i in range(n_ch)]

    weights, tracts, node_labels, _ = load_tvb_connectivity(folder / "connectivity_998.zip")
    node_of_region = np.arange(n_reg)
    if weights.shape[0] > n_reg:
        for r, node in DEEPSIF_EXTRA_NODES.items():
            if r < n_reg and node < weights.shape[0]:
                node_of_region[r] = node
    region_labels = [node_labels[n] for n in node_of_region]
    return Anatomy(
        name=f"deepsif{n_reg}", fwd=fwd, channel_names=channel_names, centres=centres,
        adjacency=adjacency, weights=weights, tract_lengths=tracts,
        node_of_region=node_of_region, region_labels=region_labels,
        vertices=vertices, triangles=triangles, vertex_region=vertex_region)


def load_anatomy(spec: "str | Path | Anatomy") -> Anatomy:
    """Load an anatomy from a name, a DeepSIF folder or a saved ``.npz``.

    Parameters
    ----------
    spec : str | Path | Anatomy
        ``"default"`` or ``"tvb76"`` for :func:`load_default_anatomy`; a folder
        laid out like DeepSIF's ``anatomy/`` for :func:`load_deepsif_anatomy`;
        a ``.npz`` written by :meth:`Anatomy.save`; an :class:`Anatomy` is
        returned unchanged.

    Returns
    -------
    Anatomy
    """
    if isinstance(spec, Anatomy):
        return spec
    if isinstance(spec, str) and spec.lower() in ("default", "tvb76"):
        return load_default_anatomy()
    path = Path(spec)
    if path.is_dir():
        if (path / "anatomy.npz").exists():  # a dataset's anatomy/ folder
            return _load_saved(path / "anatomy.npz")
        return load_deepsif_anatomy(path)
    if path.is_file() and path.suffix == ".npz":
        return _load_saved(path)
    raise ValueError(f"Invalid value for 'anatomy': expected one of 'default', 'tvb76', "
                     f"a DeepSIF anatomy folder or an anatomy .npz file, got {str(spec)!r}.")


def _load_saved(path: Path) -> Anatomy:
    """:meth:`Anatomy.load`, rebuilding a damaged dataset copy from its recorded source.

    ``esikit simulate`` writes ``OUT/anatomy/anatomy.npz`` from the anatomy named in
    ``OUT/dataset.json`` (or ``OUT/.simulate_config.json`` while it runs): when that
    source is the built-in anatomy or a DeepSIF folder that still exists, a truncated
    copy is rebuilt from it (and rewritten atomically); otherwise the error names the fix.
    """
    try:
        return Anatomy.load(path)
    except AnatomyFileError as exc:
        rebuilt = _rebuild_from_dataset_record(path)
        if rebuilt is None:
            raise
        logger.warning("%s Rebuilt it from the anatomy recorded for the dataset (%s).", str(exc).split(" (")[0],
                       rebuilt.name)
        return rebuilt


def _rebuild_from_dataset_record(path: Path) -> Anatomy | None:
    if path.name != "anatomy.npz" or path.parent.name != "anatomy":
        return None
    for record in (path.parent.parent / "dataset.json", path.parent.parent / ".simulate_config.json"):
        try:
            config = json.loads(record.read_text()).get("config", {})
        except (OSError, ValueError, AttributeError):
            continue
        spec, name = config.get("anatomy"), config.get("anatomy_name")
        if not isinstance(spec, str):
            continue
        if spec.lower() in ("default", "tvb76"):
            anat = load_default_anatomy()
        elif Path(spec).is_dir() and not (Path(spec) / "anatomy.npz").exists():
            anat = load_deepsif_anatomy(spec)
        else:
            return None  # another saved file: nothing to rebuild from
        if name is not None and anat.name != name:
            return None
        anat.save(path)  # temporary name, then one rename
        return anat
    return None


def find_anatomy(spec: str | os.PathLike | None, fwd_path: str | os.PathLike | None):
    """The anatomy that goes with a leadfield (for metrics, plots, the dynamic mode), or None.

    ``spec`` (config ``ANATOMY``) wins; otherwise ``anatomy.npz`` beside the forward
    matrix (what ``esikit simulate`` writes), then DeepSIF's template files beside it.
    """
    if spec is not None:
        return load_anatomy(spec)
    if fwd_path is None or not isinstance(fwd_path, (str, os.PathLike)):
        return None
    folder = Path(fwd_path).parent
    if (folder / "anatomy.npz").is_file():
        return load_anatomy(folder / "anatomy.npz")
    if (folder / "fs_cortex_20k_inflated.mat").is_file() and (folder / "fs_cortex_20k_region_mapping.mat").is_file():
        return load_anatomy(folder)
    return None
