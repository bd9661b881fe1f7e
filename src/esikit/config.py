"""Configuration: the keys of ``configs/config.py``, their checks and command-line overrides.

A configuration is a plain ``dict`` of upper-case keys. It is read from a Python file
holding a ``Config`` class (the user-facing ``configs/config.py``), then overridden from
the command line (``KEY=VALUE``, ``--KEY VALUE`` or ``--KEY=VALUE``), then validated in
one pass, before any data is touched, reporting every bad key at once.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ._validation import option_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    """One configuration key: its default, accepted types or values, and meaning."""

    default: Any
    doc: str
    types: tuple[type, ...] = ()
    choices: tuple[Any, ...] = ()
    optional: bool = False
    minimum: float | None = None
    maximum: float | None = None
    # True: changing it does not change the trained weights, so ``--resume`` accepts a
    # new value without ``--force`` (see RESUME_FREE_KEYS).
    resume_free: bool = False
    # Strings accepted besides the typed values (e.g. BATCH_SIZE = 'auto').
    words: tuple[str, ...] = ()


_PATH = (str, PathLike)
KEYS: dict[str, Key] = {
    # -- data ---------------------------------------------------------------------------
    "USE_METADATA_LOADER": Key(True, "train from metadata files (False: draw samples on the fly)", (bool,)),
    "TRAIN_METADATA_PATH": Key("data/default/source/train_sample_source1.mat", "training metadata file", _PATH),
    "TEST_METADATA_PATH": Key("data/default/source/test_sample_source1.mat", "test metadata file", _PATH,
                              optional=True, resume_free=True),
    "NMM_SPIKES_DIR": Key(None, "clip folder (a{region}/nmm_{k}.mat) or *_nmm.h5; None: beside the metadata",
                          _PATH, optional=True),
    "FWD_MATRIX_PATH": Key("data/default/anatomy/leadfield_63_76.mat", "forward matrix file (C x R)", _PATH),
    "ANATOMY": Key(None, "anatomy for metrics and plots: a saved anatomy .npz, a DeepSIF anatomy folder, "
                   "'default'; None: anatomy/anatomy.npz beside the forward matrix when present", _PATH,
                   optional=True),
    "TRAIN_DATASET_LEN": Key(None, "use only the first N training samples", (int,), optional=True, minimum=1),
    "TEST_DATASET_LEN": Key(None, "use only the first N test samples", (int,), optional=True, minimum=1,
                            resume_free=True),
    "VAL_SPLIT": Key(0.1, "fraction of the training metadata held out for validation", (float, int),
                     minimum=0.0, maximum=0.99),
    "NMM_PER_REGION": Key(None, "clips per region used to make nmm_idx (None: inferred)", (int,), optional=True,
                          minimum=1),
    "MISSING_CLIPS": Key("zeros", "a referenced clip is missing or unreadable", (str,),
                         choices=("zeros", "error", "drop")),
    "CLIP_RESOLUTION": Key("auto", "how a source finds its clip", (str,),
                           choices=("auto", "random_samples", "formula", "h5")),
    "SYNTHESIS": Key("fast", "'fast': packed clip cache and batched kernel (needs disk for the cache, about the "
                     "raw float32 size of the clips); 'reference': read clips on demand", (str,),
                     choices=("fast", "reference")),
    "CACHE_DIR": Key(None, "where the packed clip cache goes (None: $ESIKIT_CACHE_DIR, else .esikit_cache beside "
                     "the clips when writable, else ~/.cache/esikit)", _PATH, optional=True, resume_free=True),
    "TARGET": Key("dense", "how batches carry the source target: 'dense' (B, T, R) or 'compact' (labelled "
                  "regions and waveforms, expanded on the training device)", (str,), choices=("dense", "compact")),
    "NORMALIZE": Key(True, "normalize EEG and source as DeepSIF does", (bool,)),
    "NOISE": Key("white", "sensor noise: 'white' (DeepSIF's), 'recorded' (segments of NOISE_BANK_PATH scaled to "
                 "each sample's SNR) or 'mixed' (per sample either, 1/2 each); see docs/SAMPLE_CONTRACT.md", (str,),
                 choices=("white", "recorded", "mixed")),
    "NOISE_BANK_PATH": Key(None, "recorded noise for NOISE 'recorded' or 'mixed': DeepSIF's realistic_noise.mat "
                           "layout (data K x L x C) or what 'esikit noise-bank' writes", _PATH, optional=True),
    # -- dynamic mode ----------------------------------------------------------------------
    "DYNAMIC_SNR_RANGE": Key((5.0, 20.0), "dynamic mode: sensor SNR range in dB", (tuple, list)),
    "DYNAMIC_PATCH_SIZE_RANGE": Key(None, "dynamic mode: patch size range (None: up to 70/994 of the regions)",
                                    (tuple, list), optional=True),
    "DYNAMIC_N_SOURCES": Key((1, 2), "dynamic mode: possible numbers of sources", (tuple, list)),
    # -- training ----------------------------------------------------------------------------
    "MODEL": Key("deepsif", "network (see esikit.models.MODELS)", (str,)),
    "MODEL_KWARGS": Key({}, "extra model constructor arguments, e.g. {'n_lstm_layers': 3} for 'deepsif' "
                        "(names are checked against the model)", (dict,)),
    "BATCH_SIZE": Key(8, "samples per batch; 'auto': the largest power of two up to AUTO_BATCH_MAX whose training "
                      "step fits in GPU memory (on a CPU: 8)", (int,), minimum=1, words=("auto",)),
    "AUTO_BATCH_MAX": Key(256, "the largest batch BATCH_SIZE = 'auto' chooses", (int,), minimum=1),
    "COMPILE": Key(False, "train through torch.compile (compiles at the first batch; off by default: it did not "
                   "pay on the CPU, see README 'Training speed')", (bool,)),
    "NUM_EPOCHS": Key(100, "training epochs", (int,), minimum=1, resume_free=True),
    "LEARNING_RATE": Key(1e-4, "Adam learning rate", (float, int), minimum=0.0),
    "WEIGHT_DECAY": Key(0.0, "Adam weight decay", (float, int), minimum=0.0),
    "LOSS_REDUCTION": Key("sum", "MSE reduction: 'sum' (DeepSIF) or 'mean'", (str,), choices=("sum", "mean")),
    "GRAD_CLIP": Key(None, "clip the gradient norm to this value (None: off)", (float, int), optional=True,
                     minimum=0.0),
    "LR_SCHEDULE": Key(None, "None, 'cosine' or 'plateau'", (str,), choices=("cosine", "plateau"),
                       optional=True),
    "EARLY_STOPPING_PATIENCE": Key(None, "stop after N epochs without validation improvement", (int,),
                                   optional=True, minimum=1, resume_free=True),
    "NUM_WORKERS": Key(4, "DataLoader worker processes", (int,), minimum=0, resume_free=True),
    "PIN_MEMORY": Key(True, "pin host memory for faster GPU copies (ignored on CPU)", (bool,), resume_free=True),
    "USE_AMP": Key(True, "mixed precision: True = autocast on CUDA (bf16 where supported, else fp16), float32 on "
                   "CPU; 'bf16' = bf16 autocast on any device; 'fp16' = fp16 on CUDA only; False = float32",
                   (bool, str), choices=(True, False, "bf16", "fp16")),
    "DEVICE": Key("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'", (str,)),
    "SEED": Key(0, "seed of the split, shuffling, sample draws and initialization", (int,), minimum=0),
    "LOG_DIR": Key("logs", "TensorBoard logs", _PATH, resume_free=True),
    "CHECKPOINT_DIR": Key("checkpoints", "checkpoints (last.pt, best.pt) and results", _PATH, resume_free=True),
    "RUN_NAME": Key(None, "sub-folder of LOG_DIR and CHECKPOINT_DIR (None: 'MODEL')", (str,), optional=True,
                    resume_free=True),
    # -- evaluation ----------------------------------------------------------------------------
    "EVALUATE": Key(True, "evaluate on the test set after training", (bool,), resume_free=True),
    "BASELINES": Key(("mne", "dspm", "sloreta", "eloreta", "lcmv", "champagne", "flexchampagne"),
                     "classical methods to compare with (any invertmeeg solver name works too)", (tuple, list),
                     resume_free=True),
    "EVAL_MAX_SAMPLES": Key(None, "evaluate on at most N test samples", (int,), optional=True, minimum=1,
                            resume_free=True),
}

#: Keys that ``--resume`` lets change without ``--force``: where things go, how fast the
#: data comes, how long to train and what is evaluated; none changes the weights an epoch
#: produces. (NUM_EPOCHS is not free under LR_SCHEDULE = 'cosine', whose period it sets.)
RESUME_FREE_KEYS: tuple[str, ...] = tuple(name for name, key in KEYS.items() if key.resume_free)

#: Keys holding file or folder paths; relative ones are relative to the folder a run
#: started in (recorded in the checkpoint as ``run_cwd``).
PATH_KEYS: tuple[str, ...] = tuple(name for name, key in KEYS.items() if key.types == _PATH)


class ConfigError(ValueError):
    """Bad configuration values; ``problems`` lists each one."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} invalid value(s):\n{lines}")


def default_config() -> dict[str, Any]:
    """Every key with its default."""
    return {name: key.default for name, key in KEYS.items()}


def load_config(path: str | PathLike | None = None) -> dict[str, Any]:
    """Read the ``Config`` class of a config file over the defaults.

    Parameters
    ----------
    path : path-like, optional
        A Python file defining ``class Config`` with upper-case attributes. Default:
        ``configs/config.py`` in the current folder when it exists.
    """
    cfg = default_config()
    if path is None:
        candidate = Path("configs") / "config.py"
        if not candidate.exists():
            return cfg
        path = candidate
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    spec = importlib.util.spec_from_file_location("_esikit_user_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "Config"):
        raise ValueError(f"{path}: defines no class 'Config'")
    for name in dir(module.Config):
        if name.isupper():
            cfg[name] = getattr(module.Config, name)
    cfg["_CONFIG_FILE"] = str(path)
    return cfg


def _parse_value(text: str) -> Any:
    """``'16' -> 16``, ``'None' -> None``, ``'true' -> True``, other text stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``argv`` into config overrides and the remaining arguments.

    Accepts ``KEY=VALUE``, ``--KEY=VALUE`` and ``--KEY VALUE`` for upper-case keys.

    Returns
    -------
    overrides : dict
    rest : list of str
        Arguments that are not overrides (e.g. ``--resume``).
    """
    overrides: dict[str, Any] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        body = arg[2:] if arg.startswith("--") else arg
        name, eq, value = body.partition("=")
        if name.isupper() and name.replace("_", "").isalnum() and (eq or arg.startswith("--")):
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError([f"{arg} needs a value"], "command line")
                value = args[i + 1]
                i += 1
            overrides[name] = _parse_value(value)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def validate_config(cfg: dict[str, Any], *, source: str = "configuration") -> dict[str, Any]:
    """Check every key in one pass; raise :class:`ConfigError` listing all bad values.

    Unknown upper-case keys are reported too (a typo must not be silently ignored).
    """
    problems: list[str] = []
    for name, value in cfg.items():
        if name.startswith("_"):
            continue
        key = KEYS.get(name)
        if key is None:
            close = [k for k in KEYS if k.replace("_", "") == name.replace("_", "") or k.startswith(name[:6])]
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown key {name!r}{hint}")
            continue
        if value is None:
            if not key.optional:
                problems.append(f"Invalid value for {name!r}: expected a value ({key.doc}), got None.")
            continue
        if key.words and isinstance(value, str):
            if value not in key.words:
                words = " or ".join(repr(w) for w in key.words)
                problems.append(f"Invalid value for {name!r}: expected an integer >= {key.minimum:g} or {words} "
                                f"({key.doc}), got {value!r}.")
            continue
        if key.choices:
            # ``1 in (True, False)`` is true in Python: check the type as well.
            typed = not key.types or (isinstance(value, key.types) and (bool in key.types
                                                                        or not isinstance(value, bool)))
            if not typed or value not in key.choices:
                problems.append(option_message(name, value, key.choices))
            continue
        if key.types:
            ok = isinstance(value, key.types)
            if bool not in key.types and isinstance(value, bool):
                ok = False
            if not ok:
                names = " or ".join(t.__name__ for t in key.types)
                problems.append(f"Invalid value for {name!r}: expected {names} ({key.doc}), got {value!r}.")
                continue
        if key.minimum is not None and value < key.minimum:
            problems.append(f"Invalid value for {name!r}: expected a value >= {key.minimum}, got {value!r}.")
        if key.maximum is not None and value > key.maximum:
            problems.append(f"Invalid value for {name!r}: expected a value <= {key.maximum}, got {value!r}.")
    if cfg.get("MODEL") is not None and isinstance(cfg.get("MODEL"), str):
        from .models import MODELS

        if cfg["MODEL"] not in MODELS:
            problems.append(option_message("MODEL", cfg["MODEL"], MODELS))
        elif isinstance(cfg.get("MODEL_KWARGS"), dict):
            problems += _model_kwargs_problems(cfg["MODEL"], cfg["MODEL_KWARGS"], MODELS[cfg["MODEL"]])
    if isinstance(cfg.get("BASELINES"), (tuple, list)):
        from .evaluate.baselines import check_baselines

        try:
            check_baselines(cfg["BASELINES"])
        except ValueError as exc:
            problems.append(str(exc).replace("'baselines'", "'BASELINES'"))
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _model_kwargs_problems(model: str, kwargs: dict[str, Any], cls: type) -> list[str]:
    """MODEL_KWARGS names the model's constructor does not take (with the valid names)."""
    import difflib
    import inspect

    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "n_channels", "n_regions")
             and params[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    problems = []
    for name in kwargs:
        if name in ("n_channels", "n_regions"):
            problems.append(f"Invalid value for 'MODEL_KWARGS': {name!r} is set by the data (forward matrix), "
                            "not by MODEL_KWARGS.")
        elif name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"Invalid value for 'MODEL_KWARGS': model {model!r} takes no argument {name!r}{hint}; "
                            f"valid names: {', '.join(valid)}.")
    return problems


def resolve_config_paths(cfg: dict[str, Any], bases: Sequence[str | PathLike | None]) -> dict[str, Any]:
    """A copy of ``cfg`` whose relative paths (:data:`PATH_KEYS`) are made absolute.

    Each relative path is tried against each folder of ``bases`` in turn (e.g. the
    folder a run started in, then the project folder a checkpoint sits in, then the
    current folder); the first that exists wins, else the first base is used, so an
    error message names the path where the file was expected. ``ANATOMY = 'default'``
    (the built-in anatomy) is left alone.
    """
    folders = [Path(b) for b in bases if b is not None]
    out = dict(cfg)
    for name in PATH_KEYS:
        value = cfg.get(name)
        if value is None or not isinstance(value, (str, PathLike)) or (name == "ANATOMY" and value == "default"):
            continue
        path = Path(value).expanduser()
        if path.is_absolute() or not folders:
            continue
        candidates = [(folder / path).resolve() for folder in folders]
        found = next((c for c in candidates if c.exists()), None)
        out[name] = str(found if found is not None else candidates[0])
    return out


def dataset_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~esikit.data.SpikeEEGMetadataDataset` keyword arguments a configuration sets."""
    return {
        "missing_clips": cfg.get("MISSING_CLIPS", "zeros"),
        "clip_resolution": cfg.get("CLIP_RESOLUTION", "auto"),
        "nper": cfg.get("NMM_PER_REGION"),
        "normalize": cfg.get("NORMALIZE", True),
        "synthesis": cfg.get("SYNTHESIS", "fast"),
        "cache_dir": cfg.get("CACHE_DIR"),
        "noise": cfg.get("NOISE", "white"),
        "noise_bank_path": cfg.get("NOISE_BANK_PATH"),
    }


def get_config(argv: Sequence[str] = (), config_path: str | PathLike | None = None) -> tuple[dict[str, Any], list[str]]:
    """Load, override and validate: what ``train.py`` and the diagnostic do first.

    ``--config PATH`` in ``argv`` selects another config file.
    """
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError(["--config needs a path"], "command line")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    overrides, rest = parse_overrides(argv)
    cfg = load_config(config_path)
    cfg.update(overrides)
    source = cfg.get("_CONFIG_FILE", "configuration")
    if overrides:
        source += " (with command-line overrides)"
    return validate_config(cfg, source=source), rest
