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


def test_seed_config_file_is_valid(repo_root):
    from esikit.config import validate_config

    validate_config(load_config(repo_root / "configs" / "config.py"))


def test_model_kwargs_names_are_checked_against_the_model():
    from esikit.config import default_config, validate_config

    cfg = dict(default_config(), MODEL="deepsif", MODEL_KWARGS={"num_lstm_layers": 3, "n_channels": 5, "n_hidden": 8})
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert ("model 'deepsif' takes no argument 'num_lstm_layers' (did you mean 'n_lstm_layers'?); "
            "valid names: n_hidden, n_lstm_layers, activation.") in text
    assert "'n_channels' is set by the data" in text and len(err.value.problems) == 2
    validate_config(dict(cfg, MODEL_KWARGS={"n_lstm_layers": 1}))
    validate_config(dict(cfg, MODEL="tcn", MODEL_KWARGS={"n_blocks": 2, "kernel_size": 5}))
    with pytest.raises(ConfigError, match="model 'tcn' takes no argument 'n_lstm_layers'"):
        validate_config(dict(cfg, MODEL="tcn", MODEL_KWARGS={"n_lstm_layers": 1}))


def test_use_amp_values():
    from esikit.config import default_config, validate_config

    for ok in (True, False, "bf16", "fp16"):
        validate_config(dict(default_config(), USE_AMP=ok))
    for bad in (1, "fp32", None):
        with pytest.raises(ConfigError, match="'USE_AMP'"):
            validate_config(dict(default_config(), USE_AMP=bad))


def test_resume_free_keys_are_the_documented_ones():
    from esikit.config import RESUME_FREE_KEYS

    assert set(RESUME_FREE_KEYS) == {
        "TEST_METADATA_PATH", "TEST_DATASET_LEN", "CACHE_DIR", "NUM_EPOCHS", "EARLY_STOPPING_PATIENCE", "NUM_WORKERS",
        "PIN_MEMORY", "LOG_DIR", "CHECKPOINT_DIR", "RUN_NAME", "EVALUATE", "BASELINES", "EVAL_MAX_SAMPLES"}


def test_relative_paths_resolve_against_the_first_folder_that_has_them(tmp_path):
    from esikit.config import resolve_config_paths

    (tmp_path / "b" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data" / "fwd.mat").write_bytes(b"")
    cfg = {"FWD_MATRIX_PATH": "data/fwd.mat", "TRAIN_METADATA_PATH": "data/train.mat", "ANATOMY": "default",
           "NMM_SPIKES_DIR": None, "TEST_METADATA_PATH": str(tmp_path / "abs.mat"), "BATCH_SIZE": 3}
    out = resolve_config_paths(cfg, [tmp_path / "a", None, tmp_path / "b"])
    assert out["FWD_MATRIX_PATH"] == str(tmp_path / "b" / "data" / "fwd.mat")  # where it exists
    assert out["TRAIN_METADATA_PATH"] == str(tmp_path / "a" / "data" / "train.mat")  # nowhere: the first base
    assert out["ANATOMY"] == "default" and out["NMM_SPIKES_DIR"] is None and out["BATCH_SIZE"] == 3
    assert out["TEST_METADATA_PATH"] == str(tmp_path / "abs.mat")
