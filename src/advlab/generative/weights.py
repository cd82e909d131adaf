"""Generative-model weights on disk: safetensors plus the spec, loaded without running code.

The file format is that of ``advlab.weights`` (one state file, a readable ``.json`` beside it)
with ``kind = "advlab-generative-model"``; the architecture is rebuilt through the generative
registry and every tensor name and shape is checked before loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from advlab.device import resolve_device
from advlab.generative.base import GenerativeModel, from_spec
from advlab.io import save_state, write_json
from advlab.weights import (
    WEIGHTS_FILE,
    build_checked,
    check_state_dict,
    library_versions,
    read_checked,
)

KIND = "advlab-generative-model"


def _path(path: str | Path, must_exist: bool) -> Path:
    path = Path(path)
    if path.is_dir() or (not must_exist and path.suffix != ".safetensors"):
        path = path / WEIGHTS_FILE
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"no generative-model weights at {path} (expected a run "
                                f"directory holding {WEIGHTS_FILE}, or the file itself)")
    return path


def save_generative(path: str | Path, model: GenerativeModel,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (built by ``generative.create``) to ``path`` (a file or a directory)."""
    if not getattr(model, "spec", None):
        raise ValueError("expected a model built by advlab.generative.create (it has no .spec)")
    path = _path(path, must_exist=False)
    meta = {"spec": model.spec, "versions": library_versions(), **(metadata or {})}
    save_state(path, {"kind": KIND, "model": model.state_dict(), "meta": meta})
    write_json(path.with_suffix(".json"), meta)
    return path


def load_generative(path: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild and load a model saved by :func:`save_generative` (a file or a run directory)."""
    dev = resolve_device(device)  # unknown or unavailable devices fail before any reading
    path = _path(path, must_exist=True)
    state = read_checked(path, (KIND,))  # kind, spec, tensors, and the .json beside it
    # shapes compared on the meta device first: an absurd spec allocates nothing
    model = build_checked(lambda: from_spec(state["meta"]["spec"]), state["model"], path)
    load_checked(model, state["model"], path)
    return model.to(dev).eval()


def load_checked(model: GenerativeModel, weights: dict[str, torch.Tensor], source: Any) -> None:
    """Load ``weights`` into ``model`` after checking names and shapes (ValueError if not)."""
    check_state_dict(model, weights, source)
    model.load_state_dict(weights)
