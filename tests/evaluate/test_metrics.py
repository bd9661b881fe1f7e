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
    assert rec["sources_found"] == 0.0 and rec["dice"] == 0.0
    # a missed source has no precision, recall, LE or correlation (DeepSIF's MATLAB: NaN)
    for key in ("precision", "recall", "le_mm", "spatial_dispersion_mm", "corr", "corr_identified", "hd95_mm",
                "peak_in_patch", "peak_distance_mm", "emd_mm"):
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
    assert summary["metrics"] == ["precision", "le_mm"]  # METRIC_NAMES order
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


# ------------------------------------------------------------------ DeepSIF's rule and scoring
def _deepsif_get_otsu_regions(out):
    """DeepSIF's utils.get_otsu_regions for one sample, written out independently."""
    thre_source = np.abs(out)
    thre_source = (thre_source - np.min(thre_source)) / np.max(thre_source)
    thresh = threshold_otsu(thre_source, nbins=100)
    select_pixel = out > thresh
    return np.where(np.sum(select_pixel, axis=0) > 7)[0]


def _deepsif_matlab_scores(regions, labels, all_dis, out, nmm):
    """eval_calculate_sim_results.m for one sample, loop for loop (0-based ids).

    labels: list of per-source label arrays (padding removed); nmm: (K, T) centre activity.
    Returns per-source precision, recall, le, corr (NaN when not scored).
    """
    k_src = len(labels)
    res = {key: [math.nan] * k_src for key in ("precision", "recall", "le", "corr")}
    if len(regions) == 0:
        return res
    all_label = np.concatenate(labels)
    mapping = np.concatenate([np.full(len(lb), i) for i, lb in enumerate(labels)])
    min_ind = np.argmin(all_dis[np.ix_(all_label, regions)], axis=0)  # MATLAB min(.., [], 1): first minimum
    source_id = mapping[min_ind]
    for k in range(source_id.max() + 1):
        recon = regions[source_id == k]
        lb = labels[k]
        if len(recon):
            interc = np.intersect1d(recon, lb)
            res["precision"][k] = len(interc) / len(recon)
            res["recall"][k] = len(interc) / len(lb)
            res["corr"][k] = np.corrcoef(out[:, recon].mean(axis=1), nmm[k])[0, 1]
            res["le"][k] = np.mean(np.min(all_dis[np.ix_(recon, lb)], axis=1))
    return res


def test_deepsif_rule_and_scoring_match_an_independent_implementation():
    from esikit.evaluate.metrics import identify_regions_deepsif, score_sources

    rng = np.random.default_rng(11)
    n_reg, n_t = 30, 80
    centres = rng.uniform(-60, 60, (n_reg, 3))
    all_dis = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    n_checked = n_missed = n_differ = 0
    for trial in range(40):
        out = 0.15 * rng.standard_normal((n_t, n_reg))  # signed output: the two rules differ
        bump = np.hanning(n_t)
        patches = [np.array([3, 4, 5]), np.array([20, 21])] if trial % 2 else [np.array([10, 11, 12, 13])]
        true = np.zeros((n_t, n_reg))
        for k, p in enumerate(patches):
            true[:, p] = bump[:, None] * (1.0 + k)
            if trial % 5 != 0 or k == 0:  # sometimes the second source is missed
                out[:, p] += rng.uniform(0.4, 1.0) * bump[:, None]
        if trial % 7 == 0:
            out[:, 25] -= 2.0 * bump  # strongly negative: never identified by DeepSIF's rule
        expected = _deepsif_get_otsu_regions(out)
        got, thr = identify_regions_deepsif(out)
        assert got.tolist() == expected.tolist()
        n_differ += identify_regions(out)[0].tolist() != expected.tolist()
        ref = _deepsif_matlab_scores(expected, patches, all_dis, out, [true[:, p[0]] for p in patches])
        mine = score_sources(got, patches, out, true, centres)
        for k in range(len(patches)):
            for key, name in (("precision", "precision"), ("recall", "recall"), ("le", "le_mm"), ("corr", "corr")):
                a, b = ref[key][k], mine[k][name]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12), (trial, k, key)
            n_missed += math.isnan(ref["precision"][k])
            n_checked += 1
        rec = evaluate_sample(out, true, centres, patches, rule="deepsif")
        assert rec["identified"] == expected.tolist()
        assert rec["precision_by_source"] == [s["precision"] for s in mine] or any(
            math.isnan(s["precision"]) for s in mine)
        assert rec["sources_found"] == np.mean([not math.isnan(ref["precision"][k]) for k in range(len(patches))])
    assert n_missed > 0 and n_checked > 40 and n_differ > 0  # the cases were exercised


def test_rule_names_are_checked():
    with pytest.raises(ValueError, match="Invalid value for 'rule': expected one of 'deepsif', 'normalized'"):
        evaluate_sample(_est({1: (1.0, 20)}), None, CENTRES, [[1]], rule="otsu")


def test_per_source_scoring_by_hand():
    # two sources: patch A = {0, 1}, patch B = {5}; identified {1, 2, 4}
    est = _est({1: (1.0, 20), 2: (0.9, 20), 4: (0.8, 20)})
    rec = evaluate_sample(est, None, CENTRES, [np.array([0, 1]), np.array([5])], rule="normalized")
    assert rec["identified"] == [1, 2, 4]
    # region 1 -> A (0 mm), region 2 -> A (10 mm from region 1), region 4 -> B (10 mm from 5)
    assert rec["precision_by_source"] == [0.5, 0.0]
    assert rec["recall_by_source"] == [0.5, 0.0]
    assert rec["le_mm_by_source"] == [5.0, 10.0]
    assert rec["precision"] == 0.25 and rec["recall"] == 0.25 and rec["le_mm"] == 7.5
    assert rec["sources_found"] == 1.0
    # Dice: found {1, 2, 4}, true {0, 1, 5}: 2 * 1 / 6
    assert rec["dice"] == pytest.approx(1 / 3)
    # HD95: d(found -> true) = [0, 10, 10], d(true -> found) = [10, 0, 10]; P95 of each = 10
    assert rec["hd95_mm"] == pytest.approx(10.0)


def test_peak_metrics_at_the_gfp_peak():
    from esikit.evaluate.metrics import gfp_peak

    eeg = np.zeros((10, 4))
    eeg[6] = [1.0, -1.0, 2.0, -2.0]  # largest spread across channels at t = 6
    eeg[2] = [5.0, 5.0, 5.0, 5.0]  # large but flat: zero GFP
    assert gfp_peak(eeg) == 6
    est = np.zeros((10, 6))
    est[:, 4] = 3.0  # the largest region overall, but at t = 6 ...
    est[6] = [0.0, 0.0, 0.6, 1.0, 0.5, 0.4]  # ... region 3 peaks; half-max set {2, 3, 4}
    rec = evaluate_sample(est, None, CENTRES, [np.array([3, 2])], eeg=eeg, rule="normalized")
    assert rec["peak_time"] == 6 and rec["peak_region"] == 3
    assert rec["peak_in_patch"] == 1.0 and rec["peak_distance_mm"] == 0.0
    assert rec["hm_precision"] == pytest.approx(2 / 3) and rec["hm_recall"] == 1.0
    rec = evaluate_sample(est, None, CENTRES, [np.array([0])], eeg=eeg, rule="normalized")
    assert rec["peak_in_patch"] == 0.0 and rec["peak_distance_mm"] == 30.0
    assert rec["hm_precision"] == 0.0 and rec["hm_recall"] == 0.0
    with pytest.raises(ValueError, match="'eeg' has shape"):
        evaluate_sample(est, None, CENTRES, [[0]], eeg=eeg[:5])


def test_average_precision_by_hand_and_against_sklearn():
    from esikit.evaluate.metrics import average_precision

    # ranking: pos, neg, pos, neg -> (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx(5 / 6)
    assert average_precision([0.1, 0.9], [True, False]) == pytest.approx(0.5)
    assert average_precision([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert math.isnan(average_precision([1.0, 2.0], [False, False]))
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    for _ in range(10):
        scores = rng.random(40)  # no ties: the two definitions agree
        labels = rng.random(40) < 0.3
        if labels.any():
            assert average_precision(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores))


def test_earth_movers_distance_by_hand():
    from esikit.evaluate.metrics import earth_movers_distance

    ground = np.abs(CENTRES[:, None, 0] - CENTRES[None, :, 0])
    a = np.array([1.0, 0, 0, 0, 0, 0])
    b = np.array([0, 0, 0, 2.0, 0, 0])
    assert earth_movers_distance(a, b, ground) == pytest.approx(30.0)  # all mass moves 30 mm
    # half the mass moves 10 mm; values under 0.25 of the max are dropped first
    c = np.array([1.0, 1.0, 0.2, 0, 0, 0])
    d = np.array([1.0, 0, 1.0, 0, 0, 0.1])
    assert earth_movers_distance(c, d, ground) == pytest.approx(5.0)
    assert earth_movers_distance(a, a, ground) == 0.0
    assert math.isnan(earth_movers_distance(np.zeros(6), a, ground))
    true = np.zeros((10, 6))
    true[:, 0] = 1.0
    est = np.zeros((10, 6))
    est[:, 3] = 5.0
    rec = evaluate_sample(est, true, CENTRES, [[0]], rule="normalized")
    assert rec["emd_mm"] == pytest.approx(30.0)


def test_dice_hd95_percentile():
    from esikit.evaluate.metrics import dice_hd95

    centres = np.c_[np.arange(30) * 1.0, np.zeros(30), np.zeros(30)]
    found = np.arange(0, 21)  # 21 regions, distances to {0}: 0 .. 20
    dice, hd = dice_hd95(found, np.array([0]), centres)
    assert dice == pytest.approx(2 / 22)
    assert hd == pytest.approx(np.percentile(np.arange(21.0), 95))  # 19.0
    assert math.isnan(dice_hd95([], [], centres)[0])


def test_deepsif_rule_degenerate_outputs_as_deepsif():
    from esikit.evaluate.metrics import identify_regions_deepsif

    regions, thr = identify_regions_deepsif(np.zeros((20, 6)))
    assert regions.size == 0 and math.isnan(thr)
    const = np.full((20, 6), 0.3)
    const[:, 2] = -0.3  # same magnitude, negative: never above the threshold
    assert identify_regions_deepsif(const)[0].tolist() == _deepsif_get_otsu_regions(const).tolist() == [0, 1, 3, 4, 5]
