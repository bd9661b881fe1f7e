"""The evaluation run: network and baselines on the same samples, results and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esikit.data import SpikeEEGMetadataDataset
from esikit.data.toy import make_toy_dataset
from esikit.evaluate.runner import evaluate_model


class _Oracle(torch.nn.Module):
    """Returns a fixed target per call: lets the test know what the 'network' estimated."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, x):
        return torch.as_tensor(np.stack([self.outputs.pop(0) for _ in range(x.shape[0])]))


def test_evaluate_model_writes_results_and_compares(tmp_path):
    import csv

    import scipy.sparse as sp

    toy = make_toy_dataset(tmp_path / "d", n_regions=20, n_channels=10, n_train=4, n_test=6, seed=3)
    ds = SpikeEEGMetadataDataset(toy["test_metadata"], toy["fwd_path"])
    truth = [ds[i][1].numpy() for i in range(len(ds))]
    centres = np.c_[np.arange(20) * 10.0, np.zeros(20), np.zeros(20)]

    class Anat:  # centres and adjacency only: no mesh, plots fall back to region dots
        vertices = triangles = vertex_region = None

    Anat.centres = centres
    Anat.adjacency = sp.diags([np.ones(19), np.ones(19)], [1, -1], shape=(20, 20))
    ev = evaluate_model(_Oracle(truth), ds, toy["fwd"], tmp_path / "out", anatomy=Anat(),
                        baselines=("mne", "sloreta", "lcmv"), batch_size=4, model_name="oracle", show_progress=False,
                        n_boot=50)
    assert ev["n_samples"] == 6  # the whole test set by default
    assert {len(v) for v in ev["records"].values()} == {6}
    assert ev["rules"] == {"oracle": "deepsif", "mne": "normalized", "sloreta": "normalized", "lcmv": "normalized"}
    oracle = ev["records"]["oracle"]
    # the truth localizes perfectly under DeepSIF's rule and at the GFP peak
    assert all(r["le_mm"] == 0 and r["precision"] == 1 and r["peak_in_patch"] == 1 for r in oracle)
    assert all(r["rule"] == "normalized" for r in ev["records"]["lcmv"])
    for name in ("results.json", "results.md", "results_samples.csv", "comparison.md", "metric_distributions.png",
                 "example_0_cortex.png", "example_0_timecourses.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["summary"]["methods"]) == {"oracle", "mne", "sloreta", "lcmv"}
    rows = list(csv.DictReader(open(tmp_path / "out" / "results_samples.csv")))
    assert len(rows) == 4 * 6 and {"method", "snr_db", "n_sources", "peak_in_patch", "ap"} <= set(rows[0])
    assert "| all (n=6) | oracle (deepsif) |" in ev["comparison"]
    assert "Winners over all samples" in ev["comparison"] and "oracle vs lcmv:" in ev["comparison"]
    assert "the true SNR is not used" in ev["comparison"]  # how the baselines were regularized
    md = (tmp_path / "out" / "results.md").read_text()
    assert "region rule `deepsif`" in md and "## By SNR and number of sources" in md


def test_evaluate_model_rejects_bad_names(tmp_path):
    toy = make_toy_dataset(tmp_path / "d", n_regions=20, n_channels=10, n_train=4, n_test=2, seed=3)
    ds = SpikeEEGMetadataDataset(toy["test_metadata"], toy["fwd_path"])
    with pytest.raises(ValueError, match="Invalid value for 'rule'"):
        evaluate_model(_Oracle([]), ds, toy["fwd"], tmp_path / "o", rule="otsu", show_progress=False)
    with pytest.raises(ValueError, match="Invalid value for 'baselines'"):
        evaluate_model(_Oracle([]), ds, toy["fwd"], tmp_path / "o", baselines=("mne", "nope"), show_progress=False)


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
