"""DeepSIF's template geometry as its data-generation script reads it.

:func:`~esikit.head.anatomy.load_deepsif_anatomy` turns DeepSIF's ``anatomy/`` folder into
an :class:`~esikit.head.anatomy.Anatomy` for simulation: it symmetrizes the region
neighbour lists. Reproducing DeepSIF's metadata (``forward/generate_sythetic_source.m``)
needs the geometry that script uses, unchanged:

* ``nbs`` of ``fs_cortex_20k_region_mapping.mat`` as given: row ``r`` of
  :attr:`DeepSIFTemplate.adjacency` is the (1-based in the file) list of region ``r``,
  212 one-way pairs on the template;
* ``centre`` of ``fs_cortex_20k_inflated.mat`` (the mean of the inflated-surface vertices
  of each region) for the growth directions;
* the region distance matrix behind ``mag_change``: DeepSIF's script reads it from
  ``dis_matrix_fs_20k.mat`` (field ``raw_dis_matrix``, "distance between source centres"
  in its anatomy README). That file is not distributed with DeepSIF's public repository;
  when it is in the folder it is used as it is, otherwise the distances are Euclidean
  between the region centres of the folded cortex (the mean of ``fs_cortex_20k.mat``
  ``pos`` over the vertices ``rm`` assigns to each region). That fallback is an
  assumption (the matrix is in mm and serves DeepSIF's localization error, so physical
  distances between region centres are the likely content); it differs from the
  inflated-surface distances esikit's own preset uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..io import load_mat_field
from .anatomy import cell_to_lists

logger = logging.getLogger(__name__)

__all__ = [
    "DEEPSIF_DISTANCE_FILE",
    "DeepSIFTemplate",
    "load_deepsif_template",
    "missing_template_files",
]

#: DeepSIF's region distance matrix (field ``raw_dis_matrix``), used when present.
DEEPSIF_DISTANCE_FILE = "dis_matrix_fs_20k.mat"
_REGION_MAPPING = "fs_cortex_20k_region_mapping.mat"
_INFLATED = "fs_cortex_20k_inflated.mat"
_CORTEX = "fs_cortex_20k.mat"


@dataclass
class DeepSIFTemplate:
    """The arrays DeepSIF's metadata script uses (duck-types an Anatomy for patches).

    Attributes
    ----------
    folder : Path
        The anatomy folder read.
    fwd : array, shape (n_channels, n_regions)
        Leadfield (``leadfield_*.mat`` field ``fwd``).
    adjacency : scipy.sparse.csr_matrix of bool, shape (n_regions, n_regions)
        Row ``r`` = the neighbour list of ``r`` as given (0-based, no self loops);
        not symmetric.
    centres : array, shape (n_regions, 3)
        Inflated-surface region centres in mm (growth directions).
    distances : array, shape (n_regions, n_regions)
        Region distances in mm for ``mag_change``.
    distance_source : str
        Where ``distances`` come from (the file, or the folded-cortex centroids).
    n_one_way : int
        Listed pairs whose reverse is not listed.
    """

    folder: Path
    fwd: np.ndarray
    adjacency: sp.csr_matrix
    centres: np.ndarray
    distances: np.ndarray
    distance_source: str
    n_one_way: int

    @property
    def n_regions(self) -> int:
        return int(self.fwd.shape[1])

    def __repr__(self) -> str:
        return (
            f"DeepSIFTemplate(folder='{self.folder}', channels={self.fwd.shape[0]}, regions={self.n_regions}, "
            f"one_way_pairs={self.n_one_way}, distances='{self.distance_source}')"
        )


def missing_template_files(folder: str | Path) -> list[str]:
    """Files (with what they are for) that :func:`load_deepsif_template` needs and ``folder`` lacks.

    Parameters
    ----------
    folder : path-like

    Returns
    -------
    missing : list of str
        Empty when everything is there.
    """
    folder = Path(folder)
    missing = []
    if not any(folder.glob("leadfield_*.mat")):
        missing.append("leadfield_75_20k.mat (or another leadfield_*.mat; field 'fwd', channels x regions)")
    if not (folder / _REGION_MAPPING).is_file():
        missing.append(f"{_REGION_MAPPING} (fields 'nbs', the region neighbour lists, and 'rm')")
    if not (folder / _INFLATED).is_file():
        missing.append(f"{_INFLATED} (field 'centre', the region centres patches grow from)")
    if not (folder / DEEPSIF_DISTANCE_FILE).is_file() and not (folder / _CORTEX).is_file():
        missing.append(
            f"{DEEPSIF_DISTANCE_FILE} (field 'raw_dis_matrix') or, to compute region distances "
            f"without it, {_CORTEX} (field 'pos')"
        )
    return missing


def load_deepsif_template(folder: str | Path) -> DeepSIFTemplate:
    """Read DeepSIF's template geometry as ``generate_sythetic_source.m`` uses it.

    Parameters
    ----------
    folder : path-like
        A folder laid out like DeepSIF's ``anatomy/``.

    Returns
    -------
    DeepSIFTemplate

    Raises
    ------
    FileNotFoundError
        Naming every file the folder lacks.
    ValueError
        Naming every field whose shape disagrees with the leadfield.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DeepSIF anatomy folder not found: {folder}")
    missing = missing_template_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder}: DeepSIF's metadata recipe needs file(s) this anatomy folder lacks: " + "; ".join(missing)
        )
    lf_path = sorted(folder.glob("leadfield_*.mat"))[0]
    rm_path, inflated_path = folder / _REGION_MAPPING, folder / _INFLATED
    problems: list[str] = []
    fwd = _read(lf_path, "fwd", problems)
    nbs_cell = _read(rm_path, "nbs", problems)
    centres = _read(inflated_path, "centre", problems)
    dist_path = folder / DEEPSIF_DISTANCE_FILE
    raw_dist = _read(dist_path, "raw_dis_matrix", problems) if dist_path.is_file() else None
    if fwd is not None and fwd.ndim != 2:
        problems.append(f"{lf_path}: field 'fwd' has shape {fwd.shape}, expected (n_channels, n_regions)")
    if problems or fwd is None:
        raise ValueError(_problem_text(folder, problems))
    n_reg = fwd.shape[1]
    nbs = cell_to_lists(nbs_cell)
    if len(nbs) != n_reg:
        problems.append(f"{rm_path}: field 'nbs' has {len(nbs)} entries, expected {n_reg} (columns of {lf_path.name})")
    if centres.shape != (n_reg, 3):
        problems.append(f"{inflated_path}: field 'centre' has shape {centres.shape}, expected ({n_reg}, 3)")
    adjacency = None
    if len(nbs) == n_reg:
        rows = np.concatenate([np.full(len(nb), r) for r, nb in enumerate(nbs)])
        cols = np.concatenate(nbs) - 1  # 1-based in the file
        bad = (cols < 0) | (cols >= n_reg)
        if bad.any():
            problems.append(f"{rm_path}: field 'nbs' lists {int(bad.sum())} region(s) outside 1..{n_reg}")
        else:
            keep = rows != cols
            adjacency = sp.csr_matrix(
                (np.ones(int(keep.sum()), dtype=bool), (rows[keep], cols[keep])), shape=(n_reg, n_reg)
            )
            adjacency.sum_duplicates()
            adjacency.sort_indices()
    if raw_dist is not None:
        distances, source = raw_dist, DEEPSIF_DISTANCE_FILE
        if distances.shape != (n_reg, n_reg):
            problems.append(
                f"{dist_path}: field 'raw_dis_matrix' has shape {distances.shape}, expected ({n_reg}, {n_reg})"
            )
    else:
        distances, source = _folded_centroid_distances(folder, n_reg, problems), f"{_CORTEX} region centroids"
        logger.info("%s: no %s; mag_change uses Euclidean distances between region centroids of %s",
                    folder, DEEPSIF_DISTANCE_FILE, _CORTEX)
    if problems or adjacency is None:
        raise ValueError(_problem_text(folder, problems))
    n_one_way = int((adjacency > adjacency.T).nnz)
    return DeepSIFTemplate(folder=folder, fwd=fwd, adjacency=adjacency.tocsr(), centres=centres,
                           distances=distances, distance_source=source, n_one_way=n_one_way)


def _read(path: Path, name: str, problems: list[str]) -> np.ndarray | None:
    """Field ``name`` of ``path`` as float64 (a cell array as it is), or None with a problem noted."""
    try:
        value = load_mat_field(path, name)
    except KeyError:
        problems.append(f"{path}: no field '{name}'")
        return None
    arr = np.asarray(value)
    return arr if arr.dtype == object else arr.astype(np.float64)


def _problem_text(folder: Path, problems: list[str]) -> str:
    return f"{folder}: {len(problems)} problem(s) in the DeepSIF template:\n" + "\n".join(f"  - {p}" for p in problems)


def _folded_centroid_distances(folder: Path, n_reg: int, problems: list[str]) -> np.ndarray:
    """Euclidean distances (mm) between the mean folded-cortex vertex of each region."""
    rm_path, cortex_path = folder / _REGION_MAPPING, folder / _CORTEX
    rm = _read(rm_path, "rm", problems)
    pos = _read(cortex_path, "pos", problems)
    if rm is None or pos is None:
        return np.zeros((n_reg, n_reg))
    rm = rm.ravel().astype(np.int64)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] != rm.size:
        problems.append(f"{cortex_path}: field 'pos' has shape {pos.shape}, expected ({rm.size}, 3) "
                        f"(one row per entry of 'rm' in {rm_path.name})")
        return np.zeros((n_reg, n_reg))
    ok = (rm >= 0) & (rm < n_reg)
    counts = np.bincount(rm[ok], minlength=n_reg)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        problems.append(f"{rm_path}: field 'rm' assigns no vertex to {empty.size} region(s) "
                        f"(first: {empty[:5].tolist()}); their distances are undefined")
        return np.zeros((n_reg, n_reg))
    sums = np.zeros((n_reg, 3))
    np.add.at(sums, rm[ok], pos[ok])
    centroids = sums / counts[:, None]
    diff = centroids[:, None, :] - centroids[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
