"""Forward (leadfield) matrices: load from .npy/.npz/MAT/Octave files, orient to C x R."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse

from esikit.io._mat import list_mat_variables, load_mat_file

logger = logging.getLogger(__name__)

#: Variable names tried, in this order, when no key is given.
FORWARD_KEYS = ("fwd", "forward", "leadfield", "L")


class ForwardMatrixKeyError(KeyError, ValueError):
    """No forward-matrix variable in a file (a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def orient_forward_matrix(arr: np.ndarray, source: str = "array", *, n_regions: int | None = None) -> np.ndarray:
    """Check a forward matrix and orient it to channels x regions.

    With ``n_regions`` known (from the clips or the anatomy), the dimension of that size
    is the regions one, whatever the shape (a 128-channel, 76-region leadfield stays
    128 x 76). Without it, regions are taken to outnumber channels (the sample
    contract), so a matrix with more rows than columns is transposed.

    Parameters
    ----------
    arr : array-like, shape (C, R) or (R, C)
        The forward matrix (any real numeric dtype).
    source : str
        What the matrix is, for error messages (e.g. ``"anatomy/x.mat field 'fwd'"``).
    n_regions : int, optional
        R, when known: decides the orientation.

    Returns
    -------
    fwd : numpy.ndarray, shape (C, R), float64
        C-contiguous.

    Raises
    ------
    ValueError
        If the matrix is not 2-D, is square (the orientation cannot be told), is empty,
        is not real numeric, has no dimension of size ``n_regions``, has non-finite
        entries (the message gives their count), is all zeros, or has region columns
        that are constant over channels (such a region is invisible in average-referenced
        EEG; the message lists them).
    """
    if scipy.sparse.issparse(arr):
        arr = arr.toarray()
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(
            f"{source}: forward matrix has shape {arr.shape}, expected a 2-D "
            f"(channels, regions) matrix"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{source}: forward matrix has dtype {arr.dtype}, expected real numbers"
        )
    n_rows, n_cols = arr.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"{source}: forward matrix has shape {arr.shape}, which is empty")
    if n_rows == n_cols:
        raise ValueError(
            f"{source}: forward matrix has square shape {arr.shape}: cannot tell channels "
            f"from regions (expected C x R with fewer channels than regions)"
        )
    if n_regions is not None:
        n_regions = int(n_regions)
        if n_cols != n_regions and n_rows != n_regions:
            raise ValueError(
                f"{source}: forward matrix has shape {arr.shape}, expected (C, R) (or (R, C)) with "
                f"R={n_regions} regions; neither dimension is {n_regions}"
            )
        if n_cols != n_regions:
            logger.debug("%s: transposing forward matrix %s to C x R (R=%d)", source, arr.shape, n_regions)
            arr = arr.T
    elif n_rows > n_cols:
        logger.debug("%s: transposing forward matrix %s to C x R", source, arr.shape)
        arr = arr.T
    n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise ValueError(
            f"{source}: forward matrix has {n_bad} non-finite entries (NaN or Inf) out of "
            f"{arr.size}, expected all finite"
        )
    if not np.any(arr):
        raise ValueError(
            f"{source}: forward matrix (shape {arr.shape}) is all zeros, expected channel gains of "
            "each region (every sample's EEG would be zero): point at the real leadfield"
        )
    # A column constant over channels (zeros included) puts the same value on every
    # channel: the average reference removes it, so the region can never be seen.
    flat = np.flatnonzero(np.ptp(arr, axis=0) == 0)
    if flat.size:
        shown = ", ".join(str(int(r)) for r in flat[:5]) + (f" and {flat.size - 5} more" if flat.size > 5 else "")
        raise ValueError(
            f"{source}: forward matrix (shape {arr.shape}, C x R) has {flat.size} of {arr.shape[1]} region "
            f"column(s) constant over channels (regions {shown}, 0-based), expected every region's "
            "gains to differ between channels: such a region is invisible in average-referenced EEG; "
            "recompute the leadfield"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def _missing_key_error(path: str | os.PathLike, keys: list[str], expected: tuple[str, ...]):
    return ForwardMatrixKeyError(
        f"Could not find forward matrix in file {path}: keys are {keys}; "
        f"expected one of {', '.join(expected)}"
    )


def load_forward_matrix(path: str | os.PathLike, key: str | None = None, *, n_regions: int | None = None) -> np.ndarray:
    """Load a forward (leadfield) matrix as channels x regions.

    Parameters
    ----------
    path : str | os.PathLike
        A ``.npy`` file (the array itself), a ``.npz`` archive, or any file that
        :func:`esikit.io.load_mat_file` reads (MAT v4/v5/v7/v7.3, HDF5, Octave text).
    key : str | None
        The variable holding the matrix. ``None``: the first of :data:`FORWARD_KEYS`
        (``fwd``, ``forward``, ``leadfield``, ``L``) present in the file. Ignored for
        ``.npy`` files. Only that variable is read from disk.
    n_regions : int, optional
        R, when known (clips, anatomy): decides the orientation
        (see :func:`orient_forward_matrix`).

    Returns
    -------
    fwd : numpy.ndarray, shape (C, R), float64
        Channels x regions (a file storing R x C is transposed).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ForwardMatrixKeyError
        (a ``KeyError`` and a ``ValueError``) if no expected variable is present; the
        message lists the file's variables.
    ValueError
        If the matrix is square, not 2-D, not numeric, not finite, all zero, has
        constant region columns or no dimension of size ``n_regions``
        (see :func:`orient_forward_matrix`).

    Examples
    --------
    >>> fwd = load_forward_matrix("anatomy/leadfield_75_20k.mat")  # doctest: +SKIP
    >>> fwd.shape  # doctest: +SKIP
    (75, 994)
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a forward matrix)")
    expected = FORWARD_KEYS if key is None else (key,)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        return orient_forward_matrix(arr, source=str(path), n_regions=n_regions)
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            keys = list(npz.files)
            found = next((k for k in expected if k in keys), None)
            if found is None:
                raise _missing_key_error(path, keys, expected)
            arr = npz[found]
    else:
        keys = list_mat_variables(p)
        found = next((k for k in expected if k in keys), None)
        if found is None:
            raise _missing_key_error(path, keys, expected)
        arr = load_mat_file(p, variable_names=[found])[found]
    logger.debug("Loaded forward matrix %s from %s field '%s'", np.shape(arr), path, found)
    return orient_forward_matrix(arr, source=f"{path} field '{found}'", n_regions=n_regions)
