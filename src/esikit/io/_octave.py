"""Octave ``save -text`` format: reader and writer.

Layout read and written (one block per variable, blank lines between blocks)::

    # Created by Octave ...
    # name: x
    # type: matrix          (also: scalar, bool, bool matrix, float scalar/matrix,
    # rows: 2                int8..uint64 scalar/matrix, complex scalar/matrix,
    # columns: 3             string, sq_string, cell, range)
     1 2 3                  2-D: one line per row
     4 5 6

    # name: y
    # type: matrix
    # ndims: 3              N-d: the dimensions on one line, then every value on its
     2 3 4                  own line in column-major (Fortran) order
     1
     ...

Numbers may be ``NaN``, ``NA`` (read as NaN), ``Inf`` and ``-Inf``. Cells list their
elements in column-major order, each as a ``# name: <cell-element>`` block. Structs are
not supported.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse

from esikit._version import __version__ as esikit_version

logger = logging.getLogger(__name__)

_NUMERIC_BASE_DTYPES: dict[str, type] = {
    "": np.float64,  # 'scalar', 'matrix'
    "float": np.float32,
    "bool": np.bool_,
    "complex": np.complex128,
    "float complex": np.complex64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
}
_STRING_TYPES = ("string", "sq_string")
_CHUNK = 1 << 20  # values formatted per chunk when writing large arrays


def _numeric_type(type_name: str) -> tuple[type, bool] | None:
    """(dtype, is_scalar) for a numeric Octave type name, else None."""
    if type_name == "bool":
        return np.bool_, True
    for suffix, is_scalar in ((" scalar", True), (" matrix", False)):
        if type_name.endswith(suffix) or type_name == suffix.strip():
            base = type_name[: -len(suffix)] if type_name.endswith(suffix) else ""
            if base in _NUMERIC_BASE_DTYPES:
                return _NUMERIC_BASE_DTYPES[base], is_scalar
    return None


class _Parser:
    """Cursor over the bytes of an Octave text file."""

    def __init__(self, path: Path, buf: bytes) -> None:
        self.path = path
        self.buf = buf
        self.pos = 0

    # -- low level
    def error(self, message: str) -> ValueError:
        line_no = self.buf.count(b"\n", 0, self.pos) + 1
        return ValueError(f"{self.path}: line {line_no}: {message}")

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def peek_line(self) -> bytes:
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end
        return self.buf[self.pos : end].rstrip(b"\r")

    def next_line(self) -> bytes:
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end
        line = self.buf[self.pos : end].rstrip(b"\r")
        self.pos = end + 1
        return line

    def skip_blank(self) -> None:
        while not self.at_end() and not self.peek_line().strip():
            self.next_line()

    def header(self, key: str) -> str:
        """Read the line ``# key: value`` and return ``value``."""
        self.skip_blank()
        line = self.next_line().decode("utf-8", errors="replace")
        prefix = f"# {key}:"
        if not line.startswith(prefix):
            raise self.error(f"expected '{prefix} ...', found {line[:60]!r}")
        return line[len(prefix) :].strip()

    def int_header(self, key: str) -> int:
        value = self.header(key)
        try:
            return int(value)
        except ValueError:
            raise self.error(f"'# {key}:' should be an integer, found {value!r}") from None

    def data_block(self) -> bytes:
        """Bytes from the cursor to the next line starting with '#' (or the end)."""
        end = self.buf.find(b"\n#", self.pos)
        end = len(self.buf) if end < 0 else end + 1
        block = self.buf[self.pos : end]
        self.pos = end
        return block

    # -- values
    def parse_numbers(self, block: bytes, dtype: type, count: int, name: str) -> np.ndarray:
        if np.dtype(dtype).kind == "c":
            # '(re,im)' pairs: drop the punctuation and read re, im alternately.
            flat = block.translate(None, b"()").replace(b",", b" ")
            pairs = self.parse_numbers(flat, np.float64, 2 * count, name)
            return (pairs[0::2] + 1j * pairs[1::2]).astype(dtype)
        parse_dtype = np.int64 if np.dtype(dtype).kind in "iu" else np.float64
        if np.dtype(dtype) == np.uint64:
            parse_dtype = np.uint64
        values = np.zeros(0, dtype=parse_dtype)
        if block.strip():
            # Fast C parser; it stops (numpy < 2.3: warns, newer: raises) at tokens it
            # does not know, such as Octave's NA: then take the slow path.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    values = np.fromstring(block, dtype=parse_dtype, sep=" ")
                except ValueError:
                    values = None
        if values is None or values.size != count:
            values = self._parse_numbers_slow(block, parse_dtype)
        if values.size != count:
            raise self.error(
                f"variable '{name}': expected {count} values, found {values.size}"
            )
        return values.astype(dtype, copy=False)

    def _parse_numbers_slow(self, block: bytes, dtype: type) -> np.ndarray:
        # np.fromstring stops at tokens it does not know (e.g. Octave's NA).
        special = {b"NA": math.nan, b"NaN": math.nan, b"Inf": math.inf, b"-Inf": -math.inf}
        tokens = block.split()
        try:
            if np.dtype(dtype).kind in "iu":
                return np.array([int(t) for t in tokens], dtype=dtype)
            return np.array([special[t] if t in special else float(t) for t in tokens])
        except ValueError as exc:
            raise self.error(f"could not parse numbers: {exc}") from None

    def read_dims(self) -> tuple[tuple[int, ...], bool]:
        """Read '# rows/# columns' or '# ndims' + dimension line.

        Returns the dims and whether the values are stored row by row (2-D format).
        """
        self.skip_blank()
        line = self.peek_line()
        if line.startswith(b"# rows:"):
            rows = self.int_header("rows")
            cols = self.int_header("columns")
            return (rows, cols), True
        ndims = self.int_header("ndims")
        dims_line = self.next_line().split()
        if len(dims_line) != ndims:
            raise self.error(f"expected {ndims} dimensions, found {dims_line!r}")
        return tuple(int(d) for d in dims_line), False

    def value(self, name: str, read: bool = True) -> Any:
        """Parse the value after a '# name:' line (``read=False``: skip it)."""
        type_name = self.header("type")
        numeric = _numeric_type(type_name)
        if numeric is not None:
            dtype, is_scalar = numeric
            if is_scalar:
                self.skip_blank()
                block = self.next_line()
                if not read:
                    return None
                return self.parse_numbers(block, dtype, 1, name).reshape(1, 1)
            dims, row_major = self.read_dims()
            block = self.data_block()
            if not read:
                return None
            count = int(np.prod(dims))
            values = self.parse_numbers(block, dtype, count, name)
            if row_major:
                return values.reshape(dims)
            return values.reshape(dims, order="F")
        if type_name in _STRING_TYPES:
            return self._string(name, read)
        if type_name == "cell":
            return self._cell(name, read)
        if type_name == "range":
            return self._range(name, read)
        raise self.error(
            f"variable '{name}' has Octave type '{type_name}', which esikit cannot read "
            f"(supported: scalar, matrix, bool, intN, float, complex, string, cell, range); "
            f"save it with save -v7 instead"
        )

    def _string(self, name: str, read: bool) -> Any:
        n_elements = self.int_header("elements")
        rows = []
        for _ in range(n_elements):
            length = self.int_header("length")
            text = self.buf[self.pos : self.pos + length]
            if len(text) < length:
                raise self.error(f"variable '{name}': string shorter than {length} chars")
            self.pos += length
            if self.buf[self.pos : self.pos + 1] == b"\n":
                self.pos += 1
            rows.append(text.decode("utf-8", errors="replace"))
        if not read:
            return None
        if not any(rows):
            return np.zeros((0,), dtype="<U1")  # '' as scipy gives it
        return np.array(rows)

    def _cell(self, name: str, read: bool) -> Any:
        dims, _ = self.read_dims()
        count = int(np.prod(dims))
        elements = np.empty(count, dtype=object)
        for i in range(count):
            self.skip_blank()
            element_name = self.header("name")
            if element_name != "<cell-element>":
                raise self.error(
                    f"variable '{name}': expected '# name: <cell-element>', found {element_name!r}"
                )
            elements[i] = self.value(f"{name}{{{i + 1}}}", read)
        return elements.reshape(dims, order="F") if read else None

    def _range(self, name: str, read: bool) -> Any:
        self.skip_blank()
        line = self.next_line()
        if line.startswith(b"#"):  # '# base, limit, increment'
            line = self.next_line()
        if not read:
            return None
        base, limit, inc = self.parse_numbers(line, np.float64, 3, name)
        n = max(int(math.floor((limit - base) / inc * (1 + 1e-12))) + 1, 0) if inc else 0
        return (base + inc * np.arange(n)).reshape(1, -1)

    # -- top level
    def variables(self, names: set[str] | None):
        """Yield (name, value or None when not wanted) for each variable in file order."""
        while True:
            while not self.at_end():
                line = self.peek_line()
                if line.startswith(b"# name:"):
                    break
                if line.strip() and not line.startswith(b"#"):
                    raise self.error(f"expected '# name: ...', found {line[:60]!r}")
                self.next_line()
            if self.at_end():
                return
            name = self.header("name")
            wanted = names is None or name in names
            yield name, self.value(name, read=wanted)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def list_octave_variables(path: Path) -> list[str]:
    """Variable names of an Octave text file (the values are skipped, not parsed)."""
    parser = _Parser(path, _read_bytes(path))
    return [name for name, _ in parser.variables(names=set())]


def load_octave_text(path: Path, names: list[str] | None) -> dict[str, Any]:
    """Read the variables ``names`` (all when None) of an Octave text file."""
    parser = _Parser(path, _read_bytes(path))
    wanted = None if names is None else set(names)
    return {
        name: value
        for name, value in parser.variables(wanted)
        if wanted is None or name in wanted
    }


# --------------------------------------------------------------------------- writing
def _format_values(values: np.ndarray) -> list[str]:
    """Text of each value of a 1-D array, Octave spelling of NaN/Inf, full precision."""
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.uint8).astype(str).tolist()
    if kind in "iu":
        return values.astype(str).tolist()
    if kind == "c":
        re = _format_values(values.real)
        im = _format_values(values.imag)
        return [f"({a},{b})" for a, b in zip(re, im)]
    # numpy's str() of floats is the shortest text that reads back to the same value.
    text = values.astype(str)
    text[np.isnan(values)] = "NaN"
    text[np.isposinf(values)] = "Inf"
    text[np.isneginf(values)] = "-Inf"
    return text.tolist()


def _type_prefix(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return str(arr.dtype.newbyteorder("=").name)
    if kind == "c":
        return "float complex" if arr.dtype == np.complex64 else "complex"
    return "float" if arr.dtype == np.float32 else ""


def _write_numeric(out: IO[str], arr: np.ndarray) -> None:
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"cannot write dtype {arr.dtype} to an Octave text file")
    prefix = _type_prefix(arr)
    if arr.ndim == 0:
        scalar_type = "bool" if prefix == "bool" else f"{prefix} scalar".strip()
        out.write(f"# type: {scalar_type}\n{_format_values(arr.reshape(1))[0]}\n")
        return
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)  # a MATLAB row, as the MAT writers do
    out.write(f"# type: {(prefix + ' matrix').strip()}\n")
    # Octave writes integer matrices in the N-d layout, other 2-D matrices row by row.
    if arr.ndim == 2 and arr.dtype.kind not in "iu":
        out.write(f"# rows: {arr.shape[0]}\n# columns: {arr.shape[1]}\n")
        rows_per_chunk = max(1, _CHUNK // max(arr.shape[1], 1))
        for start in range(0, arr.shape[0], rows_per_chunk):
            chunk = arr[start : start + rows_per_chunk]
            text = _format_values(chunk.ravel())
            ncol = arr.shape[1]
            out.write(
                "".join(
                    " " + " ".join(text[i * ncol : (i + 1) * ncol]) + "\n"
                    for i in range(chunk.shape[0])
                )
            )
        return
    out.write(f"# ndims: {arr.ndim}\n " + " ".join(str(d) for d in arr.shape) + "\n")
    flat = arr.ravel(order="F")
    for start in range(0, flat.size, _CHUNK):
        text = _format_values(flat[start : start + _CHUNK])
        out.write("".join(f" {t}\n" for t in text))


def _write_string(out: IO[str], arr: np.ndarray) -> None:
    rows = [str(s) for s in np.atleast_1d(arr).ravel()]
    width = max([len(r) for r in rows] + [0])
    if width == 0:
        out.write("# type: string\n# elements: 0\n")
        return
    out.write(f"# type: string\n# elements: {len(rows)}\n")
    for row in rows:
        out.write(f"# length: {width}\n{row.ljust(width)}\n")


def _write_value(out: IO[str], name: str, value: Any) -> None:
    if isinstance(value, Mapping) or scipy.sparse.issparse(value):
        raise TypeError(
            f"variable '{name}': {type(value).__name__} values cannot be written to an "
            f"Octave text file by esikit; use format='v5' or format='v7.3'"
        )
    if isinstance(value, (str, bytes)):
        value = np.array([value.decode("latin-1") if isinstance(value, bytes) else value])
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "latin-1")
    if arr.dtype.kind == "U":
        _write_string(out, arr)
    elif arr.dtype.kind == "O":
        if arr.ndim < 2:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise TypeError(f"variable '{name}': only 2-D cells can be written as Octave text")
        out.write(f"# type: cell\n# rows: {arr.shape[0]}\n# columns: {arr.shape[1]}\n")
        for element in arr.ravel(order="F"):
            out.write("# name: <cell-element>\n")
            _write_value(out, name, np.zeros((0, 0)) if element is None else element)
            out.write("\n\n")
    else:
        try:
            _write_numeric(out, arr)
        except TypeError as exc:
            raise TypeError(f"variable '{name}': {exc}") from None


def save_octave_text(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` in Octave's ``save -text`` format."""
    created = time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime())
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(f"# Created by Octave-compatible writer of esikit {esikit_version}, {created}\n")
        for name, value in data.items():
            out.write(f"# name: {name}\n")
            try:
                _write_value(out, name, value)
            except TypeError as exc:
                raise TypeError(f"{path}: {exc}") from None
            out.write("\n\n")
