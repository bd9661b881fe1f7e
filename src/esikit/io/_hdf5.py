"""MAT v7.3 (HDF5) reading and writing with h5py, following MATLAB's own layout.

MATLAB stores arrays column-major; HDF5 (and h5py) describe them row-major, so every
dataset appears with its axes reversed. Reading transposes (``arr.T``) so that shapes
equal MATLAB's; writing stores ``arr.T`` so that MATLAB sees the numpy shape.

Per-object attributes written and understood:

- ``MATLAB_class``: ``double``, ``single``, ``int8`` ... ``uint64``, ``logical``,
  ``char`` (uint16 UTF-16 code units), ``cell`` (dataset of object references into
  ``/#refs#``), ``struct`` (a group, one member per field).
- ``MATLAB_empty`` (uint8 1): the dataset holds the MATLAB dimensions, not data.
- ``MATLAB_int_decode``: 1 for logical, 2 for char.
- ``MATLAB_sparse`` (number of rows) on a group with ``data``, ``ir``, ``jc``.
- complex arrays are compound datasets with fields ``real`` and ``imag``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from itertools import count
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse

from esikit.io._format import MAT73_USERBLOCK_SIZE

logger = logging.getLogger(__name__)

_PRIVATE_GROUPS = ("#refs#", "#subsystem#")

_CLASS_DTYPES: dict[str, type] = {
    "double": np.float64,
    "single": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "logical": np.bool_,
    "char": np.uint16,
}
_DTYPE_CLASSES = {np.dtype(v): k for k, v in _CLASS_DTYPES.items() if k != "char"}

# Compress only datasets at least this big: gzip on tiny datasets costs more than it saves.
_COMPRESS_MIN_BYTES = 4096


# --------------------------------------------------------------------------- reading
def _attr_str(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tobytes()
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip("\x00")
    return str(value)


def list_hdf5_variables(path: Path) -> list[str]:
    """Top-level variable names of a MAT v7.3/HDF5 file, private groups excluded."""
    with h5py.File(path, "r") as f:
        return [k for k in f.keys() if k not in _PRIVATE_GROUPS]


def load_hdf5_mat(path: Path, names: list[str] | None) -> dict[str, Any]:
    """Read the variables ``names`` (all when None) of a MAT v7.3/HDF5 file."""
    out: dict[str, Any] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: could not open as HDF5: {exc}") from exc
    with f:
        wanted = [k for k in f.keys() if k not in _PRIVATE_GROUPS]
        if names is not None:
            wanted = [k for k in wanted if k in set(names)]
        for name in wanted:
            try:
                out[name] = _read_node(f, f[name])
            except (ValueError, TypeError, KeyError, OSError) as exc:
                raise ValueError(f"{path}: could not read variable '{name}': {exc}") from exc
    return out


def _chars_to_strings(codes: np.ndarray) -> np.ndarray:
    """uint16 char array of MATLAB shape (..., n) -> unicode array of shape (...)."""
    if codes.ndim == 0:
        codes = codes.reshape(1, 1)
    elif codes.ndim == 1:
        codes = codes.reshape(1, -1)
    n = codes.shape[-1]
    rows = np.ascontiguousarray(codes, dtype="<u2").reshape(-1, n)
    strings = [row.tobytes().decode("utf-16-le", errors="replace") for row in rows]
    width = max([len(s) for s in strings] + [1])
    return np.array(strings, dtype=f"<U{width}").reshape(codes.shape[:-1])


def _struct_field_order(group: h5py.Group) -> list[str]:
    """Field names from the ``MATLAB_fields`` attribute (arrays of single chars)."""
    fields = group.attrs.get("MATLAB_fields")
    if fields is None:
        return []
    try:
        return [np.asarray(x).tobytes().decode("ascii") for x in np.asarray(fields).ravel()]
    except (UnicodeDecodeError, TypeError, ValueError):
        return []


def _is_matlab_empty(ds: h5py.Dataset) -> bool:
    flag = ds.attrs.get("MATLAB_empty")
    return flag is not None and bool(np.asarray(flag).ravel()[0])


def _read_node(f: h5py.File, node: h5py.HLObject) -> Any:
    cls = _attr_str(node, "MATLAB_class")
    if isinstance(node, h5py.Group):
        if "MATLAB_sparse" in node.attrs:
            return _read_sparse(node, cls)
        # A struct: one member per field (struct arrays keep per-field reference
        # datasets, which read as object arrays), in MATLAB's field order when known.
        members = [k for k in node.keys() if k not in _PRIVATE_GROUPS]
        order = _struct_field_order(node)
        members = [k for k in order if k in members] + [k for k in members if k not in order]
        return {k: _read_node(f, node[k]) for k in members}

    ds: h5py.Dataset = node
    if _is_matlab_empty(ds):
        dims = tuple(int(d) for d in np.asarray(ds[()]).ravel())
        if cls == "char":
            return np.zeros(dims[:-1] if len(dims) > 1 else (0,), dtype="<U1")
        if cls == "cell":
            return np.empty(dims, dtype=object)
        if cls == "struct":
            return {}
        return np.zeros(dims, dtype=_CLASS_DTYPES.get(cls or "double", np.float64))

    if h5py.check_dtype(ref=ds.dtype) is not None:
        refs = np.asarray(ds[()])
        cell = np.empty(refs.shape, dtype=object)
        for idx in np.ndindex(refs.shape):
            ref = refs[idx]
            cell[idx] = _read_node(f, f[ref]) if ref else None
        return cell.T

    data = ds[()]
    names = ds.dtype.names
    if names is not None and "real" in names and "imag" in names:
        data = np.asarray(data["real"]) + 1j * np.asarray(data["imag"])
    arr = np.asarray(data)
    arr = arr.T  # reverse all axes: HDF5 row-major view of a column-major array
    if cls == "char":
        return _chars_to_strings(arr)
    if cls == "logical":
        return arr.astype(bool)
    if cls is not None and cls not in _CLASS_DTYPES:
        # e.g. MATLAB objects (string, table, function_handle) live in #subsystem#.
        logger.warning(
            "%s: MATLAB class '%s' is not supported; returning the raw %s data",
            ds.name, cls, arr.dtype,
        )
    return arr


def _read_sparse(group: h5py.Group, cls: str | None) -> scipy.sparse.csc_matrix:
    n_rows = int(np.asarray(group.attrs["MATLAB_sparse"]).ravel()[0])
    jc = np.asarray(group["jc"][()]).ravel().astype(np.int64)
    n_cols = len(jc) - 1
    if "data" in group:
        data = np.asarray(group["data"][()])
        if data.dtype.names and "real" in data.dtype.names:
            data = data["real"] + 1j * data["imag"]
        data = data.ravel()
        ir = np.asarray(group["ir"][()]).ravel().astype(np.int64)
    else:  # all-zero sparse matrix: MATLAB writes only jc
        data = np.zeros(0, dtype=_CLASS_DTYPES.get(cls or "double", np.float64))
        ir = np.zeros(0, dtype=np.int64)
    if cls == "logical":
        data = data.astype(bool)
    return scipy.sparse.csc_matrix((data, ir, jc), shape=(n_rows, n_cols))


# --------------------------------------------------------------------------- writing
def _mat73_header() -> bytes:
    """The 128 used bytes of the 512-byte user block of a MAT v7.3 file.

    116 bytes of text padded with spaces, 8 bytes of subsystem offset (zero: none),
    version 0x0200 and the endian indicator ``IM``, both little-endian.
    """
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    platform = f"Python {sys.version_info.major}.{sys.version_info.minor} esikit"
    text = (
        f"MATLAB 7.3 MAT-file, Platform: {platform}, Created on: {created} "
        f"HDF5 schema 1.00 ."
    ).encode("ascii")
    if len(text) > 116:
        raise AssertionError(f"MAT v7.3 header text is {len(text)} bytes, over 116")
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


class _Writer:
    """State of one v7.3 write: the file and a counter for ``#refs#`` names."""

    def __init__(self, f: h5py.File, do_compression: bool) -> None:
        self.f = f
        self.do_compression = do_compression
        self._ids = count()

    def _ref_name(self) -> str:
        # MATLAB names references a, b, ..., z, ba, bb, ...: base-26 letters.
        n = next(self._ids)
        letters = ""
        while True:
            letters = chr(ord("a") + n % 26) + letters
            n //= 26
            if n == 0:
                return letters

    def write(self, parent: h5py.Group, name: str, value: Any) -> h5py.HLObject:
        if isinstance(value, Mapping):
            return self._write_struct(parent, name, value)
        if scipy.sparse.issparse(value):
            return self._write_sparse(parent, name, value)
        if isinstance(value, str):
            value = np.array([value])
        elif isinstance(value, bytes):
            value = np.array([value.decode("latin-1")])
        arr = np.asarray(value)
        if arr.dtype.kind == "S":
            arr = np.char.decode(arr, "latin-1")
        if arr.dtype.kind == "O":
            return self._write_cell(parent, name, arr)
        if arr.dtype.kind == "U":
            return self._write_char(parent, name, arr)
        return self._write_numeric(parent, name, arr)

    @staticmethod
    def _matlab_shape(arr: np.ndarray) -> np.ndarray:
        # MATLAB arrays are at least 2-D; 1-D becomes a row, as scipy's oned_as='row'.
        if arr.ndim == 0:
            return arr.reshape(1, 1)
        if arr.ndim == 1:
            return arr.reshape(1, -1)
        return arr

    def _write_empty(self, parent: h5py.Group, name: str, shape: tuple, cls: str) -> h5py.Dataset:
        ds = parent.create_dataset(name, data=np.array(shape, dtype=np.uint64))
        ds.attrs.create("MATLAB_class", np.bytes_(cls))
        ds.attrs.create("MATLAB_empty", np.uint8(1))
        return ds

    def _create(self, parent: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
        kwargs: dict[str, Any] = {}
        if self.do_compression and data.nbytes >= _COMPRESS_MIN_BYTES:
            kwargs = {"compression": "gzip", "compression_opts": 3}
        return parent.create_dataset(name, data=data, **kwargs)

    def _write_numeric(self, parent: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
        arr = self._matlab_shape(arr)
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        kind = arr.dtype.kind
        if kind == "c":
            cls = "single" if arr.dtype == np.complex64 else "double"
        elif kind == "b":
            cls = "logical"
        else:
            cls = _DTYPE_CLASSES.get(arr.dtype.newbyteorder("=")) if kind in "iuf" else None
            if cls is None:
                raise TypeError(
                    f"variable '{name}': cannot store dtype {arr.dtype} in a MAT file "
                    f"(expected numeric, bool, str, object or dict values)"
                )
        if arr.size == 0:
            return self._write_empty(parent, name, arr.shape, cls)
        stored = arr.T  # MATLAB (column-major) sees the numpy shape
        if kind == "c":
            part = np.float32 if cls == "single" else np.float64
            compound = np.empty(stored.shape, dtype=[("real", part), ("imag", part)])
            compound["real"] = stored.real
            compound["imag"] = stored.imag
            stored = compound
        elif kind == "b":
            stored = stored.astype(np.uint8)
        ds = self._create(parent, name, np.ascontiguousarray(stored))
        ds.attrs.create("MATLAB_class", np.bytes_(cls))
        if kind == "b":
            ds.attrs.create("MATLAB_int_decode", np.int32(1))
        return ds

    def _write_char(self, parent: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
        # A unicode array of shape S holds strings along MATLAB's last axis: the char
        # array has shape S + (n,), rows padded with spaces as MATLAB's char() does.
        if arr.ndim == 0:
            arr = arr.reshape(1)
        encoded = [np.frombuffer(s.encode("utf-16-le"), dtype="<u2") for s in arr.ravel()]
        width = max([len(e) for e in encoded] + [0])
        codes = np.full((len(encoded), width), ord(" "), dtype=np.uint16)
        for i, e in enumerate(encoded):
            codes[i, : len(e)] = e
        codes = codes.reshape(arr.shape + (width,))
        if codes.ndim == 1:
            codes = codes.reshape(1, -1)
        if codes.size == 0:
            shape = codes.shape if codes.shape != (1, 0) else (0, 0)
            return self._write_empty(parent, name, shape, "char")
        ds = self._create(parent, name, np.ascontiguousarray(codes.T))
        ds.attrs.create("MATLAB_class", np.bytes_("char"))
        ds.attrs.create("MATLAB_int_decode", np.int32(2))
        return ds

    def _write_cell(self, parent: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
        arr = self._matlab_shape(arr)
        if arr.size == 0:
            return self._write_empty(parent, name, arr.shape, "cell")
        refs_group = self.f.require_group("#refs#")
        refs = np.empty(arr.shape, dtype=h5py.ref_dtype)
        for idx in np.ndindex(arr.shape):
            element = arr[idx]
            obj = self.write(refs_group, self._ref_name(), np.array([]) if element is None else element)
            refs[idx] = obj.ref
        ds = parent.create_dataset(name, data=np.ascontiguousarray(refs.T), dtype=h5py.ref_dtype)
        ds.attrs.create("MATLAB_class", np.bytes_("cell"))
        return ds

    def _write_struct(self, parent: h5py.Group, name: str, value: Mapping) -> h5py.Group:
        group = parent.create_group(name)
        group.attrs.create("MATLAB_class", np.bytes_("struct"))
        fields = list(value)
        for field in fields:
            if not isinstance(field, str) or not field or field.startswith("#"):
                raise ValueError(f"variable '{name}': invalid struct field name {field!r}")
        # MATLAB lists the field names (as variable-length arrays of single chars).
        vlen = h5py.vlen_dtype(np.dtype("S1"))
        names = np.empty(len(fields), dtype=object)
        for i, field in enumerate(fields):
            names[i] = np.array(list(field.encode("ascii")), dtype="u1").view("S1")
        group.attrs.create("MATLAB_fields", names, dtype=vlen)
        for field in fields:
            self.write(group, field, value[field])
        return group

    def _write_sparse(self, parent: h5py.Group, name: str, value: Any) -> h5py.Group:
        csc = scipy.sparse.csc_matrix(value)
        csc.sort_indices()
        group = parent.create_group(name)
        cls = "logical" if csc.dtype == bool else _DTYPE_CLASSES.get(csc.dtype, "double")
        data = csc.data.astype(np.uint8) if cls == "logical" else csc.data
        if cls not in ("double", "logical"):  # MATLAB sparse is double or logical only
            cls, data = "double", csc.data.astype(np.float64)
        group.attrs.create("MATLAB_class", np.bytes_(cls))
        group.attrs.create("MATLAB_sparse", np.uint64(csc.shape[0]))
        group.create_dataset("jc", data=csc.indptr.astype(np.uint64))
        if csc.nnz:
            group.create_dataset("ir", data=csc.indices.astype(np.uint64))
            group.create_dataset("data", data=data)
        return group


def save_mat73(path: Path, data: Mapping[str, Any], do_compression: bool = True) -> None:
    """Write ``data`` as a MAT v7.3 file (HDF5 with MATLAB's 512-byte header)."""
    # track_order keeps the variables in the caller's order (h5py lists by name otherwise).
    with h5py.File(path, "w", userblock_size=MAT73_USERBLOCK_SIZE, track_order=True) as f:
        writer = _Writer(f, do_compression)
        for name, value in data.items():
            try:
                writer.write(f, name, value)
            except TypeError as exc:
                raise TypeError(f"{path}: {exc}") from exc
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
    # h5py leaves the user block zeroed: fill in MATLAB's text header.
    with open(path, "r+b") as raw:
        raw.write(_mat73_header())
