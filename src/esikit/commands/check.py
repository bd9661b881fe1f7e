"""``test_metadata_loader.py``: check that the configured data can be trained from.

Every check runs even when an earlier one fails where it can, so one run lists every
problem; each failure says what to fix. Output is for people (``print``); the exit code
is for scripts (0: all good).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class _Report:
    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    def ok(self, text: str) -> None:
        print(f"[ ok ] {text}")

    def info(self, text: str) -> None:
        print(f"       {text}")

    def fail(self, text: str, fix: str) -> None:
        print(f"[FAIL] {text}")
        print(f"       fix: {fix}")
        self.failures.append((text, fix))


def _check_paths(cfg: dict[str, Any], report: _Report) -> bool:
    ok = True
    checks = [
        ("TRAIN_METADATA_PATH", cfg.get("TRAIN_METADATA_PATH"), "file"),
        ("TEST_METADATA_PATH", cfg.get("TEST_METADATA_PATH"), "file"),
        ("FWD_MATRIX_PATH", cfg.get("FWD_MATRIX_PATH"), "file"),
    ]
    if cfg.get("NMM_SPIKES_DIR") is not None:
        checks.append(("NMM_SPIKES_DIR", cfg["NMM_SPIKES_DIR"], "dir-or-file"))
    for key, value, kind in checks:
        if value is None:
            continue
        p = Path(value)
        exists = p.is_file() if kind == "file" else p.exists()
        if exists:
            report.ok(f"{key}: {p} exists")
        else:
            ok = False
            report.fail(
                f"{key}: {p} not found (looked in {p.resolve().parent})",
                f"set {key} in configs/config.py (or pass {key}=PATH); to make a dataset run 'esikit simulate' "
                "or 'make demo'",
            )
    return ok


def _verify_packed_cache(nmm_dir: Any, metadata_path: Path, cache_dir: Any, done: set[tuple[str, str]],
                         report: _Report) -> None:
    """``--verify-clips`` on the fast path: every packed clip, projection and clip file
    against the CRC32 recorded when the cache was built; anything wrong is rebuilt."""
    from ..data import find_clip_location, open_clip_store
    from ..data.dataset import learn_clip_shape
    from ..data.packed import PackedClipCache

    location = Path(nmm_dir) if nmm_dir is not None else find_clip_location(metadata_path)
    key = (str(Path(location).resolve()), str(cache_dir))
    if key in done:  # train and test usually share one store
        return
    done.add(key)
    t0 = time.perf_counter()
    store = open_clip_store(location, cache_bytes=0)
    learn_clip_shape(store)  # as the dataset does: a bad first clip does not set the shape
    cache = PackedClipCache.open(store, cache_dir, verify=True)
    try:
        for text in cache.repairs:
            report.info(f"packed clip cache: found and rebuilt: {text}")
        report.ok(f"packed clip cache {cache.generation}: {cache.n_clips} clips, their projections and clip files "
                  f"match their checksums{' after the rebuild' if cache.repairs else ''} "
                  f"({time.perf_counter() - t0:.1f} s)")
    finally:
        cache.close()


def _clip_regions(cfg: dict[str, Any]) -> int | None:
    """R of the configured clips (None when they cannot be read: the dataset check says why)."""
    from ..data import find_clip_location, open_clip_store
    from ..data.dataset import learn_clip_shape

    try:
        location = cfg.get("NMM_SPIKES_DIR") or find_clip_location(Path(cfg["TRAIN_METADATA_PATH"]))
        return int(learn_clip_shape(open_clip_store(location, cache_bytes=0))[1])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("clip shape not known before the dataset check: %s", exc)
        return None


def _centre_problems(ds: Any, positions: Sequence[int]) -> list[str]:
    """Sources of the samples at ``positions`` whose centre waveform never rises above 0.

    Such a clip cannot be scaled to a peak: the source would contribute nothing. Only
    the clips these samples use are read (``--verify-clips`` reads every clip).
    """
    from ..data.clips import ClipReadError

    meta, found = ds.metadata, []
    for i in positions:
        g = ds.sample_index(int(i))
        for s in range(meta.n_sources):
            cid, centre = int(ds.clip_ids[g, s]), int(meta.regions[g, s, 0])
            if centre < 0 or cid < 0:
                continue
            try:
                peak = float(ds.store.get(cid)[:, centre].max())
            except ClipReadError:
                continue  # counted with the missing clips
            if not peak > 0:
                found.append(f"{ds.store.describe(cid)}: the waveform of centre region {centre} never rises above "
                             f"zero (max {peak:g}; sample {g}, source {s})")
    return found


def run_checks(cfg: dict[str, Any], *, n_samples: int = 4, verify_clips: bool = False,
               allow_missing_clips: bool = False) -> int:
    """Run every check on a validated configuration; return the number of failures.

    Missing or unreadable clips referenced by the metadata are a failure unless
    ``allow_missing_clips`` (then they are reported and training goes on per
    ``MISSING_CLIPS``).
    """
    from ..config import dataset_options
    from ..data import MetadataError, SpikeEEGMetadataDataset, create_dataloaders_from_metadata, resolve_forward
    from ..data.noise import NoiseBankError
    from ..data.packed import CacheError
    from ..train.speed import CPU_AUTO_BATCH_SIZE

    report = _Report()
    if not cfg.get("USE_METADATA_LOADER", True):
        report.info("USE_METADATA_LOADER is False: checking the dynamic mode is the data-generation issue's")
        from ..data import dynamic  # noqa: F401  (raises ImportError with a clear message when absent)

    paths_ok = _check_paths(cfg, report)
    fwd = None
    # The clips' region count decides the leadfield's orientation (C x R even when C > R).
    n_regions = _clip_regions(cfg)
    try:
        fwd, _ = resolve_forward(cfg["FWD_MATRIX_PATH"], n_regions=n_regions)
        how = f" (oriented by the clips' {n_regions} regions)" if n_regions is not None else ""
        report.ok(f"forward matrix: {fwd.shape[0]} channels x {fwd.shape[1]} regions{how}")
    except FileNotFoundError:
        pass  # already reported with its fix
    except (ValueError, KeyError) as exc:
        report.fail(str(exc), "point FWD_MATRIX_PATH at a file with a C x R matrix under fwd, forward, leadfield or L"
                    + (f", R={n_regions} like the clips in NMM_SPIKES_DIR" if n_regions is not None else ""))

    datasets: dict[str, Any] = {}
    verified: set[tuple[str, str]] = set()
    if fwd is not None:
        kwargs = dict(dataset_options(cfg), verify_clips=verify_clips)
        for name, key, len_key in (("train", "TRAIN_METADATA_PATH", "TRAIN_DATASET_LEN"),
                                   ("test", "TEST_METADATA_PATH", "TEST_DATASET_LEN")):
            path = cfg.get(key)
            if path is None or not Path(path).is_file():
                continue
            try:
                if verify_clips and kwargs.get("synthesis", "fast") == "fast":
                    _verify_packed_cache(cfg.get("NMM_SPIKES_DIR"), Path(path), kwargs.get("cache_dir"), verified,
                                         report)
                t0 = time.perf_counter()
                ds = SpikeEEGMetadataDataset(path, fwd, cfg.get("NMM_SPIKES_DIR"), dataset_len=cfg.get(len_key),
                                             seed=cfg.get("SEED", 0), **kwargs)
                datasets[name] = ds
                report.ok(f"{name} dataset built in {time.perf_counter() - t0:.2f} s: {ds!r}")
                if ds.noise_bank is not None:
                    report.info(f"noise {ds.noise!r}: {ds.noise_bank.shape[0]} recorded segments of "
                                f"{ds.noise_bank.shape[1]} time points from {cfg.get('NOISE_BANK_PATH')}")
                s = ds.metadata.summary()
                report.info(
                    f"{s['n_samples']} samples; sources per sample {s['sources_per_sample']}; patch size "
                    f"{s['patch_size_min']}-{s['patch_size_max']} (median {s['patch_size_median']:g}); "
                    f"{s['scale_options']} scale options; SNR levels (dB: count) {s['snr_levels_db']}; "
                    f"{s['distinct_centres']} distinct centres"
                )
                if ds.missing_clip_report:
                    if allow_missing_clips:
                        report.info(f"allowed by --allow-missing-clips (MISSING_CLIPS={ds.missing_clips!r}): "
                                    f"{ds.missing_clip_report}")
                    else:
                        report.fail(
                            f"{name}: {ds.missing_clip_report}",
                            "restore those clip files or point NMM_SPIKES_DIR at the folder that has them; to train "
                            "without them pass --allow-missing-clips (MISSING_CLIPS='zeros' keeps the samples "
                            "without those sources, 'drop' leaves the samples out)",
                        )
            except NoiseBankError as exc:
                report.fail(str(exc), "set NOISE_BANK_PATH to DeepSIF's anatomy/realistic_noise.mat or the output of "
                            "'esikit noise-bank', or NOISE='white'")
            except MetadataError as exc:
                report.fail(str(exc), f"regenerate or repair {path}; each line above names the field and samples")
            except CacheError as exc:  # before OSError: it carries its own fix
                report.fail(exc.problem, exc.fix or "see the message")
            except FileNotFoundError as exc:
                report.fail(str(exc), "set NMM_SPIKES_DIR to the folder holding a{region}/nmm_{k}.mat, or "
                            "MISSING_CLIPS='zeros'/'drop' to train without the missing clips")
            except (ValueError, OSError) as exc:
                report.fail(str(exc), f"check {key}, NMM_SPIKES_DIR and FWD_MATRIX_PATH belong to the same dataset")

    for name, ds in datasets.items():
        t_first = time.perf_counter()
        ds[0]  # the first sample opens caches and compiles kernels: timed apart
        t_first = time.perf_counter() - t_first
        t0 = time.perf_counter()
        bad = []
        count = min(n_samples, len(ds))
        positions = np.linspace(0, len(ds) - 1, count).astype(int)
        for i in positions:
            eeg, src = ds[int(i)]
            if not (np.isfinite(eeg.numpy()).all() and np.isfinite(src.numpy()).all()):
                bad.append(int(i))
        dt = (time.perf_counter() - t0) / max(count, 1)
        flat = _centre_problems(ds, sorted({0, *positions.tolist()}))
        if flat:
            report.fail(
                f"{name}: {len(flat)} source(s) of the samples checked have a clip whose centre waveform is never "
                f"above zero (it cannot be scaled to a peak, the source would be silent): " + "; ".join(flat[:3]),
                "replace those clips (a clip is cut around a spike of its centre region); run with --verify-clips "
                "to find every such clip",
            )
        if bad:
            report.fail(f"{name}: non-finite values in samples {bad}", "check the clips and scale_ratio of those samples")
        else:
            report.ok(f"{name}: {count} samples synthesized, eeg {tuple(eeg.shape)}, source {tuple(src.shape)}, "
                      f"{dt * 1e3:.1f} ms per sample (first sample {t_first * 1e3:.0f} ms)")

    if "train" in datasets:
        try:
            t0 = time.perf_counter()
            # BATCH_SIZE = "auto" is probed on the device when training starts; one CPU batch checks the data
            batch_size = CPU_AUTO_BATCH_SIZE if cfg["BATCH_SIZE"] == "auto" else cfg["BATCH_SIZE"]
            train, _, _, info = create_dataloaders_from_metadata(
                cfg["TRAIN_METADATA_PATH"], None, fwd, batch_size=batch_size, val_split=cfg["VAL_SPLIT"],
                num_workers=0, nmm_spikes_dir=cfg.get("NMM_SPIKES_DIR"), train_dataset_len=cfg.get("TRAIN_DATASET_LEN"),
                seed=cfg.get("SEED", 0), **dataset_options(cfg),
            )
            eeg, src = next(iter(train))
            report.ok(f"one training batch: eeg {tuple(eeg.shape)}, source {tuple(src.shape)} in "
                      f"{time.perf_counter() - t0:.2f} s ({info['n_train']} train / {info['n_val']} validation)")
        except Exception as exc:  # noqa: BLE001 - report, don't crash the diagnostic
            report.fail(f"building a training batch failed: {exc}", "see the message; check BATCH_SIZE and VAL_SPLIT")

    if not paths_ok and not datasets:
        report.info("(dataset checks skipped where files are missing)")
    print()
    if report.failures:
        print(f"{len(report.failures)} problem(s) found; fix them and run again:")
        for text, fix in report.failures:
            print(f"  - {text.splitlines()[0]}\n    fix: {fix}")
    else:
        print("All checks passed: ready to train (python train.py).")
    return len(report.failures)


def main(argv: Sequence[str] = (), default_config: str | PathLike | None = None) -> int:
    """Entry point of ``test_metadata_loader.py`` and ``esikit check``."""
    from ..config import ConfigError, get_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(argv)
    flags = {}
    for flag in ("--verify-clips", "--allow-missing-clips"):
        flags[flag] = flag in argv
        if flags[flag]:
            argv.remove(flag)
    try:
        cfg, rest = get_config(argv, default_config)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"[FAIL] {exc}")
        print("       fix: correct configs/config.py or the command-line value")
        return 2
    if rest:
        print(f"[FAIL] unknown arguments: {rest} (expected KEY=VALUE, --config PATH, --verify-clips or "
              "--allow-missing-clips)")
        return 2
    print(f"esikit data check ({cfg.get('_CONFIG_FILE', 'defaults')})")
    failures = run_checks(cfg, verify_clips=flags["--verify-clips"],
                          allow_missing_clips=flags["--allow-missing-clips"])
    return 1 if failures else 0
