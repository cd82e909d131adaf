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
