"""Tests of esikit.evaluate.report: Markdown tables and results files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from esikit.evaluate.metrics import summarize
from esikit.evaluate.report import results_table_markdown, write_results


def _records():
    recs = []
    for method, offset in (("deepsif", 0.0), ("sloreta", 10.0)):
        for snr in (5, 15):
            for i in range(4):
                recs.append({
                    "method": method,
                    "snr_db": snr,
                    "n_sources": 1 + i % 2,
                    "le_mm": offset + i,
                    "precision": math.nan if i == 0 else 0.5,
                    "auc": 0.9,
                    "detected": float(i > 0),
                })
    return recs


def test_table_per_snr_with_methods_as_rows():
    summary = summarize(_records(), by=("snr_db", "n_sources"))
    md = results_table_markdown(summary)
    assert "### SNR 5 dB" in md and "### SNR 15 dB" in md and "### All samples" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == "| method | n | LE (mm) | precision | AUC | detected |"
    first = lines.index("### SNR 5 dB")
    block = lines[first + 2: first + 9]
    # le_mm of deepsif at one SNR: 0, 1, 2, 3 -> median 1.5, quartiles 0.75 and 2.25
    assert block[2] == "| deepsif | 4 | 1.5 [0.75 - 2.25] | 0.5 [0.5 - 0.5] | 0.9 [0.9 - 0.9] | 0.75 |"
    assert "| deepsif (n_sources=1) | 2 |" in block[3]
    assert any(line.startswith("| sloreta | 4 | 11.5 [10.8 - 12.2]") for line in block)


def test_table_without_snr_and_all_nan_metric():
    recs = [{"method": "a", "le_mm": math.nan}, {"method": "a", "le_mm": math.nan}]
    md = results_table_markdown(summarize(recs, by=()))
    assert "| a | 2 | - |" in md


def test_write_results(tmp_path):
    recs = _records()
    summary = summarize(recs, by=("snr_db",))
    paths = write_results(summary, recs, tmp_path / "out")
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert data["records"][0]["precision"] is None
    assert data["summary"]["methods"]["deepsif"]["overall"]["stats"]["le_mm"]["median"] == 1.5
    md = paths["markdown"].read_text()
    assert md.startswith("# Source imaging results") and "### SNR 15 dB" in md
    # numpy values are converted
    summary2 = summarize([{"method": "m", "le_mm": np.float32(2.0), "snr_db": np.int64(5)}], by=("snr_db",))
    write_results(summary2, {"m": [{"le_mm": np.float32(2.0), "x": np.arange(3)}]}, tmp_path / "o2")
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["records"]["m"][0]["x"] == [0, 1, 2]


# ------------------------------------------------------------------ comparison and verdict
def test_bootstrap_ci():
    from esikit.evaluate.report import bootstrap_ci

    c = bootstrap_ci([1.0, 2.0, 3.0, math.nan, 4.0, 100.0])
    assert c["value"] == 3.0 and c["n"] == 5 and c["n_nan"] == 1
    assert 1.0 <= c["lo"] <= 3.0 <= c["hi"] <= 100.0
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0, 100.0]) == {**c, "n_nan": 0}  # same seed, same interval
    m = bootstrap_ci([0.0, 1.0, 1.0, 1.0], stat="mean")
    assert m["value"] == 0.75 and m["hi"] <= 1.0
    assert bootstrap_ci([5.0]) == {"value": 5.0, "lo": 5.0, "hi": 5.0, "n": 1, "n_nan": 0}
    assert math.isnan(bootstrap_ci([math.nan])["value"])
    # coverage: a large sample's interval is narrow around the median
    wide = bootstrap_ci(np.random.default_rng(0).normal(size=2000))
    assert wide["lo"] < 0.0 < wide["hi"] and wide["hi"] - wide["lo"] < 0.2


def _comparison_records():
    recs = {"net": [], "sloreta": []}
    for i in range(40):
        snr, n_src = (5, 15)[i % 2], 1 + (i % 4 >= 2)
        # the network is far better on precision, sLORETA on the peak
        recs["net"].append({"snr_db": snr, "n_sources": n_src, "precision": 0.9, "peak_in_patch": float(i % 5 != 0),
                            "peak_distance_mm": 5.0, "recall": 0.5, "auc": 0.9, "ap": 0.8, "corr": 0.7})
        recs["sloreta"].append({"snr_db": snr, "n_sources": n_src, "precision": 0.2, "peak_in_patch": 1.0,
                                "peak_distance_mm": 0.0, "recall": 0.5, "auc": 0.9, "ap": 0.5, "corr": 0.7})
    return recs


def test_comparison_groups_tables_and_verdict():
    from esikit.evaluate.report import comparison, comparison_markdown, verdict_text

    comp = comparison(_comparison_records(), n_boot=200)
    labels = [g["label"] for g in comp["groups"]]
    assert labels[:5] == ["all", "snr=5", "snr=15", "sources=1", "sources=2"]
    assert "snr=5, sources=2" in labels and len(labels) == 9
    cell = comp["groups"][0]["cells"]["net"]["peak_in_patch"]
    assert cell["value"] == pytest.approx(0.8) and cell["n"] == 40  # a mean for 0/1 values
    md = comparison_markdown(comp, rules={"net": "deepsif", "sloreta": "normalized"})
    assert md.splitlines()[0].startswith("| samples | method | peak in patch | peak dist (mm) | precision")
    assert "| all (n=40) | net (deepsif) | 0.8 [" in md and "| all (n=40) | sloreta (normalized) | 1 | 0 | 0.2 |" in md
    assert "snr=5, sources=2" not in md and "snr=5, sources=2" in comparison_markdown(comp, groups="joint")
    text = verdict_text(comp, "net")
    assert "peak in patch: sloreta (1)" in text and "precision: net (0.9)" in text
    assert "recall: net, sloreta (0.5)" in text
    assert "Where net is not the best: peak in patch at all samples (best: sloreta)" in text
    assert "net vs sloreta: better on precision, AP; worse on peak in patch, peak dist (mm); level on recall, AUC, corr." in text


def test_samples_csv_and_results_files(tmp_path):
    import csv

    from esikit.evaluate.report import comparison, write_results, write_samples_csv

    recs = _comparison_records()
    recs["net"][0]["precision_by_source"] = [1.0, math.nan]
    recs["net"][1]["precision"] = math.nan
    path = write_samples_csv(recs, tmp_path / "s.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 80 and rows[0]["method"] == "net" and rows[-1]["method"] == "sloreta"
    assert rows[0]["precision_by_source"] == "1.0;" and rows[1]["precision"] == ""
    assert not (tmp_path / "s.csv.tmp").exists()
    comp = comparison(recs, n_boot=50)
    summary = summarize(recs, by=("snr_db", "n_sources"))
    paths = write_results(summary, recs, tmp_path / "out", comp=comp, model_name="net",
                          rules={"net": "deepsif", "sloreta": "normalized"},
                          regularization={"sloreta": "lambda2 = 1/9"})
    md = paths["markdown"].read_text()
    for part in ("## Methods", "- `net`: region rule `deepsif`; the trained network",
                 "- `sloreta`: region rule `normalized`; lambda2 = 1/9", "## Comparison", "Winners over all samples",
                 "## By SNR and number of sources", "How to read", "## All metrics"):
        assert part in md, part
    data = json.loads(paths["json"].read_text())
    assert data["rules"]["net"] == "deepsif" and data["comparison"]["groups"][0]["label"] == "all"
    assert paths["csv"].name == "results_samples.csv" and paths["csv"].stat().st_size > 0
