"""benchmarks/template_clip_budget.py: the clip subsets and its start-up checks (the study itself is run by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "template_clip_budget.py"


@pytest.fixture(scope="module")
def budget():
    spec = importlib.util.spec_from_file_location("template_clip_budget", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _clips(root: Path, counts: dict[int, int]) -> None:
    for region, n in counts.items():
        for k in range(1, n + 1):
            p = root / f"a{region}" / f"nmm_{k}.mat"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"{region}-{k}".encode())


def test_link_clips_takes_the_first_k_of_each_region(budget, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _clips(src, {0: 3, 5: 1, 7: 2})
    assert budget.link_clips(src, dst, 2) == {"regions": 3, "clips": 5}
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.mat")) == [
        "a0/nmm_1.mat", "a0/nmm_2.mat", "a5/nmm_1.mat", "a7/nmm_1.mat", "a7/nmm_2.mat"]
    assert (dst / "a0" / "nmm_2.mat").read_bytes() == b"0-2"  # links to the run's own clips
    # a rerun keeps the links and counts the same
    assert budget.link_clips(src, dst, 2) == {"regions": 3, "clips": 5}


def test_link_clips_stops_at_a_gap(budget, tmp_path):
    src = tmp_path / "src"
    _clips(src, {1: 3})
    (src / "a1" / "nmm_2.mat").unlink()
    assert budget.link_clips(src, tmp_path / "dst", 3) == {"regions": 1, "clips": 1}


def test_refuses_a_folder_that_is_not_a_finished_run(budget, tmp_path, capsys):
    assert budget.main([str(tmp_path)]) == 2
    assert "template.json not found" in capsys.readouterr().err
    (tmp_path / "template.json").write_text(json.dumps({"size": "tiny", "anatomy": str(tmp_path), "seed": 0}))
    assert budget.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "clips" in err and "stage.json not found" in err and "--size tiny" in err


def test_table_has_a_row_per_budget(budget):
    rows = [{"k": k, "clips": 10 * k, "train_rows": 100, "epochs": 1, "best_val_loss": 3.0, "n_test": 8,
             "metrics": {"peak_in_patch": 0.5 + 0.1 * k, "le_mm": 20.0}} for k in (1, 2)]
    text = budget.table(rows)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 | 10 | 100 x 1 | 3.0 | 0.6 |")
    assert "nan" in lines[3]  # a metric not measured shows as nan, not as a number


def test_plot_keeps_scores_on_their_whole_range(budget, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    metrics = {name: 0.5 for name, _, _ in budget._columns()}
    results = [{"k": k, "n_test": 10, "metrics": dict(metrics, auc=0.97 + 0.005 * k, le_mm=4.0 + k)} for k in (1, 3)]
    path = budget.plot(results, tmp_path / "b.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    axes = {ax.get_title().split(" (")[0]: ax for ax in figs[0].axes}
    assert axes["AUC"].get_ylim() == (0.0, 1.02)  # a 0.01 difference is drawn as one
    lo, hi = axes["LE"].get_ylim()
    assert lo == 0.0 and 7.0 <= hi < 10  # distances from 0 mm, top from the data
    study = budget.study_dir(tmp_path, type("A", (), {"train_samples": 8000, "epochs": 5, "test_samples": 200}))
    assert study == tmp_path / "budget" / "n8000_e5_t200"
