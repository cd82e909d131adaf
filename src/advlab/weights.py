"""Model weights on disk: safetensors plus the architecture spec, loaded without running code.

``save_model`` writes ``<path>`` (safetensors; the spec and metadata also sit in its header) and
a readable ``<path>.json`` beside it. ``load_model`` rebuilds the architecture from the spec
through the model registry and checks every tensor name and shape before loading, so weights of
another architecture are refused with a message that says what differs.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.device import resolve_device
from advlab.io import TensorRef, load_state, load_state_meta, save_state, write_json

WEIGHTS_FILE = "model.safetensors"
KIND = "advlab-model"


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
    save_state(path, {"kind": KIND, "model": model.state_dict(), "meta": meta})
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


def _describe(obj: Any) -> str:
    return "none" if obj is None else type(obj).__name__


def _spec_problem(spec: Any) -> str | None:
    """What is wrong with an architecture spec read from a file (None: nothing)."""
    if not isinstance(spec, dict) or not {"name", "dataset", "kwargs"} <= set(spec):
        got = f"keys {', '.join(sorted(map(str, spec)))}" if isinstance(spec, dict) else \
            _describe(spec)
        return (f"expected the architecture 'spec' to be an object with keys name, dataset, "
                f"kwargs, got {got}")
    if not isinstance(spec["name"], str):
        return f"expected spec 'name' to be a string, got {_describe(spec['name'])}"
    if spec["dataset"] is not None and not isinstance(spec["dataset"], str):
        return f"expected spec 'dataset' to be a string or null, got {_describe(spec['dataset'])}"
    if not isinstance(spec["kwargs"], dict):
        return f"expected spec 'kwargs' to be an object, got {_describe(spec['kwargs'])}"
    transforms = spec.get("transforms")
    if transforms is not None and not (
        isinstance(transforms, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                             and isinstance(t.get("params", {}), dict)
                                             for t in transforms)
    ):
        return "expected spec 'transforms' to be a list of objects with a name and params"
    return None


def _arch(spec: dict[str, Any]) -> str:
    return f"{spec.get('name')!r} for {spec.get('dataset')!r} {spec.get('kwargs')}"


def _normalized(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples as lists, int keys as strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _check_sidecar(path: Path, spec: dict[str, Any]) -> None:
    """Compare the file's spec with the readable ``<path>.json`` beside it (a run's model.json).

    ``save_model`` writes both from the same spec, so a difference means the weights file was
    replaced (say, by another run's): refuse it rather than load another architecture than the
    run describes. A weights file without a ``.json`` beside it is not checked.
    """
    side = path.with_suffix(".json")
    if not side.is_file():
        return
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{side}: not valid JSON ({e}); it should hold the metadata of "
                         f"{path.name}, as save_model writes it") from e
    if not isinstance(meta, dict) or "spec" not in meta:
        got = _describe(meta) if not isinstance(meta, dict) else \
            f"keys {', '.join(sorted(meta)) or 'none'}"
        raise ValueError(f"{side}: expected a JSON object holding the architecture 'spec' of "
                         f"{path.name}, got {got}")
    if _normalized(meta["spec"]) != _normalized(spec):
        side_spec = meta["spec"]
        side_arch = _arch(side_spec) if isinstance(side_spec, dict) else repr(side_spec)
        raise ValueError(f"{path}: holds weights of the architecture {_arch(spec)}, but "
                         f"{side.name} beside it describes {side_arch} (was the weights file "
                         f"copied from another run?); put back the run's own {path.name} or "
                         f"the matching {side.name}")


def read_checked(path: Path, kinds: tuple[str, ...], *, values: bool = True) -> dict[str, Any]:
    """The state of the model file ``path``, its kind, meta and spec checked (ValueError).
    ``values=False`` reads the header only: the weights are then ``TensorRef``s."""
    state = load_state(path) if values else load_state_meta(path)
    tensor_type = torch.Tensor if values else TensorRef
    kind = state.get("kind")
    if kind not in kinds:
        raise ValueError(f"{path}: not an advlab model file (expected kind "
                         f"{' or '.join(map(repr, kinds))}, got {kind!r})")
    meta = state.get("meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected 'meta' to be a JSON object holding the architecture "
                         f"'spec', got {_describe(meta)}")
    if meta.get("spec") is None:
        raise ValueError(f"{path}: expected the architecture 'spec' in the metadata, got none")
    problem = _spec_problem(meta["spec"])
    if problem:
        raise ValueError(f"{path}: {problem}")
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, tensor_type) for k, v in weights.items()
    ):
        raise ValueError(f"{path}: expected 'model' to be a mapping of tensor names to tensors, "
                         f"got {_describe(weights)}")
    _check_sidecar(path, meta["spec"])
    return state


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata (spec, data set, config, versions) of a classifier or generative model."""
    from advlab.generative.weights import KIND as GENERATIVE_KIND

    return read_checked(_weights_path(path), (KIND, GENERATIVE_KIND), values=False)["meta"]


def build_checked(build: Callable[[], nn.Module], weights: dict[str, Any], source: Any
                  ) -> nn.Module:
    """``build()`` (the architecture a file's spec describes) once its tensor names and shapes
    are known to fit ``weights``: it is first built on the meta device, which allocates
    nothing, so a spec asking for absurd sizes is refused (ValueError) before any memory is
    spent on it. The model built for real then holds no more than the file's tensors."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: cannot rebuild the architecture from the file's spec "
                         f"({e})") from e
    except (RuntimeError, NotImplementedError):  # an operation meta tensors lack
        skeleton = None  # checked after the real build, as before
    if skeleton is not None:
        check_state_dict(skeleton, weights, source)
    try:
        model = build()
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: cannot rebuild the architecture from the file's spec "
                         f"({e})") from e
    check_state_dict(model, weights, source)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (a file or a run directory)."""
    from advlab import models

    dev = resolve_device(device)  # unknown or unavailable devices fail before any reading
    path = _weights_path(path)
    state = read_checked(path, (KIND,))
    model = build_checked(lambda: models.from_spec(state["meta"]["spec"]), state["model"], path)
    model.load_state_dict(state["model"])
    return model.to(dev).eval()


def load_weights_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a saved model's weights into an existing module, checking the architecture."""
    path = _weights_path(path)
    state = read_checked(path, (KIND,))
    check_spec(model, state["meta"]["spec"], path)
    check_state_dict(model, state["model"], path)
    model.load_state_dict(state["model"])
    return model
