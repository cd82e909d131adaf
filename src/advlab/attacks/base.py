"""What an attack is: a frozen dataclass of settings, called on ``(model, x, y, target)``.

``Attack.__call__`` is final and does the shared work once: input checks, eval mode (restored
after, also on error), per-point random numbers keyed by the seed and each point's index
(``rng.py``), float32 (float64 for a float64 model) on ``x``'s device, then the subclass's
``run()``, then one forward pass on the adversarial batch to report predictions, success and
perturbation norms in an ``AttackResult``. See README-dev.md to add an attack.
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import allocator
from advlab.attacks import backward
from advlab.attacks.checks_output import check_logits_like
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel, clip_box, lp_norm
from advlab.inputs import (
    check_index,
    check_inputs,
    check_labels,
)
from advlab.modes import eval_mode

log = logging.getLogger(__name__)

Model = Callable[[Tensor], Tensor]  # pixels in [0, 1] (B, ...) -> logits (B, K)


@dataclass
class AttackResult:
    """The outcome of one attack call on a batch of B inputs."""

    adv: Tensor  # (B, ...) same shape, dtype and device as x, inside [0, 1]
    success: Tensor  # (B,) bool: pred != y, or pred == target when targeted
    l2: Tensor  # (B,) float32: ‖adv − x‖₂ per sample
    linf: Tensor  # (B,) float32: ‖adv − x‖∞ per sample
    pred: Tensor  # (B,) int64: labels predicted on adv
    logits: Tensor  # (B, K) float32: logits on adv
    iterations: Tensor  # (B,) int64: gradient steps (or model queries) spent per sample
    info: dict[str, Any] = field(default_factory=dict)  # attack-specific extras

    def __len__(self) -> int:
        return self.adv.shape[0]

    def to(self, device: str | torch.device) -> AttackResult:
        """The result with its tensors (and ``info``'s) on ``device`` (itself if there)."""
        device = torch.device(device)
        if self.adv.device == device:
            return self

        def move(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: move(w) for k, w in v.items()}
            if isinstance(v, list):
                return [move(w) for w in v]
            return v

        return AttackResult(**{k: getattr(self, k).to(device) for k in self.FIELDS},
                            info=move(self.info))

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item() if len(self) else float("nan")

    def summary(self) -> str:
        """One line to spot a broken threat model at once (AutoAttack's habit)."""
        if not len(self):
            return "empty batch"
        ok = self.success
        med = self.l2[ok].median().item() if ok.any() else float("nan")
        return (f"success {ok.float().mean().item():.1%} of {len(self)}; "
                f"max linf {self.linf.max().item():.4g}, max l2 {self.l2.max().item():.4g}, "
                f"median l2 of successes {med:.4g}; adv range "
                f"[{self.adv.min().item():.3g}, {self.adv.max().item():.3g}]; "
                f"non-finite {int((~torch.isfinite(self.adv)).sum())}")

    FIELDS: ClassVar[tuple[str, ...]] = ("adv", "success", "l2", "linf", "pred", "logits",
                                         "iterations")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to a safetensors file, atomically (``load`` reads it back without
        executing code). ``info`` is kept where it holds tensors and JSON values."""
        from advlab.io import save_state

        state = {k: getattr(self, k) for k in self.FIELDS}
        state["info"] = _storable(self.info)
        path = Path(path)
        save_state(path, {"kind": "attack-result", **state})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> AttackResult:
        """Read a file written by ``save``; refuses other files with a clear error."""
        from advlab.io import load_state

        state = load_state(path)
        if not isinstance(state, dict) or state.get("kind") != "attack-result":
            raise ValueError(f"expected a file written by AttackResult.save, got {path} "
                             f"(kind {state.get('kind') if isinstance(state, dict) else None!r})")
        missing = [k for k in cls.FIELDS if not isinstance(state.get(k), Tensor)]
        if missing:
            raise ValueError(f"{path}: expected tensors {', '.join(missing)} in the file")
        b = state["adv"].shape[0]
        bad = [k for k in cls.FIELDS if state[k].shape[:1] != (b,)]
        if bad:
            raise ValueError(f"{path}: expected every field with {b} rows, got {bad}")
        info = state.get("info") if isinstance(state.get("info"), dict) else {}
        return cls(**{k: state[k].to(device) for k in cls.FIELDS}, info=info)

    @staticmethod
    def cat(results: list[AttackResult]) -> AttackResult:
        """Concatenate the results of consecutive batches (``info`` is kept per batch)."""
        if not results:
            raise ValueError("expected at least one AttackResult to concatenate, got none")
        cols = {n: torch.cat([getattr(r, n) for r in results]) for n in AttackResult.FIELDS}
        return AttackResult(**cols, info={"batches": [r.info for r in results]})


def _storable(obj: Any) -> Any:
    """The tensors and JSON values of a nested ``info`` (anything else dropped)."""
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {str(k): v for k, v in ((k, _storable(v)) for k, v in obj.items())
                if v is not _DROP}
    if isinstance(obj, (list, tuple)):
        return [v for v in map(_storable, obj) if v is not _DROP]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return _DROP


_DROP = object()


@dataclass
class RunOutput:
    """What ``Attack.run`` returns; the base class turns it into an ``AttackResult``."""

    adv: Tensor  # (B, ...) float32; clipped to [0, 1] by the base class
    iterations: Tensor | int = 0  # (B,) int64 or one number for the whole batch
    info: dict[str, Any] = field(default_factory=dict)


# --- parameter checks shared by the attacks' __post_init__ ---------------------------------

def check_nonneg(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"expected {name} to be a finite number >= 0, got {value!r}")


def check_positive(name: str, value: object) -> None:
    check_nonneg(name, value)
    if value == 0:
        raise ValueError(f"expected {name} to be a finite number > 0, got {value!r}")


def check_int(name: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"expected {name} to be an integer >= {low}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"expected {name} to be True or False, got {value!r}")


# --- helpers for run() ----------------------------------------------------------------------

def check_differentiable(out: Tensor) -> None:
    if not out.requires_grad:
        raise ValueError("expected the model output to depend differentiably on the input, "
                         "got an output without gradient (model run under no_grad or detached?)")


def input_grad(loss: Tensor, x: Tensor) -> Tensor:
    """d loss / d x, without touching any parameter's ``.grad`` (never ``.backward()``)."""
    check_differentiable(loss)
    (grad,) = backward.grad(loss, x, materialize_grads=True)
    return grad


def margin(logits: Tensor, label: Tensor, targeted: bool) -> Tensor:
    """(B,) how far from success: z_y − max_{j≠y} z_j, or max_{j≠t} z_j − z_t if targeted."""
    own = logits.gather(1, label[:, None]).squeeze(1)
    other = logits.scatter(1, label[:, None], -torch.inf).amax(dim=1)
    return other - own if targeted else own - other


def top_other_classes(logits: Tensor, label: Tensor, k: int) -> Tensor:
    """(B, k') the k' = min(k, K − 1) classes other than ``label`` with the highest logits,
    highest first: the targets of AutoAttack's APGD-T and FAB-T."""
    k = min(k, logits.shape[1] - 1)
    return logits.scatter(1, label[:, None], -torch.inf).topk(k, dim=1).indices


def is_adversarial(logits: Tensor, label: Tensor, targeted: bool) -> Tensor:
    """(B,) bool: the prediction is the target (targeted) or differs from the label."""
    pred = logits.argmax(dim=1)
    return pred == label if targeted else pred != label


def expand_as(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``(B,)`` tensor viewed as ``(B, 1, ..., 1)``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def logits_of(out: object) -> object:
    """The logits in a model's output: the output itself, or the first element of a tuple or
    list (``advlab.wrap(model, output=KEY)`` picks a dict's entry). A dict is refused with
    its keys named."""
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    if isinstance(out, dict):
        keys = ", ".join(map(repr, list(out)[:10]))
        raise ValueError(f"expected the model to return logits (B, K), got a dict with keys "
                         f"{keys}: wrap it with advlab.wrap(model, output=KEY) (the CLI's "
                         f"--output-key KEY) to name the logits")
    return out


_tuple_said = False


def _say_tuple(out: object) -> None:
    global _tuple_said
    if isinstance(out, (tuple, list)) and not _tuple_said:
        _tuple_said = True
        log.info("the model returns a %s; its first element is taken as the logits",
                 type(out).__name__)


class _CheckedModel:
    """Calls the model and validates its first output (logits (B, K), labels < K); a tuple's
    first element is taken as the logits (``logits_of``)."""

    def __init__(self, model: Model, labels: list[tuple[str, Tensor]],
                 need_logits: bool = True) -> None:
        self.model = model
        self.labels = labels
        self.need_logits = need_logits  # False: probabilities (or one-hot labels) will do
        self.checked = False

    def __call__(self, x: Tensor) -> Tensor:
        raw = self.model(x)
        out = logits_of(raw)
        if not self.checked:
            _say_tuple(raw)
            self._check(x, out)
            self.checked = True
        return out

    def _check(self, x: Tensor, out: object) -> None:
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"expected the model to return logits of shape (B, K) = "
                             f"({x.shape[0]}, K), got {shape}")
        k = out.shape[1]
        if k < 2:
            raise ValueError(f"expected the model to return at least 2 logits, got {k}")
        for name, lab in self.labels:
            if lab.numel() and int(lab.max()) >= k:
                raise ValueError(f"expected {name} in [0, {k - 1}] (the model has {k} logits), "
                                 f"got a value {int(lab.max())}")
        if not torch.isfinite(out).all():
            raise ValueError("expected finite logits from the model, got NaN or inf")
        if self.need_logits:  # a softmax output hides the margins from gradient attacks
            check_logits_like(out)






@dataclass(frozen=True, kw_only=True)
class Attack(ABC):
    """Base of all attacks. Subclasses are frozen dataclasses that implement ``run``."""

    name: ClassVar[str] = ""  # set by ``@register``
    # The kind of attack, declared by each class (``kind`` combines them); evaluation code and
    # reports read these, never probe an attack for methods:
    minimal: ClassVar[bool] = False  # searches the smallest perturbation (no ε budget)
    fitted: ClassVar[bool] = False  # crafted once on a fit set (``fit``), then applied
    gradient_free: ClassVar[bool] = False  # uses only the model's outputs (scores or labels)

    seed: int = 0  # keys the per-point random draws (random starts, noise): rng.py

    def __post_init__(self) -> None:
        check_int("seed", self.seed, low=0)
        self.check_params()

    def check_params(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Validate the subclass's settings; raise ``ValueError`` naming the bad one."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override Attack.__call__; implement run()")

    @property
    def targeted(self) -> bool:  # overridden by a dataclass field in targeted-capable attacks
        return False

    @property
    def threat(self) -> ThreatModel | None:
        """The fixed perturbation budget, or None for minimal-perturbation attacks."""
        return None

    @property
    def kind(self) -> str:
        """'minimal' (smallest perturbation), 'fitted' (one perturbation fitted on a set),
        'budget' (fixed ε budget: ``threat``) or 'search' (no budget, e.g. a transformation
        search)."""
        if self.minimal:
            return "minimal"
        if self.fitted:
            return "fitted"
        return "budget" if self.threat is not None else "search"

    @property
    def distance(self) -> str:
        """The norm this attack's perturbations are measured in ('linf' or 'l2'): the
        threat's for a fixed budget, else the attack's ``norm`` setting, else 'l2'."""
        if self.threat is not None:
            return self.threat.norm
        return str(self.__dict__.get("norm", "l2"))

    def fit(self, model: Model, x: Tensor, y: Tensor) -> Attack:
        """A fitted attack (``fitted = True``) returns a copy holding what it crafted on
        ``(x, y)``; the other kinds have nothing to fit."""
        raise ValueError(f"expected a fitted attack (universal) to fit, got {self.name!r}, "
                         f"which is a {self.kind} attack")

    def config(self) -> dict[str, Any]:
        """The name and every setting, e.g. to store with a report."""
        return {"attack": self.name, **asdict(self)}

    @abstractmethod
    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        """Craft adversarial examples for the float32 batch ``x`` (B, ...) in [0, 1].

        ``model`` is in eval mode and validates its first output; ``y`` (B,) int64 labels;
        ``target`` (B,) int64 when ``self.targeted``, else None; ``rng`` draws per-point
        random numbers keyed by the attack's seed and the points' indices
        (``rng.rand(shape, key)``; ``rng.generator`` is a plain seeded ``torch.Generator``).
        """

    def __call__(self, model: nn.Module | Model, x: Tensor, y: Tensor,
                 target: Tensor | None = None, *, index: Tensor | None = None) -> AttackResult:
        """Attack ``model`` on ``x`` (B, ...) in [0, 1] with labels ``y`` (B,).

        ``index`` (B,): the points' positions in the data set being evaluated; random draws
        are keyed by them, so a point's random start does not depend on the batch it is
        attacked in. Default: a hash of each input's pixels (``rng.content_keys``), so a direct
        call in a training loop gets new draws for every new batch, and the same input the same
        draws in any batch.

        The model may return a tuple (its first element is the logits); for a dict output, or
        normalised / other-range inputs, wrap it with ``advlab.wrap``. A float64 model is
        attacked in float64.
        """
        if not callable(model):
            raise ValueError(f"expected the model to be an nn.Module or a callable x -> logits, "
                             f"got {type(model).__name__} (the call is attack(model, x, y))")
        check_inputs(x)
        allocator.tune()  # once per process: attack loops then reuse freed memory
        batch = x.shape[0]
        y = check_labels("y", y, batch, x.device)
        labels = [("y", y)]
        if self.targeted:
            if target is None:
                raise ValueError(f"expected a target (B,) for the targeted attack {self.name!r}, "
                                 "got None")
            target = check_labels("target", target, batch, x.device)
            labels.append(("target", target))
        elif target is not None:
            raise ValueError(f"got a target for the untargeted attack {self.name!r}: "
                             "create it with targeted=True, or pass target=None")
        index = check_index(index, batch, x.device, x)
        # gradient-free attacks rank outputs (Square) or read only the label (HopSkipJump):
        # probabilities do for them
        checked = _CheckedModel(model, labels, need_logits=not self.gradient_free)
        dtype = compute_dtype(model)
        home, dev = x.device, compute_device(model, x.device)  # run where the model lives
        x_dev = x.detach().to(dev, non_blocking=True)
        with eval_mode(model):
            with torch.inference_mode(False), torch.enable_grad():
                # copies: tensors made under inference_mode cannot enter autograd
                x32 = x_dev.to(dtype).clone()  # (B, ...)
                y = y.to(dev).clone()
                target = None if target is None else target.to(dev).clone()
                checked.labels = [(n, lab.to(dev).clone()) for n, lab in labels]
                rng = SampleRNG(self.seed, index.to(dev))
                choice = "onednn" if self.gradient_free or not batch else \
                    backward.conv_backward(model, x.shape[1:], dev, dtype)
                if batch:
                    with backward.using(choice):
                        out = self.run(checked, x32, y, target, rng)
                else:  # nothing to attack; the forward below still checks the model
                    out = RunOutput(x32, 0)
                adv = clip_box(out.adv.detach().to(dtype))
                bad = ~torch.isfinite(adv)
                if bad.any():
                    log.warning("%s produced %d non-finite values; replaced by the clean pixels",
                                self.name, int(bad.sum()))
                    adv = torch.where(bad, x32, adv)
                with torch.no_grad():
                    logits = checked(adv).detach().float()  # (B, K)
        result = _make_result(x_dev, adv, logits, y, target, out).to(home)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s", self.name, result.summary())
        return result


def compute_device(model: object, default: torch.device) -> torch.device:
    """Where an attack runs: the device of the model's first parameter (or buffer), else
    ``default`` (x's device) for a model without tensors or a plain callable."""
    if isinstance(model, nn.Module):
        t = next(model.parameters(), None)
        if t is None:
            t = next(model.buffers(), None)
        if t is not None:
            return t.device
    return default


def compute_dtype(model: object) -> torch.dtype:
    """The dtype an attack computes in: float64 for a float64 model, else float32."""
    if isinstance(model, nn.Module):
        p = next((p for p in model.parameters() if p.is_floating_point()), None)
        if p is not None and p.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _make_result(x: Tensor, adv: Tensor, logits: Tensor, y: Tensor, target: Tensor | None,
                 out: RunOutput) -> AttackResult:
    """Predictions, success and norms of the clipped float32 ``adv`` (B, ...), in x's dtype."""
    pred = logits.argmax(dim=1)
    success = pred == target if target is not None else pred != y
    iters = out.iterations
    if not isinstance(iters, Tensor):
        iters = torch.full((x.shape[0],), int(iters), dtype=torch.int64, device=x.device)
    adv_out = adv.to(x.dtype)
    delta = adv_out.float() - x.float()
    return AttackResult(adv=adv_out, success=success, l2=lp_norm(delta, "l2"),
                        linf=lp_norm(delta, "linf"), pred=pred, logits=logits,
                        iterations=iters.to(torch.int64), info=out.info)


def cross_entropy(logits: Tensor, label: Tensor) -> Tensor:
    """Per-sample cross-entropy, (B,)."""
    return F.cross_entropy(logits, label, reduction="none")
