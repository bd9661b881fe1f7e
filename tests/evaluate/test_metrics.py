"""Tests of esikit.evaluate.metrics against hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from esikit.evaluate.metrics import (
    assign_to_patches,
    auc_score,
    evaluate_sample,
    identify_regions,
    patches_from_activity,
    spatial_dispersion,
    summarize,
)

# Six regions on a line, 10 mm apart.
CENTRES = np.array([[10.0 * r, 0.0, 0.0] for r in range(6)])


def _est(active: dict[int, tuple[float, int]], n_times: int = 20, n_regions: int = 6) -> np.ndarray:
    """Estimate with region r at amplitude a during its first n samples."""
    est = np.zeros((n_times, n_regions))
    for r, (a, n) in active.items():
        est[:n, r] = a
    return est


def test_identify_regions_more_than_seven_samples():
    est = _est({1: (1.0, 20), 3: (0.9, 8), 4: (0.9, 7)})
    regions, thr = identify_regions(est)
    assert regions.tolist() == [1, 3]  # 8 samples > 7 counts, 7 does not
    assert 0.0 < thr < 0.9


def test_identify_regions_uses_magnitude_and_scale_free():
    est = _est({1: (1.0, 20), 3: (0.9, 10)})
    ref, _ = identify_regions(est)
    for transformed in (-est, 1e-6 * est, 1e4 * est):
        assert identify_regions(transformed)[0].tolist() == ref.tolist()


def test_identify_regions_matches_deepsif_rule_on_nonnegative_output():
    rng = np.random.default_rng(0)
    est = rng.random((60, 30)) ** 4
    est[:, 5] += 2.0 * np.hanning(60)
    est[:, 9] += 1.5 * np.hanning(60)
    est /= est.max()
    est[0, 0] = 0.0  # DeepSIF subtracts the minimum: make it 0 so both rules coincide
    # DeepSIF's get_otsu_regions, written out from its description
    a = np.abs(est)
    a = (a - a.min()) / a.max()
    thr = threshold_otsu(a, nbins=100)
    expected = np.where(np.sum(est > thr, axis=0) > 7)[0]
    assert identify_regions(est)[0].tolist() == expected.tolist()
    assert {5, 9} <= set(expected.tolist())


@pytest.mark.parametrize("est", [np.zeros((20, 6)), np.full((20, 6), 0.3)])
def test_identify_regions_degenerate(est):
    regions, thr = identify_regions(est)
    assert regions.size == 0 and math.isnan(thr)


def test_assign_to_patches_nearest_true_region():
    patches = [np.array([0, 1]), np.array([5])]
    owner, dist = assign_to_patches(np.array([1, 2, 3, 4]), patches, CENTRES)
    assert owner.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(dist, [0.0, 10.0, 20.0, 10.0])
    # region 3 is 20 mm from patch 0 (region 1) and 20 mm from patch 1 (region 5): tie -> first
    d = np.abs(CENTRES[:, None, 0] - CENTRES[None, :, 0]) * 2
    owner2, dist2 = assign_to_patches(np.array([4]), patches, distances=d)
    assert owner2.tolist() == [1] and dist2.tolist() == [20.0]


def test_le_precision_recall_dispersion_by_hand():
    est = _est({1: (1.0, 20), 4: (0.9, 10)})
    rec = evaluate_sample(est, None, CENTRES, patches=[np.array([1, 2])])
    assert rec["identified"] == [1, 4]
    assert rec["le_mm"] == pytest.approx((0.0 + 20.0) / 2)  # region 4 -> region 2: 20 mm
    assert rec["precision"] == pytest.approx(0.5)
    assert rec["recall"] == pytest.approx(0.5)
    e1, e4 = 20 * 1.0**2, 10 * 0.9**2
    assert rec["spatial_dispersion_mm"] == pytest.approx(math.sqrt((0 * e1 + 20.0**2 * e4) / (e1 + e4)))
    assert rec["n_identified"] == 2 and rec["detected"] == 1.0
    assert rec["n_sources"] == 1 and rec["n_true_regions"] == 2
    assert math.isnan(rec["mse"]) and math.isnan(rec["corr"])


def test_perfect_estimate():
    t = np.linspace(0, 1, 50)
    true = np.zeros((50, 6))
    true[:, 2] = np.sin(2 * np.pi * 3 * t) ** 2
    true[:, 3] = 0.8 * true[:, 2]
    rec = evaluate_sample(true.copy(), true, CENTRES, patches=[np.array([2, 3])])
    assert rec["le_mm"] == 0.0 and rec["precision"] == 1.0 and rec["recall"] == 1.0
    assert rec["spatial_dispersion_mm"] == 0.0
    assert rec["corr"] == pytest.approx(1.0) and rec["corr_identified"] == pytest.approx(1.0)
    assert rec["auc"] == 1.0 and rec["mse"] == 0.0 and rec["mse_normalized"] == 0.0


def test_corr_at_centres_and_mse():
    rng = np.random.default_rng(1)
    true = np.zeros((40, 6))
    true[:, 0] = rng.random(40)
    true[:, 4] = rng.random(40)
    est = np.zeros((40, 6))
    est[:, 0] = 2.0 * true[:, 0] + 3.0  # correlation +1
    est[:, 4] = -true[:, 4]  # correlation -1
    rec = evaluate_sample(est, true, CENTRES, patches=[np.array([0]), np.array([4])])
    assert rec["corr"] == pytest.approx(0.0, abs=1e-12)  # mean of +1 and -1
    assert rec["mse"] == pytest.approx(np.mean((est - true) ** 2))
    expected_norm = np.mean((est / np.abs(est).max() - true / np.abs(true).max()) ** 2)
    assert rec["mse_normalized"] == pytest.approx(expected_norm)


def test_corr_identified_averages_assigned_regions():
    t = np.arange(30, dtype=float)
    true = np.zeros((30, 6))
    true[:, 1] = np.sin(t / 3.0) + 2.0
    est = np.zeros((30, 6))
    est[:, 1] = true[:, 1]
    est[:, 2] = t / 10.0  # assigned to the patch too, different waveform
    rec = evaluate_sample(est, true, CENTRES, patches=[np.array([1])])
    assert rec["identified"] == [1, 2]
    expected = np.corrcoef(true[:, 1], est[:, [1, 2]].mean(axis=1))[0, 1]
    assert rec["corr_identified"] == pytest.approx(expected)
    assert rec["corr"] == pytest.approx(1.0)


def test_padding_is_dropped_and_patches_from_activity():
    est = _est({1: (1.0, 20)})
    rec = evaluate_sample(est, None, CENTRES, patches=[np.array([1, 15213, 15213]), np.array([15213.0])])
    assert rec["n_sources"] == 1 and rec["n_true_regions"] == 1 and rec["recall"] == 1.0
    true = np.zeros((20, 6))
    true[:, 3] = 0.5
    true[:, 4] = 1.0
    (patch,) = patches_from_activity(true)
    assert patch.tolist() == [4, 3]
    assert patches_from_activity(np.zeros((3, 6))) == []


def test_no_identified_region_is_defined():
    true = _est({2: (1.0, 20)})
    rec = evaluate_sample(np.zeros((20, 6)), true, CENTRES, patches=[np.array([2])])
    assert rec["detected"] == 0.0 and rec["n_identified"] == 0 and rec["identified"] == []
    assert rec["recall"] == 0.0
    for key in ("precision", "le_mm", "spatial_dispersion_mm", "corr", "corr_identified"):
        assert math.isnan(rec[key]), key
    assert rec["auc"] == 0.5  # every region scores 0: ties count one half
    assert rec["mse"] == pytest.approx(np.mean(true**2))


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="expected the shape of 'est'"):
        evaluate_sample(np.zeros((5, 6)), np.zeros((5, 5)), CENTRES)
    with pytest.raises(ValueError, match=r"'centres' has shape \(5, 3\)"):
        evaluate_sample(np.zeros((5, 6)), None, CENTRES[:5], patches=[[1]])
    est = np.zeros((5, 6))
    est[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_sample(est, None, CENTRES, patches=[[1]])


def _auc_pairs(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_rank_formula_against_pairwise_count():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        scores = rng.integers(0, 5, n).astype(float)  # many ties
        labels = rng.random(n) < 0.4
        if labels.all() or not labels.any():
            continue
        assert auc_score(scores, labels) == pytest.approx(_auc_pairs(scores, labels))
    assert auc_score([0.1, 0.9, 0.4], [False, True, False]) == 1.0
    assert auc_score([0.9, 0.1, 0.4], [False, True, False]) == 0.0
    assert math.isnan(auc_score([1.0, 2.0], [True, True]))


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    from esikit.evaluate.metrics import _average_ranks

    rng = np.random.default_rng(7)
    for n in (1, 2, 10, 101):
        x = rng.integers(0, 4, n).astype(float)
        np.testing.assert_array_equal(_average_ranks(x), rankdata(x))


def test_spatial_dispersion_zero_energy():
    assert math.isnan(spatial_dispersion(np.zeros((4, 3)), np.array([1]), np.array([5.0])))
    assert math.isnan(spatial_dispersion(np.ones((4, 3)), np.array([], dtype=int), np.array([])))


def _records():
    rng = np.random.default_rng(0)
    recs = []
    for i in range(40):
        recs.append({
            "method": "deepsif" if i % 2 else "mne",
            "snr_db": [5, 15][i % 4 // 2],
            "n_sources": 1 + (i % 3 == 0),
            "le_mm": float(rng.random() * 10),
            "precision": math.nan if i % 5 == 0 else float(rng.random()),
        })
    return recs


def test_summarize_median_iqr_and_groups():
    recs = _records()
    summary = summarize(recs, by=("snr_db", "n_sources"))
    assert set(summary["methods"]) == {"deepsif", "mne"}
    assert summary["metrics"] == ["le_mm", "precision"]
    mine = [r for r in recs if r["method"] == "mne"]
    le = np.array([r["le_mm"] for r in mine])
    st = summary["methods"]["mne"]["overall"]["stats"]["le_mm"]
    q1, med, q3 = np.percentile(le, [25, 50, 75])
    assert (st["median"], st["q1"], st["q3"], st["iqr"]) == pytest.approx((med, q1, q3, q3 - q1))
    prec = summary["methods"]["mne"]["overall"]["stats"]["precision"]
    n_nan = sum(math.isnan(r["precision"]) for r in mine)
    assert prec["n_nan"] == n_nan > 0 and prec["n"] == len(mine) - n_nan
    groups = summary["methods"]["mne"]["groups"]
    assert sum(g["n_samples"] for g in groups) == len(mine)
    for g in groups:
        sel = [r["le_mm"] for r in mine if r["snr_db"] == g["key"]["snr_db"] and r["n_sources"] == g["key"]["n_sources"]]
        assert g["stats"]["le_mm"]["median"] == pytest.approx(np.median(sel))
    snr_groups = summary["methods"]["mne"]["marginals"]["snr_db"]
    assert [g["key"]["snr_db"] for g in snr_groups] == [5, 15]


def test_summarize_dict_input_and_empty_metric():
    summary = summarize({"a": [{"le_mm": math.nan}, {"le_mm": math.nan}]}, by=())
    st = summary["methods"]["a"]["overall"]["stats"]["le_mm"]
    assert math.isnan(st["median"]) and st["n"] == 0 and st["n_nan"] == 2
    assert summary["methods"]["a"]["groups"] == []


def test_evaluate_sample_info_fields_flow_into_summary():
    est = _est({1: (1.0, 20)})
    recs = [
        evaluate_sample(est, None, CENTRES, patches=[[1]], info={"snr_db": 10, "method": "x"}),
        evaluate_sample(est, None, CENTRES, patches=[[3]], info={"snr_db": 20, "method": "x"}),
    ]
    summary = summarize(recs, by=("snr_db",))
    groups = summary["methods"]["x"]["groups"]
    assert [g["stats"]["le_mm"]["median"] for g in groups] == [0.0, 20.0]
    assert "snr_db" not in summary["metrics"]


def test_region_centres_from_mesh():
    from esikit.evaluate.metrics import region_centres_from_mesh

    verts = np.array([[0, 0, 0], [2, 0, 0], [10, 10, 10], [5, 5, 5], [7, 7, 7.0]])
    vreg = np.array([0, 0, 2, -1, 2])
    c = region_centres_from_mesh(verts, vreg, 3)
    np.testing.assert_allclose(c[0], [1, 0, 0])
    np.testing.assert_allclose(c[2], [8.5, 8.5, 8.5])
    assert np.isnan(c[1]).all()


def test_evaluate_batch_matches_per_sample():
    from esikit.evaluate.metrics import evaluate_batch

    rng = np.random.default_rng(4)
    est = rng.random((3, 20, 6)) ** 3
    true = np.zeros((3, 20, 6))
    patches = [[np.array([1])], [np.array([2, 3])], [np.array([0]), np.array([5])]]
    for b, ps in enumerate(patches):
        for p in ps:
            true[b, :, p] = 1.0
    infos = [{"snr_db": 5, "index": b} for b in range(3)]
    recs = evaluate_batch(est, true, CENTRES, patches, infos=infos)
    assert [r["index"] for r in recs] == [0, 1, 2]
    for b in range(3):
        single = evaluate_sample(est[b], true[b], CENTRES, patches[b], info=infos[b])
        assert recs[b].keys() == single.keys()
        for k, v in single.items():
            assert (v == recs[b][k]) or (isinstance(v, float) and math.isnan(v) and math.isnan(recs[b][k]))
    with pytest.raises(ValueError, match="'patches' has 2 samples, expected 3"):
        evaluate_batch(est, true, CENTRES, patches[:2])
