"""Clip budget on DeepSIF's template: how the template network's test metrics change with clips per region.

Spikes are rare at DeepSIF's settings, so the clips per region decide what a template
dataset costs (README "DeepSIF's template"). This study trains the same network with the
same number of samples and steps on 1, 2, ... clips per region and scores every model on
the same test samples, so the only difference between rows is how many distinct spike
waveforms each region had to offer.

For each budget ``k``:

1. ``OUT/budget/<setting>/k{k}/nmm_spikes``: links to the first ``k`` clips of every region of the
   run's ``clips/nmm_spikes`` (a harvest with ``K`` clips per region over three noise
   settings numbers them setting by setting, so ``k = 1`` keeps setting 0's clip);
2. DeepSIF-preset metadata drawn from that folder with the run's seed (the two-source
   training file, as the template run trains on);
3. the size's CPU network (the TCN for ``small``) trained for ``--epochs`` on
   ``--train-samples`` rows, batch and learning rate of the size;
4. scored with DeepSIF's region rule on the first ``--test-samples`` (evenly spread) rows
   of the run's own ``metadata/test_sample_source2.mat`` over all its clips: the same
   test samples for every budget.

Writes ``OUT/budget/n{rows}_e{epochs}_t{test}/budget.json``, ``budget.md`` (the table)
and ``budget.png``: one folder per training setting.

Usage::

    python benchmarks/template_clip_budget.py runs/template-small [--budgets 1 2 3]
        [--train-samples 4000] [--epochs 1] [--test-samples 200]

``OUT`` is an ``esikit template`` run that has finished its ``leadfield`` stage (its
``train`` and ``evaluate`` stages are not needed). Each budget is resumable: a finished
one (``k{k}/result.json`` in the setting's folder) is not redone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

def _columns() -> tuple[tuple[str, str, str], ...]:
    """Metrics of the table, (record field, header, statistic): the evaluation's columns and LE."""
    from esikit.evaluate.report import COMPARISON_COLUMNS, EXTRA_COLUMNS

    return tuple(COMPARISON_COLUMNS) + tuple(c for c in EXTRA_COLUMNS if c[0] == "le_mm")



def study_dir(out: Path, args: argparse.Namespace) -> Path:
    """One folder per training setting, so a study with other rows, epochs or test samples
    never reuses another's finished budgets."""
    return out / "budget" / f"n{args.train_samples}_e{args.epochs}_t{args.test_samples}"


def link_clips(src: Path, dst: Path, k: int) -> dict[str, int]:
    """Link the first ``k`` clips of every region folder of ``src`` into ``dst`` (same names).

    Returns the number of regions and of clips linked. Existing links are kept, so a rerun
    is cheap.
    """
    from esikit.head.layout import clip_relpath

    n_regions = n_clips = 0
    for folder in sorted(src.glob("a*")):
        if not folder.is_dir() or not folder.name[1:].isdigit():
            continue
        region = int(folder.name[1:])
        got = 0
        for j in range(1, k + 1):
            clip = src / clip_relpath(region, j)
            if not clip.is_file():
                break
            link = dst / clip_relpath(region, j)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(clip.resolve())
            got += 1
        n_regions += got > 0
        n_clips += got
    return {"regions": n_regions, "clips": n_clips}


def run_budget(run, k: int, args: argparse.Namespace) -> dict:
    """Links, metadata, training and scoring of budget ``k`` (module docstring)."""
    from esikit.commands.evaluate import run_evaluation
    from esikit.commands.train import train
    from esikit.config import dataset_options
    from esikit.data import SpikeEEGMetadataDataset
    from esikit.head.deepsif_template import load_deepsif_template
    from esikit.io.atomic import atomic_write_json
    from esikit.simulate.metadata import make_metadata_files
    from esikit.train.trainer import load_model

    folder = study_dir(run.out, args) / f"k{k}"
    done = folder / "result.json"
    if done.is_file():
        print(f"[k={k}] done before: {done}")
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    linked = link_clips(run.nmm_spikes, folder / "nmm_spikes", k)
    print(f"[k={k}] {linked['clips']} clips of {linked['regions']} regions", flush=True)
    meta = make_metadata_files(run.anatomy(), folder / "nmm_spikes", folder / "metadata", args.train_samples, 8,
                               seed=run.seed, preset="deepsif", template=load_deepsif_template(run.anatomy_dir),
                               progress=False)
    t_meta = time.perf_counter() - t0

    cfg = run.train_config()
    cfg.update({"TRAIN_METADATA_PATH": str(folder / "metadata" / "train_sample_source2.mat"),
                "TEST_METADATA_PATH": str(folder / "metadata" / "test_sample_source2.mat"),
                "NMM_SPIKES_DIR": str(folder / "nmm_spikes"), "NUM_EPOCHS": args.epochs,
                "CHECKPOINT_DIR": str(folder), "LOG_DIR": str(folder / "logs"), "RUN_NAME": "model",
                "CACHE_DIR": str(folder / "cache")})
    resume = (folder / "model" / "last.pt").is_file()
    t1 = time.perf_counter()
    result = train(cfg, resume=resume, show_progress=args.progress)
    t_train = time.perf_counter() - t1

    ckpt = folder / "model" / "best.pt"
    model, _ = load_model(ckpt if ckpt.is_file() else folder / "model" / "last.pt")
    # the same test samples for every budget: the run's test file over all of its clips
    test_cfg = dict(cfg, NMM_SPIKES_DIR=str(run.nmm_spikes), CACHE_DIR=None, BASELINES=(),
                    EVAL_MAX_SAMPLES=args.test_samples)
    ds = SpikeEEGMetadataDataset(run.out / "metadata" / "test_sample_source2.mat", str(run.fwd_path),
                                 str(run.nmm_spikes), seed=cfg.get("SEED", 0), **dataset_options(test_cfg))
    ds = ds.subset(np.arange(len(ds)), freeze_epoch=True)
    t2 = time.perf_counter()
    ev = run_evaluation(model, ds, ds.fwd, folder / "evaluate", test_cfg, fwd_path=str(run.fwd_path))
    t_eval = time.perf_counter() - t2
    columns = _columns()
    stats = ev["summary"]["methods"][cfg["MODEL"]]["overall"]["stats"]
    out = {"k": k, **linked, "train_rows": args.train_samples, "epochs": args.epochs, "model": cfg["MODEL"],
           "best_val_loss": float(result["state"].best_val), "n_test": ev["n_samples"],
           "metrics": {name: stats[name][how] for name, _, how in columns if name in stats},
           "wall_s": {"metadata": t_meta, "train": t_train, "evaluate": t_eval}}
    atomic_write_json(done, out)
    print(f"[k={k}] {out['metrics']}", flush=True)
    return out


def table(results: list[dict]) -> str:
    """The Markdown table of the budgets (one row each)."""
    columns = _columns()
    head = ["clips per region", "clips", "train rows x epochs", "best val loss"] + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        val = r.get("best_val_loss")
        cells = [str(r["k"]), str(r["clips"]), f"{r['train_rows']} x {r['epochs']}",
                 "" if val is None else f"{val:.1f}"]
        cells += [f"{r['metrics'].get(name, float('nan')):.3g}" for name, _, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    """Each metric against the clips per region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns()
    ks = [r["k"] for r in results]
    fig, axes = plt.subplots(1, len(columns), figsize=(3 * len(columns), 3), constrained_layout=True)
    for ax, (name, head, how) in zip(axes, columns):
        vals = [r["metrics"].get(name, np.nan) for r in results]
        ax.plot(ks, vals, "o-")
        if not name.endswith("_mm") and np.nanmax(np.abs(vals)) <= 1.0:
            # rates and scores on their whole range: a 0.005 difference should look like one
            ax.set_ylim(min(0.0, float(np.nanmin(vals))), 1.02)
        else:  # distances from 0 mm
            ax.set_ylim(bottom=0.0)
        ax.set_title(f"{head} ({how})", fontsize=9)
        ax.set_xlabel("clips per region")
        ax.set_xticks(ks)
    fig.suptitle(f"Template network vs clip budget ({results[0]['n_test']} test samples, same for every k)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="an esikit template run folder (through its leadfield stage)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 3], help="clips per region to compare")
    ap.add_argument("--train-samples", type=int, default=4000, help="training rows (the same for every budget)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--test-samples", type=int, default=200)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)

    from esikit.commands.template import SIZES, TemplateRun
    from esikit.io.atomic import atomic_write_json, atomic_write_text

    out = Path(args.out)
    marker = out / "template.json"
    if not marker.is_file():
        print(f"error: {marker} not found: OUT must be an esikit template run folder", file=sys.stderr)
        return 2
    ident = json.loads(marker.read_text())
    for stage in ("clips", "metadata", "leadfield"):
        if not (out / stage / "stage.json").is_file():
            print(f"error: {out / stage / 'stage.json'} not found: run `esikit template {out} --size "
                  f"{ident['size']}` through its {stage} stage first", file=sys.stderr)
            return 2
    bad = [k for k in args.budgets if k < 1]
    if bad:
        print(f"error: --budgets: expected clips per region >= 1, got {bad}", file=sys.stderr)
        return 2
    run = TemplateRun(out, Path(ident["anatomy"]), SIZES[ident["size"]], seed=int(ident["seed"]),
                      progress=args.progress)
    results = [run_budget(run, k, args) for k in sorted(set(args.budgets))]
    folder = study_dir(out, args)
    atomic_write_json(folder / "budget.json", results)
    text = table(results)
    atomic_write_text(folder / "budget.md", text + "\n")
    plot(results, folder / "budget.png")
    print(text)
    print(f"\n{folder / 'budget.md'}, {folder / 'budget.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
