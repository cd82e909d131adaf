"""Model weights on disk: safetensors plus the architecture spec, loaded without running code.

``save_model`` writes ``<path>`` (safetensors; the spec and metadata also sit in its header) and
a readable ``<path>.json`` beside it. ``load_model`` rebuilds the architecture from the spec
through the model registry and checks every tensor name and shape before loading, so weights of
another architecture are refused with a message that says what differs.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.io import load_state, save_state, write_json

WEIGHTS_FILE = "model.safetensors"


def library_versions() -> dict[str, str]:
    import numpy
    import sklearn

    import advlab

    return {"advlab": advlab.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def check_state_dict(model: nn.Module, weights: dict[str, torch.Tensor], source: Any) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}"
                         + (" ..." if len(unexpected) > 5 else ""))
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        arch = getattr(model, "spec", {}).get("name", type(model).__name__)
        raise ValueError(f"{source}: weights do not fit the architecture {arch!r} "
                         f"(they come from another architecture): {'; '.join(parts)}")


def check_spec(model: nn.Module, saved_spec: dict[str, Any] | None, source: Any) -> None:
    """Raise ValueError when a file's architecture spec differs from ``model``'s."""
    spec = getattr(model, "spec", None)
    if saved_spec is not None and spec is not None and saved_spec != spec:
        raise ValueError(f"{source}: holds weights of another architecture "
                         f"({saved_spec.get('name')!r} {saved_spec.get('kwargs')}) than the model "
                         f"given ({spec.get('name')!r} {spec.get('kwargs')})")


def save_model(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        path = path / WEIGHTS_FILE
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("expected a model built by advlab.models.create (it has no .spec)")
    meta = {"spec": spec, "versions": library_versions(), **(metadata or {})}
    save_state(path, {"kind": "advlab-model", "model": model.state_dict(), "meta": meta})
    write_json(path.with_suffix(".json"), meta)
    return path


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path} (expected a run directory holding "
                                f"{WEIGHTS_FILE}, or the file itself)")
    return path


def read_model_meta(path: str | Path) -> dict[str, Any]:
    state = load_state(_weights_path(path))
    return state.get("meta", {})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (a file or a run directory)."""
    from advlab import models

    path = _weights_path(path)
    state = load_state(path)
    if state.get("kind") != "advlab-model":
        raise ValueError(f"{path}: not an advlab model file (kind={state.get('kind')!r})")
    model = models.from_spec(state["meta"]["spec"])
    check_state_dict(model, state["model"], path)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_weights_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a saved model's weights into an existing module, checking the architecture."""
    state = load_state(_weights_path(path))
    check_spec(model, state.get("meta", {}).get("spec"), path)
    check_state_dict(model, state["model"], path)
    model.load_state_dict(state["model"])
    return model
