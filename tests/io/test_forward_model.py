"""Leadfield files with channel names and positions: round trips, old files, bad fields."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from esikit.io import (
    ForwardModel,
    load_forward_matrix,
    load_forward_model,
    montage_dict,
    save_forward_model,
    save_mat_file,
)


def _model(c=4, r=9, seed=0):
    rng = np.random.default_rng(seed)
    return ForwardModel(rng.standard_normal((c, r)), [f"E{i}" for i in range(c)], rng.uniform(-0.09, 0.09, (c, 3)))


@pytest.mark.parametrize("name", ["lf.mat", "lf.npz"])
def test_round_trip_keeps_matrix_names_and_positions(tmp_path, name):
    m = _model()
    path = save_forward_model(tmp_path / name, m)
    back = load_forward_model(path)
    np.testing.assert_array_equal(back.fwd, m.fwd)
    assert back.ch_names == m.ch_names
    np.testing.assert_array_equal(back.ch_pos, m.ch_pos)
    # The plain loader still returns just the matrix.
    np.testing.assert_array_equal(load_forward_matrix(path), m.fwd)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_mat_file_is_what_matlab_reads(tmp_path):
    m = _model()
    save_forward_model(tmp_path / "lf.mat", m.fwd, m.ch_names, m.ch_pos)
    raw = scipy.io.loadmat(tmp_path / "lf.mat")
    assert raw["fwd"].shape == (4, 9)
    assert raw["ch_names"].shape == (1, 4) and str(raw["ch_names"][0, 2][0]) == "E2"
    assert raw["ch_pos"].shape == (4, 3)


def test_deepsif_plain_file_has_no_channels(tmp_path):
    fwd = np.arange(20.0).reshape(4, 5) ** 1.5
    save_mat_file(tmp_path / "leadfield.mat", {"fwd": fwd})
    m = load_forward_model(tmp_path / "leadfield.mat")
    assert m.ch_names is None and m.ch_pos is None
    np.testing.assert_allclose(m.fwd, fwd)
    assert montage_dict(m.ch_names, m.ch_pos) == {"ch_names": None, "ch_pos": None}


@pytest.mark.parametrize("fmt", ["v7.3", "octave-text"])
def test_names_read_from_other_mat_flavours(tmp_path, fmt):
    cell = np.empty((1, 3), dtype=object)
    cell[0, :] = ["Fp1", "Cz", "O2"]
    save_mat_file(tmp_path / "lf.mat", {"fwd": np.arange(15.0).reshape(3, 5) ** 2, "ch_names": cell}, format=fmt)
    assert load_forward_model(tmp_path / "lf.mat").ch_names == ["Fp1", "Cz", "O2"]


def test_positions_stored_three_by_c_are_transposed(tmp_path):
    m = _model()
    save_mat_file(tmp_path / "lf.mat", {"fwd": m.fwd, "ch_pos": m.ch_pos.T})
    np.testing.assert_array_equal(load_forward_model(tmp_path / "lf.mat").ch_pos, m.ch_pos)


def test_bad_channel_fields_are_all_reported_with_file_and_field(tmp_path):
    cell = np.empty((1, 3), dtype=object)
    cell[0, :] = ["Fp1", "Fp1", "O2"]
    path = tmp_path / "lf.mat"
    save_mat_file(path, {"fwd": np.arange(20.0).reshape(4, 5) ** 2, "ch_names": cell,
                         "ch_pos": np.full((4, 3), 50.0)})
    with pytest.raises(ValueError) as err:
        load_forward_model(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "'ch_names' has 3 names, expected C=4" in msg
    assert "repeats ['Fp1']" in msg
    assert "'ch_pos' reaches 50" in msg and "metres" in msg


def test_model_rejects_mismatched_positions():
    with pytest.raises(ValueError, match=r"'ch_pos' has shape \(2, 3\).*C=4"):
        ForwardModel(np.ones((4, 6)), None, np.zeros((2, 3)))


def test_montage_dict_is_plain_python():
    m = _model(c=2)
    d = m.montage_dict()
    assert isinstance(d["ch_names"], list) and isinstance(d["ch_pos"], list)
    assert all(type(x) is float for row in d["ch_pos"] for x in row)


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_forward_model(tmp_path / "lf.mat", _model(seed=1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("esikit.io.forward_model.save_mat_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_forward_model(path, _model(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lf.mat"]


def test_more_channels_than_regions_oriented_by_the_names(tmp_path):
    m = _model(c=12, r=5)
    path = save_forward_model(tmp_path / "lf.mat", m)
    back = load_forward_model(path)
    np.testing.assert_array_equal(back.fwd, m.fwd)
    assert back.ch_names == m.ch_names
    np.testing.assert_array_equal(load_forward_model(path, n_regions=5).fwd, m.fwd)
