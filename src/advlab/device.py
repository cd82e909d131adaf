"""Device selection: ``auto`` picks cuda, then mps, then cpu; explicit names are validated."""

from __future__ import annotations

import torch

VALID_DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Return a usable ``torch.device`` for ``name`` (``auto``, ``cpu``, ``cuda[:i]``, ``mps``)."""
    if isinstance(name, torch.device):
        name = str(name)  # checked like its name: torch.device("cuda") needs CUDA too
    if name is not None and not isinstance(name, str):
        raise ValueError(f"expected device to be a name ({', '.join(VALID_DEVICES)}) or a "
                         f"torch.device, got {type(name).__name__}")
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in VALID_DEVICES:
        raise ValueError(f"unknown device {name!r}; valid: {', '.join(VALID_DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if base == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' requested but MPS is not available on this machine")
    return torch.device(name)
