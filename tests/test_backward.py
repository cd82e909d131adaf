"""advlab.attacks.backward: the CPU convolution backward used for input gradients is measured
once per model, cached, announced, overridable; both ways give the same gradients."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from advlab.attacks import PGD, backward
from advlab.attacks.base import input_grad

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="needs a PyTorch build with oneDNN")


def conv_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """The default ``auto`` mode, a private cache directory and an empty memo."""
    monkeypatch.setenv("ADVLAB_CPU_BACKWARD", "auto")
    monkeypatch.setenv("ADVLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(backward, "_memo", {})
    return tmp_path / backward.CACHE_FILE


@needs_onednn
def test_measured_once_announced_and_cached(auto, monkeypatch, caplog):
    calls = []
    measure = backward._measure
    monkeypatch.setattr(backward, "_measure", lambda *a: calls.append(a) or measure(*a))
    model = conv_net()
    with caplog.at_level(logging.INFO, logger="advlab.attacks.backward"):
        first = backward.conv_backward(model, (1, 28, 28), "cpu")
        again = backward.conv_backward(model, (1, 28, 28), "cpu")
    assert first in backward.CHOICES and again == first and len(calls) == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "convolution backward" in said[0] and str(auto) in said[0]
    assert list(json.loads(auto.read_text()).values()) == [first]
    backward._memo.clear()  # a new process reads the cache file: no measurement
    assert backward.conv_backward(conv_net(), (1, 28, 28), "cpu") == first and len(calls) == 1


@needs_onednn
def test_a_corrupt_cache_is_ignored_and_rewritten(auto):
    auto.write_text("{not json")
    choice = backward.conv_backward(conv_net(), (1, 28, 28), "cpu")
    assert list(json.loads(auto.read_text()).values()) == [choice]
    auto.write_text(json.dumps({"x": 3, "y": "cuda"}))  # values that are not a choice
    backward._memo.clear()
    backward.conv_backward(conv_net(), (1, 28, 28), "cpu")
    assert set(json.loads(auto.read_text())) - {"x", "y"} and "x" not in auto.read_text()


def test_nothing_to_choose_is_not_measured(auto, monkeypatch):
    monkeypatch.setattr(backward, "_measure", lambda *a: pytest.fail("measured"))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert backward.conv_backward(mlp, (1, 8, 8), "cpu") == "onednn"
    assert backward.conv_backward(lambda x: x, (1, 8, 8), "cpu") == "onednn"
    assert not auto.exists()


def test_the_override_and_a_bad_value(monkeypatch):
    monkeypatch.setenv("ADVLAB_CPU_BACKWARD", "native")
    if torch.backends.mkldnn.is_available():
        assert backward.conv_backward(conv_net(), (1, 28, 28), "cpu") == "native"
    monkeypatch.setenv("ADVLAB_CPU_BACKWARD", "fastest")
    with pytest.raises(ValueError, match="ADVLAB_CPU_BACKWARD to be one of auto, onednn, "
                                         "native, got 'fastest'"):
        backward.conv_backward(conv_net(), (1, 28, 28), "cpu")


@needs_onednn
def test_native_turns_onednn_off_in_the_backward_only_and_gives_the_same_gradient():
    model = conv_net()
    x = torch.rand(6, 1, 28, 28)
    seen = []
    grads = {}
    for choice in backward.CHOICES:
        xa = x.clone().requires_grad_(True)
        with backward.using(choice):
            out = model(xa)
            out.register_hook(lambda g: seen.append(torch.backends.mkldnn.enabled) or g)
            grads[choice] = input_grad(out.logsumexp(1).sum(), xa)
        assert torch.backends.mkldnn.enabled  # restored
    assert seen == [True, False]
    torch.testing.assert_close(grads["native"], grads["onednn"], atol=1e-5, rtol=1e-4)


@needs_onednn
def test_an_attack_runs_under_the_models_choice(monkeypatch):
    model = conv_net()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    advs = {}
    for choice in backward.CHOICES:
        monkeypatch.setenv("ADVLAB_CPU_BACKWARD", choice)
        seen = []
        monkeypatch.setattr(backward, "grad", lambda *a, _g=backward.grad, _s=seen, **k:
                            _s.append(backward._native.get()) or _g(*a, **k))
        advs[choice] = PGD(eps=0.1, steps=5, alpha=0.02, random_start=False)(model, x, y).adv
        assert seen and set(seen) == {choice == "native"}
        monkeypatch.undo()
    assert (advs["native"] - advs["onednn"]).abs().le(0.1 + 1e-6).all()


def test_a_compiled_model_keeps_the_backward_it_was_traced_with(auto, monkeypatch):
    monkeypatch.setattr(backward, "_measure", lambda *a: pytest.fail("measured"))
    model = conv_net()
    assert backward.conv_backward(torch.compile(model), (1, 28, 28), "cpu") == "onednn"
    model.forward = torch.compile(model.forward)  # what --compile does to the instance
    assert backward.conv_backward(model, (1, 28, 28), "cpu") == "onednn"
    monkeypatch.setenv("ADVLAB_CPU_BACKWARD", "native")  # not even when asked for
    assert backward.conv_backward(model, (1, 28, 28), "cpu") == "onednn"


def test_a_process_of_a_torchrun_job_does_not_measure(auto, monkeypatch):
    """Its peers could measure another answer: without a cached one it keeps oneDNN."""
    monkeypatch.setattr(backward, "_measure", lambda *a: pytest.fail("measured"))
    monkeypatch.setattr(backward, "_distributed", lambda: True)
    assert backward.conv_backward(conv_net(), (1, 28, 28), "cpu") == "onednn"
    assert not auto.exists()
