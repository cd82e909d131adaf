import os

import pytest
import torch

from advlab.io import atomic_path, load_state, save_state, write_json


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


def test_load_state_rejects_garbage(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_state(p)
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.safetensors")
