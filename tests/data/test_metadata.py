"""Metadata reading: layouts, padding, and every validation error, reported at once."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.data import MetadataError, metadata_from_arrays, read_metadata
from esikit.data.toy import make_toy_metadata


def _meta(n=6, r=20, seed=0, **kw):
    return make_toy_metadata(np.random.default_rng(seed), n, r, 2, **kw)


def test_normalized_layout_and_padding():
    raw = _meta(padding=999)
    m = metadata_from_arrays(raw, 20)
    assert m.regions.shape == (6, 2, 8) and m.regions.dtype == np.int32
    assert m.weights.shape == (6, 2, 8)
    assert m.scale_ratio.shape == (6, 2, 3)
    assert m.snr_db.shape == (6,)
    pad = ~np.isfinite(raw["selected_region"]) | (raw["selected_region"] >= 20)
    assert np.all(m.regions[pad] == -1) and np.all(m.weights[pad] == 0)
    assert np.array_equal(m.present, raw["selected_region"][:, :, 0] < 20)
    assert m.patches(0)[0][0] == raw["selected_region"][0, 0, 0]


def test_label_out_of_range_is_an_error_not_padding():
    raw = _meta(n=8, r=20)
    raw["selected_region"][0, 0, 1] = 25  # a typo inside a patch
    raw["selected_region"][0, 0, 2] = 3.5  # fractional
    two = 1 + np.nonzero(raw["selected_region"][1:, 1, 0] < 20)[0][0]
    raw["selected_region"][two, 1, 0] = 33  # a second source's centre
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="x.mat")
    text = str(err.value)
    assert len(err.value.problems) == 1, text  # not also "centre must come first"
    assert "3 label(s) (1 of them source centres) are neither a region in [0, 20) nor padding" in text
    assert f"in samples 0, {two} (values 3.5, 25, 33)" in text


@pytest.mark.parametrize("pad", [15213, 999, -1, np.nan])
def test_every_padding_value_is_padding(pad):
    raw = _meta()
    ref = metadata_from_arrays(raw, 20)
    sel = raw["selected_region"]
    sel[sel == 15213] = pad
    m = metadata_from_arrays(raw, 20)
    np.testing.assert_array_equal(m.regions, ref.regions)


def test_unsigned_labels_never_reach_the_kernel_out_of_range():
    raw = _meta(n=8)
    ref = metadata_from_arrays(raw, 20)
    sel = raw["selected_region"].copy()
    # uint16 with DeepSIF's padding is fine (15213 fits) and gives the same regions
    raw["selected_region"] = sel.astype(np.uint16)
    m = metadata_from_arrays(raw, 20)
    np.testing.assert_array_equal(m.regions, ref.regions)
    assert m.regions.dtype == np.int32 and m.regions.min() >= -1 and m.regions.max() < 20
    # -1 padding written into uint16 becomes 65535: refused, with the cause
    wrapped = sel.copy()
    wrapped[wrapped == 15213] = -1
    raw["selected_region"] = wrapped.astype(np.int64).astype(np.uint16)
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="u16.mat")
    text = str(err.value)
    assert "(uint16)" in text and "equal 65535, the largest uint16 value" in text
    assert "-1 padding wrapped around by an unsigned type" in text and len(err.value.problems) == 1
    # uint8: 255 the same way
    raw["selected_region"] = wrapped.astype(np.int64).astype(np.uint8)
    with pytest.raises(MetadataError, match="equal 255, the largest uint8 value"):
        metadata_from_arrays(raw, 20)


def test_integer_type_too_small_for_the_regions():
    raw = _meta(n=6, r=300)
    raw["selected_region"] = raw["selected_region"].astype(np.int64).astype(np.uint8)
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 300, path="u8.mat")
    assert "has dtype uint8, which holds at most 255, but region ids go up to 299 (R=300)" in str(err.value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.int32, np.uint16, np.uint32, np.uint64])
def test_regions_are_in_range_or_the_file_is_refused(dtype):
    rng = np.random.default_rng(1)
    for _ in range(20):
        raw = _meta(n=10)
        sel = raw["selected_region"]
        hits = rng.random(sel.shape) < 0.05
        sel[hits] = rng.choice([-1, -7, 19, 20, 21, 40000, 65535, 15213, 999], size=hits.sum())
        raw["selected_region"] = sel.astype(np.int64).astype(dtype)  # unsigned: negatives wrap around
        try:
            m = metadata_from_arrays(raw, 20)
        except MetadataError:
            continue
        assert m.regions.min() >= -1 and m.regions.max() < 20


def test_one_based_labels_are_named():
    raw = _meta(n=30)
    sel = raw["selected_region"]
    sel[sel < 20] += 1  # MATLAB numbering: 1..20
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="m.mat")
    text = str(err.value)
    assert "labels look 1-based" in text and "subtract 1" in text and "equal R=20" in text
    assert len(err.value.problems) == 1, text



def test_padding_999_is_not_a_one_based_hint_with_999_regions():
    """With R = 999 the padding value 999 equals R: still padding, never "labels look 1-based"."""
    raw = _meta(n=12, r=20)
    sel = raw["selected_region"]
    region = np.isfinite(sel) & (sel < 20)
    sel[region] += 500  # labels 500..519 of a 999-region anatomy, none of them 0
    sel[~region] = 999
    m = metadata_from_arrays(raw, 999)
    assert np.all(m.regions[~region] == -1) and np.array_equal(m.regions[region], sel[region].astype(int))

def test_complex_fields():
    raw = _meta()
    ref = metadata_from_arrays(raw, 20)
    raw["selected_region"] = raw["selected_region"] + 0j
    raw["scale_ratio"] = raw["scale_ratio"].astype(np.complex64)
    m = metadata_from_arrays(raw, 20)  # imaginary parts exactly 0: the real part is used
    np.testing.assert_array_equal(m.regions, ref.regions)
    np.testing.assert_allclose(m.scale_ratio, ref.scale_ratio, rtol=1e-6)
    raw["selected_region"] = raw["selected_region"] + 1e-9j
    raw["current_snr"] = np.array(["5 dB"] * 6)
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="c.mat")
    text = str(err.value)
    assert "field 'selected_region' is complex (complex128) with" in text and "expected real numbers" in text
    assert "field 'current_snr' has dtype <U4, expected real numbers" in text


def test_zero_imaginary_part_is_said(caplog):
    raw = _meta()
    raw["selected_region"] = raw["selected_region"] + 0j
    with caplog.at_level("WARNING"):
        metadata_from_arrays(raw, 20, path="c.mat")
    assert "field 'selected_region' is complex" in caplog.text and "using the real part" in caplog.text


def test_singleton_dimension_variants_are_accepted():
    raw = _meta(n=5, max_sources=1)
    variants = {
        "selected_region": raw["selected_region"][:, 0, :],  # N x P
        "mag_change": raw["mag_change"],  # N x 1 x P
        "scale_ratio": raw["scale_ratio"][:, 0, :],  # N x K for S = 1
        "random_samples": raw["random_samples"].T,  # 1 x N row vector
        "nmm_idx": raw["nmm_idx"][:, 0],  # N
        "current_snr": raw["current_snr"].T[..., None],  # 1 x N x 1
    }
    m = metadata_from_arrays(variants, 20)
    ref = metadata_from_arrays(raw, 20)
    for name in ("regions", "weights", "scale_ratio", "snr_db", "random_samples", "nmm_idx"):
        np.testing.assert_array_equal(getattr(m, name), getattr(ref, name))


def test_sensor_snr_alias():
    raw = _meta()
    raw["sensor_snr"] = raw.pop("current_snr")
    assert metadata_from_arrays(raw, 20).snr_db.shape == (6,)


def test_every_problem_reported_at_once():
    raw = _meta(n=8)
    raw["scale_ratio"][1, 0, 0] = np.nan
    raw["scale_ratio"][2, 0, 1] = -1.0
    raw["mag_change"][3, 0, 0] = np.inf
    raw["current_snr"][4] = np.nan
    raw["selected_region"][5] = 15213  # a sample with no source
    raw["random_samples"][6, 0] = np.nan  # centre but no clip
    raw["nmm_idx"][6, 0] = np.nan
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="x.mat")
    text = str(err.value)
    assert "x.mat" in text and len(err.value.problems) == 5
    for needle in ("'scale_ratio'", "samples 1, 2", "'mag_change'", "'current_snr'", "no source at all",
                   "centre but no clip"):
        assert needle in text, needle


def test_padded_centre_with_regions_is_an_error():
    raw = _meta()
    raw["selected_region"][0, 0, 0] = 15213
    raw["selected_region"][0, 0, 1] = 4
    with pytest.raises(MetadataError, match="centre must come first"):
        metadata_from_arrays(raw, 20)


def test_bad_shapes_and_missing_fields():
    raw = _meta(n=6)
    raw["nmm_idx"] = np.zeros((3, 2))
    raw["mag_change"] = raw["mag_change"][:, :, :5]
    del raw["current_snr"]
    with pytest.raises(MetadataError) as err:
        metadata_from_arrays(raw, 20, path="m.mat")
    text = str(err.value)
    assert "field 'nmm_idx' has shape (3, 2), expected (N, S) with N=6, S=2" in text
    assert "field 'mag_change' has shape (6, 2, 5)" in text
    assert "current_snr" in text
    raw = _meta()
    del raw["random_samples"], raw["nmm_idx"]
    with pytest.raises(MetadataError, match="random_samples or nmm_idx"):
        metadata_from_arrays(raw, 20)
    metadata_from_arrays(raw, 20, require_clip_field=False)  # a mapping function will choose


def test_read_metadata_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        read_metadata(tmp_path / "nope.mat", 20)


def test_summary_counts():
    raw = _meta(n=40, one_source_fraction=0.5)
    s = metadata_from_arrays(raw, 20).summary()
    assert s["n_samples"] == 40
    assert sum(s["sources_per_sample"].values()) == 40
    assert set(s["snr_levels_db"]) <= {5.0, 10.0, 15.0, 20.0}
    assert 1 <= s["patch_size_min"] <= s["patch_size_max"] <= 8
