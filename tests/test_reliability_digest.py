"""Issue 16, item 4: every weights or checkpoint file carries a digest of its tensors (and its
advlab metadata), verified on load: flipped bytes are a clear error naming the file, never a
silently worse model. Files without a digest (older runs) load, with a one-time warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from advlab import io, models
from advlab.generative.base import create as create_generative
from advlab.generative.weights import load_generative, save_generative
from advlab.weights import load_model, save_model


def _flip(path, offset_from_end: int = 64, n: int = 16) -> None:
    """Flip ``n`` bytes of the tensor data near the end of the file (the header is at the
    start: the file still parses)."""
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - offset_from_end, len(raw) - offset_from_end + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture(autouse=True)
def fresh_warning(monkeypatch):
    monkeypatch.setattr(io, "_warned_no_digest", False, raising=False)


def test_a_state_file_records_a_digest_and_round_trips(tmp_path):
    path = tmp_path / "s.safetensors"
    io.save_state(path, {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3})
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8],
                                                                 "little")])
    assert header["__metadata__"][io.DIGEST_KEY].startswith("sha256:")
    back = io.load_state(path)
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("kind", ["classifier", "generative", "checkpoint"])
def test_flipped_bytes_are_refused_naming_the_file(tmp_path, kind):
    if kind == "classifier":
        path = save_model(tmp_path / "run", models.create("mlp", dataset="digits"))
        load = load_model
    elif kind == "generative":
        path = save_generative(tmp_path / "run",
                               create_generative("vae", dataset="digits", hidden=[8]))
        load = load_generative
    else:
        path = tmp_path / "checkpoint.safetensors"
        io.save_state(path, {"kind": "advlab-train-checkpoint", "epoch": 1,
                             "model": models.create("mlp", dataset="digits").state_dict()})
        load = io.load_state
    load(path)  # intact: loads
    _flip(path)
    with pytest.raises(ValueError, match=rf"{path}.*corrupt.*digest"):
        load(path)


def test_changed_metadata_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    io.save_state(path, {"w": torch.zeros(4), "epoch": 3})
    raw = path.read_bytes()
    assert raw.count(b'\\"epoch\\", 3') == 1
    path.write_bytes(raw.replace(b'\\"epoch\\", 3', b'\\"epoch\\", 9'))
    with pytest.raises(ValueError, match="corrupt"):
        io.load_state(path)


def test_the_accuracy_drop_of_a_corrupted_model_cannot_happen_silently(tmp_path):
    """The issue's case: a trained model whose weights had bytes flipped on disk."""
    from advlab import data
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    job = ClassifierJob(dataset="digits", model="lrl", train=TrainConfig(epochs=3, lr=0.01,
                                                                         device="cpu"))
    run, metrics = train_classifier(job, tmp_path / "run", progress=False)
    test = data.load("digits", "test")
    with torch.no_grad():
        acc = (load_model(run.path)(test.x).argmax(1) == test.y).float().mean().item()
    assert acc == pytest.approx(metrics["test_acc"]) and acc > 0.5
    weights = run.path / "model.safetensors"
    _flip(weights, offset_from_end=2000, n=400)
    with pytest.raises(ValueError, match="corrupt"):
        load_model(run.path)


def test_a_file_without_a_digest_loads_with_a_single_warning(tmp_path, caplog):
    """An older file: the metadata advlab wrote before digests existed."""
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.safetensors"
        skeleton = {"__dict__": [["w", {"__tensor__": "w"}], ["epoch", 2]]}
        save_file({"w": torch.ones(3)}, str(path), metadata={"advlab": json.dumps(skeleton)})
        paths.append(path)
    with caplog.at_level(logging.WARNING, logger="advlab"):
        for path in paths:
            assert io.load_state(path)["epoch"] == 2
    warnings = [r.getMessage() for r in caplog.records if "digest" in r.getMessage()]
    assert len(warnings) == 1 and str(paths[0]) in warnings[0]


def test_a_malformed_digest_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    skeleton = {"__dict__": [["w", {"__tensor__": "w"}]]}
    save_file({"w": torch.ones(3)}, str(path),
              metadata={"advlab": json.dumps(skeleton), io.DIGEST_KEY: "md5:abc"})
    with pytest.raises(ValueError, match=rf"{path}.*expected a digest 'sha256:"):
        io.load_state(path)
