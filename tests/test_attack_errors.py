"""Error paths of the attack engine: each bad input is a ValueError naming what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab import attacks
from advlab.attacks import CW, FGSM, PGD, DeepFool, Noise, ThreatModel
from attack_fixtures import single_thread  # noqa: F401 (autouse)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


X = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # not the global RNG
Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("x, message", [
    ([[0.5]], "expected x to be a torch.Tensor"),
    (torch.ones(4, 1, 4, 4, dtype=torch.uint8), "floating-point"),
    (X.half(), r"expected x in float32 or float64, got torch.float16.*x.float\(\)"),
    (X.bfloat16(), "got torch.bfloat16"),
    (torch.rand(4), "batch dimension"),
    (X * 2, r"inside \[0, 1\]"),
    (X - 0.5, r"inside \[0, 1\]"),
    (torch.where(X > 0.5, torch.nan, X), "finite"),
    (torch.where(X > 0.5, torch.inf, X), "finite"),
])
def test_bad_inputs(x, message):
    with pytest.raises(ValueError, match=message):
        FGSM(eps=0.1)(model(), x, Y)


@pytest.mark.parametrize("y, message", [
    ([0, 1, 2, 0], "expected y to be a torch.Tensor"),
    (Y.float(), "integer tensor"),
    (Y.bool(), "integer tensor"),
    (Y[:3], r"shape \(4,\)"),
    (Y[:, None], r"shape \(4,\)"),
    (torch.tensor([0, -1, 2, 0]), "y >= 0"),
    (torch.tensor([0, 1, 3, 0]), r"y in \[0, 2\] \(the model has 3 logits\)"),
])
def test_bad_labels(y, message):
    for attack in (FGSM(eps=0.1), DeepFool(steps=2), Noise(eps=0.1)):
        with pytest.raises(ValueError, match=message):
            attack(model(), X, y)


def test_targets():
    with pytest.raises(ValueError, match="untargeted attack 'pgd'"):
        PGD(eps=0.1, steps=1)(model(), X, Y, target=Y)
    with pytest.raises(ValueError, match="untargeted attack 'deepfool'"):
        DeepFool()(model(), X, Y, target=Y)
    with pytest.raises(ValueError, match="expected a target"):
        CW(targeted=True, steps=1)(model(), X, Y)
    with pytest.raises(ValueError, match=r"target in \[0, 2\]"):
        FGSM(targeted=True)(model(), X, Y, target=torch.tensor([5, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"target of shape \(4,\)"):
        FGSM(targeted=True)(model(), X, Y, target=Y[:2])


def test_bad_models():
    with pytest.raises(ValueError, match=r"logits of shape \(B, K\)"):
        FGSM()(lambda x: x.flatten(1).sum(1), X, Y)
    with pytest.raises(ValueError, match="at least 2 logits"):
        FGSM()(lambda x: x.flatten(1).sum(1, keepdim=True), X, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="finite logits"):
        FGSM()(lambda x: model()(x) * torch.nan, X, Y)
    with pytest.raises(ValueError, match="depend differentiably on the input"):
        PGD(eps=0.1, steps=1)(lambda x: model()(x).detach(), X, Y)
    with pytest.raises(ValueError, match="depend differentiably on the input"):
        DeepFool()(lambda x: model()(x).detach(), X, Y)
    with pytest.raises(ValueError, match=r"expected the model to be an nn.Module or a callable "
                                         r"x -> logits, got str \(the call is attack\(model"):
        FGSM()("runs/mlp", X, Y)
    with pytest.raises(ValueError, match="got Tensor"):
        FGSM()(X, X, Y)  # arguments swapped


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw", "deepfool", "optim", "universal"])
def test_detached_model_is_rejected_even_when_nothing_is_left_to_attack(name):
    # every sample already misclassified (or already at the target): the attacks' early exits
    # must not skip the check that the model is differentiable
    net = model()
    pred = net(X).argmax(dim=1)
    wrong = (pred + 1) % 3
    kwargs = {"target": pred} if name == "optim" else {}
    with pytest.raises(ValueError, match="depend differentiably on the input"):
        attacks.create(name)(lambda x: net(x).detach(), X, wrong, **kwargs)


def test_model_mode_is_restored_after_an_error():
    net = model().train()
    with pytest.raises(ValueError):
        FGSM()(net, X, torch.tensor([0, 1, 9, 0]))  # label 9 >= 3 logits, found mid-attack
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("name, params, message", [
    ("fgsm", {"eps": -0.1}, "eps to be a finite number >= 0, got -0.1"),
    ("fgsm", {"eps": float("nan")}, "eps to be a finite number >= 0"),
    ("fgsm", {"eps": "0.1"}, "eps to be a finite number >= 0"),
    ("fgsm", {"targeted": 1}, "targeted to be True or False"),
    ("pgd", {"norm": "l3"}, "norm in 'linf', 'l2', got 'l3'"),
    ("pgd", {"steps": 0}, "steps to be an integer >= 1, got 0"),
    ("pgd", {"eps": 0.1, "alpha": 0}, r"expected alpha > 0 with eps=0.1 > 0"),
    ("pgd", {"steps": 2.5}, "steps to be an integer >= 1, got 2.5"),
    ("pgd", {"steps": True}, "steps to be an integer >= 1"),
    ("pgd", {"restarts": 0}, "restarts to be an integer >= 1"),
    ("pgd", {"alpha": -1.0}, "alpha to be a finite number >= 0"),
    ("pgd", {"random_start": "yes"}, "random_start to be True or False"),
    ("pgd", {"early_stop": None, "seed": -1}, "seed to be an integer >= 0"),
    ("cw", {"c": 0.0}, "c to be a finite number > 0"),
    ("cw", {"kappa": -1.0}, "kappa to be a finite number >= 0"),
    ("cw", {"lr": 0}, "lr to be a finite number > 0"),
    ("cw", {"binary_search_steps": 0}, "binary_search_steps to be an integer >= 1"),
    ("deepfool", {"num_classes": 1}, "num_classes to be an integer >= 2"),
    ("deepfool", {"overshoot": -0.1}, "overshoot to be a finite number >= 0"),
    ("deepfool", {"norm": "l1"}, "norm in 'linf', 'l2', got 'l1'"),
    ("noise", {"eps": -1}, "eps to be a finite number >= 0"),
])
def test_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        attacks.create(name, **params)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown attack 'pgdd'. Did you mean 'pgd'"):
        attacks.create("pgdd")
    with pytest.raises(ValueError, match="Valid attacks: .*deepfool.*fgsm"):
        attacks.create("nope")
    with pytest.raises(ValueError, match="unknown parameter 'epsilon' for attack 'pgd'.*"
                                         "Valid parameters: .*eps"):
        attacks.create("pgd", epsilon=0.3)
    with pytest.raises(ValueError, match="already registered"):
        attacks.register("pgd")(PGD)
    with pytest.raises(ValueError, match="norm in"):
        ThreatModel("l0", 0.1)
    with pytest.raises(ValueError, match="eps to be a finite number >= 0"):
        ThreatModel("l2", -1.0)
