"""The evaluation run: network and baselines on the same samples, results and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esikit.data import SpikeEEGMetadataDataset
from esikit.data.toy import make_toy_dataset
from esikit.evaluate.runner import comparison_table, evaluate_model


class _Oracle(torch.nn.Module):
    """Returns a fixed target per call: lets the test know what the 'network' estimated."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, x):
        return torch.as_tensor(np.stack([self.outputs.pop(0) for _ in range(x.shape[0])]))


def test_evaluate_model_writes_results_and_compares(tmp_path):
    toy = make_toy_dataset(tmp_path / "d", n_regions=20, n_channels=10, n_train=4, n_test=6, seed=3)
    ds = SpikeEEGMetadataDataset(toy["test_metadata"], toy["fwd_path"])
    truth = [ds[i][1].numpy() for i in range(len(ds))]
    centres = np.c_[np.arange(20) * 10.0, np.zeros(20), np.zeros(20)]

    class Anat:  # centres only: no mesh, plots fall back to region dots
        vertices = triangles = vertex_region = None

    Anat.centres = centres
    ev = evaluate_model(_Oracle(truth), ds, toy["fwd"], tmp_path / "out", anatomy=Anat(),
                        baselines=("mne", "sloreta"), batch_size=4, model_name="oracle", show_progress=False)
    assert ev["n_samples"] == 6
    assert {len(v) for v in ev["records"].values()} == {6}
    oracle = ev["records"]["oracle"]
    assert all(r["le_mm"] == 0 and r["precision"] == 1 for r in oracle)  # the truth localizes perfectly
    for name in ("results.json", "results.md", "comparison.md", "metric_distributions.png", "example_0_cortex.png",
                 "example_0_timecourses.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["summary"]["methods"]) == {"oracle", "mne", "sloreta"}
    assert "network best" in ev["comparison"]


def _summary(own_le, other_le, own_p, other_p):
    def stats(le, p):
        return {"le_mm": {"median": le}, "precision": {"median": p}}

    def method(le, p):
        return {"overall": {"stats": stats(le, p)},
                "marginals": {"snr_db": [{"key": {"snr_db": 5.0}, "stats": stats(le, p)}]}}

    return {"methods": {"net": method(own_le, own_p), "mne": method(other_le, other_p)}}


@pytest.mark.parametrize("own_le,other_le,own_p,other_p,expected", [
    (5.0, 10.0, 0.9, 0.5, True),    # better on both
    (5.0, 10.0, 0.4, 0.5, False),   # worse precision
    (12.0, 10.0, 0.9, 0.5, False),  # worse localization
])
def test_comparison_verdict(own_le, other_le, own_p, other_p, expected):
    table, verdict = comparison_table(_summary(own_le, other_le, own_p, other_p), "net")
    assert verdict == {"5.0": expected, "all": expected}
    assert table.count("\n") == 3


def test_distances_use_the_folded_cortex(deepsif_anatomy_dir):
    from esikit.evaluate.runner import anatomy_centres
    from esikit.head.anatomy import load_deepsif_anatomy

    anat = load_deepsif_anatomy(deepsif_anatomy_dir)
    centres = anatomy_centres(anat, 994)
    assert centres.shape == (994, 3) and np.isfinite(centres).all()
    region = int(anat.vertex_region[0])
    np.testing.assert_allclose(centres[region], anat.vertices[anat.vertex_region == region].mean(axis=0))
    # The inflated centres spread further apart than the folded ones.
    d_inflated = np.linalg.norm(anat.centres[:, None] - anat.centres[None], axis=-1).mean()
    d_folded = np.linalg.norm(centres[:, None] - centres[None], axis=-1).mean()
    assert d_inflated > 1.1 * d_folded
