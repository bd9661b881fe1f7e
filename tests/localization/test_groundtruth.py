"""Ground truth on real EEG: DeepSIF's recorded resting segments with spikes of known regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from scipy.spatial import ConvexHull

from esikit.head.anatomy import Anatomy
from esikit.localization.groundtruth import (
    evaluate_ground_truth,
    load_resting_segments,
    make_ground_truth_recording,
    resting_background,
    score_events,
    snr_table_markdown,
)

from .conftest import _fibonacci_sphere, make_checkpoint

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "deepsif_anatomy"
N_REG = 12


@pytest.fixture(scope="module")
def real():
    """DeepSIF's 4 resting segments (volts) and the 75 names of its cap, in the file's channel order."""
    noise, elec = SHARED / "realistic_noise.mat", SHARED / "electrode_75.mat"
    if not (noise.is_file() and elec.is_file()):
        pytest.skip(f"DeepSIF's template files not found in {SHARED}")
    from esikit.head.forward import read_montage

    names, pos = read_montage(elec)
    return load_resting_segments(noise), list(names), np.asarray(pos, dtype=float)


def cap75_anatomy(names, pos) -> Anatomy:
    """12 regions on a 70 mm sphere under DeepSIF's 75 electrodes, a smooth (Gaussian) leadfield."""
    pos = pos - pos.mean(axis=0)
    elec = pos / np.linalg.norm(pos, axis=1, keepdims=True) * 90.0
    centres = _fibonacci_sphere(N_REG, 70.0)
    fwd = np.exp(-((elec[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 40.0 ** 2))
    verts = _fibonacci_sphere(300, 70.0)
    dist = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    return Anatomy(name="toy12x75", fwd=fwd, channel_names=list(names), centres=centres,
                   adjacency=scipy.sparse.csr_matrix((dist < 45.0) & (dist > 0)),
                   weights=np.ones((N_REG, N_REG)) - np.eye(N_REG), tract_lengths=dist,
                   node_of_region=np.arange(N_REG), region_labels=[f"reg{r}" for r in range(N_REG)],
                   vertices=verts, triangles=ConvexHull(verts).simplices.astype(np.int64),
                   vertex_region=np.argmin(((verts[:, None] - centres[None]) ** 2).sum(-1), axis=1))


def test_load_resting_segments_checks(tmp_path, real):
    segs, names, _ = real
    assert segs.shape == (4, 500, 75) and 1e-6 < segs.std() < 1e-4  # microvolts in the file -> volts
    from esikit.io import save_mat_file

    bad = segs[:, :, :3].copy() * 1e6
    bad[0, 5, 1] = np.nan
    bad[1, :, 2] = 3.0
    save_mat_file(tmp_path / "bad.mat", {"data": bad})
    with pytest.raises(ValueError, match=r"bad\.mat: field 'data' has 1 non-finite.*constant channels.*\[1, 2\]"):
        load_resting_segments(tmp_path / "bad.mat")
    with pytest.raises(ValueError, match="no field 'data'"):
        save_mat_file(tmp_path / "other.mat", {"x": bad})
        load_resting_segments(tmp_path / "other.mat")


def test_resting_background_is_continuous():
    segs = np.random.default_rng(0).standard_normal((2, 50, 3))
    eeg, flip = resting_background(segs, [0, 0, 0, 1, 1])
    assert flip.tolist() == [False, True, False, False, True]
    assert np.array_equal(eeg[50:100], segs[0][::-1]) and np.array_equal(eeg[150:200], segs[1])
    # joins inside a run repeat the last sample (continuous), the change of segment jumps
    assert np.array_equal(eeg[49], eeg[50]) and np.array_equal(eeg[99], eeg[100])
    with pytest.raises(ValueError, match=r"segment indices \[2\] outside \[0, 2\)"):
        resting_background(segs, [0, 2])


def test_recording_snr_and_edf(tmp_path, real):
    segs, names, pos = real
    anat = cap75_anatomy(names, pos)
    regions, snr = [3, 7, 10, 3], [5.0, 10.0, 15.0, 20.0]
    rng = np.random.default_rng(1)
    clips = {}
    for r in set(regions):  # an NMM-like clip: small background everywhere, the spike in region r
        c = 0.05 * rng.standard_normal((500, N_REG))
        c[:, r] += np.exp(-0.5 * ((np.arange(500) - 200) / 6.0) ** 2)
        clips[r] = c
    rec = make_ground_truth_recording(anat.fwd, names, segs, regions, snr, clips=clips, use_segments=[2, 3],
                                      path=tmp_path / "gt.edf")
    np.testing.assert_allclose(rec.snr_measured_db, snr, atol=1e-9)
    assert rec.segment.tolist() == [2, 2, 3, 3] and rec.reversed.tolist() == [True, False, False, True]
    np.testing.assert_allclose(rec.times, [1.5, 2.5, 3.5, 4.5])
    import mne

    raw = mne.io.read_raw_edf(rec.path, preload=True, verbose="error")
    assert raw.ch_names == names and raw.info["sfreq"] == 500.0
    np.testing.assert_allclose(raw.annotations.onset, rec.times, atol=1e-3)
    data = raw.get_data().T
    # padding blocks are the recorded EEG untouched (up to EDF's 16-bit quantization)
    q = np.ptp(data) / 2 ** 15
    np.testing.assert_allclose(data[:500], segs[2], atol=q)
    np.testing.assert_allclose(data[-500:], segs[3], atol=q)
    # the spike sits in its window only: the window's excess over the background is the scaled spike
    excess = data[500:1000] - segs[2][::-1]
    assert np.abs(excess[:20]).max() < 3 * q  # tapered to zero at the window's start
    assert np.argmax(np.abs(excess).max(axis=1)) == 250
    with pytest.raises(ValueError, match=r"regions must lie in \[0, 12\).*\[12\]; no clip for regions \[12\]"):
        make_ground_truth_recording(anat.fwd, names, segs, [12], 10.0, clips=clips)
    with pytest.raises(ValueError, match=r"segments have shape \(4, 500, 75\), expected \(K, L, C\) with C=74"):
        make_ground_truth_recording(anat.fwd[:74], names[:74], segs, [1], 10.0)


def test_end_to_end_localization_and_scores(tmp_path, real):
    segs, names, pos = real
    anat = cap75_anatomy(names, pos)
    ckpt = make_checkpoint(tmp_path / "ckpt" / "best.pt", anat)
    regions = [2, 5, 9, 2, 5, 9]
    snr = [40.0, 40.0, 40.0, 0.0, 0.0, 0.0]
    rec = make_ground_truth_recording(anat.fwd, names, segs, regions, snr, use_segments=[2, 3],
                                      path=tmp_path / "gt.edf")
    records, res = evaluate_ground_truth(rec, ckpt, fwd=anat.fwd, baselines=["sloreta", "mne"],
                                         out=tmp_path / "loc")
    assert res.n_events == 6 and (tmp_path / "loc" / "events.csv").is_file()
    by = {(r["method"], r["event"]): r for r in records}
    assert {m for m, _ in by} == {"network", "sloreta", "mne"}
    for k in range(3):  # 40 dB: sLORETA's peak is the spiking region, at zero distance
        assert by[("sloreta", k)]["peak_in_patch"] == 1.0 and by[("sloreta", k)]["peak_distance_mm"] == 0.0
        assert by[("sloreta", k)]["region"] == regions[k] and by[("sloreta", k)]["snr_db"] == 40.0
    for r in records:
        assert np.isfinite(r["peak_distance_mm"]) and r["rule"] == ("deepsif" if r["method"] == "network"
                                                                    else "normalized")
    # the network (a pseudo-inverse) finds the spiking region at 40 dB under its own rule
    assert all(by[("network", k)]["recall"] == 1.0 for k in range(3))
    # 0 dB of real EEG does worse than 40 dB for sLORETA (the scores depend on the data)
    hi = np.mean([by[("sloreta", k)]["peak_distance_mm"] for k in range(3)])
    lo = np.mean([by[("sloreta", k)]["peak_distance_mm"] for k in range(3, 6)])
    assert lo > hi
    # scoring against the wrong truth fails: the scores are not constants
    wrong = make_ground_truth_recording(anat.fwd, names, segs, [11] * 6, snr, use_segments=[2, 3])
    bad = score_events(res, wrong, fwd=anat.fwd, baselines=["sloreta"])
    assert max(r["peak_in_patch"] for r in bad if r["method"] == "sloreta" and r["snr_db"] == 40.0) == 0.0
    table = snr_table_markdown(records, label={"network": "network (pinv)"})
    lines = table.splitlines()
    assert len(lines) == 2 + 3 * 2 and "| network (pinv) | 0 | 3 |" in table
    assert "| sloreta | 40 | 3 | 0.0 | 1.00 |" in table
