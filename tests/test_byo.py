"""Bring your own model and data: ``advlab.wrap``, ``load_external_model``, ``load_data_file``
and the ``--model`` / ``--data`` options of ``attack``, ``eval`` and ``eval robust``.

One small CNN is trained in plain PyTorch on sklearn's digits (about a second), its factory
written to a temporary ``.py`` file, and saved every way a user might: a state dict (``.pt``),
safetensors, TorchScript and ``torch.export``; the test points as ``.npz``, ``.pt``,
``.safetensors`` and an image folder.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import advlab
from advlab.attacks import create
from advlab.cli.common import resolve_target
from advlab.cli.main import app
from advlab.data.base import DataError
from advlab.data.files import load_data_file
from advlab.eval import robust_accuracy
from advlab.external import load_external_model
from advlab.wrapping import WrappedModel
from attack_fixtures import digits

NETS_PY = '''
"""Models for the tests: make_net() is the 8x8 digits CNN; the others vary its interface."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, output="tensor"):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.output = output

    def forward(self, x):  # (B, 1, 8, 8) -> (B, 10)
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        logits = self.fc(h.flatten(1))
        if self.output == "dict":
            return {"features": h, "logits": logits}
        if self.output == "tuple":
            return logits, h
        return logits


class PlusMinusOne(nn.Module):
    """The same network on inputs in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.net = Net()

    def forward(self, z):
        return self.net((z + 1) / 2)


class Bytes(nn.Module):
    """The same network on inputs in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.net = Net()

    def forward(self, z):
        return self.net(z / 255)


def make_net():
    return Net()


def make_bytes_net():
    return Bytes()


def make_dict_net():
    return Net("dict")


def make_tuple_net():
    return Net("tuple")


def make_pm1_net():
    return PlusMinusOne()


def broken():
    raise RuntimeError("cannot build the net")


def not_a_module():
    return 42
'''


@dataclass(frozen=True)
class Files:
    root: Path
    nets: Path  # the factories' .py file
    net: nn.Module  # the trained CNN, float32, eval mode
    x: torch.Tensor  # (200, 1, 8, 8) held-out digits in [0, 1]
    y: torch.Tensor  # (200,)

    def spec(self, factory: str = "make_net") -> str:
        return f"{self.nets}:{factory}"

    def __getitem__(self, name: str) -> str:
        return str(self.root / name)


def _load_nets(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("byo_test_nets", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["byo_test_nets"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    root = tmp_path_factory.mktemp("byo")
    nets_py = root / "my_models.py"
    nets_py.write_text(textwrap.dedent(NETS_PY))
    nets = _load_nets(nets_py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1297], perm[1297:1497]
    net = nets.make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in tr[torch.randperm(len(tr), generator=gen)].split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    net.eval()
    state = net.state_dict()
    torch.save(state, root / "net.pt")
    save_file(state, str(root / "net.safetensors"))
    torch.save({"epoch": 8, "state_dict": state}, root / "checkpoint.pt")
    torch.save({f"net.{k}": v for k, v in state.items()}, root / "pm1.pt")
    torch.save(net, root / "pickled_module.pt")  # needs code to load: refused
    x_te, y_te = x[te], y[te]
    with warnings.catch_warnings():  # torch.jit is deprecated, and still what users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(net, x_te[:4]), root / "net.ts")
    program = torch.export.export(net, (x_te[:4],),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "net.pt2")
    torch.export.save(torch.export.export(net, (x_te[:4],)), root / "fixed_batch.pt2")
    np.savez(root / "test.npz", x=x_te.numpy(), y=y_te.numpy())
    torch.save({"x": x_te, "y": y_te, "classes": [f"digit {i}" for i in range(10)]},
               root / "test.pt")
    save_file({"x": x_te, "y": y_te}, str(root / "test.safetensors"))
    np.savez(root / "pm1.npz", x=(2 * x_te - 1).numpy(), y=y_te.numpy())  # in [-1, 1]
    np.savez(root / "bytes.npz", x=(255 * x_te).numpy(), y=y_te.numpy())  # in [0, 255]
    np.savez(root / "no_y.npz", x=x_te.numpy(), labels=y_te.numpy())
    return Files(root, nets_py, net, x_te, y_te)


# --- advlab.wrap -----------------------------------------------------------------------------

def logits(model, x):
    with torch.no_grad():
        return model(x)


def test_wrap_without_options_is_the_model(files):
    w = advlab.wrap(files.net)
    assert isinstance(w, WrappedModel) and w.model is files.net
    assert torch.equal(logits(w, files.x), logits(files.net, files.x))
    assert "Net" in repr(w) and "WrappedModel" in repr(w)


def test_mean_std_gives_the_predictions_of_the_model_on_normalised_data(files):
    mean, std = 0.3, 0.25

    class OnNormalised(nn.Module):  # a model trained on (x - mean) / std
        def __init__(self):
            super().__init__()
            self.net = files.net

        def forward(self, z):
            return self.net(z * std + mean)

    model = OnNormalised()
    z = (files.x - mean) / std
    w = advlab.wrap(model, mean=[mean], std=(std,))
    assert torch.allclose(logits(w, files.x), logits(model, z), atol=1e-6)
    assert torch.equal(logits(w, files.x).argmax(1), logits(model, z).argmax(1))
    # per channel: channel c is normalised by mean[c], std[c] (axis 1)
    mean3, std3 = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    seen = []
    w3 = advlab.wrap(lambda t: seen.append(t) or t.flatten(1), mean=mean3, std=std3)
    u = torch.rand(2, 3, 4, 4)
    w3(u)
    for c in range(3):
        assert torch.allclose(seen[0][:, c], (u[:, c] - mean3[c]) / std3[c])
    with pytest.raises(ValueError, match=r"expected inputs \(B, 3, \.\.\.\)"):
        w3(torch.rand(2, 1, 4, 4))


def test_bounds_map_pixels_to_the_model_range_and_convert_eps(files):
    nets = sys.modules["byo_test_nets"]
    pm1 = nets.make_pm1_net()
    pm1.net.load_state_dict(files.net.state_dict())
    pm1.eval()
    w = advlab.wrap(pm1, bounds=(-1, 1))
    assert torch.equal(logits(w, files.x), logits(files.net, files.x))
    z = 2 * files.x - 1
    assert torch.equal(w.to_unit(z), files.x) and torch.equal(w.from_unit(files.x), z)
    assert w.eps_to_unit(0.2) == pytest.approx(0.1) and w.scale == 2
    assert advlab.wrap(pm1, bounds=(0, 255)).eps_to_unit(8) == pytest.approx(8 / 255)
    # an attack in pixel space on the wrapper = the same attack on the pixel model
    ours = robust_accuracy(w, files.x, files.y, create("fgsm", eps=w.eps_to_unit(0.2)))
    ref = robust_accuracy(files.net, files.x, files.y, create("fgsm", eps=0.1))
    assert ours.robust_accuracy == ref.robust_accuracy < ref.clean_accuracy


def test_dict_output_needs_its_key(files):
    nets = sys.modules["byo_test_nets"]
    model = nets.make_dict_net()
    model.load_state_dict(files.net.state_dict())
    model.eval()
    w = advlab.wrap(model, output="logits")
    assert torch.equal(logits(w, files.x), logits(files.net, files.x))
    with pytest.raises(ValueError, match=r"keys 'features', 'logits'.*output=KEY.*--output-key"):
        logits(advlab.wrap(model), files.x)
    with pytest.raises(ValueError, match=r"the key 'probs', got keys 'features', 'logits'"):
        logits(advlab.wrap(model, output="probs"), files.x)


def test_tuple_output_takes_the_first_element_said_once(files, caplog):
    nets = sys.modules["byo_test_nets"]
    model = nets.make_tuple_net()
    model.load_state_dict(files.net.state_dict())
    w = advlab.wrap(model.eval())
    with caplog.at_level(logging.INFO, logger="advlab.wrapping"):
        out = [logits(w, files.x[:5]), logits(w, files.x[5:9])]
    # the same batches through the plain network: the tuple's first element, exactly
    assert torch.equal(torch.cat(out), torch.cat([logits(files.net, files.x[:5]),
                                                  logits(files.net, files.x[5:9])]))
    said = [r for r in caplog.records if "first element" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


def test_a_float64_model_is_fed_its_dtype_and_returns_float32_logits(files):
    nets = sys.modules["byo_test_nets"]
    model = nets.make_net()
    model.load_state_dict(files.net.state_dict())
    model = model.double().eval()
    w = advlab.wrap(model, mean=0.5, std=0.5)
    out = logits(w, files.x)
    assert out.dtype == torch.float32 and w.mean.dtype == torch.float64
    assert torch.allclose(out, logits(model, ((files.x.double() - 0.5) / 0.5)).float())
    r = create("fgsm", eps=0.1)(w, files.x[:20], files.y[:20])
    assert r.adv.dtype == torch.float32 and float(r.linf.max()) <= 0.1 + 1e-6
    assert "dtype=torch.float64" in repr(w)


def test_eval_train_and_to_reach_the_wrapped_model(files):
    nets = sys.modules["byo_test_nets"]
    model = nets.make_net()
    w = advlab.wrap(model, mean=(0.5,), std=(0.5,))
    w.train()
    assert model.training and model.conv.training
    w.eval()
    assert not model.training and not model.conv.training
    w.to(torch.float64)
    assert model.conv.weight.dtype == torch.float64 and w.std.dtype == torch.float64
    assert logits(w, files.x[:3]).dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    ({"std": 0.0}, "expected std to be a number or a sequence of finite numbers > 0"),
    ({"mean": (0.1, 0.2), "std": (0.1, 0.2, 0.3)}, "mean and std of the same length"),
    ({"bounds": (1, 1)}, "lo < hi"),
    ({"bounds": (0, 1, 2)}, "a pair"),
    ({"output": 1.5}, "a dict key"),
])
def test_bad_wrap_options_are_value_errors(files, kwargs, message):
    with pytest.raises(ValueError, match=message):
        advlab.wrap(files.net, **kwargs)


# --- load_external_model ---------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["net.pt", "net.safetensors", "checkpoint.pt"])
def test_factory_plus_weights_rebuilds_the_trained_net(files, weights):
    model = load_external_model(files.spec(), files[weights])
    assert not model.training
    assert torch.equal(logits(model, files.x), logits(files.net, files.x))


@pytest.mark.parametrize("archive", ["net.ts", "net.pt2"])
def test_archives_load_without_code_whatever_their_suffix(files, archive, tmp_path):
    odd = tmp_path / "model.bin"  # the kind is read from the contents
    odd.write_bytes(Path(files[archive]).read_bytes())
    for path in (files[archive], str(odd)):
        model = load_external_model(path)
        assert torch.allclose(logits(advlab.wrap(model), files.x),
                              logits(files.net, files.x), atol=1e-5)
    # the wrapper puts an exported program in eval mode without its refusal of .train()
    w = advlab.wrap(load_external_model(files["net.pt2"]))
    w.train()
    w.eval()
    assert not w.training


def test_package_module_factory(files, tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(Path(files.nets).read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_external_model("mypkg.nets:make_net", files["net.pt"])
    assert torch.equal(logits(model, files.x), logits(files.net, files.x))
    with pytest.raises(ValueError, match=r"module 'mypkg.nets' has no 'make_nett'.*did you "
                                         r"mean 'make_net'"):
        load_external_model("mypkg.nets:make_nett")
    with pytest.raises(ValueError, match=r"cannot import module 'nopkg.nets'.*No module named"):
        load_external_model("nopkg.nets:make_net")


@pytest.mark.parametrize("spec, weights, error, message", [
    ("{nets}:broken", None, ValueError,
     r"the model factory .*my_models.py:broken raised RuntimeError: cannot build the net"),
    ("{nets}:not_a_module", None, ValueError,
     r"expected the model factory .*:not_a_module to return a torch.nn.Module, got int"),
    ("{nets}:make_nett", None, ValueError, r"my_models.py has no 'make_nett'.*'make_net'"),
    ("{root}/missing.py:make_net", None, FileNotFoundError, r"no model file .*missing.py"),
    ("{nets}", None, ValueError, r"expected --model .*my_models.py:FACTORY"),
    ("{nets}:make_net", "pm1.pt", ValueError,
     r"weights .*pm1.pt do not fit the model built by .*:make_net: missing conv.bias, "
     r"conv.weight, fc.bias, fc.weight; unexpected net.conv.bias"),
    ("{nets}:make_net", "pickled_module.pt", ValueError,
     r"pickled_module.pt: loading it would execute code .*weights_only=True"),
    ("{nets}:make_net", "missing.pt", FileNotFoundError, r"no weights file .*missing.pt"),
    ("{root}/net.pt", None, ValueError,
     r"a PyTorch state dict holds weights, not the model: .*--model file.py:factory"),
    ("{root}/net.ts", "net.pt", ValueError, r"holds its own weights"),
    ("{root}/fixed_batch.pt2", None, ValueError,
     r"exported for a fixed batch of 4 .*dynamic_shapes"),
    ("nodots", None, ValueError, r"expected --model as path/to/file.py:factory"),
])
def test_model_errors_are_one_line(files, spec, weights, error, message):
    spec = spec.format(nets=files.nets, root=files.root)
    with pytest.raises(error, match=message) as info:
        load_external_model(spec, files[weights] if weights else None)
    assert "\n" not in str(info.value)


def test_weights_of_another_shape_are_named(files, tmp_path):
    state = dict(files.net.state_dict())
    state["fc.weight"] = torch.zeros(12, 128)
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"shape fc.weight expected \(10, 128\) got \(12, 128\)"):
        load_external_model(files.spec(), tmp_path / "wide.pt")


# --- load_data_file --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["test.npz", "test.pt", "test.safetensors"])
def test_data_files_give_the_same_points(files, name):
    ds = load_data_file(files[name])
    assert torch.equal(ds.x, files.x) and torch.equal(ds.y, files.y)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.info.name == name and ds.split == "file" and len(ds.classes) == 10
    if name == "test.pt":
        assert ds.classes[3] == "digit 3"


def test_bounds_map_float_data_and_uint8_is_divided_by_255(files, tmp_path, caplog):
    ds = load_data_file(files["pm1.npz"], bounds=(-1, 1))
    assert torch.allclose(ds.x, files.x, atol=1e-6)
    with pytest.raises(DataError, match=r"expected x inside \[0, 1\].*got values in \[-1, 1\]"):
        load_data_file(files["pm1.npz"])
    with pytest.raises(DataError, match=r"expected x inside \[0, 255\].*--bounds"):
        load_data_file(files["pm1.npz"], bounds=(0, 255))
    q = (files.x * 255).round().to(torch.uint8)
    np.savez(tmp_path / "u8.npz", x=q.numpy(), y=files.y.numpy())
    with caplog.at_level(logging.INFO, logger="advlab.data.files"):
        ds = load_data_file(tmp_path / "u8.npz")
    assert torch.equal(ds.x, q.float() / 255)
    assert any("divided by 255" in r.getMessage() for r in caplog.records)


def test_image_folder_reads_classes_in_name_order(files, tmp_path):
    from PIL import Image

    q = (files.x[:12] * 255).round().to(torch.uint8)
    names = ["zero", "one", "two"]
    for i in range(12):
        folder = tmp_path / "imgs" / names[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(q[i, 0].numpy(), mode="L").save(folder / f"{i:02d}.png")
    (tmp_path / "imgs" / "zero" / "notes.txt").write_text("not an image")
    ds = load_data_file(tmp_path / "imgs")
    assert ds.classes == ("one", "two", "zero")  # sorted by name -> labels 0, 1, 2
    order = [i for c in (1, 2, 0) for i in range(12) if i % 3 == c]
    assert torch.equal(ds.x, q[order].float() / 255) and ds.x.shape == (12, 1, 8, 8)
    assert ds.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "imgs" / "one" / "red.png")
    rgb = load_data_file(tmp_path / "imgs")
    assert rgb.x.shape == (13, 3, 8, 8) and rgb.x[4, :, 0, 0].tolist() == [1, 0, 0]
    assert torch.equal(rgb.x[0, 0], rgb.x[0, 2])  # grayscale images repeated on 3 channels


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((3, 4), np.float32), "labels": np.zeros(3, np.int64)},
     r"missing 'y'; found 'x', 'labels'"),
    ({"x": np.zeros((3, 4), np.float32), "y": np.zeros(3, np.float32)},
     r"expected y to be integer class indices, got torch.float32"),
    ({"x": np.zeros((3, 4), np.float32), "y": np.zeros(2, np.int64)},
     r"expected y of shape \(3,\)"),
    ({"x": np.zeros((3, 4), np.int32), "y": np.zeros(3, np.int64)},
     r"expected x float or uint8"),
    ({"x": np.full((3, 4), np.nan, np.float32), "y": np.zeros(3, np.int64)},
     r"expected finite x, got 12 NaN"),
    ({"x": np.zeros((3, 4), np.float32), "y": -np.ones(3, np.int64)}, r"labels >= 0"),
])
def test_bad_data_files_are_clear_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data_file(tmp_path / "bad.npz")


def test_missing_or_unknown_data_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_data_file(tmp_path / "none.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"expected a data file .npz.*got the suffix '.csv'"):
        load_data_file(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        load_data_file(tmp_path / "empty")


# --- the command line: --model, --weights, --data, --bounds, ... ----------------------------

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [*args, "--device", "cpu"])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_eval_accuracy_of_my_model_on_my_data(files, tmp_path):
    out = tmp_path / "ev"
    res = cli("eval", "--model", files.spec(), "--weights", files["net.safetensors"],
              "--data", files["test.npz"], "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    expected = (logits(files.net, files.x).argmax(1) == files.y).float().mean().item()
    assert m["test_acc"] == pytest.approx(expected) and m["n_test"] == len(files.y)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == files.spec() and cfg["weights"] == files["net.safetensors"]
    assert cfg["data"] == files["test.npz"] and cfg["source_run"] is None
    assert m["model"] == files.spec() and m["data"] == files["test.npz"]
    assert m["dataset"] == "test.npz" and m["split"] == "file"
    # the same accuracy from an archive (no code), another data file, the explicit subcommand
    res = cli("eval", "accuracy", "--model", files["net.pt2"], "--data", files["test.pt"],
              "--out", str(tmp_path / "pt2"))
    assert res.exit_code == 0, res.output
    m = read_json(tmp_path / "pt2" / "metrics.json")
    assert m["test_acc"] == pytest.approx(expected) and m["model_kind"] == "torch.export archive"
    assert m["per_class_acc"].keys() >= {"digit 0", "digit 9"}  # the names stored in test.pt


def test_attack_fgsm_on_my_model_equals_robust_accuracy_in_python(files, tmp_path):
    out = tmp_path / "att"
    res = cli("attack", "--model", files.spec(), "--weights", files["net.pt"], "--data",
              files["test.npz"], "-a", "fgsm", "--eps", "0.1", "--no-checks", "--no-progress",
              "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    ev = robust_accuracy(advlab.wrap(files.net), files.x, files.y, create("fgsm", eps=0.1))
    assert m["n"] == len(files.y) == 200  # --data without --n: every point
    assert m["robust_accuracy"] == pytest.approx(ev.robust_accuracy)
    assert m["clean_accuracy"] == pytest.approx(ev.clean_accuracy)
    assert m["eps_unit"] == "pixels [0, 1]"
    # --n draws the seeded subset, as for a built-in data set
    res = cli("attack", "--model", files.spec(), "--weights", files["net.pt"], "--data",
              files["test.npz"], "-a", "fgsm", "--eps", "0.1", "--n", "50", "--no-checks",
              "--no-progress", "--out", str(tmp_path / "n50"))
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "n50" / "metrics.json")["n"] == 50


def test_bounds_take_data_and_eps_in_the_model_units(files, tmp_path):
    """A model on [-1, 1] with data in [-1, 1]: eps 0.2 there is 0.1 in pixels."""
    out = tmp_path / "pm1"
    res = cli("attack", "--model", files.spec("make_pm1_net"), "--weights", files["pm1.pt"],
              "--bounds", "-1,1", "--data", files["pm1.npz"], "-a", "fgsm", "--eps", "0.2",
              "--no-checks", "--no-progress", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "0.2 -> 0.1" in res.output and "--bounds" in res.output
    m = read_json(out / "metrics.json")
    ev = robust_accuracy(files.net, files.x, files.y, create("fgsm", eps=0.1))
    assert m["robust_accuracy"] == pytest.approx(ev.robust_accuracy)
    assert m["eps_given"] == [0.2] and m["eps_pixels"] == [pytest.approx(0.1)]
    assert m["eps_unit"].startswith("model units [-1, 1]") and m["bounds"] == [-1, 1]


def test_eval_robust_checks_the_eps_in_pixels(files, tmp_path):
    """--bounds 0,255 --eps 25.5 is 0.1 in pixels: the protocol's own check (linf eps < 1)
    sees the converted value."""
    out = tmp_path / "bytes"
    res = cli("eval", "robust", "--model", files.spec("make_bytes_net"), "--weights",
              files["pm1.pt"], "--bounds", "0,255", "--data", files["bytes.npz"], "--n", "30",
              "--eps", "25.5", "--suite", "quick", "--steps", "3", "--restarts", "1",
              "--minimal", "none", "--no-rho2", "--no-eps-ref", "--n-checks", "20",
              "--no-progress", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "25.5 -> 0.1" in res.output
    m = read_json(out / "metrics.json")
    assert m["eps_given"] == 25.5 and m["eps_pixels"] == pytest.approx(0.1)
    assert m["threat"]["eps"] == pytest.approx(0.1) and m["n"] == 30


def test_eval_robust_on_my_model_with_a_builtin_dataset(files, tmp_path):
    out = tmp_path / "rob"
    res = cli("eval", "robust", "--model", files.spec(), "--weights", files["net.pt"],
              "--dataset", "digits", "--n", "40", "--eps", "0.1", "--suite", "quick",
              "--steps", "3", "--restarts", "1", "--minimal", "none", "--no-rho2", "--no-eps-ref",
              "--n-checks", "20", "--no-progress", "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["dataset"] == "digits" and cfg["n"] == 40 and cfg["model"] == files.spec()
    assert m["dataset"] == "digits" and 0 <= m["robust_accuracy"] <= m["clean_accuracy"]


def test_output_key_and_normalisation_options_resolve_to_the_wrapped_model(files):
    """The commands' shared resolution (``resolve_target``) builds advlab.wrap's model."""
    target = resolve_target(None, model=files.spec("make_dict_net"), weights=files["net.pt"],
                            output_key="logits", data_file=Path(files["test.npz"]),
                            device="cpu")
    assert torch.equal(logits(target.model, files.x), logits(files.net, files.x))
    assert target.record["output_key"] == "logits" and target.dataset == "test.npz"
    # --mean/--std: the net itself then sees (x - 0.5) / 0.25
    target = resolve_target(None, model=files.spec(), weights=files["net.pt"], mean="0.5",
                            std="0.25", dataset="digits", n=30, default_n=1000, device="cpu")
    x = target.data.x
    assert torch.equal(logits(target.model, x), logits(files.net, (x - 0.5) / 0.25))
    assert target.record["mean"] == [0.5] and len(target.data) == 30
    assert target.train_dataset == "digits" and target.data.split == "test"


def _bad(files, tmp_path) -> dict[str, tuple[list[str], str]]:
    np.savez(tmp_path / "big.npz", x=(255 * files.x).numpy(), y=files.y.numpy())
    model = ["--model", files.spec(), "--weights", files["net.pt"]]
    data = ["--data", files["test.npz"]]
    return {
        "factory raises": (["--model", files.spec("broken"), *data],
                           "raised RuntimeError: cannot build the net"),
        "weights do not fit": (["--model", files.spec(), "--weights", files["pm1.pt"], *data],
                               "do not fit the model built by"),
        "data without y": ([*model, "--data", files["no_y.npz"]],
                           "missing 'y'; found 'x', 'labels'"),
        "x outside bounds": ([*model, "--data", str(tmp_path / "big.npz"), "--bounds", "0,1"],
                             "expected x inside [0, 1]"),
        "dict output, no key": (["--model", files.spec("make_dict_net"), "--weights",
                                 files["net.pt"], *data], "--output-key"),
        "RUN and --model": ([str(tmp_path), *model, *data], "got both"),
        "neither": ([*data], "got neither"),
        "no data": ([*model], "--data FILE or --dataset NAME, got neither"),
        "--bounds with RUN": ([str(tmp_path), "--bounds", "0,255"], "go with --model SPEC"),
        "bad bounds": ([*model, *data, "--bounds", "1,0"], "expected --bounds LO,HI"),
        "data of another shape": ([*model, "--data", str(tmp_path / "flat.npz")],
                                  "the model fails on the points of"),
    }


@pytest.mark.parametrize("command", [["attack", "-a", "fgsm", "--eps", "0.1"], ["eval"],
                                     ["eval", "robust", "--eps", "0.1"]])
def test_bad_inputs_are_one_line_errors_before_any_run_directory(files, tmp_path, command):
    np.savez(tmp_path / "flat.npz", x=files.x.flatten(1).numpy(), y=files.y.numpy())
    for case, (args, message) in _bad(files, tmp_path).items():
        out = tmp_path / "out"
        res = runner.invoke(app, [*command, *args, "--out", str(out)])
        text = res.output.strip()
        assert res.exit_code == 2, (case, res.output)
        assert message in text, (case, text)
        assert text.startswith("error:") and "\n" not in text, (case, text)
        assert "Traceback" not in text and not out.exists(), case


def test_universal_needs_a_builtin_training_set(files, tmp_path):
    res = cli("attack", "--model", files.spec(), "--weights", files["net.pt"], "--data",
              files["test.npz"], "-a", "universal", "--eps", "0.1", "--out", str(tmp_path / "u"))
    assert res.exit_code == 2 and "give --dataset NAME instead of --data" in res.output
    assert not (tmp_path / "u").exists()


def test_a_run_of_advlab_on_my_data(files, tmp_path):
    """RUN with --data: an advlab model evaluated on a data file (its data set's name kept)."""
    from advlab import models
    from advlab.weights import load_model, save_model

    torch.manual_seed(0)
    save_model(tmp_path / "run", models.create("mlp", "digits"), {"dataset": "digits"})
    target = resolve_target(tmp_path / "run", data_file=Path(files["test.npz"]), device="cpu")
    assert target.dataset == "digits" and target.train_dataset == "digits"
    assert target.record == {"source_run": str(tmp_path / "run"), "data": files["test.npz"]}
    assert len(target.data) == 200 and target.data.split == "file"
    res = cli("eval", str(tmp_path / "run"), "--data", files["test.npz"], "--out",
              str(tmp_path / "ev"))
    assert res.exit_code == 0, res.output
    net = load_model(tmp_path / "run")
    expected = (logits(net, files.x).argmax(1) == files.y).float().mean().item()
    assert read_json(tmp_path / "ev" / "metrics.json")["test_acc"] == pytest.approx(expected)
