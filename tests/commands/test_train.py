"""Tests for esikit.commands.train: the configuration -> loaders mapping of the dynamic mode."""

from __future__ import annotations

import pytest

from esikit.commands.train import build_loaders
from esikit.config import KEYS, ConfigError


def _cfg(toy, **kw):
    cfg = {name: key.default for name, key in KEYS.items()}
    cfg.update(USE_METADATA_LOADER=False, NMM_SPIKES_DIR=toy["nmm_spikes_dir"], FWD_MATRIX_PATH=toy["fwd_path"],
               ANATOMY=toy["anatomy_path"], TEST_METADATA_PATH=toy["test_metadata"], TRAIN_DATASET_LEN=8,
               DYNAMIC_PATCH_SIZE_RANGE=(1, 3), NUM_WORKERS=0, VAL_SPLIT=0.25)
    cfg.update(kw)
    return cfg


def test_dynamic_mode_passes_every_dataset_option(ring_toy):
    cfg = _cfg(ring_toy, SYNTHESIS="reference", MISSING_CLIPS="drop", NMM_PER_REGION=3, CLIP_RESOLUTION="formula",
               NORMALIZE=False, DYNAMIC_SNR_RANGE=(7.0, 9.0), DYNAMIC_N_SOURCES=(1,))
    _, _, _, info = build_loaders(cfg)
    for name in ("train_dataset", "val_dataset", "test_dataset"):
        ds = info[name]
        assert ds._fast is None and ds.missing_clips == "drop" and ds.normalize is False, name
    test = info["test_dataset"]
    assert test.clip_resolution == "formula" and test.synthesis_mode == "reference"
    train = info["train_dataset"]
    assert train.snr_range_db == (7.0, 9.0) and train.n_sources_options == (1,) and train.patch_size_range == (1, 3)


def test_dynamic_mode_needs_clips_and_anatomy(ring_toy, tmp_path):
    with pytest.raises(ConfigError, match="NMM_SPIKES_DIR"):
        build_loaders(_cfg(ring_toy, NMM_SPIKES_DIR=None))
    with pytest.raises(ConfigError, match="ANATOMY"):
        build_loaders(_cfg(ring_toy, ANATOMY=None, FWD_MATRIX_PATH=tmp_path / "leadfield.mat"))


def test_auto_batch_size_trains_with_the_cpu_fallback(ring_toy, tmp_path, caplog):
    """BATCH_SIZE = "auto" reaches the trainer resolved (on a CPU: the fallback, with a warning)."""
    import logging

    from esikit.commands.train import train
    from esikit.train.checkpoint import load_checkpoint
    from esikit.train.speed import CPU_AUTO_BATCH_SIZE

    cfg = _cfg(ring_toy, BATCH_SIZE="auto", MODEL="tcn", MODEL_KWARGS={"n_hidden": 8, "n_blocks": 1}, NUM_EPOCHS=1,
               EVALUATE=False, DEVICE="cpu", CHECKPOINT_DIR=str(tmp_path / "ckpt"), LOG_DIR=str(tmp_path / "logs"),
               RUN_NAME="auto", TRAIN_DATASET_LEN=12)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, show_progress=False)
    assert any("auto" in r.getMessage() for r in caplog.records)
    state = load_checkpoint(result["run_dir"] / "last.pt")
    assert state["config"]["BATCH_SIZE"] == CPU_AUTO_BATCH_SIZE
