"""Tests of esikit.evaluate.report: Markdown tables and results files."""

from __future__ import annotations

import json
import math

import numpy as np

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
