"""benchmarks/bench_training.py: a smoke run on tiny networks, the paths per device, run_all registration."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the benchmarks import their _common helpers this way
    try:
        spec = importlib.util.spec_from_file_location("bench_training", BENCH / "bench_training.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_paths_per_device_baseline_first(bench, monkeypatch):
    cpu = torch.device("cpu")
    assert bench.paths_for(cpu, compile_=True, quick=False) == [(None, False), (None, True)]
    assert bench.paths_for(cpu, compile_=True, quick=True) == [(None, False)]
    assert bench.paths_for(cpu, compile_=False, quick=False, full=True) == [(None, False), (torch.bfloat16, False)]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    assert bench.paths_for(cuda, compile_=True, quick=False) == [(None, False), (None, True), (torch.float16, False),
                                                                 (torch.float16, True)]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bench.paths_for(cuda, compile_=True, quick=True) == [(None, False), (torch.bfloat16, False)]


def test_smoke_run_tiny_networks(bench, tmp_path, capsys):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = bench.main(["--tiny", "--no-compile", "--full", "--steps", "1", "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    out = capsys.readouterr().out
    assert "deepsif" in out and "tcn" in out and "vs fp32 eager" in out
    rows = json.loads((tmp_path / "r.json").read_text())
    cpu_rows = [r for r in rows if r["device"] == "cpu"]
    assert {r["network"] for r in cpu_rows} == {"deepsif", "tcn"}
    for name in ("deepsif", "tcn"):
        mine = [r for r in cpu_rows if r["network"] == name]
        assert mine[0]["amp"] is None and mine[0]["ratio"] == 1.0  # the baseline: fp32 eager
        assert mine[1]["amp"] == "bfloat16" and mine[1]["samples_per_s"] > 0
        assert mine[1]["ratio"] == pytest.approx(mine[1]["samples_per_s"] / mine[0]["samples_per_s"])


def test_run_all_finds_it():
    names = {p.stem[len("bench_"):] for p in BENCH.glob("bench_*.py")}
    assert "training" in names  # run_all.py runs every bench_*.py: `make bench` includes it
