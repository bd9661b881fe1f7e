"""``esikit demo``: make the built-in dataset when missing, check it, train, evaluate, localize."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import get_config
from .evaluate import print_evaluation
from .train import train

logger = logging.getLogger(__name__)

# -- the demo ---------------------------------------------------------------------------------

DEMO_OVERRIDES = {
    "MODEL": "deepsif",
    "BATCH_SIZE": 16,
    "NUM_EPOCHS": 5,
    "LEARNING_RATE": 1e-3,
    "NUM_WORKERS": 1,
    "VAL_SPLIT": 0.1,
    "GRAD_CLIP": 100.0,
    "RUN_NAME": "demo",
    "EVAL_MAX_SAMPLES": 200,
}


def main(args) -> int:
    """Make the built-in dataset when missing, check it, train the default model, evaluate."""
    from .check import run_checks
    from ..simulate.pipeline import make_dataset

    data = Path(args.data)
    t0 = time.perf_counter()
    if not (data / "dataset.json").is_file():
        print(f"making the built-in dataset in {data} (tvb-data anatomy, Jansen-Rit simulation) ...")
        make_dataset(data)
        print(f"dataset ready in {time.perf_counter() - t0:.0f} s")
    summary = json.loads((data / "dataset.json").read_text())
    paths = summary.get("paths", {})
    cfg, _ = get_config([])
    cfg.update(DEMO_OVERRIDES)
    source = data / "source"
    cfg.update({
        "TRAIN_METADATA_PATH": paths.get("train_metadata", str(source / "train_sample_source1.mat")),
        "TEST_METADATA_PATH": paths.get("test_metadata", str(source / "test_sample_source1.mat")),
        "NMM_SPIKES_DIR": paths.get("nmm_spikes", str(source / "nmm_spikes")),
        "FWD_MATRIX_PATH": paths["fwd"],
        "ANATOMY": paths.get("anatomy"),
    })
    if args.epochs is not None:
        cfg["NUM_EPOCHS"] = int(args.epochs)
    from ..config import validate_config

    validate_config(cfg, source="demo configuration")
    print("\nchecking the dataset (python test_metadata_loader.py) ...")
    if run_checks(cfg):
        return 1
    print("\ntraining (python train.py with the demo settings) ...")
    result = train(cfg)
    print()
    ev = result.get("evaluation")
    if ev is not None:
        print_evaluation(ev, result["run_dir"])
    # the trained network applied to a recording: an EDF with spikes at known regions (esikit localize)
    from ..localization.demo import demo_localization

    run_dir = Path(result["run_dir"])
    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    demo_localization(ckpt, cfg["NMM_SPIKES_DIR"], run_dir / "localization_demo")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; results and figures in {result['run_dir']}")
    return 0
