"""Leadfields for any cap: geometry helpers, montages, the BEM against the sphere, references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from esikit.head import Anatomy, load_default_anatomy
from esikit.head import forward as F

TEN_TWENTY = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz",
              "P4", "P8", "O1", "O2"]


# ----------------------------------------------------------------- geometry helpers
def test_icosphere_is_closed_unit_and_outward():
    rr, tris = F.icosphere(2)
    assert rr.shape == (162, 3) and tris.shape == (320, 3)
    np.testing.assert_allclose(np.linalg.norm(rr, axis=1), 1.0)
    assert len(rr) - len({tuple(sorted(e)) for t in tris for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}) \
        + len(tris) == 2  # Euler characteristic of a sphere
    fn = np.cross(rr[tris[:, 1]] - rr[tris[:, 0]], rr[tris[:, 2]] - rr[tris[:, 0]])
    assert np.all(np.einsum("ij,ij->i", fn, rr[tris].mean(axis=1)) > 0)


def test_ray_distances_on_a_sphere_from_off_centre():
    rr, tris = F.icosphere(4)
    origin = np.array([0.2, -0.1, 0.3])
    u, _ = F.icosphere(1)
    t = F.ray_distances(origin, u, rr, tris)
    hit = origin + t[:, None] * u
    np.testing.assert_allclose(np.linalg.norm(hit, axis=1), 1.0, atol=2e-3)  # chord sag of the mesh


def test_ray_distances_refuses_an_open_surface():
    rr, tris = F.icosphere(2)
    open_tris = tris[rr[tris].mean(axis=1)[:, 2] < 0.5]  # cut the top off
    with pytest.raises(ValueError, match="cap: .* rays from the head centre never meet it"):
        F.ray_distances(np.zeros(3), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), rr, open_tris, surface="cap")


def test_vertex_normals_point_out_whatever_the_winding():
    rr, tris = F.icosphere(2)
    for t in (tris, tris[:, ::-1]):
        assert np.einsum("ij,ij->i", F.vertex_normals(rr * 0.05, t), rr).min() > 0.99


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((20, 3))
    a = 0.3
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    dst = 1.7 * src @ rot.T + [1.0, -2.0, 0.5]
    trans = F._similarity_fit(src, dst)
    np.testing.assert_allclose(F._apply(trans, src), dst, atol=1e-10)


# ----------------------------------------------------------------- a spherical head
def _sphere_anatomy(radius_mm=50.0, grade=2) -> Anatomy:
    """A cortex that is a sphere of ``radius_mm``, 8 regions by octant."""
    rr, tris = F.icosphere(grade)
    vr = (rr[:, 0] > 0) * 1 + (rr[:, 1] > 0) * 2 + (rr[:, 2] > 0) * 4
    n = 8
    return Anatomy(name="sphere", fwd=np.ones((3, n)) + np.eye(3, n), channel_names=["a", "b", "c"],
                   centres=np.zeros((n, 3)), adjacency=scipy.sparse.csr_matrix((n, n)), weights=np.zeros((n, n)),
                   tract_lengths=np.zeros((n, n)), node_of_region=np.arange(n), region_labels=[str(i) for i in range(n)],
                   vertices=rr * radius_mm, triangles=tris, vertex_region=vr)


def _sphere_geometry(r_inner=0.08, r_scalp=0.09, grade=3) -> F.HeadGeometry:
    rr, tris = F.icosphere(grade)
    return F.HeadGeometry(name="spherical", scalp_rr=rr * r_scalp, scalp_tris=tris, inner_skull_rr=rr * r_inner,
                          inner_skull_tris=tris, centre=np.zeros(3), head_to_anatomy=np.eye(4))


def test_layers_are_nested_and_clear_the_cortex():
    geom = _sphere_geometry()
    # A cortex bulging through the inner skull on one side: the skull must go round it.
    rr, _ = F.icosphere(3)
    cortex = rr * 0.06
    cortex[rr[:, 0] > 0.9] *= 0.085 / 0.06
    layers, tris = F.layered_head_surfaces(geom, cortex, grade=3)
    r = [np.linalg.norm(x, axis=1) for x in layers]
    assert np.all(r[0] < r[1]) and np.all(r[1] < r[2])
    u = cortex / np.linalg.norm(cortex, axis=1, keepdims=True)
    t = F.ray_distances(np.zeros(3), u, layers[0], tris)
    assert np.all(t >= np.linalg.norm(cortex, axis=1) + F.CORTEX_MARGIN_M - 1e-4)
    np.testing.assert_allclose(r[0][layers[0][:, 0] < -0.07], 0.08, atol=1e-3)  # untouched elsewhere


def test_cortex_in_another_frame_is_refused():
    geom = _sphere_geometry()
    rr, _ = F.icosphere(2)
    with pytest.raises(ValueError, match="reaches the spherical scalp .* in spherical's frame"):
        F.layered_head_surfaces(geom, rr * 0.06 + [0.05, 0, 0], grade=2)


def test_bem_leadfield_matches_mne_sphere_model():
    """The whole chain (layers, BEM, normals, region sums) against MNE's analytic sphere."""
    import mne

    anat = _sphere_anatomy()
    geom = _sphere_geometry(grade=2)
    names, pos = F.read_montage("standard_1020", TEN_TWENTY)
    u = pos - pos.mean(axis=0) * [1, 1, 0]
    elec = 0.09 * u / np.linalg.norm(u, axis=1, keepdims=True)
    fwd, info = F.region_leadfield(anat, names, elec, geom, grade=2)
    assert info == {"n_sources": 162, "n_dropped": 0, "head_model": "bem"}

    # Reference: MNE's three-shell sphere with the same radii and conductivities, fixed
    # radial dipoles summed by octant.
    sphere = mne.make_sphere_model((0.0, 0.0, 0.0), 0.09, relative_radii=(0.08 / 0.09, 0.085 / 0.09, 1.0),
                                   sigmas=F.CONDUCTIVITY, verbose="error")
    verts = anat.vertices / 1000.0
    src = mne.setup_volume_source_space(pos=dict(rr=verts, nn=verts / 0.05), verbose="error")
    ref_info = mne.create_info(names, 1000.0, "eeg")
    ref_info.set_montage(mne.channels.make_dig_montage(dict(zip(names, elec)), coord_frame="head"))
    ref_fwd = mne.make_forward_solution(ref_info, mne.transforms.Transform("head", "mri"), src, sphere, meg=False,
                                        verbose="error")
    gain = np.einsum("cvk,vk->cv", ref_fwd["sol"]["data"].reshape(len(names), -1, 3), verts / 0.05)
    ref = np.zeros_like(fwd)
    np.add.at(ref.T, anat.vertex_region, gain.T)
    agree = F.leadfield_agreement(fwd, ref)
    print(agree)
    # A coarse BEM (162 vertices a layer): the topographies agree, the amplitudes within 25 %.
    assert agree["corr_p5"] > 0.99
    assert agree["rel_error"] < 0.25


# ----------------------------------------------------------------- montages
def test_read_montage_subset_order_and_case():
    names, pos = F.read_montage("standard_1020", ["cz", "FP1", "O2"])
    assert names == ["Cz", "Fp1", "O2"]
    assert pos.shape == (3, 3) and np.all(np.abs(pos) < 0.2)
    assert pos[0, 2] > 0.08 and pos[1, 1] > 0.05 and pos[2, 1] < -0.05  # Cz up, Fp1 front, O2 back


def test_read_montage_lists_every_missing_channel():
    with pytest.raises(ValueError, match=r"channels \['Xx1', 'Yy2'\] are not in it"):
        F.read_montage("standard_1020", ["Cz", "Xx1", "Yy2"])
    with pytest.raises(ValueError, match="neither a file nor a montage MNE ships"):
        F.read_montage("no_such_cap")


def test_read_montage_from_a_file_and_a_recording(tmp_path):
    import mne

    sfp = tmp_path / "cap.sfp"
    sfp.write_text("Fz 0.0 0.07 0.06\nCz 0.0 0.0 0.095\nPz 0.0 -0.07 0.06\n")
    names, pos = F.read_montage(sfp)
    assert names == ["Fz", "Cz", "Pz"] and pos.shape == (3, 3)

    montage = mne.channels.make_standard_montage("easycap-M1")
    info = mne.create_info(["Fz", "Cz", "Pz", "EKG"], 250.0, ["eeg", "eeg", "eeg", "ecg"])
    raw = mne.io.RawArray(np.zeros((4, 50)), info, verbose="error")
    raw.set_montage(montage, on_missing="ignore", verbose="error")
    raw.save(tmp_path / "rec_raw.fif", verbose="error")
    names, pos = F.read_montage(tmp_path / "rec_raw.fif")
    assert names == ["Fz", "Cz", "Pz"]
    ref = F.read_montage("easycap-M1", names)[1]
    np.testing.assert_allclose(pos, ref, atol=1e-6)

    bare = mne.io.RawArray(np.zeros((2, 50)), mne.create_info(["A", "B"], 250.0, "eeg"), verbose="error")
    bare.save(tmp_path / "bare_raw.fif", verbose="error")
    with pytest.raises(ValueError, match="has no channel positions; give a montage"):
        F.read_montage(tmp_path / "bare_raw.fif")


def test_deepsif_electrodes_read_from_eeglab_struct(deepsif_anatomy_dir):
    names, pos = F.read_montage(deepsif_anatomy_dir / "electrode_75.mat")
    assert len(names) == 75 and names[0] == "Fp1"
    assert pos[0, 0] < 0 and pos[0, 1] > 0.05  # left and front, RAS metres


# ----------------------------------------------------------------- the built-in anatomy
@pytest.fixture(scope="module")
def tvb():
    return load_default_anatomy()


def test_electrodes_land_on_the_scalp(tvb):
    geom = F.head_geometry(tvb)
    names, pos = F.read_montage("GSN-HydroCel-128")
    elec, info = F.align_electrodes(names, pos, geom)
    assert info["method"] == "head frame" and info["n_shared"] < F.MIN_SHARED_NAMES
    names, pos = F.read_montage("standard_1020", TEN_TWENTY)
    elec, info = F.align_electrodes(names, pos, geom)
    assert info["method"] == "names" and info["n_shared"] == 19 and info["fit_rms_mm"] < 15
    d = elec - geom.centre
    r = F.ray_distances(geom.centre, d / np.linalg.norm(d, axis=1, keepdims=True), geom.scalp_rr, geom.scalp_tris)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), r, atol=1e-9)
    # Left-hemisphere electrodes stay left, frontal stay frontal (the frame is RAS).
    assert elec[names.index("T7"), 0] < elec[names.index("T8"), 0]
    assert elec[names.index("Fz"), 1] > elec[names.index("Pz"), 1]


def test_default_leadfield_matches_tvb_projection_at_its_sensors(tvb):
    """tvb-data's 63-channel projection, rebuilt with a coarse BEM (the full one: README)."""
    names = [c.split("/")[0] for c in tvb.channel_names]
    model, info = F.make_forward_model(tvb, F.tvb_sensor_montage(), names, grade=2)
    assert model.ch_names == names and model.fwd.shape == (63, 76) and info["n_dropped"] == 0
    agree = F.leadfield_agreement(model.fwd, tvb.fwd)
    assert agree["corr_median"] > 0.97 and agree["corr_p5"] > 0.9


def test_default_channel_positions(tvb):
    pos = F.default_channel_positions(tvb)
    assert pos.shape == (63, 3) and np.all(np.abs(pos) < 0.2)
    ref = dict(zip(*F.read_montage("standard_1020", ["Cz", "Oz"])))
    names = [c.split("/")[0] for c in tvb.channel_names]
    for ch in ("Cz", "Oz"):
        assert np.linalg.norm(pos[names.index(ch)] - ref[ch]) < 0.02


# ----------------------------------------------------------------- full-size references
@pytest.mark.slow
def test_template_leadfield_rebuilt_at_deepsif_electrodes(deepsif_anatomy_dir):
    from esikit.head import load_deepsif_anatomy

    anat = load_deepsif_anatomy(deepsif_anatomy_dir)
    model, info = F.make_forward_model(anat, deepsif_anatomy_dir / "electrode_75.mat", grade=4)
    assert model.ch_names == anat.channel_names and info["n_dropped"] == 0 and info["n_shared"] == 72
    agree = F.leadfield_agreement(model.fwd, anat.fwd)
    assert agree["corr_median"] > 0.92 and agree["corr_p5"] > 0.75


@pytest.mark.slow
def test_default_leadfield_full_bem(tvb):
    names = [c.split("/")[0] for c in tvb.channel_names]
    model, _ = F.make_forward_model(tvb, F.tvb_sensor_montage(), names, grade=4)
    agree = F.leadfield_agreement(model.fwd, tvb.fwd)
    assert agree["corr_median"] > 0.99 and agree["corr_p5"] > 0.98
