"""Checkpoints know their channels; a new cap trains on the same clips and metadata."""

from __future__ import annotations

import pytest

from esikit.cli import main
from esikit.config import default_config, validate_config
from esikit.constants import SFREQ_HZ
from esikit.data.toy import make_toy_dataset
from esikit.head import load_default_anatomy
from esikit.head.forward import make_forward_model
from esikit.io import save_forward_model
from esikit.train import load_checkpoint
from esikit.commands.train import train

TEN_TWENTY = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz",
              "P4", "P8", "O1", "O2"]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """Tiny clips and metadata on the built-in anatomy (63 x 76) and a 19-channel 10-20 leadfield."""
    tvb = load_default_anatomy()
    root = tmp_path_factory.mktemp("demo")
    toy = make_toy_dataset(root, fwd=tvb.fwd, n_times=100, n_train=16, n_test=4, max_patch=3, seed=2)
    model, _ = make_forward_model(tvb, "standard_1020", TEN_TWENTY, head_model="sphere")  # fast; BEM: tests/head
    path = save_forward_model(root / "anatomy" / "leadfield_19_76.mat", model)
    return toy, path


def _cfg(toy, fwd_path, tmp_path, run):
    cfg = default_config()
    cfg.update(
        TRAIN_METADATA_PATH=str(toy["train_metadata"]), TEST_METADATA_PATH=str(toy["test_metadata"]),
        FWD_MATRIX_PATH=str(fwd_path), NMM_SPIKES_DIR=str(toy["nmm_spikes_dir"]),
        MODEL="deepsif", MODEL_KWARGS={"n_hidden": 8, "n_lstm_layers": 1}, BATCH_SIZE=4, NUM_EPOCHS=1,
        NUM_WORKERS=0, USE_AMP=False, VAL_SPLIT=0.25, EVALUATE=False, LOG_DIR=str(tmp_path / "logs"),
        CHECKPOINT_DIR=str(tmp_path / "ckpt"), RUN_NAME=run)
    return validate_config(cfg)


def test_new_cap_trains_on_the_same_data_and_checkpoint_knows_it(demo_like, tmp_path):
    toy, fwd19 = demo_like
    train(_cfg(toy, fwd19, tmp_path, "cap19"), show_progress=False)
    state = load_checkpoint(tmp_path / "ckpt" / "cap19" / "last.pt")
    assert state["data"]["n_channels"] == 19 and state["data"]["n_regions"] == 76
    montage = state["montage"]
    assert montage["ch_names"] == TEN_TWENTY
    assert len(montage["ch_pos"]) == 19 and all(len(p) == 3 for p in montage["ch_pos"])
    assert montage["sfreq"] == SFREQ_HZ == 500.0
    assert all(type(x) is float for p in montage["ch_pos"] for x in p)  # plain data, no numpy


def test_plain_leadfield_checkpoint_then_attach_a_montage(demo_like, tmp_path, capsys):
    toy, _ = demo_like
    train(_cfg(toy, toy["fwd_path"], tmp_path, "plain"), show_progress=False)
    ckpt = tmp_path / "ckpt" / "plain" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["montage"] == {"ch_names": None, "ch_pos": None, "sfreq": 500.0}
    # 63 inputs: a 19-channel montage does not fit ...
    with pytest.raises(SystemExit, match="takes 63 channels but the montage gives 19"):
        main(["forward", str(tmp_path / "x.pt"), "--montage", "standard_1020", "--channels", ",".join(TEN_TWENTY),
              "--attach", str(ckpt)])
    # ... tvb-data's own sensors, saved as an MNE digitization file, do.
    from esikit.head.forward import tvb_sensor_montage

    names = [c.split("/")[0] for c in load_default_anatomy().channel_names]
    dig = tmp_path / "tvb65-dig.fif"
    tvb_sensor_montage().save(dig)
    out = tmp_path / "named.pt"
    assert main(["forward", str(out), "--montage", str(dig), "--channels", ",".join(names), "--attach", str(ckpt)]) == 0
    named = load_checkpoint(out)
    assert named["montage"]["ch_names"] == names and len(named["montage"]["ch_pos"]) == 63
    assert named["montage"]["sfreq"] == 500.0
    assert named["model_state"].keys() == state["model_state"].keys()
