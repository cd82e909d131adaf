"""Mixed precision (``TrainConfig.amp``), ``torch.compile`` (``TrainConfig.compile``) and the
device copies of the training loops (issue 18). bf16 autocast runs on the CPU, so its paths are
tested here; fp16 and the pinned copies need CUDA (the ``cuda`` tests)."""

import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from advlab import data, generative, models
from advlab.cli.main import app
from advlab.defenses.adversarial import AdversarialTraining
from advlab.defenses.deepdefense import DeepDefense
from advlab.generative.train import GenerativeTrainConfig, default_config, fit_generative
from advlab.io import load_state, save_state
from advlab.runs import RunDir
from advlab.train import TrainConfig, fit
from advlab.train.config import check_precision
from advlab.train.loop import autocast, check_checkpoint, compiled_forward
from advlab.weights import load_model
from attack_fixtures import trained_digits

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 3e-3, "seed": 1,
                          "device": "cpu", **kw})


def _mlp(width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", dataset="digits", widths=[width])


def _record_dtypes(model: nn.Module) -> tuple[set, object]:
    """(the (training, dtype) pairs of the first linear layer's outputs, the hook handle)."""
    seen: set = set()
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    handle = layer.register_forward_hook(lambda m, i, o: seen.add((m.training, o.dtype)))
    return seen, handle


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


# --- bf16 -------------------------------------------------------------------------------------

def test_bf16_training_learns_with_a_bf16_forward_and_fp32_weights(digits):
    train, test = digits
    model = _mlp()
    seen, handle = _record_dtypes(model)
    result = fit(model, train, _cfg(amp="bf16"), test=test, progress=False)
    handle.remove()
    losses = [r["train_loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[1] < losses[0]
    assert (True, torch.bfloat16) in seen  # the training steps ran under autocast
    assert (True, torch.float32) not in seen
    assert (False, torch.float32) in seen  # the evaluations after each epoch did not
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref = fit(_mlp(), train, _cfg(), test=test, progress=False)
    assert result.history[-1]["test_acc"] > 0.85
    assert abs(result.history[-1]["test_acc"] - ref.history[-1]["test_acc"]) < 0.05


def test_adversary_crafted_under_bf16_stays_in_the_threat_set_and_as_strong():
    model, x, y = trained_digits()
    at = AdversarialTraining(eps=0.1, alpha=0.025, steps=10)
    with autocast("bf16", CPU):
        adv = at.perturb(model, x, y)
    fp32 = at.perturb(model, x, y)
    assert adv.dtype == torch.float32  # the iterate and its projection stay fp32
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        acc = {k: (model(v).argmax(1) == y).float().mean().item()
               for k, v in (("clean", x), ("bf16", adv), ("fp32", fp32))}
    assert acc["bf16"] < acc["clean"] - 0.3  # 0.45 vs 0.96 clean
    assert abs(acc["bf16"] - acc["fp32"]) < 0.08  # 0.45 vs 0.44


def test_bf16_adversarial_training_reports_finite_adversarial_numbers(digits):
    train, _ = digits
    small = train.subset(torch.arange(256))
    result = fit(_mlp(16), small, _cfg(amp="bf16", epochs=1),
                 objective=AdversarialTraining(eps=0.1, alpha=0.05, steps=3), progress=False)
    row = result.history[0]
    assert math.isfinite(row["adv_loss"]) and math.isfinite(row["train_loss"])
    assert 0 <= row["adv_acc"] <= 1


def test_bf16_resume_equals_an_uninterrupted_run_and_amp_must_match(digits, tmp_path):
    train, _ = digits
    ref = _mlp()
    fit(ref, train, _cfg(amp="bf16", epochs=2), progress=False)
    ckpt = tmp_path / "ckpt.safetensors"
    fit(_mlp(), train, _cfg(amp="bf16", epochs=1), checkpoint=ckpt, progress=False)
    assert load_state(ckpt)["config"]["amp"] == "bf16"
    resumed = _mlp()
    fit(resumed, train, _cfg(amp="bf16", epochs=2), checkpoint=ckpt, resume=True,
        progress=False)
    assert _same_weights(resumed, ref)  # bit for bit: the resumed epoch ran in bf16 too
    fp32 = _mlp()
    fit(fp32, train, _cfg(epochs=2), progress=False)
    assert not _same_weights(fp32, ref)  # (which an fp32 epoch would not give)
    with pytest.raises(ValueError, match="amp: checkpoint 'bf16' vs now 'none'"):
        fit(_mlp(), train, _cfg(epochs=2), checkpoint=ckpt, resume=True, progress=False)
    check_checkpoint(ckpt, _cfg(amp="bf16", epochs=2, compile=True))  # compile may change


def test_a_checkpoint_from_before_amp_resumes_as_fp32(digits, tmp_path):
    train, _ = digits
    ckpt = tmp_path / "ckpt.safetensors"
    fit(_mlp(), train, _cfg(epochs=1), checkpoint=ckpt, progress=False)
    state = load_state(ckpt)
    for key in ("amp", "compile"):  # as an older advlab wrote it
        del state["config"][key]
    save_state(ckpt, state)
    check_checkpoint(ckpt, _cfg(epochs=2))
    with pytest.raises(ValueError, match="amp: checkpoint 'none' vs now 'bf16'"):
        check_checkpoint(ckpt, _cfg(epochs=2, amp="bf16"))


def test_cli_amp_goes_into_config_yaml_and_a_bare_resume_keeps_it(tmp_path):
    runner, out = CliRunner(), tmp_path / "run"
    base = ["train", "classifier", "--dataset", "digits", "--widths", "16", "--out", str(out),
            "--no-progress"]
    result = runner.invoke(app, [*base, "--epochs", "1", "--amp", "bf16"])
    assert result.exit_code == 0, result.output
    assert RunDir(out).read_config()["train"]["amp"] == "bf16"
    result = runner.invoke(app, ["train", "classifier", "--resume", "--epochs", "2", "--out",
                                 str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    state = load_state(out / "checkpoint.safetensors")
    assert state["epoch"] == 2 and state["config"]["amp"] == "bf16"
    result = runner.invoke(app, [*base, "--resume", "--epochs", "3", "--amp", "none"])
    assert result.exit_code == 2 and "train.amp: 'bf16' in the run" in result.output


def test_bf16_generative_training_runs_its_steps_in_bf16():
    ring = data.load("ring8", "train")
    for name in ("vae", "wgan-gp"):  # wgan-gp: the gradient penalty's input gradient too
        model = generative.create(name, dataset="ring8", hidden=(16,))
        seen, handle = _record_dtypes(model)
        config = default_config(name, "points", dataset="ring8", epochs=2, steps_per_epoch=15,
                                n_snapshot=16, amp="bf16", device="cpu")
        result = fit_generative(model, ring, config, progress=False)
        handle.remove()
        assert (True, torch.bfloat16) in seen and (True, torch.float32) not in seen
        for row in result.history:
            assert all(math.isfinite(v) for v in row.values()), row
        assert all(p.dtype == torch.float32 for p in model.parameters())


# --- what is refused --------------------------------------------------------------------------

def test_unknown_and_fp16_off_cuda_precisions_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"amp: expected one of \('none', 'bf16', 'fp16'\)"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="expected a CUDA device"):
        TrainConfig(amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="expected a CUDA device"):
        check_precision("fp16", CPU)
    check_precision("bf16", CPU)
    with pytest.raises(ValueError, match=r"amp: expected one of \('none', 'bf16'\)"):
        GenerativeTrainConfig(amp="fp16")
    if torch.cuda.is_available():
        return  # the CLI's refusal below is for a machine without CUDA
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "classifier", "--dataset", "digits", "--epochs",
                                      "1", "--amp", "fp16", "--out", str(out), "--no-progress"])
    assert result.exit_code == 2
    assert "error: amp 'fp16': expected a CUDA device" in result.output
    assert not out.exists()  # refused before the run directory


# --- torch.compile ----------------------------------------------------------------------------

def test_compiled_forward_is_an_instance_attribute_for_the_block_only():
    model = _mlp(8)
    names = list(model.state_dict())
    with compiled_forward(model, enabled=False):
        assert "forward" not in model.__dict__
    with compiled_forward(model):  # torch.compile is lazy: nothing is compiled here
        assert "forward" in model.__dict__
        assert list(model.state_dict()) == names  # no _orig_mod. prefix
    assert "forward" not in model.__dict__

    def own(x):
        return x

    object.__setattr__(model, "forward", own)  # a forward of the user's own is kept
    with compiled_forward(model):
        assert model.__dict__["forward"] is not own
    assert model.__dict__["forward"] is own


@pytest.mark.slow  # torch.compile: 20-60 s on a shared CPU
def test_compiled_training_saves_plain_weights_that_load_uncompiled(digits, tmp_path):
    from torch._dynamo.utils import counters

    train, test = digits
    model, ckpt = _mlp(), tmp_path / "ckpt.safetensors"
    graphs = counters["stats"]["unique_graphs"]
    fit(model, train, _cfg(epochs=1, compile=True), test=test, checkpoint=ckpt,
        progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # it was compiled
    assert "forward" not in model.__dict__  # and is eager again after fit
    weights = load_state(ckpt)["model"]
    assert list(weights) == list(_mlp().state_dict())  # plain names, no _orig_mod.
    fresh = _mlp()
    fresh.load_state_dict(weights)  # strict
    with torch.no_grad():
        assert torch.equal(fresh(test.x), model(test.x))
    eager = _mlp()
    fit(eager, train, _cfg(epochs=1), progress=False)
    for a, b in zip(eager.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)  # the same training, up to float rounding
    resumed = _mlp()  # a compiled run resumes eagerly
    result = fit(resumed, train, _cfg(epochs=2), checkpoint=ckpt, resume=True,
                 progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]


@pytest.mark.slow  # torch.compile
def test_cli_compile_writes_weights_an_uncompiled_model_loads(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "classifier", "--dataset", "digits", "--widths",
                                      "16", "--epochs", "1", "--compile", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert RunDir(out).read_config()["train"]["compile"] is True
    model = load_model(out)  # the saved weights: names of the uncompiled model
    assert "forward" not in model.__dict__
    assert all("_orig_mod" not in k for k in model.state_dict())


@pytest.mark.slow  # torch.compile
def test_compile_refuses_a_double_backward_objective_in_one_line(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="compile: expected an objective whose backward "
                                         "passes torch.compile supports"):
        fit(_mlp(8), train.subset(torch.arange(64)), _cfg(epochs=1, compile=True),
            objective=DeepDefense(), progress=False)


# --- CUDA -------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
def test_fp16_trains_on_cuda_from_pinned_copies_and_resumes(digits, tmp_path, monkeypatch):
    from advlab.train import loop

    train, test = digits
    copies = []
    real = loop._to_device

    def spy(t, device):
        copies.append((t.device.type, device.type, tuple(t.shape)))
        out = real(t, device)
        assert out.device.type == "cuda" and torch.equal(out.cpu(), t.cpu())
        return out

    monkeypatch.setattr(loop, "_to_device", spy)
    cfg = dict(device="cuda", amp="fp16")
    model = _mlp()
    seen, handle = _record_dtypes(model)
    result = fit(model, train, _cfg(**cfg), test=test, progress=False)
    handle.remove()
    assert (True, torch.float16) in seen
    losses = [r["train_loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert result.history[-1]["test_acc"] > 0.85
    shapes = {s for _, _, s in copies}  # train and test copied once each, to the GPU
    assert tuple(train.x.shape) in shapes and tuple(test.x.shape) in shapes
    assert all(dst == "cuda" for _, dst, _ in copies)
    x = torch.rand(100, 3)
    assert torch.equal(real(x, torch.device("cuda")).cpu(), x) and not x.is_pinned()

    ckpt = tmp_path / "ckpt.safetensors"
    fit(_mlp(), train, _cfg(epochs=1, **cfg), checkpoint=ckpt, progress=False)
    assert load_state(ckpt)["scaler"]["scale"] > 0  # the gradient scaler's state
    resumed = _mlp()
    fit(resumed, train, _cfg(**cfg), checkpoint=ckpt, resume=True, progress=False)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.cpu(), b.cpu(), atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_bf16_trains_on_cuda(digits):
    if not torch.cuda.is_bf16_supported():
        with pytest.raises(ValueError, match="bfloat16"):
            check_precision("bf16", torch.device("cuda"))
        return
    train, test = digits
    model = _mlp()
    seen, handle = _record_dtypes(model)
    result = fit(model, train, _cfg(device="cuda", amp="bf16"), test=test, progress=False)
    handle.remove()
    assert (True, torch.bfloat16) in seen and result.history[-1]["test_acc"] > 0.85
