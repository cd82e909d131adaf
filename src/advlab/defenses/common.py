"""Small helpers shared by the defense objectives: train/eval mode handling and seeding."""

from __future__ import annotations

import torch
from torch import nn

from advlab.data.base import info as dataset_info
from advlab.modes import model_mode

CRAFT_MODES = ("eval", "train")


def mode(model: nn.Module, training: bool):
    """Every submodule of ``model`` in train (or eval) mode for the block, each put back in its
    own previous mode after (``advlab.modes.model_mode``)."""
    return model_mode(model, training)


def step_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by one draw of the global RNG.

    The training loop seeds the global RNG and saves its state with every checkpoint, so random
    starts drawn this way differ from batch to batch yet repeat exactly on a rerun or a resume.
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"expected {name} in {', '.join(map(repr, valid))}, got {value!r}")


def check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected {name} to be a number in [0, 1], got {value!r}")


def check_number(name: str, value: object, *, positive: bool = False) -> None:
    """A finite number >= 0 (> 0 with ``positive``), not a bool."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and value == value and abs(value) != float("inf") and value >= 0)
    if not ok or (positive and value == 0):
        what = "> 0" if positive else ">= 0"
        raise ValueError(f"expected {name} to be a finite number {what}, got {value!r}")


def check_int(name: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"expected {name} to be an integer >= {low}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"expected {name} to be True or False, got {value!r}")


def check_dataset(dataset: object) -> None:
    """``None`` (a defense's documented default row) or a known data set name; an unknown name
    raises ``ValueError`` listing the known data sets, instead of falling back to a default."""
    if dataset is None:
        return
    if not isinstance(dataset, str):
        raise ValueError(f"expected dataset to be a dataset name or None, got {dataset!r}")
    dataset_info(dataset)  # unknown: "unknown dataset 'x'. Valid datasets: ..."
