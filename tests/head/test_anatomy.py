"""Tests for esikit.head.anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from esikit.head.anatomy import (
    DEEPSIF_EXTRA_NODES,
    Anatomy,
    AnatomyFileError,
    load_anatomy,
    load_deepsif_anatomy,
    load_default_anatomy,
    region_adjacency_from_mesh,
)


@pytest.fixture(scope="module")
def default_anatomy() -> Anatomy:
    return load_default_anatomy()


@pytest.fixture(scope="module")
def deepsif_anatomy(deepsif_anatomy_dir) -> Anatomy:
    return load_deepsif_anatomy(deepsif_anatomy_dir)


def _check_adjacency(adj: scipy.sparse.csr_matrix, n: int) -> None:
    assert adj.shape == (n, n)
    assert adj.dtype == bool
    assert (adj != adj.T).nnz == 0, "adjacency must be symmetric"
    assert not adj.diagonal().any(), "adjacency must have no self loops"


def test_default_shapes(default_anatomy):
    a = default_anatomy
    assert a.fwd.shape == (63, 76)
    assert len(a.channel_names) == 63
    assert "IO1" not in a.channel_names and "IO2" not in a.channel_names
    assert a.channel_names[:2] == ["Fp1", "Fp2"]
    assert a.centres.shape == (76, 3)
    assert a.weights.shape == (76, 76) and a.tract_lengths.shape == (76, 76)
    np.testing.assert_array_equal(a.node_of_region, np.arange(76))
    assert np.isfinite(a.fwd).all()
    assert a.vertices.shape == (16384, 3)
    assert a.triangles.min() == 0 and a.triangles.max() == 16383
    assert set(np.unique(a.vertex_region)) == set(range(76))


def test_default_leadfield_full_rank(default_anatomy):
    assert np.linalg.matrix_rank(default_anatomy.fwd) == 63


def test_default_leadfield_sums_projection(default_anatomy, repo_root):
    """Independent check: recompute two columns with a plain loop over vertices."""
    import tvb_data
    from pathlib import Path
    proj = np.load(Path(tvb_data.__file__).parent / "projectionMatrix"
                   / "projection_eeg_65_surface_16k.npy")
    proj = np.delete(proj, [18, 19], axis=0)
    for r in (0, 40):
        cols = [v for v in range(proj.shape[1]) if default_anatomy.vertex_region[v] == r]
        np.testing.assert_allclose(default_anatomy.fwd[:, r], proj[:, cols].sum(axis=1))


def test_default_centres_match_mesh(default_anatomy):
    a = default_anatomy
    centroids = np.array([a.vertices[a.vertex_region == r].mean(axis=0) for r in range(76)])
    dist = np.linalg.norm(centroids - a.centres, axis=1)
    assert np.median(dist) < 10.0 and dist.max() < 25.0


def test_default_adjacency(default_anatomy):
    a = default_anatomy
    _check_adjacency(a.adjacency, 76)
    degree = np.diff(a.adjacency.indptr)
    assert degree.min() >= 3 and degree.max() <= 10
    # Neighbours are spatially close: nearer than the median inter-centre distance.
    d = np.linalg.norm(a.centres[:, None] - a.centres[None], axis=-1)
    rows, cols = a.adjacency.nonzero()
    assert np.median(d[rows, cols]) < np.median(d[np.triu_indices(76, 1)])
    np.testing.assert_array_equal(a.neighbours(0), np.sort(a.adjacency[0].indices))


def test_region_adjacency_from_mesh_toy():
    # Two triangles sharing edge (1, 2); vertex 3 has no region.
    tri = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    vr = np.array([0, 0, 1, -1, 2])
    adj = region_adjacency_from_mesh(tri, vr, 3)
    _check_adjacency(adj, 3)
    assert adj.toarray().tolist() == [[False, True, False], [True, False, True],
                                      [False, True, False]]


def test_save_load_roundtrip(default_anatomy, tmp_path):
    path = default_anatomy.save(tmp_path / "anat.npz")
    b = Anatomy.load(path)
    assert b.name == default_anatomy.name
    for key in ("fwd", "centres", "weights", "tract_lengths", "node_of_region", "vertices",
                "triangles", "vertex_region"):
        np.testing.assert_array_equal(getattr(b, key), getattr(default_anatomy, key))
    assert (b.adjacency != default_anatomy.adjacency).nnz == 0
    assert b.channel_names == default_anatomy.channel_names
    assert b.region_labels == default_anatomy.region_labels
    assert load_anatomy(path).n_regions == 76
    assert load_anatomy(tmp_path / "anat.npz").fwd.shape == (63, 76)


def test_load_anatomy_errors(tmp_path):
    with pytest.raises(ValueError, match="Invalid value for 'anatomy'"):
        load_anatomy(tmp_path / "nothing_here")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing fields"):
        Anatomy.load(tmp_path / "other.npz")


def test_anatomy_validates_shapes(default_anatomy):
    a = default_anatomy
    with pytest.raises(ValueError, match="'centres' has shape"):
        Anatomy(name="bad", fwd=a.fwd, channel_names=a.channel_names, centres=a.centres[:5],
                adjacency=a.adjacency, weights=a.weights, tract_lengths=a.tract_lengths,
                node_of_region=a.node_of_region, region_labels=a.region_labels)


def test_deepsif_anatomy(deepsif_anatomy, deepsif_anatomy_dir):
    a = deepsif_anatomy
    assert a.fwd.shape == (75, 994)
    assert len(a.channel_names) == 75 and a.channel_names[0] == "Fp1"
    assert a.centres.shape == (994, 3)
    assert a.weights.shape == (998, 998) and a.tract_lengths.shape == (998, 998)
    _check_adjacency(a.adjacency, 994)
    # The file's 1-based neighbour lists are all present (0-based) in the adjacency.
    nbs = scipy.io.loadmat(deepsif_anatomy_dir / "fs_cortex_20k_region_mapping.mat")["nbs"]
    for r in (0, 7, 500, 993):
        listed = np.asarray(nbs[0, r]).ravel().astype(int) - 1
        assert set(listed) - {r} <= set(a.neighbours(r).tolist())
    expected = np.arange(994)
    for r, node in DEEPSIF_EXTRA_NODES.items():
        expected[r] = node
    np.testing.assert_array_equal(a.node_of_region, expected)
    assert a.node_of_region[7] == 994 and a.node_of_region[325] == 997
    assert a.triangles.min() == 0 and a.triangles.max() == len(a.vertices) - 1
    assert a.vertex_region.min() == 0 and a.vertex_region.max() == 993
    assert load_anatomy(deepsif_anatomy_dir).n_regions == 994


def test_default_anatomy_is_ras(default_anatomy):
    """x right, y anterior, z superior, as DeepSIF's template: plots rely on it."""
    a = default_anatomy
    c = {label: a.centres[i] for i, label in enumerate(a.region_labels)}
    assert c["rM1"][0] > 0 > c["lM1"][0]  # right hemisphere at positive x
    assert c["rPFCPOL"][1] > 0 > c["rV1"][1]  # frontal pole anterior, V1 posterior
    assert c["rM1"][2] > c["rPFCORB"][2]  # motor cortex above orbitofrontal


def _small_anatomy(name="tvb76", seed=0) -> Anatomy:
    rng = np.random.default_rng(seed)
    n = 6
    ring = scipy.sparse.diags([np.ones(n - 1), np.ones(n - 1)], [1, -1], shape=(n, n))
    return Anatomy(name=name, fwd=rng.standard_normal((4, n)), channel_names=list("ABCD"),
                   centres=rng.standard_normal((n, 3)), adjacency=ring, weights=rng.random((n, n)),
                   tract_lengths=rng.random((n, n)), node_of_region=np.arange(n),
                   region_labels=[f"r{i}" for i in range(n)])


@pytest.mark.parametrize("cut", ["half", "tail", "empty"])
def test_truncated_anatomy_file_is_named(tmp_path, cut):
    path = _small_anatomy().save(tmp_path / "anat.npz")
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "tail": data[:-40], "empty": b""}[cut])
    with pytest.raises(AnatomyFileError) as err:
        load_anatomy(path)
    text = str(err.value)
    assert text.startswith(f"{path}: cannot read the anatomy file, it is truncated or damaged")
    assert "esikit simulate" in text and isinstance(err.value, ValueError)


def test_damaged_member_is_named(tmp_path):
    path = _small_anatomy().save(tmp_path / "anat.npz")
    data = bytearray(path.read_bytes())
    i = data.index(b"fwd.npy") + 200  # inside the compressed fwd member
    data[i:i + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(AnatomyFileError, match="truncated or damaged"):
        Anatomy.load(path)


def test_truncated_dataset_copy_is_rebuilt_from_its_record(tmp_path, monkeypatch, caplog):
    import json

    import esikit.head.anatomy as anatomy_module

    source = _small_anatomy()
    monkeypatch.setattr(anatomy_module, "load_default_anatomy", lambda: source)
    path = source.save(tmp_path / "ds" / "anatomy" / "anatomy.npz")
    (tmp_path / "ds" / "dataset.json").write_text(
        json.dumps({"status": "complete", "config": {"anatomy": "tvb76", "anatomy_name": "tvb76"}}))
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        anat = load_anatomy(tmp_path / "ds" / "anatomy")
    assert "truncated or damaged" in caplog.text and "Rebuilt it" in caplog.text
    np.testing.assert_array_equal(anat.fwd, source.fwd)
    np.testing.assert_array_equal(Anatomy.load(path).fwd, source.fwd)  # rewritten, readable again
    # recorded under another name: not rebuilt from a different anatomy, the error stays
    (tmp_path / "ds" / "dataset.json").write_text(
        json.dumps({"config": {"anatomy": "tvb76", "anatomy_name": "deepsif994"}}))
    path.write_bytes(b"")
    with pytest.raises(AnatomyFileError):
        load_anatomy(path)
