"""Training speed choices: device -> autocast, cuDNN switches, compile flag, BATCH_SIZE='auto', the probe."""

from __future__ import annotations

import logging

import pytest
import torch

from esikit.config import ConfigError, default_config, validate_config
from esikit.models import build_model
from esikit.train import load_checkpoint
from esikit.train import speed
from esikit.train.trainer import Trainer, choose_amp, resolve_auto_batch_size

CUDA = torch.device("cuda", 0)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------ autocast by device
@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_defaults_to_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_amp(CUDA, True) is expected
    assert choose_amp(CUDA, False) is None  # USE_AMP still turns it off
    assert choose_amp(CUDA, "fp16") is torch.float16
    if bf16:
        assert choose_amp(CUDA, "bf16") is torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="no bf16 support"):
            choose_amp(CUDA, "bf16")
    # the CPU stays float32 unless asked
    assert choose_amp(torch.device("cpu"), True) is None


def test_grad_scaler_wherever_fp16_gradients_occur():
    lstm = build_model("deepsif", 8, 16, n_hidden=16, n_lstm_layers=1)
    conv = build_model("tcn", 8, 16, n_hidden=8, n_blocks=1)
    cpu = torch.device("cpu")
    assert speed.needs_grad_scaler(CUDA, torch.float16, conv)
    # autocast runs cuDNN's LSTM in fp16 even under bf16: scale DeepSIF's network, not the TCN
    assert speed.needs_grad_scaler(CUDA, torch.bfloat16, lstm)
    assert not speed.needs_grad_scaler(CUDA, torch.bfloat16, conv)
    assert not speed.needs_grad_scaler(CUDA, None, lstm)
    assert not speed.needs_grad_scaler(cpu, torch.bfloat16, lstm)


def test_cudnn_benchmark_only_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    speed.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    speed.configure_backends(CUDA)
    assert torch.backends.cudnn.benchmark is True


def test_lstm_weights_flattened():
    net = build_model("deepsif", 8, 16, n_hidden=16, n_lstm_layers=2)
    assert speed.flatten_rnn_weights(net) == 1
    assert speed.flatten_rnn_weights(build_model("tcn", 8, 16, n_hidden=8, n_blocks=1)) == 0


# ------------------------------------------------------------------------------ compile flag
def test_compile_only_when_asked(monkeypatch):
    calls = []

    def fake_compile(module, *a, **k):
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = torch.nn.Linear(2, 2)
    assert speed.maybe_compile(net, False) is net and calls == []
    assert speed.maybe_compile(net, True) is net and calls == [net]


# ------------------------------------------------------------------------------ BATCH_SIZE = 'auto'
def _memory(limit):
    """A fake memory probe: a batch fits when it is at most ``limit``; records the sizes tried."""
    tried = []

    def fits(b):
        tried.append(b)
        return b <= limit

    return fits, tried


def test_probe_batch_size_largest_power_of_two_under_cap():
    fits, tried = _memory(40)
    assert speed.probe_batch_size(fits, cap=256) == 32
    assert tried == [1, 2, 4, 8, 16, 32, 64]  # stops at the first that does not fit
    fits, tried = _memory(1000)
    assert speed.probe_batch_size(fits, cap=48) == 48 and tried[-2:] == [32, 48]  # the cap itself
    fits, _ = _memory(1000)
    assert speed.probe_batch_size(fits, cap=256) == 256
    with pytest.raises(RuntimeError, match="not even a batch of 1 fits"):
        speed.probe_batch_size(_memory(0)[0])
    with pytest.raises(ValueError, match="AUTO_BATCH_MAX"):
        speed.probe_batch_size(_memory(5)[0], cap=0)


def test_resolve_batch_size_gpu_probe_and_cpu_fallback(monkeypatch, caplog):
    model = build_model("tcn", 8, 16, n_hidden=8, n_blocks=1)
    assert speed.resolve_batch_size(12, model, 8, 16, 50, torch.device("cpu"), None) == 12
    with caplog.at_level(logging.WARNING, logger="esikit.train.speed"):
        assert speed.resolve_batch_size("auto", model, 8, 16, 50, torch.device("cpu"), None) == 8
    assert "falls back to batch 8" in caplog.text
    assert speed.resolve_batch_size("auto", model, 8, 16, 50, torch.device("cpu"), None, cap=4) == 4
    # on CUDA the probe runs real steps; here its fits() is a fake memory of 100 samples
    seen = {}

    def fake_cuda_fits(m, c, r, t, device, amp):
        seen.update(model=m, shape=(c, r, t), device=device, amp=amp)
        return _memory(100)[0]

    monkeypatch.setattr(speed, "cuda_step_fits", fake_cuda_fits)
    assert speed.resolve_batch_size("auto", model, 8, 16, 50, CUDA, torch.bfloat16) == 64
    assert seen == {"model": model, "shape": (8, 16, 50), "device": CUDA, "amp": torch.bfloat16}


def _cfg(toy, tmp_path, **over):
    cfg = default_config()
    cfg.update(TRAIN_METADATA_PATH=str(toy["train_metadata"]), TEST_METADATA_PATH=None,
               FWD_MATRIX_PATH=str(toy["fwd_path"]), NMM_SPIKES_DIR=str(toy["nmm_spikes_dir"]), MODEL="tcn",
               MODEL_KWARGS={"n_hidden": 8, "n_blocks": 1}, BATCH_SIZE=4, NUM_EPOCHS=1, NUM_WORKERS=0,
               USE_AMP=False, VAL_SPLIT=0.25, EVALUATE=False, LOG_DIR=str(tmp_path / "logs"),
               CHECKPOINT_DIR=str(tmp_path / "ckpt"), RUN_NAME="t")
    cfg.update(over)
    return validate_config(cfg)


def test_auto_batch_size_config_resolved_before_the_loaders(toy, tmp_path, caplog):
    cfg = _cfg(toy, tmp_path, BATCH_SIZE="auto", AUTO_BATCH_MAX=16, DEVICE="cpu")
    # a fake GPU memory that holds 10 samples: the shape comes from the forward matrix
    out = resolve_auto_batch_size(cfg, fits=_memory(10)[0])
    assert out["BATCH_SIZE"] == 8 and out["_BATCH_SIZE_REQUESTED"] == "auto" and cfg["BATCH_SIZE"] == "auto"
    with caplog.at_level(logging.WARNING):
        assert resolve_auto_batch_size(cfg)["BATCH_SIZE"] == speed.CPU_AUTO_BATCH_SIZE  # no GPU: the fallback
    assert resolve_auto_batch_size(_cfg(toy, tmp_path)) ["BATCH_SIZE"] == 4  # an integer stays
    with pytest.raises(ConfigError, match="reached the Trainer unresolved"):
        Trainer(cfg, None, None, {"n_channels": 8, "n_regions": 16}, tmp_path / "r", tmp_path / "l")


def test_config_validates_speed_options():
    ok = validate_config(dict(default_config(), BATCH_SIZE="auto", COMPILE=True, AUTO_BATCH_MAX=64))
    assert ok["BATCH_SIZE"] == "auto"
    with pytest.raises(ConfigError) as err:
        validate_config(dict(default_config(), BATCH_SIZE="big", COMPILE="yes", AUTO_BATCH_MAX=0))
    text = str(err.value)
    assert "3 invalid value(s)" in text
    assert "'BATCH_SIZE': expected an integer >= 1 or 'auto'" in text and "got 'big'" in text
    assert "'COMPILE'" in text and "'AUTO_BATCH_MAX': expected a value >= 1" in text
    with pytest.raises(ConfigError, match="'BATCH_SIZE': expected a value >= 1"):
        validate_config(dict(default_config(), BATCH_SIZE=0))


def test_trainer_compiles_when_configured_and_saves_the_plain_model(toy, tmp_path, monkeypatch):
    from esikit.commands.train import build_loaders

    compiled = []

    class Wrapper(torch.nn.Module):  # what torch.compile returns: a module sharing the parameters
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            compiled.append(x.shape)
            return self._orig_mod(x)

    monkeypatch.setattr(torch, "compile", Wrapper)
    cfg = _cfg(toy, tmp_path, COMPILE=True)
    train_loader, val_loader, _, info = build_loaders(cfg)
    t = Trainer(cfg, train_loader, val_loader, info, tmp_path / "ckpt" / "t", tmp_path / "logs", show_progress=False)
    assert isinstance(t.net, Wrapper) and t.net._orig_mod is t.model
    t.fit()
    assert compiled  # training went through the compiled module
    state = load_checkpoint(tmp_path / "ckpt" / "t" / "last.pt")
    assert set(state["model_state"]) == set(t.model.state_dict())  # no '_orig_mod.' prefixes
    t.close()
    plain = Trainer(_cfg(toy, tmp_path / "p"), train_loader, val_loader, info, tmp_path / "p", tmp_path / "pl",
                    show_progress=False)
    assert plain.net is plain.model


# ------------------------------------------------------------------------------ the probe
def test_measure_training_speed_tiny_network():
    model = build_model("deepsif", 8, 16, n_hidden=16, n_lstm_layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = speed.measure_training_speed(model, batch_size=2, n_times=20, steps=2, warmup=1)
    assert r["samples_per_s"] > 0 and r["s_per_step"] > 0 and r["warmup_s"] >= 0 and r["cpu_s_per_step"] >= 0
    assert (r["batch_size"], r["steps"], r["device"], r["amp"], r["compile"]) == (2, 2, "cpu", None, False)
    assert r["samples_per_s"] == pytest.approx(2 / r["s_per_step"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy trained
    bounded = speed.measure_training_speed(model, batch_size=2, n_times=20, steps=50, warmup=0, max_s=0.0)
    assert bounded["steps"] == 1  # the time budget stops the timed steps after the first
    bf = speed.measure_training_speed(model, batch_size=2, n_times=20, steps=1, warmup=0, amp_dtype=torch.bfloat16)
    assert bf["amp"] == "bfloat16"
    with pytest.raises(ValueError, match="steps >= 1"):
        speed.measure_training_speed(model, batch_size=2, steps=0)
