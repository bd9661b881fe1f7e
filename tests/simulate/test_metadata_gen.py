"""Tests for esikit.simulate.metadata (DeepSIF's generate_sythetic_source in Python)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from esikit.simulate.metadata import (
    NAN_NUMBER,
    TEST_SOURCE_SNR_DB,
    TRAIN_SOURCE_SNR_DB,
    gaussian_magnitude,
    generate_metadata,
    index_clips,
    make_metadata_files,
    scale_ratios_for_clip,
    write_metadata,
)
from esikit.head.patches import is_connected

N_TIMES = 200
CLIP_REGIONS = [3, 9, 14, 20, 27, 33, 38, 45, 50, 56]
N_CLIPS = 3


def spike_clip(region, k, n_regions, n_times=N_TIMES):
    """Background noise everywhere, a spike (sharp peak then slow wave) at ``region``."""
    rng = np.random.default_rng([region, k])
    data = 0.3 * rng.normal(size=(n_times, n_regions))
    t = np.arange(n_times)
    peak = 80 + 5 * k
    data[:, region] += 4.0 * np.exp(-0.5 * ((t - peak) / 4.0) ** 2) - 1.0 * np.exp(-0.5 * ((t - peak - 25) / 12.0) ** 2)
    return data


@pytest.fixture(scope="module")
def anatomy(grid_anatomy):
    return grid_anatomy(8, 8, spacing_mm=8.0, n_channels=16)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, anatomy):
    from esikit.io import save_mat_file

    root = tmp_path_factory.mktemp("source") / "nmm_spikes"
    n_regions = anatomy.fwd.shape[1]
    for r in CLIP_REGIONS:
        (root / f"a{r}").mkdir(parents=True)
        for k in range(1, N_CLIPS + 1):
            save_mat_file(root / f"a{r}" / f"nmm_{k}.mat", {"data": spike_clip(r, k, n_regions)})
    (root / "a5").mkdir()  # an empty folder: not a centre
    (root / "notes.txt").write_text("not a clip folder")
    return root


def contract_snr_db(clip, fwd, patch, weights, scale):
    """The SNR of a source synthesized by the sample contract, computed independently.

    The patch takes the centre waveform divided by its peak, times ``scale`` and the
    weights; signal = patch regions' EEG, background = every other region's EEG, both
    with the temporal mean removed, powers over [peak - 50, end) (DeepSIF's window).
    """
    x = np.array(clip, dtype=float)
    a = x[:, patch[0]] / x[:, patch[0]].max()
    peak = int(np.argmax(a))
    x[:, patch] = (a * scale)[:, None] * np.asarray(weights)[None, :]
    rest = np.setdiff1d(np.arange(x.shape[1]), patch)
    sig = x[:, patch] @ fwd[:, patch].T
    noise = x[:, rest] @ fwd[:, rest].T
    sig -= sig.mean(0)
    noise -= noise.mean(0)
    win = slice(max(peak - 50, 0), None)
    return 10 * np.log10(np.sum(sig[win] ** 2) / np.sum(noise[win] ** 2))


def test_index_clips(clip_dir):
    idx = index_clips(clip_dir)
    assert sorted(idx) == CLIP_REGIONS
    assert all(v.tolist() == [1, 2, 3] for v in idx.values())
    with pytest.raises(FileNotFoundError, match="not found"):
        index_clips(clip_dir / "nope")
    with pytest.raises(FileNotFoundError, match="a\\*/nmm_\\*.mat"):
        index_clips(clip_dir / "a5")


def test_gaussian_magnitude():
    centres = np.array([[0, 0, 0], [50, 0, 0], [0, 20, 0], [0, 0, 100.0]])
    w = gaussian_magnitude(centres, np.array([0, 1, 2, 3]), 50.0)
    assert w[0] == 1.0
    assert w[1] == pytest.approx(0.5, abs=1e-3)  # halves at the half-max distance
    assert w[2] > w[1] > w[3] > 0


@pytest.fixture(scope="module")
def meta(anatomy, clip_dir):
    return generate_metadata(anatomy, clip_dir, n_variations=6, seed=3, progress=False)


def test_fields_shapes_dtypes(meta, anatomy):
    n = len(CLIP_REGIONS) * 6 * 4
    assert set(meta) == {"selected_region", "nmm_idx", "random_samples", "scale_ratio", "mag_change", "current_snr"}
    assert meta["selected_region"].shape == (n, 2, 70) and meta["selected_region"].dtype.kind == "i"
    assert meta["mag_change"].shape == (n, 2, 70) and meta["mag_change"].dtype == np.float64
    assert meta["nmm_idx"].shape == (n, 2) and meta["nmm_idx"].dtype.kind == "i"
    assert meta["random_samples"].shape == (n, 2) and meta["random_samples"].dtype.kind == "i"
    assert meta["scale_ratio"].shape == (n, 2, len(TRAIN_SOURCE_SNR_DB))
    assert meta["current_snr"].shape == (n, 1)
    # DeepSIF's order: centre, variation, then the 4 SNR levels
    np.testing.assert_array_equal(meta["current_snr"][:8, 0], [5, 10, 15, 20, 5, 10, 15, 20])
    sel = meta["selected_region"]
    centres = sel[:, 0, 0].reshape(len(CLIP_REGIONS), -1)
    np.testing.assert_array_equal(centres[:, 0], CLIP_REGIONS)
    assert (centres == centres[:, :1]).all()
    # each configuration is repeated for the 4 SNR levels
    assert (sel.reshape(-1, 4, 2, 70) == sel.reshape(-1, 4, 2, 70)[:, :1]).all()


def test_padding_and_patches(meta, anatomy):
    sel, mag = meta["selected_region"], meta["mag_change"]
    n_regions = anatomy.fwd.shape[1]
    valid = (sel >= 0) & (sel < n_regions)
    assert ((sel == NAN_NUMBER) | valid).all()
    # padding only after the patch, same places in mag_change
    lengths = valid.sum(axis=2)
    for i in range(0, sel.shape[0], 7):
        for s in range(2):
            L = lengths[i, s]
            assert valid[i, s, :L].all() and not valid[i, s, L:].any()
            assert (mag[i, s, L:] == NAN_NUMBER).all()
            p = sel[i, s, :L]
            assert len(np.unique(p)) == L
            assert is_connected(anatomy.adjacency, p)
    # two sources, disjoint and not touching, second centre has clips
    adj = anatomy.adjacency
    for i in range(0, sel.shape[0], 4):
        p1 = sel[i, 0][valid[i, 0]]
        p2 = sel[i, 1][valid[i, 1]]
        assert p2.size and p2[0] in CLIP_REGIONS
        assert not np.intersect1d(p1, p2).size
        assert adj[p1][:, p2].nnz == 0


def test_clip_fields(meta):
    sel, rs, nidx = meta["selected_region"], meta["random_samples"], meta["nmm_idx"]
    nper = N_CLIPS
    assert rs.min() >= 1 and rs.max() <= nper
    np.testing.assert_array_equal(nidx, (sel[:, :, 0].astype(np.int64) + 1) * nper + rs + 1)
    # drawn per sample: the 4 SNR repeats of a configuration do not all share k
    assert (rs.reshape(-1, 4, 2) != rs.reshape(-1, 4, 2)[:, :1]).any()


def test_mag_change_decays_with_distance(meta, anatomy):
    sel, mag = meta["selected_region"], meta["mag_change"]
    c = anatomy.centres
    sigmas = []
    for i in range(0, sel.shape[0], 5):
        for s in range(2):
            valid = sel[i, s] != NAN_NUMBER
            p, w = sel[i, s][valid], mag[i, s][valid]
            assert w[0] == 1.0
            d = np.linalg.norm(c[p] - c[p[0]], axis=1)
            order = np.argsort(d)
            assert np.all(np.diff(w[order]) <= 1e-12)
            far = d > 0
            sigmas.extend(np.sqrt(-d[far] ** 2 / (2 * np.log(w[far]))))
    # one width per file, half maximum at an integer distance in DeepSIF's [40, 60] mm
    sigmas = np.asarray(sigmas)
    assert np.ptp(sigmas) < 1e-6
    half = sigmas[0] / 0.8493
    assert 40 - 1e-6 <= half <= 60 + 1e-6 and abs(half - round(half)) < 1e-3


def test_scale_ratio_gives_target_snr(meta, anatomy, clip_dir):
    from esikit.io import load_mat_file

    sel, mag, rs, scale = meta["selected_region"], meta["mag_change"], meta["random_samples"], meta["scale_ratio"]
    assert (scale > 0).all()
    for i in (0, 13, 57, 101, 230):
        for s in range(2):
            valid = sel[i, s] != NAN_NUMBER
            p, w = sel[i, s][valid], mag[i, s][valid]
            clip = load_mat_file(clip_dir / f"a{p[0]}" / f"nmm_{rs[i, s]}.mat")["data"]
            for j, target in enumerate(TRAIN_SOURCE_SNR_DB):
                assert contract_snr_db(clip, anatomy.fwd, p, w, scale[i, s, j]) == pytest.approx(target, abs=1e-6)


def test_deepsif_weight_one_alpha(anatomy, clip_dir):
    from esikit.io import load_mat_file

    m = generate_metadata(anatomy, clip_dir, n_samples=20, alpha_uses_weights=False, seed=1, progress=False)
    sel, rs, scale = m["selected_region"], m["random_samples"], m["scale_ratio"]
    for i in range(0, 20, 3):
        p = sel[i, 0][sel[i, 0] != NAN_NUMBER]
        clip = load_mat_file(clip_dir / f"a{p[0]}" / f"nmm_{rs[i, 0]}.mat")["data"]
        snr = contract_snr_db(clip, anatomy.fwd, p, np.ones(p.size), scale[i, 0, 2])
        assert snr == pytest.approx(TRAIN_SOURCE_SNR_DB[2], abs=1e-6)


def test_scale_ratios_for_clip_matches_find_alpha(anatomy):
    from esikit.head.snr import find_alpha

    clip = spike_clip(20, 1, 64)
    patches = [np.array([20, 21, 12]), np.array([20]), np.array([20, 28, 19, 29])]
    weights = [np.array([1, 0.8, 0.6]), np.array([1.0]), np.array([1, 0.9, 0.9, 0.5])]
    got = scale_ratios_for_clip(clip, anatomy.fwd, patches, weights, [10, 20])
    for p, w, row in zip(patches, weights, got):
        np.testing.assert_allclose(row, find_alpha(clip, anatomy.fwd, p, [10, 20], weights=w), rtol=1e-10)
    with pytest.raises(ValueError, match="centre"):
        scale_ratios_for_clip(clip, anatomy.fwd, [np.array([20]), np.array([21])], None, [10])
    flat = np.zeros_like(clip)
    assert not scale_ratios_for_clip(flat, anatomy.fwd, patches, None, [10]).any()


def test_n_samples_sources_and_determinism(anatomy, clip_dir):
    a = generate_metadata(anatomy, clip_dir, n_samples=50, n_sources=(1, 2), seed=7, progress=False)
    b = generate_metadata(anatomy, clip_dir, n_samples=50, n_sources=(1, 2), seed=7, progress=False)
    c = generate_metadata(anatomy, clip_dir, n_samples=50, n_sources=(1, 2), seed=8, progress=False)
    assert a["selected_region"].shape == (50, 2, 70)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["selected_region"], c["selected_region"])
    one = a["selected_region"][:, 1, 0] == NAN_NUMBER
    assert one.any() and (~one).any()
    assert (a["selected_region"][one, 1] == NAN_NUMBER).all()
    assert (a["mag_change"][one, 1] == NAN_NUMBER).all()
    assert (a["scale_ratio"][one, 1] == 0).all() and (a["random_samples"][one, 1] == 0).all()
    single = generate_metadata(anatomy, clip_dir, n_samples=12, n_sources=1, seed=7, progress=False)
    assert single["selected_region"].shape == (12, 1, 70)
    assert single["scale_ratio"].shape == (12, 1, 6)


def test_grow_mode_sizes(anatomy, clip_dir):
    m = generate_metadata(
        anatomy, clip_dir, n_samples=40, patch_mode="grow", patch_size_range=(3, 9), n_sources=1, seed=2, progress=False
    )
    sizes = (m["selected_region"][:, 0] != NAN_NUMBER).sum(axis=1)
    assert sizes.min() >= 3 and sizes.max() <= 9
    assert len(np.unique(sizes)) > 2


def test_option_errors(anatomy, clip_dir):
    with pytest.raises(ValueError, match="'patch_mode'"):
        generate_metadata(anatomy, clip_dir, patch_mode="ring", progress=False)
    with pytest.raises(ValueError, match="'n_sources'"):
        generate_metadata(anatomy, clip_dir, n_sources=3, progress=False)
    with pytest.raises(ValueError, match="'patch_size_range'"):
        generate_metadata(anatomy, clip_dir, patch_mode="grow", patch_size_range=(0, 80), progress=False)
    with pytest.raises(ValueError, match="clip_loader"):
        generate_metadata(anatomy, {3: [1]}, progress=False)
    with pytest.raises(ValueError, match="fwd has shape"):
        generate_metadata(anatomy, clip_dir, fwd=np.ones((4, 5)), progress=False)


def test_write_and_make_files(anatomy, clip_dir, tmp_path, meta):
    from esikit.io import load_mat_file

    path = write_metadata(tmp_path / "m.mat", meta)
    back = load_mat_file(path)
    for key, value in meta.items():
        np.testing.assert_array_equal(np.asarray(back[key]).reshape(value.shape), value)
    with pytest.raises(ValueError, match="'format'"):
        write_metadata(tmp_path / "x.mat", meta, format="v4")
    train, test = make_metadata_files(anatomy, clip_dir, tmp_path / "out", n_train=80, n_test=40, progress=False)
    assert train.name == "train_sample_source1.mat" and test.name == "test_sample_source1.mat"
    tr, te = load_mat_file(train), load_mat_file(test)
    assert tr["selected_region"].shape == (80, 2, 70) and te["selected_region"].shape == (40, 2, 70)
    assert tr["scale_ratio"].shape[-1] == len(TRAIN_SOURCE_SNR_DB)
    assert te["scale_ratio"].shape[-1] == len(TEST_SOURCE_SNR_DB)


def test_round_trip_through_dataset(anatomy, clip_dir, tmp_path):
    data = pytest.importorskip("esikit.data", reason="esikit.data (the metadata dataset) is not available yet")
    meta = generate_metadata(anatomy, clip_dir, n_samples=24, n_sources=(1, 2), seed=5, progress=False)
    path = write_metadata(tmp_path / "train_sample_source1.mat", meta)
    ds = data.SpikeEEGMetadataDataset(path, anatomy.fwd, nmm_spikes_dir=clip_dir)
    assert len(ds) == 24
    for i in (0, 5, 11, 23):
        info = ds.sample_info(i)
        valid = meta["selected_region"][i] != NAN_NUMBER
        ours = [meta["selected_region"][i, s][valid[s]] for s in range(2) if valid[s, 0]]
        assert info["n_sources"] == len(ours)
        for got, want in zip(info["patches"], ours):
            np.testing.assert_array_equal(np.asarray(got), want)
        assert info["snr_db"] == pytest.approx(meta["current_snr"][i, 0])
        eeg, source = ds[i]
        assert tuple(eeg.shape) == (N_TIMES, anatomy.fwd.shape[0])
        assert tuple(source.shape) == (N_TIMES, anatomy.fwd.shape[1])
        labelled = np.zeros(anatomy.fwd.shape[1], bool)
        for p in ours:
            labelled[p] = True
        src = np.asarray(source)
        assert not src[:, ~labelled].any()
        assert np.abs(src[:, labelled]).max() > 0


def _deepsif_clip_loader(n_regions, n_times=500):
    """In-memory spike clips for any (region, k): a shared background plus a spike."""
    rng = np.random.default_rng(0)
    background = (0.2 * rng.normal(size=(n_times, n_regions))).astype(np.float64)
    t = np.arange(n_times)
    spike = 5.0 * np.exp(-0.5 * ((t - 250) / 5.0) ** 2) - 1.5 * np.exp(-0.5 * ((t - 285) / 15.0) ** 2)

    def load(region, k):
        x = background.copy() * (1.0 + 0.1 * k)
        x[:, region] += spike
        return x

    return load


def test_deepsif_template(deepsif_anatomy_dir):
    from esikit.head.anatomy import load_deepsif_anatomy

    anat = load_deepsif_anatomy(deepsif_anatomy_dir)
    regions = np.random.default_rng(0).choice(994, 60, replace=False)
    clips = {int(r): [1, 2] for r in regions}
    t0 = time.perf_counter()
    m = generate_metadata(
        anat, clips, n_samples=2000, clip_loader=_deepsif_clip_loader(994), seed=0, progress=False
    )
    elapsed = time.perf_counter() - t0
    assert m["selected_region"].shape == (2000, 2, 70)
    sizes = (m["selected_region"] != NAN_NUMBER).sum(axis=2)
    assert sizes.min() >= 4 and sizes.max() <= 70
    assert set(np.unique(m["selected_region"][:, :, 0])) <= set(clips)
    assert (m["scale_ratio"] > 0).all()
    assert elapsed < 60, f"2000 samples took {elapsed:.1f} s"


@pytest.mark.slow
def test_full_deepsif_size_benchmark(deepsif_anatomy_dir):
    """DeepSIF's full training design: 993 centres x 48 variations x 4 SNR levels."""
    from esikit.head.anatomy import load_deepsif_anatomy

    anat = load_deepsif_anatomy(deepsif_anatomy_dir)
    clips = {r: [1, 2] for r in range(994) if r != 7}
    t0 = time.perf_counter()
    m = generate_metadata(anat, clips, clip_loader=_deepsif_clip_loader(994), seed=0, progress=False)
    elapsed = time.perf_counter() - t0
    assert m["selected_region"].shape == (190_656, 2, 70)
    assert (m["scale_ratio"] > 0).all()
    print(f"190,656 samples in {elapsed:.1f} s")


def test_write_switches_to_v73_when_too_large(meta, tmp_path, monkeypatch):
    import esikit.io
    from esikit.io import detect_mat_format, load_mat_file

    small = {k: v[:8] for k, v in meta.items()}
    path = write_metadata(tmp_path / "small.mat", small)
    assert detect_mat_format(path) == "v5"
    # pretend the fields are over MAT v5's 2 GiB per-variable limit
    monkeypatch.setattr(esikit.io, "fits_in_mat_v5", lambda data: False)
    path = write_metadata(tmp_path / "big.mat", small)
    assert detect_mat_format(path) == "v7.3"
    back = load_mat_file(path)
    for key, value in small.items():
        np.testing.assert_array_equal(np.asarray(back[key]).reshape(value.shape), value)


# --------------------------------------------------------------------------------------
# The 'deepsif' preset: a small folder laid out like DeepSIF's anatomy/, its files read
# back with a re-statement of DeepSIF's loader.

ONE_WAY = [(27, 28), (36, 44), (9, 1)]  # (r, q): r lists q, q does not list r
FOLDED_SCALE = 1.5  # folded-cortex centroids are the inflated ones x 1.5: distances x 1.5


def write_deepsif_folder(folder, anatomy, one_way=ONE_WAY, with_cortex=True, distances=None):
    """DeepSIF's anatomy files for the grid anatomy: one-way pairs in ``nbs``, 4 vertices
    per region whose folded centroid is ``FOLDED_SCALE`` x the inflated centre."""
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    adj = sp.csr_matrix(anatomy.adjacency, dtype=bool).tolil()
    for r, q in one_way:
        adj[q, r] = False
    adj = adj.tocsr()
    n = adj.shape[0]
    nbs = np.empty((1, n), dtype=object)
    for r in range(n):
        nbs[0, r] = (adj.indices[adj.indptr[r]:adj.indptr[r + 1]] + 1).astype(np.float64).reshape(1, -1)
    offsets = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    rm = np.repeat(np.arange(n), 4)
    pos = np.repeat(anatomy.centres * FOLDED_SCALE, 4, axis=0) + np.tile(offsets, (n, 1))
    scipy.io.savemat(folder / f"leadfield_{anatomy.fwd.shape[0]}_{n}.mat", {"fwd": anatomy.fwd})
    scipy.io.savemat(folder / "fs_cortex_20k_region_mapping.mat", {"nbs": nbs, "rm": rm.reshape(1, -1).astype(float)})
    scipy.io.savemat(folder / "fs_cortex_20k_inflated.mat", {"centre": anatomy.centres})
    if with_cortex:
        scipy.io.savemat(folder / "fs_cortex_20k.mat", {"pos": pos, "tri": np.ones((1, 3))})
    if distances is not None:
        scipy.io.savemat(folder / "dis_matrix_fs_20k.mat", {"raw_dis_matrix": distances})
    return folder


@pytest.fixture(scope="module")
def deepsif_folder(tmp_path_factory, anatomy):
    return write_deepsif_folder(tmp_path_factory.mktemp("deepsif") / "anatomy", anatomy)


@pytest.fixture(scope="module")
def deepsif_files(deepsif_folder, clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepsif_out")
    files = make_metadata_files(deepsif_folder, clip_dir, out, n_train=None, n_test=None, preset="auto",
                                train_kw={"n_variations": 5}, progress=False)
    return files


def deepsif_ispadding(x):
    """DeepSIF's utils.ispadding."""
    return np.abs(x - 15213) < 1e-6


def deepsif_loader_item(meta, index, fwd, clip_of_nmm_idx, scale_choice):
    """An independent re-statement of DeepSIF's loaders.SpikeEEGBuild.__getitem__ (written
    for this test from its published behaviour, not esikit's code), noise-free: returns
    the target (T x R, normalized) and the clean EEG. ``scale_choice[kk]`` replaces its
    ``random.randint(0, num_scale_ratio - 1)``."""
    num_scale_ratio = meta["scale_ratio"].shape[2]  # DeepSIF reads axis 2: a 3-D field
    raw_lb = meta["selected_region"][index].astype(int)
    lb = raw_lb[np.logical_not(deepsif_ispadding(raw_lb))]
    first = clip_of_nmm_idx[int(meta["nmm_idx"][index][0])]
    raw_nmm = np.zeros((first.shape[0], fwd.shape[1]))
    for kk in range(raw_lb.shape[0]):  # every source slot of the row
        curr_lb = raw_lb[kk, np.logical_not(deepsif_ispadding(raw_lb[kk]))]
        current_nmm = clip_of_nmm_idx[int(meta["nmm_idx"][index][kk])].copy()
        ssig = current_nmm[:, [curr_lb[0]]]  # IndexError on an all-padding slot
        assert 0 <= scale_choice[kk] < num_scale_ratio
        ssig = ssig / np.max(ssig) * meta["scale_ratio"][index][kk][scale_choice[kk]]
        current_nmm[:, curr_lb] = ssig.reshape(-1, 1)
        weight_decay = meta["mag_change"][index][kk]
        weight_decay = weight_decay[np.logical_not(deepsif_ispadding(weight_decay))]
        current_nmm[:, curr_lb] = ssig.reshape(-1, 1) * weight_decay  # shapes must agree
        raw_nmm = raw_nmm + current_nmm
    eeg = np.matmul(fwd, raw_nmm.transpose())
    csnr = meta["sensor_snr"][index]
    assert np.shape(csnr) == (1,) and 10 ** (-(csnr / 10)) > 0  # add_white_noise's use of it
    empty_nmm = np.zeros_like(raw_nmm)
    empty_nmm[:, lb] = raw_nmm[:, lb]
    return empty_nmm / np.max(empty_nmm), eeg


def _clips_by_nmm_idx(meta, n_regions, nper):
    """What DeepSIF's *_nmm.h5 holds at row nmm_idx: the clip of (centre, k)."""
    out = {}
    for idx, k, c in zip(meta["nmm_idx"].ravel(), meta["random_samples"].ravel(), meta["selected_region"][:, :, 0].ravel()):
        assert idx == (c + 1) * nper + k + 1
        out[int(idx)] = spike_clip(int(c), int(k), n_regions)
    return out


def test_deepsif_preset_files_read_by_deepsif_loader(deepsif_files, anatomy):
    import scipy.io

    assert deepsif_files.preset == "deepsif"
    assert sorted(deepsif_files.by_sources) == [1, 2]
    assert [p.name for p in deepsif_files] == ["train_sample_source2.mat", "test_sample_source2.mat"]
    n_regions = anatomy.fwd.shape[1]
    for n_src, (train, test) in deepsif_files.by_sources.items():
        assert (train.name, test.name) == (f"train_sample_source{n_src}.mat", f"test_sample_source{n_src}.mat")
        for path, k_opts, n_var in ((train, len(TRAIN_SOURCE_SNR_DB), 5), (test, len(TEST_SOURCE_SNR_DB), 3)):
            meta = scipy.io.loadmat(path)  # DeepSIF's SpikeEEGBuild reads the file this way
            n = len(CLIP_REGIONS) * n_var * 4
            assert meta["selected_region"].shape == (n, n_src, 70)
            assert meta["nmm_idx"].shape == (n, n_src) and meta["nmm_idx"].dtype.kind == "i"
            assert meta["scale_ratio"].shape == (n, n_src, k_opts)
            assert meta["mag_change"].shape == (n, n_src, 70)
            assert meta["sensor_snr"].shape == (n, 1)
            np.testing.assert_array_equal(meta["sensor_snr"], meta["current_snr"])
            # every slot of every row is a source (DeepSIF's loader indexes curr_lb[0])
            assert not deepsif_ispadding(meta["selected_region"][:, :, 0]).any()
            np.testing.assert_array_equal(deepsif_ispadding(meta["selected_region"]), deepsif_ispadding(meta["mag_change"]))
            assert (meta["scale_ratio"] > 0).all()
            clips = _clips_by_nmm_idx(meta, n_regions, N_CLIPS)
            for index in range(0, n, 7):
                target, eeg = deepsif_loader_item(meta, index, anatomy.fwd, clips, [0] * n_src)
                assert np.isfinite(target).all() and target.max() == pytest.approx(1.0)


def test_deepsif_preset_choices(deepsif_files, anatomy, deepsif_folder, clip_dir):
    from esikit.head.deepsif_template import load_deepsif_template
    from esikit.head.patches import CandidatePatches
    from esikit.io import load_mat_file

    template = load_deepsif_template(deepsif_folder)
    assert template.n_one_way == len(ONE_WAY)
    train2 = load_mat_file(deepsif_files.by_sources[2][0])
    sel = np.asarray(train2["selected_region"])
    mag = np.asarray(train2["mag_change"])
    # patches are DeepSIF candidates grown over the lists as given (seed of the source2 train file: 2)
    cands = CandidatePatches(template.adjacency, template.centres, seed=2, symmetrize=False)
    sym = CandidatePatches(template.adjacency, template.centres, seed=2)
    n_cfg = len(CLIP_REGIONS) * 5
    first = sel[::4, 0]
    for cfg in range(n_cfg):
        c, v = CLIP_REGIONS[cfg // 5], cfg % 5
        patch = first[cfg][first[cfg] != NAN_NUMBER]
        if v < cands.count(c):
            np.testing.assert_array_equal(patch, cands.get(c, v))
    assert any(cands.count(c) != sym.count(c) for c in (28, 44, 1))
    # second centres: per variation a permutation of the centres with clips
    second = sel[::4, 1, 0].reshape(len(CLIP_REGIONS), 5)
    for v in range(5):
        assert sorted(second[:, v]) == CLIP_REGIONS
    # mag_change from the folded-cortex distances (x 1.5 the inflated ones here)
    i, s = 8, 1
    patch = sel[i, s][sel[i, s] != NAN_NUMBER]
    d = FOLDED_SCALE * np.linalg.norm(anatomy.centres[patch] - anatomy.centres[patch[0]], axis=1)
    w = mag[i, s][: patch.size]
    half = np.sqrt(-(d[1:] ** 2) / (2 * np.log(w[1:]))) / 0.8493 if patch.size > 1 else None
    if half is not None:
        np.testing.assert_allclose(half, half[0], rtol=1e-9)
        assert 40 <= half[0] <= 60
    # scale_ratio as DeepSIF computes it: weight 1 on every patch region
    k = int(np.asarray(train2["random_samples"])[i, s])
    want = scale_ratios_for_clip(spike_clip(int(patch[0]), k, anatomy.fwd.shape[1]), anatomy.fwd, [patch], None,
                                 TRAIN_SOURCE_SNR_DB)
    np.testing.assert_allclose(np.asarray(train2["scale_ratio"])[i, s], want[0], rtol=1e-10)


def test_deepsif_preset_second_source_may_overlap(anatomy, clip_dir):
    """DeepSIF draws the second source freely: over many draws some overlap the first."""
    m = generate_metadata(anatomy, clip_dir, n_variations=30, patch_mode="deepsif", second_source="deepsif",
                          n_sources=2, seed=4, progress=False)
    sel = m["selected_region"][::4]
    overlaps = sum(np.intersect1d(a[a != NAN_NUMBER], b[b != NAN_NUMBER]).size > 0 for a, b in sel)
    apart = generate_metadata(anatomy, clip_dir, n_variations=30, n_sources=2, seed=4, progress=False)["selected_region"][::4]
    assert overlaps > 0
    assert all(np.intersect1d(a[a != NAN_NUMBER], b[b != NAN_NUMBER]).size == 0 for a, b in apart)


def test_deepsif_preset_files_read_by_esikit_dataset(deepsif_files, anatomy, clip_dir):
    data = pytest.importorskip("esikit.data", reason="esikit.data (the metadata dataset) is not available yet")
    from esikit.io import load_mat_file

    for n_src, (train, _test) in deepsif_files.by_sources.items():
        ds = data.SpikeEEGMetadataDataset(train, anatomy.fwd, nmm_spikes_dir=clip_dir)
        meta = load_mat_file(train)
        clips = _clips_by_nmm_idx({k: np.asarray(v) for k, v in meta.items()}, anatomy.fwd.shape[1], N_CLIPS)
        k_opts = np.asarray(meta["scale_ratio"]).shape[2]
        for i in (0, 13, len(ds) - 1):
            assert ds.sample_info(i)["n_sources"] == n_src
            _eeg, source = ds[i]
            # esikit's target is DeepSIF's for one of the scale choices
            import itertools

            targets = [deepsif_loader_item({k: np.asarray(v) for k, v in meta.items()}, i, anatomy.fwd, clips, list(js))[0]
                       for js in itertools.product(range(k_opts), repeat=n_src)]
            assert min(np.abs(np.asarray(source) - t).max() for t in targets) < 1e-5


def test_deepsif_preset_bad_input(anatomy, clip_dir, tmp_path):
    from esikit.head.deepsif_template import load_deepsif_template
    from esikit.simulate.metadata import make_deepsif_metadata_files, resolve_preset

    folder = write_deepsif_folder(tmp_path / "a", anatomy, with_cortex=False)
    (folder / "fs_cortex_20k_inflated.mat").unlink()
    with pytest.raises(FileNotFoundError) as err:
        make_metadata_files(folder, clip_dir, tmp_path / "out", 8, 8, preset="deepsif", progress=False)
    assert "fs_cortex_20k_inflated.mat" in str(err.value) and "fs_cortex_20k.mat" in str(err.value)
    assert "dis_matrix_fs_20k.mat" in str(err.value)
    assert resolve_preset("auto", folder) == "esikit"  # incomplete: auto falls back
    with pytest.raises(ValueError, match="'preset'"):
        resolve_preset("matlab", folder)
    with pytest.raises(ValueError, match="anatomy folder"):
        make_deepsif_metadata_files("default", clip_dir, tmp_path / "out", 8, 8)
    # DeepSIF's own distance file wins over the cortex when present
    dist = np.full((64, 64), 7.0)
    np.fill_diagonal(dist, 0.0)
    folder2 = write_deepsif_folder(tmp_path / "b", anatomy, with_cortex=False, distances=dist)
    t = load_deepsif_template(folder2)
    assert t.distance_source == "dis_matrix_fs_20k.mat"
    np.testing.assert_array_equal(t.distances, dist)
    bad = write_deepsif_folder(tmp_path / "c", anatomy, distances=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="raw_dis_matrix"):
        load_deepsif_template(bad)
    # fields missing or misshapen: every problem in one message
    import scipy.io

    scipy.io.savemat(bad / "fs_cortex_20k_inflated.mat", {"centres": anatomy.centres})
    scipy.io.savemat(bad / "fs_cortex_20k_region_mapping.mat", {"rm": np.zeros((1, 256))})
    with pytest.raises(ValueError) as err:
        load_deepsif_template(bad)
    text = str(err.value)
    assert "2 problem(s)" in text and "no field 'centre'" in text and "no field 'nbs'" in text


def test_deepsif_template_neighbour_lists(deepsif_anatomy_dir):
    """The real template read as DeepSIF's script reads it (neighbour lists only)."""
    import scipy.io

    from esikit.head.deepsif_template import load_deepsif_template

    t = load_deepsif_template(deepsif_anatomy_dir)
    nbs = scipy.io.loadmat(deepsif_anatomy_dir / "fs_cortex_20k_region_mapping.mat")["nbs"]
    for r in (0, 7, 500, 993):
        np.testing.assert_array_equal(t.adjacency[r].indices, np.sort(np.asarray(nbs[0, r], float).ravel() - 1))
    assert t.n_one_way == 212
    assert t.distances.shape == (994, 994) and np.allclose(t.distances, t.distances.T)


def _fake_spike_clips(anat, nmm_dir, regions, **_kw):
    """Stands in for the NMM simulation: 1 synthetic clip per region (no network run)."""
    from esikit.io import save_mat_file
    from esikit.simulate.spikes import RegionClipResult

    out = {}
    for r in regions:
        (nmm_dir / f"a{r}").mkdir(parents=True, exist_ok=True)
        save_mat_file(nmm_dir / f"a{r}" / "nmm_1.mat", {"data": spike_clip(r, 1, anat.n_regions, 500)})
        out[r] = RegionClipResult(region=r, n_clips=1, peaks_per_setting=[1], clips_per_setting=[1],
                                  alpha_per_setting=[1.0], simulated_s=1.0)
    return out


def test_simulate_command_deepsif_preset(deepsif_anatomy_dir, tmp_path, monkeypatch, capsys):
    """esikit simulate --anatomy <DeepSIF folder> --preset deepsif: the metadata steps on the
    real template (the simulation itself is replaced by synthetic clips)."""
    from esikit.commands.simulate import main

    monkeypatch.setattr("esikit.simulate.pipeline.make_spike_clips", _fake_spike_clips)
    out = tmp_path / "ds"
    code = main(["simulate", str(out), "--anatomy", str(deepsif_anatomy_dir), "--preset", "deepsif",
                 "--regions", "3,500", "--n-train", "24", "--n-test", "8", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    src = out / "source"
    import json
    import scipy.io

    summary = json.loads((out / "dataset.json").read_text())
    assert summary["config"]["metadata_preset"] == "deepsif"
    assert sorted(summary["metadata_files"]) == ["1", "2"]
    for n in (1, 2):
        for split, size in (("train", 24), ("test", 8)):
            meta = scipy.io.loadmat(src / f"{split}_sample_source{n}.mat")
            assert meta["selected_region"].shape == (size, n, 70)
            assert not deepsif_ispadding(meta["selected_region"][:, :, 0]).any()
            assert "sensor_snr" in meta
    assert f"TRAIN_METADATA_PATH = {str((src / 'train_sample_source2.mat').resolve())!r}" in text
    assert "1 source(s)" in text and "2 source(s)" in text


def test_simulate_command_deepsif_preset_needs_the_folder(tmp_path, capsys):
    from esikit.commands.simulate import main

    # the built-in anatomy is refused before anything is simulated
    code = main(["simulate", str(tmp_path / "x"), "--preset", "deepsif", "--no-progress"])
    assert code == 2 and "anatomy folder" in capsys.readouterr().out


def test_esikit_mixed_file_is_what_deepsif_loader_cannot_read(anatomy, clip_dir):
    """Why the deepsif preset writes one file per source count: DeepSIF's loader indexes
    every slot, and the absent source of a one-source row in a mixed file is all padding."""
    meta = generate_metadata(anatomy, clip_dir, n_samples=40, n_sources=(1, 2), seed=7, progress=False)
    meta["sensor_snr"] = meta["current_snr"]
    one = np.flatnonzero(meta["selected_region"][:, 1, 0] == NAN_NUMBER)
    assert one.size
    clips = {int(i): spike_clip(int(c), int(k), anatomy.fwd.shape[1])
             for i, k, c in zip(meta["nmm_idx"].ravel(), meta["random_samples"].ravel(),
                                meta["selected_region"][:, :, 0].ravel()) if c != NAN_NUMBER}
    clips[0] = spike_clip(0, 1, anatomy.fwd.shape[1])  # row 0 of DeepSIF's *_nmm.h5: nmm_idx 0 reads it
    with pytest.raises(IndexError):
        deepsif_loader_item(meta, int(one[0]), anatomy.fwd, clips, [0, 0])


# -- reproducibility: the same seed and options give the same files -----------------------
# Fingerprints (tests/conftest.py array_fingerprint) of files made before the generator was
# rebuilt on esikit.head.configs: a refactor must leave every field and value as it was.

METADATA_FINGERPRINTS = {
    "esikit": "e193c289a561a2cf54f3de514fb34f350212dc90687e02b61a1e8d9a6c34275b",
    "deepsif": "710d236bbaa195531d08984b55a9d81bc722a9090a75c6de08728849f84392af",
    "grow": "9a535309a38fa80cba51b4c037c0d4c15a3fd5cc9dba67c374f440952f65c98c",
    "grow-deepsif-partner": "5b3b76ac97fc684f5df86fae868e18e62d3dab588b640dc4ee29493cf0b33fff",
}


def _written_arrays(files):
    from esikit.io import load_mat_file

    out = {}
    for n_src, pair in sorted(files.by_sources.items()):
        for path in pair:
            out.update({f"{n_src}/{path.name}/{k}": np.asarray(v) for k, v in load_mat_file(path).items()})
    return out


@pytest.mark.parametrize("case", sorted(METADATA_FINGERPRINTS))
def test_metadata_reproduces_pinned_fingerprint(case, anatomy, clip_dir, deepsif_folder, tmp_path, fingerprint):
    if case in ("esikit", "deepsif"):  # both presets, through the files esikit simulate writes
        where = deepsif_folder if case == "deepsif" else anatomy
        files = make_metadata_files(where, clip_dir, tmp_path, n_train=70, n_test=30, seed=11, preset=case,
                                    n_sources=(1, 2), progress=False)
        arrays = _written_arrays(files)
    else:
        extra = {"second_source": "deepsif"} if case == "grow-deepsif-partner" else {}
        arrays = generate_metadata(anatomy, clip_dir, n_samples=60, n_sources=(1, 2), patch_mode="grow",
                                   patch_size_range=(2, 9), half_max_mm=45.0, seed=5, progress=False, **extra)
    assert fingerprint(arrays) == METADATA_FINGERPRINTS[case]
