"""Load a model that advlab did not train: code plus weights, or a self-contained archive.

``load_external_model(spec, weights=None, device="cpu")`` takes

- ``path/to/file.py:factory``: the file is imported by path and ``factory()`` (no arguments)
  must return an ``nn.Module``;
- ``package.module:factory``: the same with an importable module;
- a TorchScript archive (``torch.jit.save``) or a ``torch.export`` archive (``torch.export.save``),
  which need no code. The kind is read from the file's contents, not its suffix.

``weights`` (with a factory only) is a ``.safetensors`` file or a PyTorch state dict, read with
``torch.load(weights_only=True)`` (no code runs), loaded strictly. Every failure is one
``ValueError`` (``FileNotFoundError`` for a missing file) whose message names the spec and what
went wrong. The model comes back in eval mode on ``device``; wrap it with ``advlab.wrap`` when
its inputs are not pixels in [0, 1] or its output is not the logits.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import logging
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.device import resolve_device

log = logging.getLogger(__name__)

SPEC_FORMS = ("path/to/file.py:factory", "package.module:factory",
              "a TorchScript or torch.export archive")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # checkpoints that nest it


def one_line(e: BaseException, limit: int = 300) -> str:
    """``ExceptionType: message`` on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- what a file is --------------------------------------------------------------------------

def file_kind(path: Path) -> str:
    """``torchscript``, ``export``, ``torch-save`` (a torch.save pickle), ``safetensors`` or
    ``unknown``, from the first bytes and, for a zip archive, its member names."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails or any(t.startswith("models/") for t in tails) \
                or "serialized_exported_program.json" in tails:
            return "export"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "torch-save"
        return "unknown"
    if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
        return "torch-save"
    return "unknown"


# --- weights ---------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save``d state dict (no code runs).

    A checkpoint that nests the state dict under ``state_dict``, ``model_state_dict`` or
    ``model`` is accepted (the nesting is logged)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    kind = file_kind(path)
    if kind in ("torchscript", "export"):
        raise ValueError(f"{path}: a {_KIND_NAMES[kind]} holds the whole model: give it as "
                         f"--model {path} (the model spec), without --weights")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({one_line(e)})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: loading it would execute code (it pickles objects, not "
                         f"only tensors), which torch.load(weights_only=True) refuses; save "
                         f"model.state_dict() (or a TorchScript / torch.export archive) "
                         f"instead") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a safetensors file or a PyTorch state dict "
                         f"({one_line(e)})") from e
    return _tensor_dict(state, path)


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                         for k, v in obj.items())


def _tensor_dict(state: object, path: Path) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(state):
        return state  # type: ignore[return-value]
    if isinstance(state, dict):
        for key in STATE_DICT_KEYS:
            if _is_tensor_dict(state.get(key)):
                log.info("%s: the weights are read from its entry %r", path, key)
                return state[key]
        keys = ", ".join(map(repr, list(state)[:10]))
        raise ValueError(f"{path}: expected a state dict (names to tensors), or a checkpoint "
                         f"holding one under {', '.join(map(repr, STATE_DICT_KEYS))}, got a "
                         f"dict with keys {keys}")
    raise ValueError(f"{path}: expected a state dict (names to tensors), got "
                     f"{type(state).__name__}")


def load_state_strict(model: nn.Module, weights: dict[str, torch.Tensor], source: Any,
                      built_by: str) -> None:
    """``model.load_state_dict(weights)``, refusing missing, unexpected and mis-shaped tensors
    with one line that names them all."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} expected {tuple(own[k].shape)} got {tuple(weights[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            parts.append(f"{label} {', '.join(items[:5])}" + (" ..." if len(items) > 5 else ""))
    if parts:
        raise ValueError(f"weights {source} do not fit the model built by {built_by}: "
                         f"{'; '.join(parts)}")
    model.load_state_dict(weights)


# --- code ------------------------------------------------------------------------------------

@contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (a model file importing its neighbours)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no model file {path} (from --model {spec})")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"advlab_external_{path.stem}_{digest}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(f"cannot import {path} (from --model {spec}): not a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        with _on_path(path.parent):
            mod_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ValueError(f"importing {path} (from --model {spec}) failed: "
                         f"{one_line(e)}") from e
    return module


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):  # the module itself, not one it imports
            raise ValueError(f"cannot import module {name!r} (from --model {spec}): "
                             f"{one_line(e)}; give a file as path/to/file.py:factory, or "
                             f"install the package") from e
        raise ValueError(f"importing module {name!r} (from --model {spec}) failed: "
                         f"{one_line(e)}") from e
    except Exception as e:
        raise ValueError(f"importing module {name!r} (from --model {spec}) failed: "
                         f"{one_line(e)}") from e


def _factory(module: Any, attr: str, where: str, spec: str) -> Callable[[], Any]:
    if not attr.isidentifier():
        raise ValueError(f"expected --model {spec} to name a factory after ':', got {attr!r}")
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")
                 and callable(getattr(module, n, None))]
        close = difflib.get_close_matches(attr, names, n=3)
        hint = (f"; did you mean {', '.join(map(repr, close))}?" if close else
                f"; callables there: {', '.join(names[:10]) or 'none'}")
        raise ValueError(f"{where} has no {attr!r} (from --model {spec}){hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ValueError(f"expected {where}:{attr} to be a callable returning an nn.Module, "
                         f"got {type(fn).__name__}")
    return fn


def build_from_factory(spec: str) -> nn.Module:
    """Import ``file.py:factory`` or ``package.module:factory`` and call ``factory()``."""
    target, attr = spec.rsplit(":", 1)
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        module, where = _import_file(Path(target), spec), target
    else:
        module, where = _import_module(target, spec), f"module {target!r}"
    fn = _factory(module, attr, where, spec)
    try:
        model = fn()
    except Exception as e:
        raise ValueError(f"the model factory {spec} raised {one_line(e)} (it is called with "
                         f"no arguments)") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected the model factory {spec} to return a torch.nn.Module, "
                         f"got {type(model).__name__}")
    return model


# --- archives --------------------------------------------------------------------------------

_KIND_NAMES = {"torchscript": "TorchScript archive", "export": "torch.export archive",
               "torch-save": "PyTorch state dict", "safetensors": "safetensors weights file"}


def _load_archive(path: Path, kind: str, dev: torch.device) -> nn.Module:
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():  # deprecated in favour of torch.export; still used
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=dev)
        program = torch.export.load(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot load the {_KIND_NAMES[kind]} ({one_line(e)})") from e
    _check_dynamic_batch(program, path)
    return program.module().to(dev)


def _check_dynamic_batch(program: Any, path: Path) -> None:
    """An exported program guards its input shapes: refuse one exported for a fixed batch."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) and isinstance(shape[0], int):
            raise ValueError(f"{path}: exported for a fixed batch of {shape[0]} (input "
                             f"{tuple(shape)}); export with a dynamic batch dimension: "
                             f"torch.export.export(model, (x,), dynamic_shapes=({{0: "
                             f"torch.export.Dim('batch')}},))")


# --- the entry point -------------------------------------------------------------------------

def describe_spec(spec: str) -> str:
    """What kind of model ``spec`` names (for logs and the run's config)."""
    path = Path(spec)
    if path.is_file():
        return _KIND_NAMES.get(file_kind(path), "file")
    return "factory"


def load_external_model(spec: str, weights: str | Path | None = None,
                        device: str | torch.device = "cpu") -> nn.Module:
    """The model named by ``spec`` (see the module docstring), with ``weights`` loaded when
    given, in eval mode on ``device``."""
    dev = resolve_device(device)  # an unknown device fails before any import
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected --model as {', '.join(SPEC_FORMS)}, got {spec!r}")
    path = Path(spec)
    if path.suffix == ".py" or spec.endswith(":"):
        raise ValueError(f"expected --model {spec.rstrip(':')}:FACTORY, the function in the "
                         f"file that builds the model, got {spec!r}")
    if path.is_file():
        kind = file_kind(path)
        if kind in ("torch-save", "safetensors"):
            raise ValueError(f"{path}: a {_KIND_NAMES[kind]} holds weights, not the model: "
                             f"give the code that builds it, --model file.py:factory "
                             f"--weights {path}")
        if kind == "unknown":
            raise ValueError(f"{path}: not a TorchScript or torch.export archive; expected "
                             f"--model as {', '.join(SPEC_FORMS)}")
        if weights is not None:
            raise ValueError(f"{path}: a {_KIND_NAMES[kind]} holds its own weights; "
                             f"--weights is for a model built by a factory")
        model = _load_archive(path, kind, dev)
    elif ":" in spec:
        model = build_from_factory(spec)
        if weights is not None:
            load_state_strict(model, read_state_dict(weights), weights, spec)
        model = model.to(dev)
    elif path.suffix:
        raise FileNotFoundError(f"no model file {path} (expected --model as "
                                f"{', '.join(SPEC_FORMS)})")
    else:
        raise ValueError(f"expected --model as {', '.join(SPEC_FORMS)}, got {spec!r}")
    try:
        model.eval()
    except NotImplementedError:  # torch.export: the mode was fixed when it was exported
        pass
    return model
