"""Recorded sensor noise: the noise bank, its checks, the draws, and reference = fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esikit.data import SpikeEEGMetadataDataset
from esikit.data.noise import NoiseBankError, draw_noise_choice, load_noise_bank
from esikit.data.synthesis import synthesize_sample
from esikit.data.toy import make_toy_dataset
from esikit.io import save_mat_file

N_CH = 12


def _close(a, b, rtol=2e-4):
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, atol=rtol * scale, rtol=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("noise"), n_regions=30, n_channels=N_CH, n_train=24, n_test=2,
                            seed=5)


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    # DeepSIF's layout (K x L x C), segments a little longer than the samples.
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 530, N_CH)) * np.linspace(1, 3, N_CH) + np.sin(np.arange(530) / 9)[None, :, None]
    path = tmp_path_factory.mktemp("bank") / "realistic_noise.mat"
    save_mat_file(path, {"data": data, "npower": (data ** 2).sum(axis=1)})
    return path


def _ds(toy, **kw):
    return SpikeEEGMetadataDataset(toy["train_metadata"], toy["fwd_path"], seed=2, **kw)


def test_recorded_noise_follows_deepsif_evaluation_scaling():
    rng = np.random.default_rng(1)
    clip = rng.standard_normal((300, 6)).astype(np.float32) + 2
    fwd = rng.standard_normal((5, 6))
    seg = rng.standard_normal((300, 5)).astype(np.float32) * [1, 2, 3, 4, 5]
    zero = np.zeros((300, 5), np.float32)
    args = ([clip], [np.array([1])], [np.ones(1)], [3.0], fwd, 10.0, zero)
    clean, _ = synthesize_sample(*args, normalize=False)
    noisy, _ = synthesize_sample(*args, normalize=False, recorded=seg)
    added = (noisy - clean).astype(np.float64)
    # Noise power = 10^(-snr/10) * signal power per channel (no / 2), shaped like the segment.
    ratio = np.mean(added ** 2, axis=0) / np.mean(clean.astype(np.float64) ** 2, axis=0)
    np.testing.assert_allclose(ratio, 10 ** (-10.0 / 10), rtol=1e-3)
    np.testing.assert_allclose(added / added.std(axis=0), seg / seg.std(axis=0), atol=1e-3)


@pytest.mark.parametrize("mode", ["recorded", "mixed"])
def test_fast_and_reference_agree_with_recorded_noise(toy, bank_path, mode, tmp_path):
    fast = _ds(toy, noise=mode, noise_bank_path=bank_path, cache_dir=tmp_path / "c")
    ref = _ds(toy, noise=mode, noise_bank_path=bank_path, synthesis="reference")
    white = _ds(toy, cache_dir=tmp_path / "c")
    for ds in (fast, ref, white):
        ds.set_epoch(3)
    eeg, src = fast.synthesize_batch(range(24))
    seg, off = draw_noise_choice(mode, 2, 3, np.arange(24), fast.noise_bank, 500)
    assert (seg >= 0).all() if mode == "recorded" else 0 < (seg >= 0).sum() < 24
    assert off.max() <= 30 and len(set(off[seg >= 0].tolist())) > 1
    for i in range(24):
        re, ry = ref.synthesize(i)
        _close(eeg[i].numpy(), re)
        _close(src[i].numpy(), ry)
        we, wy = white.synthesize(i)
        np.testing.assert_array_equal(src[i].numpy(), wy)  # the target never sees the noise
        if seg[i] < 0:  # white samples of a mixed set are the white set's, bit for bit
            np.testing.assert_array_equal(eeg[i].numpy(), we)
        else:
            assert not np.allclose(eeg[i].numpy(), we, atol=1e-3)
    # Seeded per (seed, epoch, index): same again, different next epoch.
    np.testing.assert_array_equal(fast.synthesize(5)[0], eeg[5].numpy())
    seg4, _ = draw_noise_choice(mode, 2, 4, np.arange(24), fast.noise_bank, 500)
    assert not np.array_equal(seg4, seg) or mode == "recorded"


def test_real_deepsif_noise_bank_loads(deepsif_anatomy_dir):
    bank = load_noise_bank(deepsif_anatomy_dir / "realistic_noise.mat", 75, 500)
    assert bank.shape == (4, 500, 75) and bank.dtype == np.float32


def test_channels_matched_by_name(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.standard_normal((2, 50, 4))
    names = np.array(["Fz", "Cz", "Pz", "Oz"])
    np.savez(tmp_path / "bank.npz", data=data, ch_names=names)
    bank = load_noise_bank(tmp_path / "bank.npz", 3, 50, channel_names=["oz", "Fz", "Cz"])
    np.testing.assert_array_equal(bank, data[:, :, [3, 0, 1]].astype(np.float32))
    with pytest.raises(ValueError, match=r"lacks 1 of the forward matrix's 3 channels: T7"):
        load_noise_bank(tmp_path / "bank.npz", 3, 50, channel_names=["Oz", "T7", "Cz"])
    # No names on one side: by order, and C must match.
    assert load_noise_bank(tmp_path / "bank.npz", 4, 50).shape == (2, 50, 4)
    with pytest.raises(ValueError, match=r"expected \(K, L, C\) with C=3"):
        load_noise_bank(tmp_path / "bank.npz", 3, 50)


def test_bad_banks_report_every_problem_at_once(tmp_path, toy):
    data = np.random.default_rng(3).standard_normal((3, 40, 5))
    data[1, :, 2] = 7.0  # a flat channel
    data[2, 5, 0] = np.nan
    save_mat_file(tmp_path / "bad.mat", {"data": data})
    with pytest.raises(ValueError) as err:
        load_noise_bank(tmp_path / "bad.mat", 6, 60)
    text = str(err.value)
    assert str(tmp_path / "bad.mat") in text and "3 problem(s)" in text
    assert "C=6" in text and "L >= T=60" in text and "non-finite" in text
    data[2, 5, 0] = 0.0
    save_mat_file(tmp_path / "flat.mat", {"data": data})
    with pytest.raises(ValueError, match=r"flat \(constant\) channel.*segment\(s\) \[1\]"):
        load_noise_bank(tmp_path / "flat.mat", 5, 40)
    save_mat_file(tmp_path / "nodata.mat", {"noise": data})
    with pytest.raises(ValueError, match=r"no field 'data' \(fields: \['noise'\]\)"):
        load_noise_bank(tmp_path / "nodata.mat", 5, 40)
    with pytest.raises(NoiseBankError, match="NOISE_BANK_PATH"):
        load_noise_bank(tmp_path / "none.mat", 5, 40)
    # At start-up, through the dataset and its options.
    with pytest.raises(ValueError, match="'noise_bank_path'"):
        _ds(toy, noise="recorded")
    with pytest.raises(ValueError, match="Invalid value for 'noise'"):
        _ds(toy, noise="pink", noise_bank_path=tmp_path / "bad.mat")
    with pytest.raises(ValueError, match=r"C=12"):
        _ds(toy, noise="mixed", noise_bank_path=tmp_path / "flat.mat")


def test_config_keys_reach_the_dataset(toy, bank_path):
    from esikit.config import dataset_options, get_config

    cfg, _ = get_config(["NOISE=mixed", f"NOISE_BANK_PATH={bank_path}"])
    opts = dataset_options(cfg)
    assert opts["noise"] == "mixed" and Path(opts["noise_bank_path"]) == bank_path
    ds = _ds(toy, **{k: opts[k] for k in ("noise", "noise_bank_path")})
    assert ds.noise == "mixed" and ds.noise_bank.shape == (4, 530, N_CH)


def test_data_check_validates_the_noise_bank(tmp_path, bank_path, capsys):
    from esikit.commands.check import main

    toy = make_toy_dataset(tmp_path / "ds", n_regions=20, n_channels=N_CH, n_train=8, n_test=4, seed=2)
    args = [f"TRAIN_METADATA_PATH={toy['train_metadata']}", f"TEST_METADATA_PATH={toy['test_metadata']}",
            f"FWD_MATRIX_PATH={toy['fwd_path']}", f"NMM_SPIKES_DIR={toy['nmm_spikes_dir']}", "BATCH_SIZE=4",
            "NOISE=recorded"]
    assert main([*args, f"NOISE_BANK_PATH={bank_path}"]) == 0
    assert "noise 'recorded': 4 recorded segments of 530 time points" in capsys.readouterr().out
    assert main([*args, f"NOISE_BANK_PATH={tmp_path / 'none.mat'}"]) != 0
    out = capsys.readouterr().out
    assert "Noise bank not found" in out and "set NOISE_BANK_PATH" in out


def test_bank_shared_with_workers(toy, bank_path, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from esikit.data.fast import collate_synthesized

    ds = _ds(toy, noise="mixed", noise_bank_path=bank_path, cache_dir=tmp_path / "c")
    assert ds._noise_bank.is_shared() and ds._fast._bank.data_ptr() == ds._noise_bank.data_ptr()
    want = ds.synthesize_batch(range(8))
    got = next(iter(DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_synthesized)))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
