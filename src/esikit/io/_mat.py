"""Format detection, dispatch, and the MAT v4/v5/v7 (scipy) back end.

The MAT v7.3 / HDF5 back end lives in :mod:`esikit.io._hdf5`, the Octave text back end in
:mod:`esikit.io._octave`.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse

from esikit._validation import check_option
from esikit.io._format import HDF5_SIGNATURE, MAT73_USERBLOCK_SIZE

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: MATLAB refuses (and scipy cannot write) variables of 2 GiB or more in MAT v5/v7 files.
MAT_V5_MAX_VARIABLE_BYTES = 2**31

MAT_FORMATS = ("v4", "v5", "v7.3", "hdf5", "octave-text")
SAVE_FORMATS = ("v5", "v7.3", "octave-text")

_MATLAB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MATLAB_NAME_MAX = 63


# --------------------------------------------------------------------------- detection
def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a MAT, HDF5 or Octave text file")


def _is_mat_v4_header(head: bytes) -> bool:
    """Whether ``head`` starts with a plausible MAT v4 matrix header.

    A v4 matrix header is five int32: MOPT type, rows, columns, imaginary flag, name
    length. MOPT = 1000*M + 100*O + 10*P + T with M (byte order) in 0..4, O = 0,
    P (precision) in 0..5, T (matrix type) in 0..2. The other four fields are checked
    too, so that random binary data is rarely taken for a v4 file.
    """
    if len(head) < 20:
        return False
    for order in ("<", ">"):
        mopt, rows, cols, imagf, namlen = struct.unpack(order + "5i", head[:20])
        if not 0 <= mopt <= 4052:
            continue
        m, o, p, t = mopt // 1000, (mopt // 100) % 10, (mopt // 10) % 10, mopt % 10
        if m > 4 or o != 0 or p > 5 or t > 2:
            continue
        if rows < 0 or cols < 0 or imagf not in (0, 1) or not 1 <= namlen <= 4096:
            continue
        return True
    return False


def _is_octave_text_header(head: bytes) -> bool:
    if head.startswith(b"# Created by Octave"):
        return True
    first_line = head.split(b"\n", 1)[0]
    if first_line.startswith(b"# name:"):
        return True
    # Other comment headers of Octave's text format (e.g. written by another tool):
    # leading '#' comment lines followed by a '# name:' line.
    if first_line.startswith(b"#"):
        for line in head.split(b"\n")[1:-1]:
            if line.startswith(b"# name:"):
                return True
            if not line.startswith(b"#") and line.strip():
                return False
    return False


def detect_mat_format(path: PathLike) -> str:
    """Detect the format of a MAT, HDF5 or Octave text file from its first bytes.

    No reader is tried: the decision is taken from the header bytes alone.

    Parameters
    ----------
    path : str | os.PathLike
        The file.

    Returns
    -------
    fmt : str
        One of ``'v4'`` (MAT v4, no text header), ``'v5'`` (MAT v5/v6/v7, 128-byte
        header starting ``MATLAB 5.0 MAT-file``), ``'v7.3'`` (HDF5 with a 512-byte user
        block starting ``MATLAB 7.3 MAT-file``), ``'hdf5'`` (plain HDF5, signature at
        offset 0) or ``'octave-text'`` (Octave ``save -text`` output).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the header matches none of the formats.
    """
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    sig_at_512 = head[MAT73_USERBLOCK_SIZE : MAT73_USERBLOCK_SIZE + len(HDF5_SIGNATURE)]
    if head.startswith(b"MATLAB 7.3 MAT-file") and sig_at_512 == HDF5_SIGNATURE:
        return "v7.3"
    if head.startswith(b"MATLAB 5.0 MAT-file") and len(head) >= 128:
        return "v5"
    if _is_octave_text_header(head):
        return "octave-text"
    if _is_mat_v4_header(head):
        return "v4"
    first_bytes = head[:32]
    raise ValueError(
        f"{path}: not a MAT, HDF5 or Octave text file (starts with {first_bytes!r})"
    )


# --------------------------------------------------------------------------- reading
def _normalize_names(variable_names: str | Iterable[str] | None) -> list[str] | None:
    if variable_names is None:
        return None
    if isinstance(variable_names, str):
        return [variable_names]
    names = list(variable_names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"Invalid value for 'variable_names': expected str or a list of str, "
                f"got an element {name!r} of type {type(name).__name__}"
            )
    return names


def list_mat_variables(path: PathLike) -> list[str]:
    """Names of the variables stored in a file, without reading their data.

    Parameters
    ----------
    path : str | os.PathLike
        A MAT (v4, v5, v7, v7.3), HDF5 or Octave text file.

    Returns
    -------
    names : list of str
        Variable names in file order (HDF5: the file's link order, usually
        alphabetical). MATLAB's private groups ``#refs#`` and ``#subsystem#`` are left
        out.
    """
    path = Path(path)
    fmt = detect_mat_format(path)
    if fmt in ("v4", "v5"):
        return [name for name, _shape, _cls in scipy.io.whosmat(str(path))]
    if fmt in ("v7.3", "hdf5"):
        from esikit.io._hdf5 import list_hdf5_variables

        return list_hdf5_variables(path)
    from esikit.io._octave import list_octave_variables

    return list_octave_variables(path)


def load_mat_file(
    path: PathLike, variable_names: str | Iterable[str] | None = None
) -> dict[str, Any]:
    """Read the variables of a MAT (v4/v5/v7/v7.3), HDF5 or Octave text file.

    The format is detected from the header bytes (:func:`detect_mat_format`).

    Parameters
    ----------
    path : str | os.PathLike
        The file.
    variable_names : str | list of str | None
        Read only these variables (the others are not read from disk, which matters for
        big files). Names absent from the file are silently absent from the result, as
        in :func:`scipy.io.loadmat`. ``None`` reads everything.

    Returns
    -------
    data : dict of str to numpy.ndarray
        One entry per variable, with MATLAB's shape (never squeezed: a MATLAB scalar is
        ``(1, 1)``, a row vector ``(1, n)``). scipy's metadata keys (``__header__``,
        ``__version__``, ``__globals__``) are dropped. Values by MATLAB class:

        - numeric: arrays of the stored dtype; logical: ``bool`` for v7.3/HDF5 and
          Octave files, ``uint8`` for v4/v5 files (that is what scipy gives).
        - char: a numpy unicode array with the last MATLAB axis folded into the
          strings, exactly as :func:`scipy.io.loadmat` returns them for v5 files: a
          ``1 x n`` char row becomes ``np.array(['text'])`` of shape ``(1,)``, an
          ``m x n`` char matrix an array of ``m`` strings.
        - cell: a numpy object array of the cell's MATLAB shape whose elements are
          read by the same rules (so a ``1 x 994`` cell of vectors is an object array
          of shape ``(1, 994)`` of ``(1, k)`` numeric arrays).
        - struct: v4/v5 files give what scipy gives by default (a structured numpy
          array of shape MATLAB-shape, fields of object dtype, see
          :func:`scipy.io.loadmat` with ``struct_as_record=True``); v7.3/HDF5 files give
          a ``dict`` of field name to value for each struct group.
        - sparse: a :class:`scipy.sparse.csc_matrix`.
        - v7.3 numeric arrays are returned as Fortran-ordered views (``h5py``'s array
          transposed), not copied.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not in a supported format or is malformed.

    Notes
    -----
    HDF5 files without the MATLAB header are read with the same column-major
    convention as v7.3 files (every axis reversed), as MATLAB writes them.

    Examples
    --------
    >>> data = load_mat_file("leadfield_75_20k.mat", variable_names=["fwd"])  # doctest: +SKIP
    >>> data["fwd"].shape  # doctest: +SKIP
    (75, 994)
    """
    path = Path(path)
    names = _normalize_names(variable_names)
    fmt = detect_mat_format(path)
    logger.debug("Reading %s (%s), variables %s", path, fmt, names or "all")
    if fmt in ("v4", "v5"):
        return _load_scipy(path, names)
    if fmt in ("v7.3", "hdf5"):
        from esikit.io._hdf5 import load_hdf5_mat

        return load_hdf5_mat(path, names)
    from esikit.io._octave import load_octave_text

    return load_octave_text(path, names)


def load_mat_field(path: PathLike, name: str) -> Any:
    """One variable of a MAT/HDF5/Octave file (:func:`load_mat_file` reading only ``name``).

    Raises
    ------
    KeyError
        ``"{path}: no field 'name'"`` when the file does not hold it.
    """
    data = load_mat_file(path, variable_names=[name])
    if name not in data:
        raise KeyError(f"{path}: no field {name!r}")
    return data[name]


def _load_scipy(path: Path, names: list[str] | None) -> dict[str, Any]:
    try:
        raw = scipy.io.loadmat(
            str(path), variable_names=names, squeeze_me=False, appendmat=False
        )
    except Exception as exc:  # scipy raises a mix of types for corrupt files
        raise ValueError(f"{path}: could not read MAT file: {exc}") from exc
    return {k: v for k, v in raw.items() if not (k.startswith("__") and k.endswith("__"))}


# --------------------------------------------------------------------------- writing
def mat_strings(value: Any) -> list[str]:
    """Strings (stripped) from a MAT cell array of strings, a char matrix, a string array or a list.

    Handles every MAT flavour's shape of a cell of names: ``1 x C`` or ``C x 1`` cells,
    cells nested one level deeper (each name a ``1 x 1`` cell), one name per row of a
    char matrix, and numpy or ``.npz`` string arrays. An empty cell gives ``""``.
    """
    arr = np.asarray(value)
    if arr.dtype.kind in "US":  # a char matrix (one name per row) or a string array
        return [str(x).strip() for x in arr.ravel()]
    out = []
    for item in np.asarray(value, dtype=object).ravel():
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]  # a name wrapped in 1 x 1 cells
        x = np.asarray(item).ravel()
        out.append(str(x[0]).strip() if x.size else "")
    return out


def _value_nbytes(value: Any) -> int:
    """Approximate payload size of a value as MATLAB would store it, in bytes."""
    if isinstance(value, Mapping):
        return sum(_value_nbytes(v) for v in value.values())
    if scipy.sparse.issparse(value):
        return int(value.data.nbytes) + int(value.nnz) * 8 + (value.shape[1] + 1) * 8
    if isinstance(value, str):
        return 2 * len(value)
    arr = np.asarray(value)
    if arr.dtype == object:
        return sum(_value_nbytes(v) for v in arr.flat) + 8 * arr.size
    if arr.dtype.kind == "U":
        # MATLAB chars are 2 bytes each, numpy's are 4.
        return arr.nbytes // 2
    return int(arr.nbytes)


def fits_in_mat_v5(data: Mapping[str, Any]) -> bool:
    """Whether every variable of ``data`` is small enough for a MAT v5/v7 file.

    MAT v5/v7 files cannot hold a variable of 2 GiB or more (MATLAB refuses it and
    :func:`scipy.io.savemat` cannot write it); use ``format='v7.3'`` for those.

    Parameters
    ----------
    data : dict of str to array-like
        The variables to save.

    Returns
    -------
    fits : bool
        True if each variable's payload is under 2 GiB.
    """
    return all(_value_nbytes(v) < MAT_V5_MAX_VARIABLE_BYTES for v in data.values())


def _check_variable_names(path: Path, data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise TypeError(
            f"{path}: expected a dict of variable name to array, got {type(data).__name__}"
        )
    for name in data:
        if (
            not isinstance(name, str)
            or not _MATLAB_NAME.match(name)
            or len(name) > _MATLAB_NAME_MAX
        ):
            raise ValueError(
                f"{path}: invalid variable name {name!r}: expected a MATLAB name (a "
                f"letter, then letters, digits or '_', at most {_MATLAB_NAME_MAX} chars)"
            )


def save_mat_file(
    path: PathLike,
    data: Mapping[str, Any],
    format: str = "v5",
    *,
    do_compression: bool = True,
) -> None:
    """Write variables to a MAT v5 (v7), MAT v7.3 or Octave text file.

    Parameters
    ----------
    path : str | os.PathLike
        The file to (over)write. No extension is added.
    data : dict of str to array-like
        Variable name (a valid MATLAB name) to value. 1-D arrays are written as
        ``1 x n`` rows and Python scalars as ``1 x 1``, as MATLAB would hold them.
        Values: numeric and bool arrays, str and unicode arrays (char), object arrays
        (cell), dicts (struct; not for ``'octave-text'``) and, for ``'v5'`` and
        ``'v7.3'``, scipy sparse matrices.
    format : {'v5', 'v7.3', 'octave-text'}
        ``'v5'``: :func:`scipy.io.savemat` (MATLAB's default ``-v7`` format with
        compression). ``'v7.3'``: HDF5 laid out as MATLAB ``save -v7.3`` does, needed
        for variables of 2 GiB or more. ``'octave-text'``: Octave ``save -text``.
    do_compression : bool
        Compress the data (zlib for v5, gzip level 3 for v7.3 datasets of 4 KiB or
        more). Ignored for Octave text.

    Raises
    ------
    ValueError
        If ``format`` is unknown, a name is not a MATLAB name, or (``'v5'``) a variable
        is 2 GiB or more: the message suggests ``format='v7.3'``.
    """
    path = Path(path)
    check_option("format", format, SAVE_FORMATS)
    _check_variable_names(path, data)
    logger.debug("Writing %s (%s): %s", path, format, list(data))
    if format == "v5":
        _save_v5(path, data, do_compression)
    elif format == "v7.3":
        from esikit.io._hdf5 import save_mat73

        save_mat73(path, data, do_compression=do_compression)
    else:
        from esikit.io._octave import save_octave_text

        save_octave_text(path, data)


def _save_v5(path: Path, data: Mapping[str, Any], do_compression: bool) -> None:
    for name, value in data.items():
        nbytes = _value_nbytes(value)
        if nbytes >= MAT_V5_MAX_VARIABLE_BYTES:
            raise ValueError(
                f"{path}: variable '{name}' holds {nbytes / 2**30:.2f} GiB, but MAT v5/v7 "
                f"files cannot hold variables of 2 GiB or more; use format='v7.3'"
            )
    with open(path, "wb") as f:
        try:
            scipy.io.savemat(
                f,
                dict(data),
                do_compression=do_compression,
                long_field_names=True,
                oned_as="row",
            )
        except ValueError as exc:
            raise ValueError(
                f"{path}: scipy could not write the MAT v5 file ({exc}); "
                f"if a variable is too large, use format='v7.3'"
            ) from exc
