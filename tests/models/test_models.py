"""Tests of esikit.models: shapes, DeepSIF's structure, training, config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from esikit.models import MODELS, DeepSIFNet, build_model, model_from_config

# Small settings per model so the whole file runs in a few seconds on CPU.
SMALL = {
    "deepsif": {"n_hidden": 32, "n_lstm_layers": 2},
    "tcn": {"n_hidden": 16, "n_blocks": 3},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32},
}


def test_registry_names():
    assert set(MODELS) == {"deepsif", "tcn", "transformer"}
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("n_channels", "n_regions", "n_times", "batch"), [(63, 76, 50, 2), (7, 11, 13, 1), (75, 40, 32, 3)])
def test_output_shape(name, n_channels, n_regions, n_times, batch):
    torch.manual_seed(0)
    net = build_model(name, n_channels, n_regions, **SMALL[name])
    out = net(torch.randn(batch, n_times, n_channels))
    assert out.shape == (batch, n_times, n_regions)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrong_channel_count_is_rejected(name):
    net = build_model(name, 10, 5, **SMALL[name])
    with pytest.raises(ValueError, match=r"expected \(batch, time, channels\) with channels=10"):
        net(torch.zeros(1, 20, 9))


def test_unknown_model_name():
    with pytest.raises(ValueError) as info:
        build_model("x", 63, 76)
    assert str(info.value) == (
        "Invalid value for 'MODEL': expected one of 'deepsif', 'tcn', 'transformer', got 'x'."
    )


def _deepsif_parameter_count(c: int, r: int, h: int, layers: int) -> int:
    """Count from the published structure, layer by layer (weights + biases)."""

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    spatial = 2 * linear(c, c) + linear(c, h) + linear(h, h) + linear(c, h) + linear(h, h)
    # PyTorch's LSTM layer: 4 gates x (W_ih, W_hh, b_ih, b_hh).
    lstm = 4 * (r * h + r * r + 2 * r) + (layers - 1) * 4 * (r * r + r * r + 2 * r)
    return spatial + lstm


def test_deepsif_parameter_count_at_template_size():
    net = DeepSIFNet(75, 994)
    expected = _deepsif_parameter_count(75, 994, 500, 3)
    assert net.count_parameters() == expected == 22_360_976
    lstm = net.temporal.rnns[0]
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (500, 994, 3, True)
    assert isinstance(net.spatial.activation, torch.nn.ELU)


def test_deepsif_state_dict_keys_match_deepsif():
    keys = set(DeepSIFNet(5, 4, n_hidden=6, n_lstm_layers=2).state_dict())
    for layer in ("fc11", "fc12", "fc21", "fc22", "fc23", "value"):
        assert f"spatial.{layer}.weight" in keys and f"spatial.{layer}.bias" in keys
    for k in range(2):
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert f"temporal.rnns.0.{p}_l{k}" in keys
    assert len(keys) == 12 + 8


def test_deepsif_loads_prefixed_state_dict():
    src = DeepSIFNet(5, 4, n_hidden=6, n_lstm_layers=1)
    dst = DeepSIFNet(5, 4, n_hidden=6, n_lstm_layers=1)
    dst.load_deepsif_state_dict({f"module.{k}": v for k, v in src.state_dict().items()})
    x = torch.randn(2, 9, 5)
    torch.testing.assert_close(dst(x), src(x))


def test_deepsif_spatial_module_matches_formula():
    torch.manual_seed(1)
    net = DeepSIFNet(4, 3, n_hidden=5, n_lstm_layers=1)
    sp = net.spatial
    x = torch.randn(2, 3, 4)
    elu = torch.nn.functional.elu

    def lin(layer, v):
        return v @ layer.weight.T + layer.bias

    h = elu(lin(sp.fc12, elu(lin(sp.fc11, x))) + x)
    h = elu(lin(sp.fc22, elu(lin(sp.fc21, h))) + lin(sp.fc23, h))
    torch.testing.assert_close(sp(x), elu(lin(sp.value, h)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_adam_steps_reduce_mse(name):
    torch.manual_seed(0)
    net = build_model(name, 8, 6, **SMALL[name])
    x = torch.randn(4, 24, 8)
    y = torch.rand(4, 24, 6) * 0.5
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_round_trip(name):
    torch.manual_seed(0)
    net = build_model(name, 9, 7, **SMALL[name])
    config = json.loads(json.dumps(net.get_config()))
    assert config["name"] == name and config["n_channels"] == 9 and config["n_regions"] == 7
    rebuilt = model_from_config(config)
    assert type(rebuilt) is type(net)
    sd, sd2 = net.state_dict(), rebuilt.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape for k in sd)
    assert rebuilt.get_config() == net.get_config()
    rebuilt.load_state_dict(sd)
    net.eval()
    rebuilt.eval()
    x = torch.randn(2, 15, 9)
    torch.testing.assert_close(rebuilt(x), net(x))


def test_config_records_non_default_arguments():
    net = build_model("deepsif", 12, 10, n_hidden=20, n_lstm_layers=1, activation="ReLU")
    assert net.get_config() == {
        "name": "deepsif",
        "n_channels": 12,
        "n_regions": 10,
        "n_hidden": 20,
        "n_lstm_layers": 1,
        "activation": "ReLU",
    }


def test_model_from_config_errors():
    with pytest.raises(ValueError, match="missing"):
        model_from_config({"name": "tcn", "n_channels": 3})
    with pytest.raises(TypeError, match="Invalid configuration for model 'tcn'"):
        build_model("tcn", 3, 4, n_lstm_layers=2)
    with pytest.raises(ValueError, match="Invalid value for 'activation'"):
        build_model("deepsif", 3, 4, activation="Swish")


def test_tcn_receptive_field():
    net = build_model("tcn", 3, 2, n_hidden=4, n_blocks=3, kernel_size=3, dropout=0.0)
    assert net.receptive_field == 1 + 2 * 2 * 7
    net.eval()
    # Perturbing one input sample changes outputs only within the receptive field.
    x = torch.zeros(1, 80, 3)
    x2 = x.clone()
    x2[0, 40] = 1.0
    diff = (net(x2) - net(x)).abs().sum(-1)[0]
    changed = torch.nonzero(diff > 1e-7).flatten()
    half = (net.receptive_field - 1) // 2
    assert changed.min() >= 40 - half and changed.max() <= 40 + half


def test_config_is_json_safe_with_numpy_sizes():
    import numpy as np

    net = build_model("tcn", np.int64(6), np.int32(4), n_hidden=np.int64(8), n_blocks=2)
    config = net.get_config()
    assert json.loads(json.dumps(config)) == config
    assert type(config["n_channels"]) is int and type(config["n_hidden"]) is int
