"""A data set from the user's own file: ``.npz``, ``.pt``, ``.safetensors`` or an image folder.

``load_data_file(path, bounds=None)`` returns a ``TensorSet`` (x float32 pixels in [0, 1],
y int64) named after the file:

- ``.npz`` (``numpy.load``, no pickles), ``.pt`` (a dict, read with
  ``torch.load(weights_only=True)``) or ``.safetensors``, holding ``x`` (N, ...) float or
  uint8 and ``y`` (N,) integer class indices; optionally ``classes``, the class names
  (``.npz`` / ``.pt``). uint8 pixels are divided by 255 (logged). Float ``x`` is in the
  model's units: inside ``bounds`` = (lo, hi) (default (0, 1)), mapped to [0, 1] by
  (x − lo) / (hi − lo); a value outside is an error.
- a folder in torchvision's ImageFolder layout, ``root/<class>/<image>``: classes are the
  sub-folders sorted by name (label = position), images are read with Pillow, all of one size;
  all grayscale gives (N, 1, H, W), else (N, 3, H, W) RGB.

Without ``classes`` the class names are "0".."K-1" for K = max(y) + 1; ``with_num_classes``
widens them to a model's K.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advlab.data.base import DataError, DatasetInfo, TensorSet, read_error

log = logging.getLogger(__name__)

SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
SPLIT = "file"  # the split of a set read from a file


def load_data_file(path: str | Path, bounds: tuple[float, float] | None = None) -> TensorSet:
    """The examples of ``path`` (see the module docstring) as pixels in [0, 1]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data file {path} (expected {', '.join(SUFFIXES)} holding "
                                f"x and y, or an image folder root/<class>/<image>)")
    if path.is_dir():
        x, y, classes = _image_folder(path)
    else:
        arrays = _read_arrays(path)
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            found = ", ".join(map(repr, arrays)) or "none"
            raise DataError(f"{path}: expected entries 'x' (inputs) and 'y' (labels), "
                            f"missing {', '.join(map(repr, missing))}; found {found}")
        x, y = _tensor(arrays["x"], path, "x"), _tensor(arrays["y"], path, "y")
        classes = _classes(arrays.get("classes"), path)
        x = _pixels(x, path, bounds)
    y = _labels(y, x, path)
    k = int(y.max()) + 1
    if classes is None:
        classes = tuple(str(i) for i in range(k))
    elif len(classes) < k:
        raise DataError(f"{path}: expected a label < {len(classes)} (the {len(classes)} "
                        f"class names given), got {k - 1}")
    kind = "image" if x.dim() >= 3 else "points"
    info = DatasetInfo(path.name, kind, tuple(x.shape[1:]), tuple(classes), False)
    return TensorSet(x, y, info, SPLIT)


def with_num_classes(ds: TensorSet, k: int) -> TensorSet:
    """``ds`` with class names for ``k`` classes ("0".."k-1") when it has fewer, numbered ones
    (a file whose labels do not reach the model's last class)."""
    names = ds.info.classes
    if len(names) >= k or names != tuple(str(i) for i in range(len(names))):
        return ds
    info = replace(ds.info, classes=tuple(str(i) for i in range(k)))
    return TensorSet(ds.x, ds.y, info, ds.split)


# --- reading ---------------------------------------------------------------------------------

def _read_arrays(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: expected a data file {', '.join(SUFFIXES)} or an image "
                        f"folder, got the suffix {path.suffix or 'none'!r}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise read_error(path, e) from e
    except Exception as e:  # zip, pickle and header errors of the three readers
        text = " ".join(str(e).split())[:200]
        unsafe = "pickle" in text.lower() or "weights only" in text.lower()
        why = ("loading it would execute code (pickled objects): store tensors, lists and "
               "strings only" if unsafe else f"{type(e).__name__}: {text}")
        raise DataError(f"{path}: cannot read it as {suffix} ({why})") from e
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a dict with 'x' and 'y', got {type(state).__name__}")
    return state


def _tensor(value: Any, path: Path, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(f"{path}: expected {name} to be a numeric array, got dtype "
                            f"{value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value
    raise DataError(f"{path}: expected {name} to be an array or tensor, got "
                    f"{type(value).__name__}")


def _classes(value: Any, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.ndim == 1:
        return tuple(str(v) for v in value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataError(f"{path}: expected 'classes' to be a list of class names, got "
                    f"{type(value).__name__}")


def _pixels(x: torch.Tensor, path: Path, bounds: tuple[float, float] | None) -> torch.Tensor:
    """x as float32 pixels in [0, 1]: uint8 / 255, floats checked inside bounds and mapped."""
    if x.dim() < 2:
        raise DataError(f"{path}: expected x of shape (N, ...) with a batch dimension, got "
                        f"{tuple(x.shape)}")
    if x.dtype == torch.uint8:
        log.info("%s: x is uint8; divided by 255 to pixels in [0, 1]", path.name)
        return x.float() / 255
    if not x.is_floating_point():
        raise DataError(f"{path}: expected x float or uint8 (8-bit pixels), got {x.dtype}")
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    x = x.float()
    if x.numel():
        a, b = (v.item() for v in torch.aminmax(x))
        if not (math.isfinite(a) and math.isfinite(b)):
            raise DataError(f"{path}: expected finite x, got "
                            f"{int((~torch.isfinite(x)).sum())} NaN or inf values")
        if a < lo or b > hi:
            hint = ("; 8-bit pixels stored as floats: give --bounds 0,255 (or store uint8)"
                    if bounds is None and b <= 255 and a >= 0 else "")
            raise DataError(f"{path}: expected x inside [{lo:g}, {hi:g}] (the model's input "
                            f"range{', --bounds' if bounds is not None else ''}), got values "
                            f"in [{a:.4g}, {b:.4g}]{hint}")
    return x if bounds is None else ((x - lo) / (hi - lo)).clamp(0, 1)


def _labels(y: torch.Tensor, x: torch.Tensor, path: Path) -> torch.Tensor:
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise DataError(f"{path}: expected y to be integer class indices, got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: expected y of shape ({x.shape[0]},) for the {x.shape[0]} "
                        f"examples of x, got {tuple(y.shape)}")
    if not len(y):
        raise DataError(f"{path}: expected at least one example, got none")
    if int(y.min()) < 0:
        raise DataError(f"{path}: expected labels >= 0 (class indices), got {int(y.min())}")
    return y.long()


# --- an ImageFolder --------------------------------------------------------------------------

def _image_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError(f"{root}: reading an image folder needs Pillow (pip install "
                        f"pillow)") from e
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir()
                         and not p.name.startswith("."))
        files = [(f, label) for label, c in enumerate(classes)
                 for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    except OSError as e:
        raise read_error(root, e) from e
    if not files:
        raise DataError(f"{root}: expected an image folder root/<class>/<image> "
                        f"({', '.join(IMAGE_SUFFIXES)}), found {len(classes)} class "
                        f"folder(s) and no image")
    images = []
    for f, _ in files:  # one file at a time: I/O, not tensor arithmetic
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except OSError as e:
            raise DataError(f"{f}: not a readable image ({' '.join(str(e).split())})") from e
    gray = all(im.mode in ("1", "L", "I", "I;16") for im in images)
    arrays = [_image_array(im, gray) for im in images]
    size = arrays[0].shape
    for (f, _), a in zip(files, arrays, strict=True):
        if a.shape != size:
            raise DataError(f"{root}: expected every image of the size of {files[0][0].name} "
                            f"{size[1]}x{size[0]}, got {a.shape[1]}x{a.shape[0]} for {f}")
    x = torch.from_numpy(np.stack(arrays))  # (N, H, W, C) float32 in [0, 1]
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    log.info("%s: %d images of %d classes, %dx%d, %s", root.name, len(files), len(classes),
             size[1], size[0], "grayscale" if gray else "RGB")
    return x.permute(0, 3, 1, 2).contiguous(), y, tuple(classes)


def _image_array(im: Any, gray: bool) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] of a PIL image: grayscale (C = 1) or RGB (C = 3)."""
    if gray and im.mode in ("I", "I;16"):  # 16-bit grayscale
        a = np.asarray(im, dtype=np.float32) / 65535.0
    else:
        a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a
