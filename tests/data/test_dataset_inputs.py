"""The metadata dataset's start-up checks of its inputs: clip shape and leadfield orientation."""

from __future__ import annotations

import numpy as np
import pytest

from esikit.data import SpikeEEGMetadataDataset
from esikit.data.dataset import learn_clip_shape
from esikit.data.clips import FolderClipStore
from esikit.data.toy import make_toy_dataset
from esikit.io import save_mat_file


@pytest.fixture()
def toy(tmp_path):
    return make_toy_dataset(tmp_path / "ds", n_regions=20, n_channels=8, n_train=16, n_test=2, seed=5)


def _use_clip(toy, tmp_path, region, k):
    raw = {key: v.copy() for key, v in toy["train_meta"].items()}
    raw["selected_region"][0, 0, :] = 15213
    raw["selected_region"][0, 0, 0] = region
    raw["random_samples"][0, 0] = k
    path = toy["root"] / "source" / "meta.mat"  # clips beside it
    save_mat_file(path, raw)
    return path


@pytest.mark.parametrize("region", [0, 11])  # clip 0 (first) or one in the middle: same treatment
@pytest.mark.parametrize("synthesis", ["fast", "reference"])
def test_a_bad_clip_is_a_missing_clip_wherever_it_is(toy, tmp_path, region, synthesis):
    save_mat_file(toy["nmm_spikes_dir"] / f"a{region}" / "nmm_1.mat", {"data": toy["clips"][(region, 1)][:, :19]})
    meta = _use_clip(toy, tmp_path, region, 1)
    kw = dict(synthesis=synthesis, cache_dir=tmp_path / "cache", verify_clips=synthesis == "reference")
    with pytest.raises(FileNotFoundError, match=rf"a{region}/nmm_1\.mat: clip has shape \(500, 19\), expected \(500, 20\)"):
        SpikeEEGMetadataDataset(meta, toy["fwd_path"], missing_clips="error", **kw)
    ds = SpikeEEGMetadataDataset(meta, toy["fwd_path"], missing_clips="zeros", **kw)
    assert ds.store.shape == (500, 20) and ds.fwd.shape == (8, 20)
    assert ds.clip_ids[0, 0] == -1 and "a%d/nmm_1.mat" % region in ds.missing_clip_report


def test_learn_clip_shape_takes_the_most_common(toy):
    save_mat_file(toy["nmm_spikes_dir"] / "a0" / "nmm_1.mat", {"data": toy["clips"][(0, 1)][:400]})
    (toy["nmm_spikes_dir"] / "a0" / "nmm_2.mat").write_bytes(b"")
    store = FolderClipStore(toy["nmm_spikes_dir"])
    assert learn_clip_shape(store) == (500, 20) and store.shape == (500, 20)


def test_leadfield_with_more_channels_than_regions(tmp_path):
    toy = make_toy_dataset(tmp_path / "tall", n_regions=20, n_channels=24, n_train=8, n_test=2, seed=6)
    for fwd in (toy["fwd_path"], toy["fwd"], toy["fwd"].T):  # 24 x 20 is C x R: the clips say R = 20
        ds = SpikeEEGMetadataDataset(toy["train_metadata"], fwd, cache_dir=tmp_path / "cache")
        assert ds.fwd.shape == (24, 20)
        np.testing.assert_allclose(ds.fwd, toy["fwd"].astype(np.float32))
    eeg, src = ds[0]
    assert eeg.shape == (500, 24) and src.shape == (500, 20)


def test_labels_are_checked_against_the_clips_region_count(tmp_path):
    # 128 x 76 stored C x R: before, it was transposed to 76 x 128 and labels 76..127 passed.
    toy = make_toy_dataset(tmp_path / "t", n_regions=20, n_channels=24, n_train=8, n_test=2, seed=7)
    raw = {k: v.copy() for k, v in toy["train_meta"].items()}
    raw["selected_region"][0, 0, 0] = 22  # a region only if R were 24
    save_mat_file(tmp_path / "m.mat", raw)
    with pytest.raises(ValueError, match=r"neither a region in \[0, 20\) nor padding"):
        SpikeEEGMetadataDataset(tmp_path / "m.mat", toy["fwd"].T, nmm_spikes_dir=toy["nmm_spikes_dir"],
                                cache_dir=tmp_path / "cache")


def test_the_compiled_kernel_refuses_out_of_range_ids(toy, tmp_path):
    ds = SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], cache_dir=tmp_path / "cache")
    good = ds.specs([0, 1], 0)
    ds._fast.synthesize(good, 0)  # in range: fine
    for field, value, needle in (("regions", 20, r"region ids in \[-1, 20\], expected -1 \(none\) or \[0, 20\)"),
                                 ("regions", -2, r"region ids in \[-2, "),
                                 ("clip_ids", 40, r"clip ids in \[.*, 40\], expected -1 \(none\) or \[0, 40\)")):
        bad = ds.specs([0, 1], 0)
        getattr(bad, field)[0, 0, ...] = value
        with pytest.raises(ValueError, match=needle):
            ds._fast.synthesize(bad, 0)
