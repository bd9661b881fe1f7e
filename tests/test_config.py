"""Config: the user's file, command-line overrides, one-pass validation."""

from __future__ import annotations

import pytest

from esikit.config import KEYS, ConfigError, get_config, load_config, parse_overrides


def test_seed_config_file_has_every_documented_key(repo_root):
    cfg = load_config(repo_root / "configs" / "config.py")
    for key in ("USE_METADATA_LOADER", "TRAIN_METADATA_PATH", "TEST_METADATA_PATH", "NMM_SPIKES_DIR",
                "FWD_MATRIX_PATH", "TRAIN_DATASET_LEN", "TEST_DATASET_LEN", "VAL_SPLIT", "BATCH_SIZE",
                "NUM_EPOCHS", "LEARNING_RATE", "NUM_WORKERS", "PIN_MEMORY", "USE_AMP"):
        assert key in cfg and key in KEYS
    assert (cfg["BATCH_SIZE"], cfg["NUM_EPOCHS"], cfg["LEARNING_RATE"], cfg["NUM_WORKERS"], cfg["VAL_SPLIT"]) == (
        8, 100, 1e-4, 4, 0.1)


def test_override_forms():
    over, rest = parse_overrides(["BATCH_SIZE=16", "--NUM_EPOCHS", "3", "--LEARNING_RATE=1e-3", "--resume",
                                  "NMM_SPIKES_DIR=None", "MODEL=tcn", "USE_AMP=false", "BASELINES=('mne',)"])
    assert over == {"BATCH_SIZE": 16, "NUM_EPOCHS": 3, "LEARNING_RATE": 1e-3, "NMM_SPIKES_DIR": None,
                    "MODEL": "tcn", "USE_AMP": False, "BASELINES": ("mne",)}
    assert rest == ["--resume"]
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--BATCH_SIZE"])


def test_get_config_with_other_file(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("class Config:\n    BATCH_SIZE = 3\n    NUM_EPOCHS = 7\n")
    cfg, rest = get_config(["--config", str(path), "NUM_EPOCHS=2", "--resume"])
    assert cfg["BATCH_SIZE"] == 3 and cfg["NUM_EPOCHS"] == 2 and rest == ["--resume"]
    path.write_text("class Config:\n    BATCH_SIZE = 'eight'\n    VAL_SPLIT = 1.5\n")
    with pytest.raises(ConfigError) as err:
        get_config(["--config", str(path)])
    assert len(err.value.problems) == 2 and str(path) in str(err.value)
    with pytest.raises(FileNotFoundError):
        get_config(["--config", str(tmp_path / "none.py")])
