from dataclasses import dataclass

import pytest

from advlab.cli.common import parse_floats
from advlab.config import from_dict
from advlab.registry import Registry


def test_registry_create_drops_none_and_lists_valid_names():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha(size=3):
        return size

    assert reg.create("alpha", size=None) == 3
    assert reg.create("alpha", size=5) == 5
    with pytest.raises(ValueError, match=r"unknown widget 'alpah'.*'alpha'.*Valid widgets: alpha"):
        reg.create("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", alpha)


@dataclass(frozen=True)
class Cfg:
    epochs: int = 1
    widths: tuple = (1,)


def test_from_dict_rejects_unknown_keys_with_hint():
    assert from_dict(Cfg, {"epochs": None}).epochs == 1
    assert from_dict(Cfg, {"widths": [2, 3]}).widths == (2, 3)
    with pytest.raises(ValueError, match="'epoch' \\(did you mean 'epochs'\\?\\)"):
        from_dict(Cfg, {"epoch": 3})


def test_parse_floats_ranges_and_errors():
    assert parse_floats("0.3") == [0.3]
    assert parse_floats("0.1,0.2") == [0.1, 0.2]
    assert parse_floats("0:0.3:0.1") == [0.0, 0.1, 0.2, 0.3]
    for bad in ("a", "0:0.3", "0.3:0:0.1", "0:1:0", "", ",", "0.1,,0.2", "nan", "0:inf:1"):
        with pytest.raises(ValueError, match="expected --eps to be a finite number"):
            parse_floats(bad, "--eps")
    assert parse_floats("0,1", "--fraction", low=0, high=1) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"expected --fraction values in \[0, 1\], got 1.5"):
        parse_floats("0.5,1.5", "--fraction", low=0, high=1)
    with pytest.raises(ValueError, match="at most 10000 values"):
        parse_floats("0:1:1e-9", "--eps")
    with pytest.raises(ValueError, match="expected --eps values >= 0, got -0.2"):
        parse_floats("-0.2:0.2:0.2", "--eps", low=0)


@dataclass(frozen=True)
class Typed:
    epochs: int = 1
    lr: float = 1e-3
    name: str = "adam"
    flag: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    widths: tuple[int, ...] = (8,)
    limit: int | None = None
    kwargs: dict = None  # type: ignore[assignment]


def test_from_dict_converts_what_yaml_gives_and_names_wrong_types():
    c = from_dict(Typed, {"epochs": 3.0, "lr": "1e-3", "betas": [0, 1], "widths": [4, 2],
                          "limit": 7, "kwargs": {"a": 1}})
    assert c.epochs == 3 and isinstance(c.epochs, int)
    assert c.lr == 1e-3 and isinstance(c.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert c.betas == (0.0, 1.0) and all(isinstance(b, float) for b in c.betas)
    assert c.widths == (4, 2) and c.limit == 7
    assert from_dict(Typed, {"lr": 2}).lr == 2.0
    bad = {"epochs": 1.7, "lr": "abc", "name": 5, "flag": "yes", "betas": [0.9],
           "widths": ["a"], "limit": "x", "kwargs": 5}
    for key, value in bad.items():
        with pytest.raises(ValueError, match=rf"Typed option {key}: expected .*, got {value!r}"
                           .replace("[", r"\[").replace("]", r"\]")):
            from_dict(Typed, {key: value})
    with pytest.raises(ValueError, match="epochs: expected an integer, got True"):
        from_dict(Typed, {"epochs": True})


def test_train_config_from_a_config_file_names_the_bad_value():
    from advlab.train.classifier import ClassifierJob

    for train, match in (({"lr": "abc"}, "lr: expected a number, got 'abc'"),
                         ({"epochs": 1.7}, "epochs: expected an integer, got 1.7"),
                         ({"batch_size": 1.5}, "batch_size: expected an integer, got 1.5")):
        with pytest.raises(ValueError, match=match):
            ClassifierJob.from_dict({"train": train})
    with pytest.raises(ValueError, match="train: expected a mapping .*, got 5"):
        ClassifierJob.from_dict({"train": 5})
    with pytest.raises(ValueError, match="model_kwargs: expected a mapping, got 5"):
        ClassifierJob.from_dict({"model_kwargs": 5})


def test_configs_built_in_python_get_the_same_messages():
    import numpy as np

    from advlab.generative.train import GenerativeTrainConfig
    from advlab.train.config import TrainConfig

    assert TrainConfig(epochs=np.int64(2), lr=np.float32(0.5)).epochs == 2
    with pytest.raises(ValueError, match="TrainConfig option lr: expected a number, got 'abc'"):
        TrainConfig(lr="abc")
    with pytest.raises(ValueError, match="TrainConfig option lr: expected a number, got '1'"):
        TrainConfig(lr="1")  # a file may say 1e-3 (YAML 1.1 reads a string); Python may not
    with pytest.raises(ValueError, match="option epochs: expected an integer, got 1.5"):
        GenerativeTrainConfig(epochs=1.5)
