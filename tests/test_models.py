"""Contract tests over every registered model x every data set it supports, plus exact checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import advlab.models as models
from advlab.data.base import available as available_datasets
from advlab.data.base import info

CONV_MODELS = {"lenet5", "madry-cnn", "wong-cnn", "fmnist-cnn", "cifar-cnn", "resnet-small"}
POINT_SETS = {"ring8", "grid25"}
# Combinations that must be refused; a new model is expected to support every data set
# unless it is listed here.
UNSUPPORTED = {(m, d) for m in CONV_MODELS for d in POINT_SETS} | {("cifar-cnn", "digits")}
CASES = [
    (name, ds)
    for name in models.available()
    for ds in available_datasets()
    if (name, ds) not in UNSUPPORTED
]
B = 3


def _inputs(ds: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (B, *info(ds).shape)
    if info(ds).kind == "image":
        return torch.rand(shape, generator=g)  # pixels in [0, 1]
    return torch.randn(shape, generator=g) * 2.0


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


@pytest.mark.parametrize("name,ds", CASES)
def test_model_contract(name: str, ds: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, ds).eval()
    assert model.input_shape == info(ds).shape
    assert model.num_classes == info(ds).num_classes

    x = _inputs(ds).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (B, info(ds).num_classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    # Attacks need a finite, non-trivial input gradient.
    y = torch.arange(B) % info(ds).num_classes
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0

    # The spec survives JSON and rebuilds the same architecture.
    spec = json.loads(json.dumps(model.spec))
    assert spec["name"] == name and spec["dataset"] == ds
    rebuilt = models.from_spec(spec)
    assert rebuilt.spec == model.spec
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", models.available())
def test_double_backward_in_train_mode(name: str) -> None:
    """Input-gradient penalties (defenses) differentiate through the gradient."""
    torch.manual_seed(0)
    ds = "digits" if name != "cifar-cnn" else "cifar10"
    model = models.create(name, ds).train()
    x = _inputs(ds).requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), torch.arange(B))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    grad.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", models.available())
def test_layers_are_plain(name: str) -> None:
    model = models.create(name, "mnist")
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear in kinds
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            assert not m.inplace
    # Weight-carrying layers are plain Linear / Conv2d / BatchNorm2d only.
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert type(m) in (nn.Linear, nn.Conv2d, nn.BatchNorm2d), type(m)


def test_seeded_creation_is_deterministic() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(models.create("lenet5", "mnist").state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(124)
    other = models.create("lenet5", "mnist").state_dict()
    assert not torch.equal(other["net.0.weight"], states[0]["net.0.weight"])


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'madry'") as err:
        models.create("madry", "mnist")
    for name in models.available():
        assert name in str(err.value)
    assert "'madry-cnn'" in str(err.value)  # close match suggested


def test_unknown_keyword_lists_valid_keywords() -> None:
    with pytest.raises(ValueError, match="unknown keyword") as err:
        models.create("mlp", "mnist", width=(10,))
    assert "widths" in str(err.value) and "num_classes" in str(err.value)


@pytest.mark.parametrize("name,ds", sorted(UNSUPPORTED))
def test_unsupported_combination(name: str, ds: str) -> None:
    with pytest.raises(ValueError) as err:
        models.create(name, ds)
    msg = str(err.value)
    assert repr(name) in msg and repr(ds) in msg


# Hand-derived minimum input sides (square inputs), see docs/guide-models.md.
MIN_SIDES = {"lenet5": 4, "madry-cnn": 4, "wong-cnn": 4, "fmnist-cnn": 7, "cifar-cnn": 15,
             "resnet-small": 1}


@pytest.mark.parametrize("name", sorted(MIN_SIDES))
def test_minimum_input_size(name: str) -> None:
    side = MIN_SIDES[name]
    model = models.create(name, "mnist", in_shape=(1, side, side)).eval()
    assert model(torch.rand(2, 1, side, side)).shape == (2, 10)
    if side > 1:
        with pytest.raises(ValueError, match=f"at least {side}x{side}") as err:
            models.create(name, "mnist", in_shape=(1, side - 1, side - 1))
        assert repr(name) in str(err.value) and "'mnist'" in str(err.value)


def test_non_square_images() -> None:
    model = models.create("madry-cnn", "mnist", in_shape=(1, 8, 28)).eval()
    assert model(torch.rand(2, 1, 8, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 15x15"):
        models.create("cifar-cnn", "cifar10", in_shape=(3, 32, 14))


def test_latent_classifier_overrides() -> None:
    model = models.create("mlp", "mnist", in_features=32, num_classes=7, widths=(16, 16))
    assert model.input_shape == (32,) and model.num_classes == 7
    assert model(torch.randn(4, 32)).shape == (4, 7)
    assert model.spec["kwargs"]["in_shape"] == [32]
    assert model.spec["kwargs"]["widths"] == [16, 16]
    no_ds = models.create("lrl", None, in_shape=(32,), num_classes=3)
    assert models.from_spec(json.loads(json.dumps(no_ds.spec))).spec == no_ds.spec
    with pytest.raises(ValueError, match="in_shape"):
        models.create("lrl", None, num_classes=3)
    with pytest.raises(ValueError, match="at most one of in_shape and in_features"):
        models.create("mlp", "mnist", in_shape=(32,), in_features=32)
    with pytest.raises(ValueError, match="image inputs"):
        models.create("madry-cnn", "mnist", in_features=32)


def test_wrong_input_shape_is_refused() -> None:
    model = models.create("mlp-100", "mnist")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 28, 28\)"):
        model(torch.rand(2, 784))


def test_invalid_architecture_keywords() -> None:
    with pytest.raises(ValueError, match="depth"):
        models.create("resnet-small", "cifar10", depth=9)
    with pytest.raises(ValueError, match="widths"):
        models.create("mlp", "mnist", widths=(100, 0))
    with pytest.raises(ValueError, match="dropout"):
        models.create("fmnist-cnn", "fashion-mnist", dropout=1.0)
    with pytest.raises(ValueError, match="normalize=False"):
        models.create("mlp", "mnist", normalize=False, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="no default statistics"):
        models.create("mlp", "ring8", normalize=True)


def test_none_keywords_are_ignored() -> None:
    model = models.create("mlp", "mnist", widths=None, normalize=None, num_classes=None)
    assert model.spec == models.create("mlp", "mnist").spec


def test_normalization_is_inside_the_model() -> None:
    torch.manual_seed(0)
    x = _inputs("cifar10")
    model = models.create("madry-cnn", "cifar10").eval()  # cifar10: normalize by default
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - mean) / std), atol=1e-6)
        assert not torch.allclose(model(x), model.net(x), atol=1e-3)
    assert set(model.state_dict()) >= {"normalize.mean", "normalize.std"}

    plain = models.create("madry-cnn", "mnist").eval()  # MNIST-like: off by default
    assert isinstance(plain.normalize, nn.Identity)
    assert plain.spec["kwargs"]["normalize"] is False

    custom = models.create("mlp", "ring8", normalize=True, mean=(1.0, -2.0), std=(2.0, 4.0))
    p = torch.tensor([[3.0, 2.0]])
    with torch.no_grad():
        assert torch.allclose(custom(p), custom.net(torch.tensor([[1.0, 1.0]])))
    mnist = models.create("mlp", "mnist", normalize=True)
    assert mnist.normalize.mean.tolist() == pytest.approx([0.1307])


def test_parameter_counts() -> None:
    count = models.count_parameters
    assert count(models.create("mlp-100", "mnist")) == _linear(784, 100) + _linear(100, 10)
    assert count(models.create("mlp-100", "mnist")) == 79510
    fc = _linear(784, 500) + _linear(500, 150) + _linear(150, 10)
    assert count(models.create("fc500-150", "mnist")) == fc == 469160
    assert count(models.create("linear-1l", "mnist")) == _linear(784, 10)
    assert count(models.create("linear-2l", "mnist", hidden=50)) == (
        _linear(784, 50) + _linear(50, 10)
    )
    assert count(models.create("lrl", "mnist")) == _linear(784, 100) + _linear(100, 10)
    madry = _conv(1, 32, 5) + _conv(32, 64, 5) + _linear(7 * 7 * 64, 1024) + _linear(1024, 10)
    assert count(models.create("madry-cnn", "mnist")) == madry == 3_274_634
    wong = _conv(1, 16, 4) + _conv(16, 32, 4) + _linear(7 * 7 * 32, 100) + _linear(100, 10)
    assert count(models.create("wong-cnn", "mnist")) == wong == 166_406
    lenet = (_conv(1, 6, 5) + _conv(6, 16, 5) + _linear(16 * 5 * 5, 120) + _linear(120, 84)
             + _linear(84, 10))
    assert count(models.create("lenet5", "mnist")) == lenet == 61706
    # 8x8 digits: the second convolution is padded, leaving 16 x 2 x 2 features.
    lenet_digits = lenet - _linear(400, 120) + _linear(64, 120)
    assert count(models.create("lenet5", "digits")) == lenet_digits
    fmnist = (_conv(1, 64, 2) + _conv(64, 128, 2) + _linear(128 * 6 * 6, 256)
              + _linear(256, 10))
    assert count(models.create("fmnist-cnn", "fashion-mnist")) == fmnist
    cifar = (_conv(3, 32, 2) + _conv(32, 64, 2) + _conv(64, 128, 2) + _linear(128 * 3 * 3, 256)
             + _linear(256, 10))
    assert count(models.create("cifar-cnn", "cifar10")) == cifar


def _resnet_count(depth: int, c: int, w: int, classes: int) -> int:
    bn = 2  # weight and bias per channel
    n = (depth - 2) // 6
    total = _conv(c, w, 3, bias=False) + bn * w
    c_in = w
    for stage, c_out in enumerate((w, 2 * w, 4 * w)):
        for block in range(n):
            total += _conv(c_in, c_out, 3, False) + _conv(c_out, c_out, 3, False) + 2 * bn * c_out
            if stage > 0 and block == 0:
                total += _conv(c_in, c_out, 1, False) + bn * c_out  # projection shortcut
            c_in = c_out
    return total + _linear(4 * w, classes)


@pytest.mark.parametrize("depth", [8, 20])
def test_resnet_depth_and_parameter_count(depth: int) -> None:
    model = models.create("resnet-small", "cifar10", depth=depth)
    assert models.count_parameters(model) == _resnet_count(depth, 3, 16, 10)
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == (depth - 2) // 2  # 3 stages of n = (depth - 2) / 6 blocks
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convolutions plus the linear head


def test_count_parameters_trainable_only() -> None:
    model = models.create("lrl", "digits")
    model.net[1].requires_grad_(False)
    total = models.count_parameters(model)
    assert models.count_parameters(model, trainable_only=True) == total - _linear(64, 100)


# ------------------------------------------------------------------ bad keyword values (audit)

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("mean", "std", "message"), [
    ([0.5], [INF], r"std.*finite.*> 0.*inf"),
    ([0.5], [0.0], r"std.*> 0.*0\.0"),
    ([0.5], [-1.0], r"std.*> 0.*-1\.0"),
    ([0.5], [NAN], r"std.*finite.*nan"),
    ([NAN], [1.0], r"mean.*finite.*nan"),
    ([-INF], [1.0], r"mean.*finite.*-inf"),
    (["a"], [1.0], r"mean.*numbers.*'a'"),
    ([0.5], "ab", r"std.*numbers.*'ab'"),
    ([True], [1.0], r"mean.*numbers.*True"),
    ([], [], r"mean.*non-empty"),
])
def test_normalization_statistics_must_be_finite_and_std_positive(mean, std, message) -> None:
    with pytest.raises(ValueError, match=message):
        models.create("mlp", "digits", normalize=True, mean=mean, std=std)


def test_normalization_statistics_mismatch_and_scalars() -> None:
    with pytest.raises(ValueError, match=r"mean and std of equal length.*3.*1"):
        models.create("mlp", "cifar10", mean=[0.5, 0.5, 0.5], std=[0.2])
    # A single number is one value for every channel, recorded as a one-element list.
    model = models.create("mlp", "cifar10", mean=0.5, std=0.25)
    assert model.spec["kwargs"]["mean"] == [0.5] and model.spec["kwargs"]["std"] == [0.25]
    assert models.from_spec(json.loads(json.dumps(model.spec))).spec == model.spec
    with pytest.raises(ValueError, match=r"std.*finite.*inf"):
        models.create("mlp", "digits", mean=0.5, std=INF)


def test_normalization_gives_finite_logits_for_valid_statistics() -> None:
    model = models.create("mlp", "digits", normalize=True, mean=[0.5], std=[1e-3]).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 1, 8, 8))).all()


def test_widths_is_a_list_of_positive_ints_or_one_int() -> None:
    # One int is one hidden layer (as in advlab.generative).
    model = models.create("mlp", "digits", widths=5)
    assert models.count_parameters(model) == _linear(64, 5) + _linear(5, 10)
    assert models.from_spec(json.loads(json.dumps(model.spec))).spec == model.spec
    assert models.count_parameters(models.create("mlp", "digits", widths=[])) == _linear(64, 10)
    for bad, shown in [("500,150", "'500,150'"), ([5.5], "5.5"), ([True], "True"),
                       (True, "True"), ([-5], "-5"), (0, "0"), ({"a": 1}, "{'a': 1}")]:
        with pytest.raises(ValueError, match="widths") as err:
            models.create("mlp", "digits", widths=bad)
        assert "positive ints" in str(err.value) and shown in str(err.value), (bad, err.value)
    with pytest.raises(ValueError, match="a string") as err:
        models.create("mlp", "digits", widths="500,150")
    assert "[500, 150]" in str(err.value)


@pytest.mark.parametrize(("name", "ds", "kwargs", "what"), [
    ("resnet-small", "cifar10", {"width": True}, "width"),
    ("resnet-small", "cifar10", {"width": 2.5}, "width"),
    ("resnet-small", "cifar10", {"width": 0}, "width"),
    ("resnet-small", "cifar10", {"depth": True}, "depth"),
    ("resnet-small", "cifar10", {"depth": 8.0}, "depth"),
    ("lrl", "digits", {"hidden": True}, "hidden"),
    ("linear-2l", "digits", {"hidden": False}, "hidden"),
])
def test_bools_and_floats_are_refused_where_ints_are_expected(name, ds, kwargs, what) -> None:
    with pytest.raises(ValueError, match=what) as err:
        models.create(name, ds, **kwargs)
    assert repr(kwargs[what]) in str(err.value)


@pytest.mark.parametrize("classes", [1, 0, -3, 2.5, True])
def test_a_classifier_needs_at_least_two_classes(classes) -> None:
    with pytest.raises(ValueError, match="num_classes") as err:
        models.create("mlp", "digits", num_classes=classes)
    assert ">= 2" in str(err.value) and repr(classes) in str(err.value)


def test_two_classes_is_enough() -> None:
    model = models.create("lrl", None, in_features=2, num_classes=2)
    assert model(torch.randn(3, 2)).shape == (3, 2)
