"""Tests for esikit.io.forward: loading and orienting forward matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from esikit.io import (
    FORWARD_KEYS,
    ForwardMatrixKeyError,
    load_forward_matrix,
    orient_forward_matrix,
    save_mat_file,
)


@pytest.fixture
def fwd() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 12))


def test_forward_keys():
    assert FORWARD_KEYS == ("fwd", "forward", "leadfield", "L")


@pytest.mark.parametrize("fmt", ["v5", "v7.3", "octave-text"])
@pytest.mark.parametrize("transposed", [False, True])
def test_load_both_orientations(tmp_path, fwd, fmt, transposed):
    stored = fwd.T if transposed else fwd
    path = tmp_path / "lf.mat"
    save_mat_file(path, {"chan": np.arange(5.0), "leadfield": stored}, format=fmt)
    out = load_forward_matrix(path)
    assert out.shape == (5, 12) and out.dtype == np.float64
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, fwd)


@pytest.mark.parametrize("transposed", [False, True])
def test_load_npy_and_npz(tmp_path, fwd, transposed):
    stored = (fwd.T if transposed else fwd).astype(np.float32)
    np.save(tmp_path / "lf.npy", stored)
    out = load_forward_matrix(tmp_path / "lf.npy")
    assert out.dtype == np.float64 and out.shape == (5, 12)
    np.testing.assert_array_equal(out, fwd.astype(np.float32).astype(np.float64))
    np.savez(tmp_path / "lf.npz", G=stored)
    np.testing.assert_array_equal(load_forward_matrix(tmp_path / "lf.npz", key="G"), out)
    with pytest.raises(ForwardMatrixKeyError, match=r"keys are \['G'\]; expected one of fwd"):
        load_forward_matrix(tmp_path / "lf.npz")


def test_key_priority_and_explicit_key(tmp_path, fwd):
    path = tmp_path / "two.mat"
    other = np.arange(21.0).reshape(3, 7) ** 2
    save_mat_file(path, {"L": other, "fwd": fwd, "G": fwd.T * 2})
    np.testing.assert_array_equal(load_forward_matrix(path), fwd)  # fwd before L
    np.testing.assert_array_equal(load_forward_matrix(path, key="L"), other)
    np.testing.assert_array_equal(load_forward_matrix(path, key="G"), fwd * 2)


def test_missing_key_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "anatomy").mkdir()
    scipy.io.savemat(tmp_path / "anatomy" / "x.mat", {"G": np.ones((2, 3)), "chan": np.ones(2)})
    with pytest.raises(ValueError) as info:
        load_forward_matrix("anatomy/x.mat")
    assert str(info.value) == (
        "Could not find forward matrix in file anatomy/x.mat: keys are ['G', 'chan']; "
        "expected one of fwd, forward, leadfield, L"
    )
    assert isinstance(info.value, KeyError)
    with pytest.raises(ForwardMatrixKeyError, match=r"expected one of fwd_other$"):
        load_forward_matrix("anatomy/x.mat", key="fwd_other")


def test_shape_errors_name_file_key_and_shape(tmp_path):
    square = tmp_path / "square.mat"
    save_mat_file(square, {"fwd": np.ones((4, 4))})
    with pytest.raises(ValueError, match=r"square\.mat field 'fwd'.*square shape \(4, 4\)"):
        load_forward_matrix(square)
    cube = tmp_path / "cube.mat"
    save_mat_file(cube, {"forward": np.ones((2, 3, 4))})
    with pytest.raises(ValueError, match=r"cube\.mat field 'forward'.*shape \(2, 3, 4\), expected a 2-D"):
        load_forward_matrix(cube)
    text = tmp_path / "text.mat"
    save_mat_file(text, {"fwd": "not a matrix"})
    with pytest.raises(ValueError, match=r"text\.mat field 'fwd'"):
        load_forward_matrix(text)
    npy = tmp_path / "vec.npy"
    np.save(npy, np.ones(5))
    with pytest.raises(ValueError, match=r"vec\.npy: forward matrix has shape \(5,\)"):
        load_forward_matrix(npy)


def test_non_finite_entries_are_counted(tmp_path, fwd):
    bad = fwd.copy()
    bad[0, 0] = np.nan
    bad[1, 3] = np.inf
    bad[4, 11] = -np.inf
    path = tmp_path / "bad.mat"
    save_mat_file(path, {"fwd": bad.T})
    with pytest.raises(ValueError, match=r"bad\.mat field 'fwd'.* 3 non-finite entries"):
        load_forward_matrix(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mat"):
        load_forward_matrix(tmp_path / "nowhere.mat")


def test_orient_forward_matrix_arrays(fwd):
    np.testing.assert_array_equal(orient_forward_matrix(fwd.T), fwd)
    out = orient_forward_matrix(fwd.astype(np.float32))
    assert out.dtype == np.float64 and out.shape == (5, 12)
    with pytest.raises(ValueError, match=r"^my fwd: forward matrix has square shape"):
        orient_forward_matrix(np.eye(3), source="my fwd")
    with pytest.raises(ValueError, match=r"^array: forward matrix has shape \(0, 4\)"):
        orient_forward_matrix(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="expected real numbers"):
        orient_forward_matrix(np.ones((2, 3), dtype=complex))


def test_deepsif_leadfield(deepsif_anatomy_dir, tmp_path):
    path = deepsif_anatomy_dir / "leadfield_75_20k.mat"
    reference = scipy.io.loadmat(path)["fwd"]
    out = load_forward_matrix(path)
    assert out.shape == (75, 994) and out.dtype == np.float64
    np.testing.assert_array_equal(out, reference)
    # The same matrix stored regions x channels, in both MAT formats.
    for fmt in ("v5", "v7.3"):
        flipped = tmp_path / f"lf_{fmt.replace('.', '')}.mat"
        save_mat_file(flipped, {"fwd": reference.T}, format=fmt)
        np.testing.assert_array_equal(load_forward_matrix(flipped), reference)


def test_all_zero_forward_matrix_is_refused(tmp_path):
    path = tmp_path / "zero.mat"
    save_mat_file(path, {"fwd": np.zeros((8, 20))})
    with pytest.raises(ValueError, match=r"zero\.mat field 'fwd': forward matrix \(shape \(8, 20\)\) is all zeros"):
        load_forward_matrix(path)


def test_constant_columns_are_listed(fwd):
    bad = fwd.copy()
    bad[:, 3] = 2.5  # the same gain on every channel
    bad[:, 7] = 0.0
    with pytest.raises(ValueError) as err:
        orient_forward_matrix(bad.T, source="lf.mat")  # found after orienting: regions, not rows
    text = str(err.value)
    assert "lf.mat: forward matrix (shape (5, 12), C x R) has 2 of 12 region column(s) constant" in text
    assert "(regions 3, 7, 0-based)" in text and "recompute the leadfield" in text


def test_known_region_count_decides_the_orientation(tmp_path):
    tall = np.random.default_rng(1).standard_normal((24, 20))  # 24 channels, 20 regions
    np.testing.assert_array_equal(orient_forward_matrix(tall, n_regions=20), tall)
    np.testing.assert_array_equal(orient_forward_matrix(tall.T, n_regions=20), tall)
    assert orient_forward_matrix(tall).shape == (20, 24)  # unknown R: the contract's guess
    path = tmp_path / "lf_24_20.mat"
    save_mat_file(path, {"fwd": tall})
    np.testing.assert_array_equal(load_forward_matrix(path, n_regions=20), tall)
    with pytest.raises(ValueError, match=r"lf_24_20\.mat field 'fwd': forward matrix has shape \(24, 20\), "
                                         r"expected \(C, R\) \(or \(R, C\)\) with R=19 regions; neither"):
        load_forward_matrix(path, n_regions=19)
