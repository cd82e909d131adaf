"""A user's own data and training loop: ``fit`` on tuples, TensorDatasets and DataLoaders;
objectives without a data-set name; ``objective.perturb`` as a one-batch adversary."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advlab import data
from advlab.defenses import create_objective
from advlab.train import TrainConfig, fit
from attack_fixtures import single_thread  # noqa: F401 (autouse)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _train(source, digits) -> tuple[nn.Module, list]:
    model = _net()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-3, seed=0, device="cpu")
    res = fit(model, source, cfg, test=digits[1], progress=False)
    return model, res.history


def test_fit_takes_tuples_tensor_datasets_and_data_loaders_alike(digits):
    train = digits[0]
    ref, hist = _train(train, digits)
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=100, shuffle=False)
    for source in ((train.x, train.y), TensorDataset(train.x, train.y), loader):
        model, h = _train(source, digits)
        for a, b in zip(ref.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b), type(source).__name__
        assert h[-1]["test_acc"] == hist[-1]["test_acc"]
    assert hist[-1]["test_acc"] > 0.8


@pytest.mark.parametrize("bad, message", [
    ([1, 2, 3], "tuple \\(x, y\\)"),
    ((torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long)), "floating point"),
    ((torch.zeros(4, 2), torch.zeros(3, dtype=torch.long)), r"y of shape \(4,\)"),
    (TensorDataset(torch.zeros(4, 2)), r"hold \(x, y\)"),
])
def test_bad_training_data_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        fit(_net(), bad, TrainConfig(epochs=1, device="cpu"), progress=False)


def test_objectives_need_no_data_set_and_perturb_is_one_batch_of_adversaries(digits):
    model, _ = _train(digits[0], digits)
    objective = create_objective("pgd-at", eps=0.2)
    assert objective.eps == 0.2 and objective.steps == 40
    x, y = digits[1].x[:64], digits[1].y[:64]
    adv = objective.perturb(model, x, y)
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()
