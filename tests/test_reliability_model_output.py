"""Issue 16, item 5: a model that returns probabilities, or whose output does not depend on
its input, is refused before it is attacked (``advlab.attacks.checks_output``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks.checks_output import check_depends_on_input, check_logits_like
from attack_fixtures import digits, trained_digits


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module, log: bool = False) -> None:
        super().__init__()
        self.model, self.log = model, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z.log_softmax(1) if self.log else z.softmax(1)


class Constant(nn.Module):
    """Learned logits that ignore x (they still require grad: the attacks see a gradient)."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]


@pytest.fixture(scope="module")
def model_and_data():
    model, x, y = trained_digits()
    return model, x[:64], y[:64]


def test_probabilities_are_refused_with_the_way_out(model_and_data):
    model, x, _ = model_and_data
    with torch.no_grad():
        probs = Softmaxed(model)(x)
    with pytest.raises(ValueError, match=r"expected the model to return logits, got "
                                         r"probabilities.*drop the model's final softmax"):
        check_logits_like(probs)
    with pytest.raises(ValueError, match="probabilities"):
        check_logits_like(probs[:1])  # one row is enough to judge
    with pytest.raises(ValueError, match="probabilities"):
        check_logits_like(probs.half())  # half-precision rounding is allowed for


def test_logits_and_log_probabilities_pass(model_and_data):
    model, x, _ = model_and_data
    with torch.no_grad():
        check_logits_like(model(x))
        check_logits_like(Softmaxed(model, log=True)(x))  # logits up to a per-row constant
    check_logits_like(torch.empty(0, 10))  # an empty batch says nothing
    positive = torch.rand(32, 10) + 0.01  # non-negative logits that do not sum to 1
    check_logits_like(positive)
    nearly = torch.full((8, 10), 0.1)
    nearly[:, 0] += 2e-4  # sums 1.0002: outside the tolerance, so not probabilities
    check_logits_like(nearly)


def test_a_row_that_is_not_a_probability_vector_clears_the_batch():
    probs = torch.full((8, 4), 0.25)
    with pytest.raises(ValueError):
        check_logits_like(probs)
    probs[3] = torch.tensor([2.0, -1.0, 0.5, -0.5])  # sums to 1 but has negatives: logits
    check_logits_like(probs)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        check_logits_like(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(2, K\)"):
        check_depends_on_input(torch.zeros(2, 4), torch.zeros(3, 2))


def test_an_output_that_ignores_the_input_is_refused(model_and_data):
    model, x, _ = model_and_data
    const = Constant()
    with pytest.raises(ValueError, match="expected the model's output to depend on its "
                                         "input, got the same output for all 64 points"):
        check_depends_on_input(x, const(x).detach())
    with torch.no_grad():
        check_depends_on_input(x, model(x))


def test_inputs_that_do_not_differ_say_nothing():
    const = Constant()
    x = digits()[0][:1].expand(5, -1, -1, -1)
    check_depends_on_input(x, const(x).detach())  # identical inputs
    check_depends_on_input(x[:1], const(x[:1]).detach())  # a single point


# --- wiring: these two wait for the lead's calls in attacks/base.py and eval/robust.py ------

def test_an_attack_refuses_a_softmax_model(model_and_data):
    from advlab.attacks import create

    model, x, y = model_and_data
    with pytest.raises(ValueError, match="probabilities"):
        create("cw", steps=5, binary_search_steps=1)(Softmaxed(model), x, y)


def test_robust_accuracy_refuses_a_model_that_ignores_its_input(model_and_data):
    from advlab.attacks import create
    from advlab.eval.robust import robust_accuracy

    _, x, y = model_and_data
    with pytest.raises(ValueError, match="depend on its input"):
        robust_accuracy(Constant(), x, y, create("pgd", eps=0.1, steps=3))
