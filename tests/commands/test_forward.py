"""``esikit forward``: a leadfield for a cap from the command line, and --attach."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.cli import main
from esikit.io import load_forward_model, save_mat_file

TEN_TWENTY = "Fp1,Fp2,F7,F3,Fz,F4,F8,T7,C3,Cz,C4,T8,P7,P3,Pz,P4,P8,O1,O2"


def test_forward_writes_a_leadfield_with_its_channels(tmp_path, capsys):
    out = tmp_path / "leadfield_19_76.mat"
    assert main(["forward", str(out), "--montage", "standard_1020", "--channels", TEN_TWENTY, "--head-model",
                 "sphere"]) == 0  # fast; the BEM is tested in tests/head
    model = load_forward_model(out)
    assert model.fwd.shape == (19, 76)
    assert model.ch_names == TEN_TWENTY.split(",")
    assert model.ch_pos.shape == (19, 3) and np.abs(model.ch_pos).max() < 0.2
    printed = capsys.readouterr().out
    assert "fwd 19 x 76" in printed and "19 shared names" in printed and "FWD_MATRIX_PATH" in printed


def test_forward_reports_unknown_channels(tmp_path):
    with pytest.raises(SystemExit, match=r"channels \['Q9'\] are not in it"):
        main(["forward", str(tmp_path / "x.mat"), "--montage", "standard_1020", "--channels", "Cz,Q9"])
    assert not (tmp_path / "x.mat").exists()


def test_attach_names_to_a_plain_deepsif_file(tmp_path, capsys):
    plain = tmp_path / "leadfield_3_10.mat"
    fwd = np.arange(30.0).reshape(3, 10) ** 1.3
    save_mat_file(plain, {"fwd": fwd})
    out = tmp_path / "with_names.mat"
    assert main(["forward", str(out), "--montage", "standard_1020", "--channels", "Fz,Cz,Pz",
                 "--attach", str(plain)]) == 0
    model = load_forward_model(out)
    np.testing.assert_allclose(model.fwd, fwd)
    assert model.ch_names == ["Fz", "Cz", "Pz"] and model.ch_pos.shape == (3, 3)
    assert load_forward_model(plain).ch_names is None  # the original is untouched
    with pytest.raises(SystemExit, match="has 3 rows but the montage gives 2 channels"):
        main(["forward", str(out), "--montage", "standard_1020", "--channels", "Fz,Cz", "--attach", str(plain)])


def test_attach_to_a_plain_file_with_more_channels_than_regions(tmp_path):
    plain = tmp_path / "leadfield_5_3.mat"
    fwd = np.arange(15.0).reshape(5, 3) ** 1.3 + np.eye(5, 3)
    save_mat_file(plain, {"fwd": fwd})
    out = tmp_path / "named.mat"
    assert main(["forward", str(out), "--montage", "standard_1020", "--channels", "Fz,Cz,Pz,C3,C4",
                 "--attach", str(plain)]) == 0
    model = load_forward_model(out)
    np.testing.assert_allclose(model.fwd, fwd)
    assert model.ch_names == ["Fz", "Cz", "Pz", "C3", "C4"]
