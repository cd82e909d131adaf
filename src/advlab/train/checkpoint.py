"""The checkpoint/resume rules both training loops share (``advlab.train.loop.fit`` for
classifiers, ``advlab.generative.train.fit_generative`` for generative models).

A checkpoint is one safetensors file (``advlab.io.save_state``: written atomically, with a
SHA-256 digest checked on load) holding the weights, the optimizer state, the RNG state, the
epoch, the history, a ``kind`` naming the loop that wrote it and the training configuration.
A run resumes only from a checkpoint of its own kind whose configuration equals the one given
now, except the settings a resume may change (more epochs, another device...); a setting added
to the configuration after the checkpoint was written counts as its default then.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advlab.io import load_state_meta


def _source(checkpoint: str | Path | None) -> str:
    return f"cannot resume from {checkpoint}" if checkpoint is not None else "cannot resume"


def check_resumable(state: Mapping[str, Any], config: Mapping[str, Any], *, kind: str,
                    what: str, free: tuple[str, ...], newer: Mapping[str, Any] | None = None,
                    checkpoint: str | Path | None = None) -> None:
    """Raise ``ValueError`` unless ``state`` (a checkpoint's content or header) is of ``kind``
    (``what`` names it in the message) and was trained with ``config`` (a configuration as a
    dict), the settings in ``free`` aside; ``newer`` gives the defaults of settings the
    checkpoint may predate."""
    source = _source(checkpoint)
    if state.get("kind") != kind:
        raise ValueError(f"{source}: the file is not {what} (kind={state.get('kind')!r})")
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"{source}: the checkpoint records no training configuration")
    saved = {**(newer or {}), **saved}
    diff = [k for k in config if k not in free and saved.get(k) != config[k]]
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}" for k in diff)
        raise ValueError(f"{source}: it was trained with a different configuration ({pairs}); "
                         f"only {', '.join(free)} may change")


def read_header(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata and tensor shapes, read from its header only (cheap: nothing
    is loaded)."""
    return load_state_meta(checkpoint)


def header_weights(state: Mapping[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """The weights entry of a checkpoint header; ``ValueError`` if there is none."""
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise ValueError(f"cannot resume from {checkpoint}: the checkpoint holds no weights")
    return weights


def kept_checkpoint(epoch: int, checkpoint: str | Path | None) -> str:
    """The end of a ``TrainingDiverged`` message: which checkpoint survives (if any)."""
    if checkpoint is not None and Path(checkpoint).is_file():
        return f"The last good checkpoint (epoch {epoch - 1}) is kept at {checkpoint}"
    if epoch <= 1:
        return "No epoch finished, so there is no checkpoint to resume from"
    return f"The weights of epoch {epoch - 1} were not checkpointed (no checkpoint path)"


__all__ = ["check_resumable", "header_weights", "kept_checkpoint", "read_header"]
