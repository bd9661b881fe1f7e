"""Tests for esikit.io MAT/HDF5/Octave reading and writing."""

from __future__ import annotations

import struct
import time

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from esikit.io import (
    detect_mat_format,
    fits_in_mat_v5,
    list_mat_variables,
    load_mat_file,
    mat_strings,
    save_mat_file,
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _sample_data(rng: np.random.Generator) -> dict:
    return {
        "vec": np.array([1.5, -2.0, 3.25]),
        "mat": rng.standard_normal((4, 3)),
        "cube": rng.standard_normal((2, 3, 4)),
        "with_nan": np.array([[1.0, np.nan], [np.inf, -np.inf]]),
        "ints": np.arange(-3, 9, dtype=np.int32).reshape(3, 4),
        "big_ints": np.array([[2**40 + 1, -(2**50) - 3]], dtype=np.int64),
        "single": np.array([[0.1, 0.2]], dtype=np.float32),
        "flags": np.array([[True, False, True]]),
        "text": "hello world",
        "scalar": 2.5,
    }


# --------------------------------------------------------------------------- detection
def _write_mat_v4(path, name: str, arr: np.ndarray, big_endian: bool) -> None:
    """A MAT v4 double matrix written byte by byte (independent of scipy)."""
    order = ">" if big_endian else "<"
    mopt = 1000 if big_endian else 0  # M: 0 little-endian IEEE, 1 big-endian IEEE
    rows, cols = arr.shape
    header = struct.pack(order + "5i", mopt, rows, cols, 0, len(name) + 1)
    body = arr.astype(order + "f8").tobytes(order="F")
    path.write_bytes(header + name.encode() + b"\x00" + body)


def test_detect_formats(tmp_path):
    arr = np.arange(6.0).reshape(2, 3)
    scipy.io.savemat(tmp_path / "a5.mat", {"x": arr})
    scipy.io.savemat(tmp_path / "a4.mat", {"x": arr}, format="4")
    _write_mat_v4(tmp_path / "be4.mat", "x", arr, big_endian=True)
    save_mat_file(tmp_path / "a73.mat", {"x": arr}, format="v7.3")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = arr
    save_mat_file(tmp_path / "a.txt", {"x": arr}, format="octave-text")
    (tmp_path / "name_first.txt").write_text("# name: x\n# type: scalar\n3\n")
    (tmp_path / "comment_first.txt").write_text(
        "# Created by some tool\n# name: x\n# type: scalar\n3\n"
    )
    assert detect_mat_format(tmp_path / "a5.mat") == "v5"
    assert detect_mat_format(tmp_path / "a4.mat") == "v4"
    assert detect_mat_format(tmp_path / "be4.mat") == "v4"
    assert detect_mat_format(tmp_path / "a73.mat") == "v7.3"
    assert detect_mat_format(tmp_path / "plain.h5") == "hdf5"
    assert detect_mat_format(tmp_path / "a.txt") == "octave-text"
    assert detect_mat_format(tmp_path / "name_first.txt") == "octave-text"
    assert detect_mat_format(str(tmp_path / "comment_first.txt")) == "octave-text"


def test_detect_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not a mat file at all" * 4)
    first = (b"PK\x03\x04 not a mat file at all" * 4)[:32]
    with pytest.raises(ValueError) as info:
        detect_mat_format(junk)
    assert str(info.value) == (
        f"{junk}: not a MAT, HDF5 or Octave text file (starts with {first!r})"
    )
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="starts with b''"):
        load_mat_file(empty)
    # A v4-like type integer with an invalid O digit is not v4.
    bad_v4 = tmp_path / "bad4.mat"
    bad_v4.write_bytes(struct.pack("<5i", 100, 1, 1, 0, 2) + b"x\x00" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a MAT"):
        detect_mat_format(bad_v4)
    text = tmp_path / "notes.txt"
    text.write_text("# just a comment\nsome text\n")
    with pytest.raises(ValueError, match="not a MAT"):
        detect_mat_format(text)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "x.mat"
    with pytest.raises(FileNotFoundError, match="nope"):
        detect_mat_format(missing)
    with pytest.raises(FileNotFoundError, match="x.mat"):
        load_mat_file(missing)


def test_mat_v4_read_both_endians(tmp_path):
    arr = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, -6.5]])
    for big in (False, True):
        path = tmp_path / f"v4_{big}.mat"
        _write_mat_v4(path, "x", arr, big_endian=big)
        out = load_mat_file(path)
        assert list(out) == ["x"]
        np.testing.assert_array_equal(out["x"], arr)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["v5", "v7.3", "octave-text"])
def test_round_trip(tmp_path, fmt):
    data = _sample_data(np.random.default_rng(0))
    path = tmp_path / "data.mat"
    save_mat_file(path, data, format=fmt)
    expected_fmt = {"v5": "v5", "v7.3": "v7.3", "octave-text": "octave-text"}[fmt]
    assert detect_mat_format(path) == expected_fmt
    assert list_mat_variables(path) == list(data)
    out = load_mat_file(path)
    assert set(out) == set(data)
    # MATLAB shapes: 1-D -> 1 x n row, scalar -> 1 x 1, others kept (never squeezed).
    assert out["vec"].shape == (1, 3)
    assert out["scalar"].shape == (1, 1)
    assert out["cube"].shape == (2, 3, 4)
    np.testing.assert_array_equal(out["vec"], data["vec"][None, :])
    np.testing.assert_array_equal(out["scalar"], [[2.5]])
    for key in ("mat", "cube", "with_nan", "ints", "big_ints", "single"):
        np.testing.assert_array_equal(out[key], data[key], err_msg=key)
        assert out[key].dtype == data[key].dtype, key
    np.testing.assert_array_equal(out["flags"].astype(bool), data["flags"])
    if fmt != "v5":  # scipy gives logical as uint8
        assert out["flags"].dtype == bool
    assert out["text"].shape == (1,)
    assert out["text"][0] == "hello world"


@pytest.mark.parametrize("fmt", ["v5", "v7.3", "octave-text"])
def test_mat_strings_reads_a_cell_of_names_back(tmp_path, fmt):
    names = ["Fp1", " Cz ", "O2"]
    cell = np.empty((1, 3), dtype=object)
    cell[0, :] = names
    save_mat_file(tmp_path / "n.mat", {"ch_names": cell}, format=fmt)
    assert mat_strings(load_mat_file(tmp_path / "n.mat")["ch_names"]) == ["Fp1", "Cz", "O2"]


def test_mat_strings_shapes():
    want = ["Fp1", "Cz"]
    assert mat_strings(want) == want
    assert mat_strings(np.array(["Fp1 ", "Cz"])) == want  # string array (.npz), char-matrix rows
    column = np.empty((2, 1), dtype=object)  # C x 1 cell of 1-element string arrays
    column[0, 0], column[1, 0] = np.array(["Fp1"]), np.array(["Cz"])
    assert mat_strings(column) == want
    nested = np.empty(2, dtype=object)  # each name wrapped in a 1 x 1 cell
    for i, n in enumerate(want):
        inner = np.empty((1, 1), dtype=object)
        inner[0, 0] = np.array([n])
        nested[i] = inner
    assert mat_strings(nested) == want
    empty = np.empty(2, dtype=object)
    empty[0], empty[1] = np.array([], dtype="U1"), "Cz"
    assert mat_strings(empty) == ["", "Cz"]


@pytest.mark.parametrize("fmt", ["v5", "v7.3", "octave-text"])
def test_round_trip_cells_and_empty(tmp_path, fmt):
    cell = np.empty((1, 3), dtype=object)
    cell[0, 0] = np.array([[1.0, 2.0, 3.0]])
    cell[0, 1] = "abc"
    cell[0, 2] = np.array([[4, 5]], dtype=np.int32)
    data = {"c": cell, "e": np.zeros((0, 3)), "s": ""}
    path = tmp_path / "cells.mat"
    save_mat_file(path, data, format=fmt)
    out = load_mat_file(path)
    assert out["c"].dtype == object and out["c"].shape == (1, 3)
    np.testing.assert_array_equal(out["c"][0, 0], cell[0, 0])
    assert out["c"][0, 1].tolist() == ["abc"]
    np.testing.assert_array_equal(out["c"][0, 2], cell[0, 2])
    assert out["e"].shape == (0, 3)
    assert out["s"].size == 0 and out["s"].dtype.kind == "U"


def test_variable_names_limits_reading(tmp_path):
    data = {"a": np.ones((2, 3)), "b": np.zeros((3, 2)), "c": "text"}
    for fmt in ("v5", "v7.3", "octave-text"):
        path = tmp_path / f"sel_{fmt.replace('.', '')}.mat"
        save_mat_file(path, data, format=fmt)
        out = load_mat_file(path, variable_names=["b", "missing"])
        assert list(out) == ["b"], fmt
        assert out["b"].shape == (3, 2)
        assert list(load_mat_file(path, variable_names="a")) == ["a"]


def test_v73_layout_is_matlab_like(tmp_path):
    path = tmp_path / "layout.mat"
    save_mat_file(path, {"m": np.arange(6.0).reshape(2, 3), "f": np.array([True])}, format="v7.3")
    raw = path.read_bytes()
    text = raw[:116].decode("ascii")
    assert text.startswith("MATLAB 7.3 MAT-file, Platform: ")
    assert "Created on: " in text
    assert text.rstrip(" ").endswith("HDF5 schema 1.00 .")
    assert raw[116:124] == b"\x00" * 8
    assert raw[124:128] == b"\x00\x02IM"
    assert raw[512:520] == HDF5_SIGNATURE
    with h5py.File(path, "r") as f:
        assert f["m"].shape == (3, 2)  # stored transposed, as MATLAB does
        np.testing.assert_array_equal(f["m"][()], np.arange(6.0).reshape(2, 3).T)
        assert f["m"].attrs["MATLAB_class"] == b"double"
        assert f["f"].attrs["MATLAB_class"] == b"logical"
        assert f["f"].dtype == np.uint8


def test_v73_struct_complex_sparse(tmp_path):
    sparse = scipy.sparse.random(5, 7, density=0.3, random_state=1, format="csr")
    data = {
        "st": {"w": np.eye(2), "name": "alpha", "inner": {"k": np.int64(3)}},
        "z": np.array([[1 + 2j, -3.5j]]),
        "sp": sparse,
    }
    path = tmp_path / "st.mat"
    save_mat_file(path, data, format="v7.3")
    out = load_mat_file(path)
    assert list(out["st"]) == ["w", "name", "inner"]
    np.testing.assert_array_equal(out["st"]["w"], np.eye(2))
    assert out["st"]["name"].tolist() == ["alpha"]
    np.testing.assert_array_equal(out["st"]["inner"]["k"], [[3]])
    np.testing.assert_array_equal(out["z"], data["z"])
    assert scipy.sparse.issparse(out["sp"])
    np.testing.assert_allclose(out["sp"].toarray(), sparse.toarray())


def test_octave_writer_output_format(tmp_path):
    path = tmp_path / "o.txt"
    data = {
        "m": np.array([[1.0, 2.5], [np.nan, -np.inf]]),
        "n": np.arange(8.0).reshape(2, 2, 2),
        "s": np.float64(4.0),
        "k": np.array([[1, 2]], dtype=np.int16),
    }
    save_mat_file(path, data, format="octave-text")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Created by Octave")
    i = lines.index("# name: m")
    assert lines[i + 1 : i + 6] == [
        "# type: matrix", "# rows: 2", "# columns: 2", " 1.0 2.5", " NaN -Inf"
    ]
    i = lines.index("# name: n")
    # N-d: dimensions, then values one per line in column-major order.
    col_major = np.arange(8.0).reshape(2, 2, 2).ravel(order="F")
    assert lines[i + 1 : i + 4] == ["# type: matrix", "# ndims: 3", " 2 2 2"]
    assert [float(v) for v in lines[i + 4 : i + 12]] == col_major.tolist()
    i = lines.index("# name: s")
    assert lines[i + 1 : i + 3] == ["# type: scalar", "4.0"]
    i = lines.index("# name: k")
    assert lines[i + 1 : i + 6] == ["# type: int16 matrix", "# ndims: 2", " 1 2", " 1", " 2"]


OCTAVE_TEXT = """\
# Created by Octave 8.4.0, Tue Nov 24 10:00:00 2026 UTC <user@host>
# name: A
# type: matrix
# rows: 2
# columns: 3
 1 2 3
 4 NaN -Inf


# name: B
# type: matrix
# ndims: 3
 2 3 2
 1
 2
 3
 4
 5
 6
 7
 8
 9
 10
 11
 NA


# name: s
# type: scalar
Inf


# name: flags
# type: bool matrix
# rows: 1
# columns: 3
 1 0 1


# name: k
# type: int32 matrix
# ndims: 2
 2 2
 1
 -2
 3
 4


# name: b
# type: bool
1


# name: txt
# type: string
# elements: 1
# length: 5
hello


# name: c
# type: cell
# rows: 1
# columns: 2
# name: <cell-element>
# type: matrix
# rows: 1
# columns: 3
 7 8 9

# name: <cell-element>
# type: sq_string
# elements: 1
# length: 2
hi



# name: r
# type: range
# base, limit, increment
1 9 2


"""


def test_read_handwritten_octave_text(tmp_path):
    path = tmp_path / "octave.txt"
    path.write_text(OCTAVE_TEXT)
    assert detect_mat_format(path) == "octave-text"
    assert list_mat_variables(path) == ["A", "B", "s", "flags", "k", "b", "txt", "c", "r"]
    out = load_mat_file(path)
    np.testing.assert_array_equal(out["A"], [[1, 2, 3], [4, np.nan, -np.inf]])
    expected_b = np.empty((2, 3, 2))
    values = iter([*range(1, 12), np.nan])
    for k in range(2):  # column-major: first index fastest
        for j in range(3):
            for i in range(2):
                expected_b[i, j, k] = next(values)
    np.testing.assert_array_equal(out["B"], expected_b)
    assert out["B"][1, 0, 0] == 2 and out["B"][0, 1, 0] == 3 and out["B"][0, 0, 1] == 7
    np.testing.assert_array_equal(out["s"], [[np.inf]])
    assert out["flags"].dtype == bool and out["flags"].tolist() == [[True, False, True]]
    assert out["k"].dtype == np.int32
    np.testing.assert_array_equal(out["k"], [[1, 3], [-2, 4]])
    assert out["b"].tolist() == [[True]]
    assert out["txt"].tolist() == ["hello"]
    assert out["c"].shape == (1, 2)
    np.testing.assert_array_equal(out["c"][0, 0], [[7, 8, 9]])
    assert out["c"][0, 1].tolist() == ["hi"]
    np.testing.assert_array_equal(out["r"], [[1, 3, 5, 7, 9]])
    assert list(load_mat_file(path, variable_names=["c"])) == ["c"]


def test_octave_text_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("# name: A\n# type: matrix\n# rows: 2\n# columns: 2\n 1 2\n 3\n")
    with pytest.raises(ValueError, match=r"short.txt.*variable 'A': expected 4 values, found 3"):
        load_mat_file(short)
    bad = tmp_path / "bad.txt"
    bad.write_text("# name: S\n# type: scalar struct\n# ndims: 2\n 1 1\n")
    with pytest.raises(ValueError, match="bad.txt.*'scalar struct'"):
        load_mat_file(bad)
    with pytest.raises(TypeError, match="format='v5'"):
        save_mat_file(tmp_path / "st.txt", {"st": {"a": 1}}, format="octave-text")


def test_octave_text_large_nd_is_vectorized(tmp_path):
    # 120 000 values, one per line: a per-value Python loop would take seconds.
    arr = np.random.default_rng(3).standard_normal((1000, 2, 60))
    path = tmp_path / "big.txt"
    save_mat_file(path, {"data": arr}, format="octave-text")
    start = time.perf_counter()
    out = load_mat_file(path)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(out["data"], arr)
    assert elapsed < 2.0, f"reading 120k values took {elapsed:.2f} s"


@pytest.mark.slow
def test_octave_text_full_size_clip_file(tmp_path):
    """A 190656 x 2 x 70 matrix (26.7M values), the size of a DeepSIF NMM clip file."""
    arr = np.random.default_rng(4).standard_normal((190656, 2, 70)).astype(np.float32)
    path = tmp_path / "clip.txt"
    save_mat_file(path, {"data": arr}, format="octave-text")
    start = time.perf_counter()
    out = load_mat_file(path)
    elapsed = time.perf_counter() - start
    assert out["data"].shape == (190656, 2, 70)
    np.testing.assert_array_equal(out["data"], arr)
    assert elapsed < 60.0


# --------------------------------------------------------------------------- hand-built v7.3
def _matlab_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Nov 24 10:00:00 2026 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"


def _char_dataset(group, name: str, text: str):
    codes = np.array([[ord(ch)] for ch in text], dtype=np.uint16)  # MATLAB 1 x n -> (n, 1)
    ds = group.create_dataset(name, data=codes)
    ds.attrs["MATLAB_class"] = np.bytes_("char")
    ds.attrs["MATLAB_int_decode"] = np.int32(2)
    return ds


def _num_dataset(group, name: str, matlab_array: np.ndarray, cls: str = "double"):
    ds = group.create_dataset(name, data=np.ascontiguousarray(matlab_array.T))
    ds.attrs["MATLAB_class"] = np.bytes_(cls)
    return ds


def test_read_handbuilt_matlab_v73(tmp_path):
    path = tmp_path / "matlab.mat"
    rng = np.random.default_rng(5)
    big = rng.standard_normal((50, 2, 7))  # MATLAB 50 x 2 x 7, stored as (7, 2, 50)
    with h5py.File(path, "w", userblock_size=512) as f:
        _num_dataset(f, "big", big)
        _num_dataset(f, "idx", np.array([[1, 2, 3]], dtype=np.uint16), cls="uint16")
        ds = f.create_dataset("mask", data=np.array([[1], [0]], dtype=np.uint8))
        ds.attrs["MATLAB_class"] = np.bytes_("logical")
        _char_dataset(f, "label", "Fp1")
        refs = f.create_group("#refs#")
        # cell of char, MATLAB 1 x 2: reference dataset stored as (2, 1)
        names = [_char_dataset(refs, "a", "left"), _char_dataset(refs, "b", "right")]
        cell = f.create_dataset("names", data=np.array([[n.ref] for n in names]), dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        # cell of numeric vectors of different lengths, MATLAB 1 x 3 (like DeepSIF's nbs)
        vecs = [np.array([[2.0, 5.0]]), np.array([[1.0]]), np.array([[1.0, 2.0, 4.0]])]
        vec_ds = [_num_dataset(refs, f"v{i}", v) for i, v in enumerate(vecs)]
        nbs = f.create_dataset("nbs", data=np.array([[d.ref] for d in vec_ds]), dtype=h5py.ref_dtype)
        nbs.attrs["MATLAB_class"] = np.bytes_("cell")
        empty = f.create_dataset("empty", data=np.array([0, 3], dtype=np.uint64))
        empty.attrs["MATLAB_class"] = np.bytes_("double")
        empty.attrs["MATLAB_empty"] = np.uint8(1)
        st = f.create_group("opts")
        st.attrs["MATLAB_class"] = np.bytes_("struct")
        _num_dataset(st, "fs", np.array([[250.0]]))
        _char_dataset(st, "mode", "fast")
        f.create_group("#subsystem#")
    with open(path, "r+b") as raw:
        raw.write(_matlab_header())

    assert detect_mat_format(path) == "v7.3"
    assert set(list_mat_variables(path)) == {"big", "idx", "mask", "label", "names", "nbs", "empty", "opts"}
    out = load_mat_file(path)
    assert "#refs#" not in out and "#subsystem#" not in out
    assert out["big"].shape == (50, 2, 7)
    np.testing.assert_array_equal(out["big"], big)
    assert out["idx"].dtype == np.uint16 and out["idx"].tolist() == [[1, 2, 3]]
    assert out["mask"].dtype == bool and out["mask"].tolist() == [[True, False]]
    assert out["label"].tolist() == ["Fp1"]
    assert out["names"].shape == (1, 2)
    assert [c.tolist() for c in out["names"].ravel()] == [["left"], ["right"]]
    assert out["nbs"].shape == (1, 3) and out["nbs"].dtype == object
    for got, want in zip(out["nbs"].ravel(), vecs):
        np.testing.assert_array_equal(got, want)
    assert out["empty"].shape == (0, 3)
    assert out["opts"]["fs"].tolist() == [[250.0]]
    assert out["opts"]["mode"].tolist() == ["fast"]
    only = load_mat_file(path, variable_names=["nbs"])
    assert list(only) == ["nbs"]


def test_plain_hdf5_uses_matlab_axis_order(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(6.0).reshape(3, 2)
    out = load_mat_file(path)
    np.testing.assert_array_equal(out["x"], np.arange(6.0).reshape(3, 2).T)


# --------------------------------------------------------------------------- writer checks
def test_fits_in_mat_v5_and_size_error(tmp_path):
    small = {"a": np.zeros((10, 10))}
    assert fits_in_mat_v5(small)
    # A broadcast view reports 2 GiB + 8 bytes without allocating it.
    huge = np.broadcast_to(np.zeros(1), (2**28 + 1,))
    assert huge.nbytes > 2**31
    assert not fits_in_mat_v5({"a": np.zeros(3), "huge": huge})
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = huge
    assert not fits_in_mat_v5({"c": cell})
    path = tmp_path / "huge.mat"
    with pytest.raises(ValueError, match=r"huge.mat: variable 'huge' .*format='v7.3'"):
        save_mat_file(path, {"huge": huge}, format="v5")
    assert not path.exists()


def test_save_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Invalid value for 'format': expected one of 'v5', 'v7.3', 'octave-text', got 'v6'\."):
        save_mat_file(tmp_path / "x.mat", {"a": 1}, format="v6")
    with pytest.raises(ValueError, match="invalid variable name '1abc'"):
        save_mat_file(tmp_path / "x.mat", {"1abc": 1})
    with pytest.raises(TypeError, match="variable 'd'"):
        save_mat_file(tmp_path / "x.mat", {"d": np.array(["2020-01-01"], dtype="datetime64[D]")}, format="v7.3")


def test_v5_writer_keeps_path_and_compresses(tmp_path):
    path = tmp_path / "no_suffix"
    save_mat_file(path, {"z": np.zeros((200, 200))})
    assert path.exists() and not (tmp_path / "no_suffix.mat").exists()
    assert path.stat().st_size < 200 * 200 * 8 / 10  # zeros compress well
    out = scipy.io.loadmat(path, appendmat=False)
    np.testing.assert_array_equal(out["z"], np.zeros((200, 200)))


# --------------------------------------------------------------------------- DeepSIF files
def test_deepsif_region_mapping_cell(deepsif_anatomy_dir):
    out = load_mat_file(deepsif_anatomy_dir / "fs_cortex_20k_region_mapping.mat")
    assert "__header__" not in out
    nbs = out["nbs"]
    assert nbs.dtype == object and nbs.shape == (1, 994)
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iuf" for v in nbs.ravel())
    assert out["rm"].shape == (1, 20484)
    # Neighbour lists are 1-based region indices.
    flat = np.concatenate([v.ravel() for v in nbs.ravel()])
    assert flat.min() >= 1 and flat.max() <= 994


def test_deepsif_region_mapping_survives_v73(deepsif_anatomy_dir, tmp_path):
    original = load_mat_file(deepsif_anatomy_dir / "fs_cortex_20k_region_mapping.mat")
    path = tmp_path / "rm73.mat"
    save_mat_file(path, original, format="v7.3")
    again = load_mat_file(path)
    np.testing.assert_array_equal(again["rm"], original["rm"])
    assert again["nbs"].shape == (1, 994)
    for a, b in zip(again["nbs"].ravel(), original["nbs"].ravel()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_load_mat_field_reads_one_variable_and_names_a_missing_one(tmp_path):
    from esikit.io import load_mat_field

    path = tmp_path / "f.mat"
    save_mat_file(path, {"fwd": np.ones((2, 3)), "other": np.zeros(4)})
    assert load_mat_field(path, "fwd").shape == (2, 3)
    with pytest.raises(KeyError, match=r"f\.mat: no field 'rm'"):
        load_mat_field(path, "rm")
