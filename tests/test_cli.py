"""The esikit command: help, and evaluate on a checkpoint with nothing but the checkpoint."""

from __future__ import annotations

import json

import pytest

from esikit.cli import build_parser, main
from esikit.config import default_config, validate_config
from esikit.data.toy import make_toy_dataset
from esikit.commands.train import train


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in ("check", "train", "evaluate", "simulate", "demo"):
        assert cmd in out


def test_evaluate_command_from_a_checkpoint(tmp_path, capsys):
    toy = make_toy_dataset(tmp_path / "d", n_regions=12, n_channels=6, n_times=100, n_train=12, n_test=5, seed=0)
    cfg = default_config()
    cfg.update(TRAIN_METADATA_PATH=str(toy["train_metadata"]), TEST_METADATA_PATH=str(toy["test_metadata"]),
               FWD_MATRIX_PATH=str(toy["fwd_path"]), NMM_SPIKES_DIR=str(toy["nmm_spikes_dir"]),
               MODEL_KWARGS={"n_hidden": 8, "n_lstm_layers": 1}, BATCH_SIZE=4, NUM_EPOCHS=1, NUM_WORKERS=0,
               USE_AMP=False, EVALUATE=False, LOG_DIR=str(tmp_path / "logs"), CHECKPOINT_DIR=str(tmp_path / "ck"),
               RUN_NAME="r", BASELINES=("sloreta",))
    train(validate_config(cfg), show_progress=False)
    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "ck" / "r" / "best.pt"), "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "| all (n=5) | deepsif (deepsif) |" in printed and "Winners over all samples" in printed
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["summary"]["methods"]) == {"deepsif", "sloreta"}
    assert (out_dir / "results_samples.csv").stat().st_size > 0 and (out_dir / "results.md").is_file()
    # flags: other baselines (an invertmeeg one), the SNR oracle
    assert main(["evaluate", str(tmp_path / "ck" / "r" / "best.pt"), "--out", str(out_dir), "--baselines",
                 "sloreta,lcmv", "--oracle"]) == 0
    printed = capsys.readouterr().out
    assert "lcmv (normalized)" in printed and "true SNR (oracle)" in printed
    assert main(["evaluate", str(tmp_path / "ck" / "r" / "best.pt"), "--baselines", "nope"]) == 2
    assert "Invalid value for 'baselines'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 1


def test_ctrl_c_is_a_short_message_not_a_traceback(monkeypatch, capsys, tmp_path):
    import esikit.commands.template as tpl

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tpl, "run_template", interrupted)
    assert main(["template", str(tmp_path / "out"), "--size", "tiny"]) == 130
    err = capsys.readouterr().err
    assert "esikit template: interrupted" in err and "Traceback" not in err
