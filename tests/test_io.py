import os

import pytest
import torch

from advlab.io import TensorRef, atomic_path, load_state, load_state_meta, save_state, write_json


def test_state_roundtrip_keeps_nested_structure_and_int_keys(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "rng": torch.get_rng_state(),
             "epoch": 3, "history": [{"loss": 0.5}], "none": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["history"] == [{"loss": 0.5}] and back["none"] is None
    assert set(back["optim"]["state"]) == {0, 1}  # int keys survive JSON
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.Adam(model.parameters())
    opt2.load_state_dict(back["optim"])  # accepted by torch as is


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{")  # the old file is intact
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("load", [load_state, load_state_meta])
def test_load_state_rejects_garbage(tmp_path, load):
    p = tmp_path / "bad.safetensors"
    for raw in (b"\x00" * 20, b"\x05", (10**9).to_bytes(8, "little") + b"{}",
                (2).to_bytes(8, "little") + b"[]", (4).to_bytes(8, "little") + b"\xff\xfe{}"):
        p.write_bytes(raw)
        with pytest.raises(ValueError, match="bad.safetensors"):
            load(p)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_load_state_meta_reads_the_structure_from_the_header_only(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 4, "history": [{"loss": 0.5}],
             "steps": {1: torch.zeros(5, dtype=torch.int64)}}
    path = tmp_path / "s.safetensors"
    save_state(path, state)
    import advlab.io

    def no_values(*args, **kwargs):
        raise AssertionError("the tensor values were read")

    monkeypatch.setattr(advlab.io, "load_file", no_values)
    meta = load_state_meta(path)
    assert meta["epoch"] == 4 and meta["history"] == [{"loss": 0.5}]
    assert meta["model"]["weight"] == TensorRef("model.weight", (2, 3), "F32")
    assert meta["model"]["bias"].shape == (2,)
    assert meta["steps"][1] == TensorRef("steps.1", (5,), "I64")
    # a file cut short: the header still parses, but the data it points at is gone
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="cut.safetensors.*truncated file"):
        load_state_meta(cut)


# --- malformed advlab metadata, model files and run directories ---------------------------

def _raw_file(path, meta: str | None, tensors=None):
    """A safetensors file whose advlab metadata string is ``meta`` (None: no advlab key)."""
    from safetensors.torch import save_file

    from advlab.io import _META_KEY

    save_file(tensors or {"w": torch.zeros(2)}, str(path),
              metadata={} if meta is None else {_META_KEY: meta})
    return path


@pytest.mark.parametrize("meta, message", [
    ("{not json", "advlab metadata is not valid JSON"),
    ("[1, 2]", "expected the advlab metadata to be a JSON object, got list"),
    ('"text"', "expected the advlab metadata to be a JSON object, got str"),
    ('{"w": {"__tensor__": "missing"}}', "tensor 'missing', which the file does not hold"),
    ('{"__dict__": 3}', "expected __dict__ to be a list of"),
    ('{"__dict__": [["a"]]}', "expected __dict__ to be a list of"),
])
def test_load_state_rejects_malformed_metadata(tmp_path, meta, message):
    p = _raw_file(tmp_path / "bad.safetensors", meta)
    for load in (load_state, load_state_meta):
        with pytest.raises(ValueError, match="bad.safetensors") as err:
            load(p)
        assert message in str(err.value)


def _tiny(name: str = "mlp-100"):
    from advlab import models

    torch.manual_seed(0)
    return models.create(name, "ring8")


def _model_state(**changes):
    """The state save_model writes for a tiny model, with top-level or meta keys changed."""
    model = _tiny()
    state = {"kind": "advlab-model", "model": model.state_dict(),
             "meta": {"spec": model.spec, "dataset": "ring8"}}
    for key, value in changes.items():
        where = state["meta"] if key in ("spec", "dataset") else state
        if value is _DROP:
            where.pop(key)
        else:
            where[key] = value
    return state


_DROP = object()


@pytest.mark.parametrize("changes, message", [
    ({"kind": _DROP}, "expected kind 'advlab-model', got None"),
    ({"kind": "something-else"}, "expected kind 'advlab-model', got 'something-else'"),
    ({"meta": _DROP}, "expected 'meta' to be a JSON object holding the architecture 'spec'"),
    ({"meta": [1, 2]}, "expected 'meta' to be a JSON object holding the architecture 'spec'"),
    ({"spec": _DROP}, "expected the architecture 'spec' in the metadata, got none"),
    ({"spec": "mlp-100"}, "expected the architecture 'spec' to be an object with keys name, "
                          "dataset, kwargs, got str"),
    ({"spec": {"name": "mlp-100"}}, "expected the architecture 'spec' to be an object with "
                                    "keys name, dataset, kwargs, got keys name"),
    ({"spec": {"name": "mlp-100", "dataset": "ring8", "kwargs": [1]}},
     "expected spec 'kwargs' to be an object, got list"),
    ({"spec": {"name": "no-such-model", "dataset": "ring8", "kwargs": {}}},
     "cannot rebuild the architecture"),
    ({"model": _DROP}, "expected 'model' to be a mapping of tensor names to tensors"),
    ({"model": {"w": 3}}, "expected 'model' to be a mapping of tensor names to tensors"),
])
def test_load_model_rejects_malformed_model_metadata(tmp_path, changes, message):
    from advlab.weights import load_model

    p = tmp_path / "m.safetensors"
    save_state(p, _model_state(**changes))
    with pytest.raises(ValueError, match="m.safetensors") as err:
        load_model(p)
    assert message in str(err.value)


@pytest.mark.parametrize("meta, message", [
    ("{not json", "advlab metadata is not valid JSON"),
    ("[]", "expected the advlab metadata to be a JSON object, got list"),
    ('{"kind": "advlab-model"}', "expected 'meta' to be a JSON object"),
    ('{"meta": {"spec": {}}}', "expected kind 'advlab-model'"),
    ('{"kind": "advlab-model", "meta": {"dataset": "ring8"}}',
     "expected the architecture 'spec' in the metadata, got none"),
    ('{"kind": "advlab-model", "meta": {"spec": 3}}', "got int"),
])
def test_read_model_meta_and_load_model_reject_malformed_metadata(tmp_path, meta, message):
    from advlab.weights import load_model, read_model_meta

    p = _raw_file(tmp_path / "m.safetensors", meta)
    for load in (read_model_meta, load_model):
        with pytest.raises(ValueError, match="m.safetensors") as err:
            load(p)
        assert message in str(err.value)


def test_read_model_meta_accepts_generative_model_files(tmp_path):
    from advlab import generative
    from advlab.weights import read_model_meta

    torch.manual_seed(0)
    gm = generative.create("ae", dataset="ring8")
    generative.save_generative(tmp_path, gm, {"dataset": "ring8"})
    assert read_model_meta(tmp_path)["spec"] == gm.spec


@pytest.mark.parametrize("device, message", [
    ("gpu", "unknown device 'gpu'; valid: auto, cpu, cuda, mps"),
    ("cuda", "device 'cuda' requested but CUDA is not available"),
])
def test_load_model_device_errors_are_clear(tmp_path, device, message):
    from advlab.weights import load_model, save_model

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    save_model(tmp_path, _tiny())
    with pytest.raises(ValueError) as err:
        load_model(tmp_path, device=device)
    assert message in str(err.value)
    assert load_model(tmp_path, device=torch.device("cpu")).spec == _tiny().spec
    assert next(load_model(tmp_path, device="cpu").parameters()).device.type == "cpu"


def test_run_directory_refuses_weights_copied_from_another_architecture(tmp_path):
    import shutil

    from advlab.weights import load_model, load_weights_into, read_model_meta, save_model

    run, other = tmp_path / "run", tmp_path / "other"
    save_model(run, _tiny("mlp-100"), {"dataset": "ring8"})
    save_model(other, _tiny("linear-1l"), {"dataset": "ring8"})
    assert load_model(run).spec["name"] == "mlp-100"  # the run as written loads
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    for load in (load_model, read_model_meta, lambda p: load_weights_into(_tiny("mlp-100"), p)):
        with pytest.raises(ValueError, match="model.safetensors") as err:
            load(run)
        msg = str(err.value)
        assert "'linear-1l'" in msg and "'mlp-100'" in msg and "model.json" in msg, msg
    # the weights file alone (no model.json beside it) still loads as what it is
    shutil.copy(other / "model.safetensors", tmp_path / "alone.safetensors")
    assert load_model(tmp_path / "alone.safetensors").spec["name"] == "linear-1l"


@pytest.mark.parametrize("text, message", [
    ("{broken", "not valid JSON"),
    ("[1]", "expected a JSON object holding the architecture 'spec' of model.safetensors, "
            "got list"),
    ('{"dataset": "ring8"}', "expected a JSON object holding the architecture 'spec'"),
])
def test_run_directory_with_a_malformed_model_json_is_refused(tmp_path, text, message):
    from advlab.weights import load_model, save_model

    save_model(tmp_path, _tiny(), {"dataset": "ring8"})
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(ValueError, match="model.json") as err:
        load_model(tmp_path)
    assert message in str(err.value)


def test_generative_runs_get_the_same_file_checks(tmp_path):
    """load_generative: another architecture's weights copied into a run, malformed metadata
    and an unavailable device are refused with the classifier loader's messages."""
    import shutil

    from safetensors.torch import save_file

    from advlab import generative
    from advlab.generative.weights import load_generative, save_generative

    run, other = tmp_path / "run", tmp_path / "other"
    save_generative(run, generative.create("ae", dataset="ring8", latent_dim=2))
    save_generative(other, generative.create("vae", dataset="ring8", latent_dim=2))
    assert load_generative(run).spec["name"] == "ae"
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    with pytest.raises(ValueError, match="'vae'.*model.json beside it describes 'ae'"):
        load_generative(run)
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad), metadata={"advlab": "{broken"})
    with pytest.raises(ValueError, match="bad.safetensors: the advlab metadata is not valid"):
        load_generative(bad)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        load_generative(other, device="gpu")


def test_model_metadata_and_a_runs_epoch_count_are_read_without_the_weights(tmp_path,
                                                                             monkeypatch):
    import advlab.io
    from advlab.runs import check_epochs, new_run_dir
    from advlab.weights import read_model_meta, save_model

    save_model(tmp_path / "run", _tiny(), {"dataset": "ring8"})
    run = new_run_dir("train", tmp_path / "ckpt")
    save_state(run.path / "checkpoint.safetensors", {"epoch": 5, "w": torch.zeros(3)})

    def no_values(*args, **kwargs):
        raise AssertionError("the tensor values were read")

    monkeypatch.setattr(advlab.io, "load_file", no_values)
    assert read_model_meta(tmp_path / "run")["dataset"] == "ring8"
    check_epochs(run, run.path / "checkpoint.safetensors", 5)
    with pytest.raises(ValueError, match="completed 5 epochs, more than --epochs 3"):
        check_epochs(run, run.path / "checkpoint.safetensors", 3)


def test_write_json_writes_standard_json_with_null_for_non_finite_numbers(tmp_path):
    import json

    import numpy as np

    path = tmp_path / "m.json"
    write_json(path, {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}],
                      "t": torch.tensor([0.5, float("nan")]), "n": np.float32("nan"),
                      "arr": np.array([1.0, np.nan]), "ok": 2, "s": "NaN", "flag": True,
                      "tup": (float("nan"), 3)})

    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    back = json.loads(path.read_text(), parse_constant=reject)
    assert back == {"a": None, "b": [1.0, None, {"c": None}], "t": [0.5, None], "n": None,
                    "arr": [1.0, None], "ok": 2, "s": "NaN", "flag": True, "tup": [None, 3]}
