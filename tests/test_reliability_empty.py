"""Issue 16, item 11: zero points in the Python API give a correct empty result or a clear
error, never a torch error from deep inside (``torch.cat(): expected a non-empty list``,
``max(): Expected reduction dim``, a ZeroDivisionError)."""

from __future__ import annotations

import pytest
import torch

from advlab import data
from advlab.data.base import TensorSet
from advlab.eval import classification
from advlab.eval import generative as scores
from advlab.generative.base import create as create_generative
from attack_fixtures import trained_digits


@pytest.fixture(scope="module")
def model_and_empty():
    model, x, y = trained_digits()
    return model, x[:0], y[:0]


def test_logits_of_no_points_are_an_empty_batch(model_and_empty):
    model, x0, _ = model_and_empty
    out = classification.predict_logits(model, x0)
    assert out.shape == (0, 10) and out.dtype == torch.float32


def test_evaluating_no_points_is_a_clear_error(model_and_empty):
    model, _, _ = model_and_empty
    test = data.load("digits", "test")
    empty = TensorSet(test.x[:0], test.y[:0], test.info, test.split)
    with pytest.raises(ValueError, match="expected at least one example to evaluate, got none"):
        classification.evaluate(model, empty)


def test_classifier_features_of_no_points_are_empty(model_and_empty):
    model, x0, _ = model_and_empty
    feats, probs = scores.classifier_features(model, x0)
    assert feats.shape == (0, 64) and probs.shape == (0, 10)


@pytest.mark.parametrize("bound", ["negative_elbo", "iw_nll"])
def test_likelihood_bounds_of_no_points_are_a_clear_error(bound):
    vae = create_generative("vae", dataset="digits", hidden=[8])
    x0 = data.load("digits", "test").x[:0]
    with pytest.raises(ValueError, match="expected at least one example, got an empty x"):
        getattr(scores, bound)(vae, x0)


def test_robust_predict_of_no_points_is_an_empty_batch(model_and_empty):
    from advlab.eval.robust import predict

    model, x0, _ = model_and_empty
    assert predict(model, x0).shape == (0, 10)
