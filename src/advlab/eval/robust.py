"""Robust accuracy the AutoAttack way, accuracy over ε, ε_ref and ρ₂: pure functions.

Conventions used everywhere in ``advlab.eval`` (and by the soundness checks):

- A point is *robust* when the model classifies it correctly on the clean input **and** on the
  attack's output. Points already misclassified count as non-robust and are never passed to
  the attack (AutoAttack's "still robust" mask), so robust accuracy <= clean accuracy always.
- The attack runs on the points still standing, gathered into batches of ``batch_size``.
- The *success rate* of an evaluation is the fraction of the attacked points that were fooled
  (with no prior mask: the correctly classified ones, so it is 1 − robust / clean accuracy).
- Perturbation sizes (mean / median ℓ2 and ℓ∞) are over the points the attack fooled.

Shapes: ``x`` (N, ...) in [0, 1]; ``y`` (N,) int64; per-sample outputs (N,), on ``x``'s device.
The attack runs on ``device`` (default: the model's parameters' device, else ``x``'s).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab import distributed
from advlab.attacks import Attack, AttackResult, create
from advlab.attacks.base import logits_of
from advlab.attacks.checks_output import check_depends_on_input
from advlab.attacks.threat import lp_norm
from advlab.device import resolve_device
from advlab.inputs import check_inputs, check_labels
from advlab.modes import eval_mode
from advlab.tuning import auto_batch_size

Model = Callable[[Tensor], Tensor]  # pixels in [0, 1] (B, ...) -> logits (B, K)


# --- small shared helpers -------------------------------------------------------------------

def finite_or_none(v: float) -> float | None:
    """JSON has no NaN: undefined numbers (no success, empty set) are written as null."""
    return float(v) if v is not None and math.isfinite(v) else None


def model_device(model: Model, x: Tensor, device: torch.device | str | None = None
                 ) -> torch.device:
    """``device`` if given (checked by ``advlab.device.resolve_device``: a torch.device, or a
    name such as ``cpu``, ``cuda[:i]``, ``auto``), else the device of the model's first
    parameter, else ``x``'s."""
    if device is not None:
        return resolve_device(device)
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return x.device


def check_data(x: object, y: object) -> None:
    """Raise ValueError unless x is (N, ...) floating point, finite, inside [0, 1] and y (N,)
    integer class indices >= 0 (the attack engine's checks; the upper bound, the number of
    classes, is checked against the clean logits by ``check_labels_fit``)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"expected x and y to be tensors, got {type(x).__name__} and "
                         f"{type(y).__name__}")
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (N, ...) and y (N,) with the same N, got x "
                         f"{tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("expected at least one example, got an empty x")
    try:  # the attack engine's own checks: floating point, finite, inside [0, 1]
        check_inputs(x)
    except ValueError as e:
        raise ValueError(f"{e}{_pixel_hint(x)}") from e
    # integer class indices >= 0; y may sit on another device than x (it is moved to x's)
    check_labels("y", y, x.shape[0], y.device)


def _pixel_hint(x: Tensor) -> str:
    """A hint for images stored as 0..255 (integer dtype, or floats above 1 up to 255)."""
    if x.dtype == torch.bool or x.is_complex():
        return ""
    if x.is_floating_point():
        lo, hi = (v.item() for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and 1 < hi <= 255):
            return ""
    return "; images stored as 0..255 (e.g. uint8) must be scaled first: pass x.float() / 255"


def check_labels_fit(y: Tensor, logits: Tensor, what: str = "the model's logits") -> None:
    """``logits`` (N, K) for the N labels ``y``, and every label a class index < K.

    ``check_data`` cannot know K; call this once the clean logits are at hand, so that a label
    the model cannot predict fails here instead of counting as a silent misclassification.
    """
    n = y.shape[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"expected {what} of shape ({n}, K), got {shape}")
    k = logits.shape[1]
    if n and int(y.max()) >= k:
        raise ValueError(f"expected y in [0, {k - 1}] (the model has {k} logits), got a value "
                         f"{int(y.max())}")


def check_batch_size(batch_size: object) -> None:
    """``batch_size`` is an integer >= 1, or None: measured for the machine (``advlab.tuning``)."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an integer >= 1 or None (measured for "
                         f"this machine), got {batch_size!r}")


def attack_batch_size(batch_size: int | None, model: Model, x: Tensor, device: torch.device,
                      points: int) -> int:
    """``batch_size``, or when None the machine's fastest for ``model`` (measured once and
    cached by ``advlab.tuning.auto_batch_size``; 500 for a model that is not a Module)."""
    if batch_size is not None:
        return batch_size
    if not isinstance(model, nn.Module) or points == 0:
        return 500
    return auto_batch_size(model, tuple(x.shape[1:]), device, limit=max(points, 1))


@torch.no_grad()
def predict(model: Model, x: Tensor, batch_size: int | None = 1000,
            device: torch.device | str | None = None) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; on ``x``'s device, float32. (N, K)"""
    check_batch_size(batch_size)
    batch_size = batch_size or 1000
    dev = model_device(model, x, device)
    with eval_mode(model):
        out = [logits_of(model(x[i:i + batch_size].to(dev))).float().to(x.device)
               for i in range(0, max(x.shape[0], 1), batch_size)]  # no point: (0, K)
    return torch.cat(out)


@contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (a no-op when disabled); yields ``advance(n)``."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.update(task, advance=n)


# --- robust accuracy ------------------------------------------------------------------------

@dataclass(frozen=True)
class RobustEvaluation:
    """The outcome of one attack over a data set (see the module docstring for conventions)."""

    attack: dict[str, Any]  # the attack's name and settings (Attack.config())
    n: int  # points evaluated
    clean_accuracy: float
    robust_accuracy: float  # correct on clean and on the attack's output
    success_rate: float  # fooled / attacked (NaN when nothing was attacked)
    n_attacked: int
    n_fooled: int
    l2_mean: float  # over fooled points (NaN when none)
    l2_median: float
    linf_mean: float
    linf_median: float
    seconds: float  # wall time, clean pass included
    batch_size: int  # points per attack call (given, or measured for this machine)
    clean_correct: Tensor = field(repr=False)  # (N,) bool
    robust: Tensor = field(repr=False)  # (N,) bool
    attacked: Tensor = field(repr=False)  # (N,) bool: points attacked (correct, in mask)
    result: AttackResult = field(repr=False)  # (N,) per sample; not attacked: adv = x, norms 0

    @property
    def fooled(self) -> Tensor:
        """(N,) bool: attacked and misclassified on the adversarial example."""
        return self.attacked & self.result.success

    def summary(self) -> str:
        """Clean and robust accuracy, then AutoAttack's closing line over the attacked points
        (success, largest perturbation, NaNs, range)."""
        head = (f"{self.attack.get('attack', 'attack')}: clean accuracy "
                f"{self.clean_accuracy:.2%}, robust accuracy {self.robust_accuracy:.2%} of "
                f"{self.n}")
        idx = torch.nonzero(self.attacked).squeeze(1)
        if idx.numel() == 0:
            return f"{head}; no point attacked"
        r = self.result
        sub = AttackResult(adv=r.adv[idx], success=r.success[idx], l2=r.l2[idx],
                           linf=r.linf[idx], pred=r.pred[idx], logits=r.logits[idx],
                           iterations=r.iterations[idx])
        return f"{head}; attacked {idx.numel()}: {sub.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no tensors), JSON-ready; undefined values are None."""
        return {
            "attack": self.attack, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "success_rate": finite_or_none(self.success_rate), "n_attacked": self.n_attacked,
            "n_fooled": self.n_fooled,
            **{k: finite_or_none(getattr(self, k))
               for k in ("l2_mean", "l2_median", "linf_mean", "linf_median")},
            "mean_iterations": finite_or_none(
                self.result.iterations[self.attacked].float().mean().item()
                if self.n_attacked else float("nan")),
            "seconds": self.seconds, "batch_size": self.batch_size,
            "summary": self.summary(),
        }


def _stats(v: Tensor) -> tuple[float, float]:
    if v.numel() == 0:
        return float("nan"), float("nan")
    v = v.float()
    return v.mean().item(), v.median().item()


def _assemble(x: Tensor, y: Tensor, clean_logits: Tensor, idx: Tensor,
              parts: list[AttackResult], target: Tensor | None = None) -> AttackResult:
    """Full-length (N,) results: the attack's outputs at ``idx``, the clean inputs elsewhere.
    ``success``: misclassified, or classified as ``target`` (N,) for a targeted attack."""
    n = x.shape[0]
    adv, logits = x.clone(), clean_logits.clone()
    l2 = torch.zeros(n, device=x.device)
    linf = torch.zeros(n, device=x.device)
    iters = torch.zeros(n, dtype=torch.int64, device=x.device)
    info: dict[str, Any] = {}
    if parts:
        r = AttackResult.cat(parts)
        adv[idx] = r.adv.to(x.device, x.dtype)
        logits[idx] = r.logits.to(x.device)
        l2[idx], linf[idx] = r.l2.to(x.device), r.linf.to(x.device)
        iters[idx] = r.iterations.to(x.device)
        info = r.info
    pred = logits.argmax(dim=1)
    success = pred != y if target is None else pred == target
    return AttackResult(adv=adv, success=success, l2=l2, linf=linf, pred=pred, logits=logits,
                        iterations=iters, info=info)


def robust_accuracy(model: Model, x: Tensor, y: Tensor, attack: Attack, *,
                    batch_size: int | None = None, mask: Tensor | None = None,
                    progress: bool = False, device: torch.device | str | None = None,
                    clean_logits: Tensor | None = None,
                    target: Tensor | None = None) -> RobustEvaluation:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``attack``.

    A targeted attack (``targeted=True``) needs ``target`` (N,), a class other than ``y`` for
    every point: its success rate is then the targeted success rate (the fraction of attacked
    points classified as their target), and a point counts as robust when the attack did not
    reach its target.

    Only points that are correctly classified (and selected by ``mask`` (N,) bool, e.g. the
    points still robust at a smaller ε) are attacked, in batches of ``batch_size``; points
    outside the mask count as non-robust without an attack call. A fixed-budget attack with
    ε = 0 is not called at all (its only admissible input is x itself). ``clean_logits``
    (N, K) skips the clean pass when the caller already has it.
    """
    check_data(x, y)
    check_batch_size(batch_size)
    if not isinstance(attack, Attack):
        raise ValueError(f"expected an advlab Attack (attacks.create(name, ...)), got "
                         f"{type(attack).__name__}")
    if attack.targeted:
        if target is None:
            raise ValueError(f"expected target (N,) for the targeted attack {attack.name!r}, "
                             f"got None")
        check_labels("target", target, x.shape[0], target.device)
        target = target.to(x.device).long()
        if bool((target == y.to(x.device)).any()):
            raise ValueError("expected every target to differ from its label y, got "
                             f"{int((target == y.to(x.device)).sum())} points with target == y")
    elif target is not None:
        raise ValueError(f"got a target for the untargeted attack {attack.name!r}: create it "
                         f"with targeted=True, or pass target=None")
    if mask is not None and (mask.shape != y.shape or mask.dtype != torch.bool):
        raise ValueError(f"expected mask to be a bool tensor of shape {tuple(y.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    start = time.perf_counter()
    dev = model_device(model, x, device)
    y = y.to(x.device).long()
    given = clean_logits is not None
    if clean_logits is None:
        clean_logits = predict(model, x, batch_size, dev)
    check_labels_fit(y, clean_logits, "clean_logits" if given else "the model's logits")
    # a model that ignores x cannot be attacked: refused, not reported "robust"
    check_depends_on_input(x[:64], clean_logits[:64])
    clean_logits = clean_logits.to(x.device).float()
    clean_correct = clean_logits.argmax(dim=1) == y
    todo = clean_correct if mask is None else clean_correct & mask.to(x.device)
    idx = torch.nonzero(todo).squeeze(1)  # the points still standing
    threat = attack.threat
    if threat is not None and threat.eps == 0:  # the threat set is {x}: nothing to call
        idx = idx[:0]
    parts = []
    batch_size = attack_batch_size(batch_size, model, x, dev, distributed.share(idx.numel()))
    # under torchrun each process attacks its share of the batches one process would make
    # (advlab.distributed); every point's result is gathered back below, in order
    batch_size, batches = distributed.shard_batches(idx, batch_size, same=(x, y))
    with progress_bar(progress and distributed.is_main(), sum(map(len, batches)),
                      attack.name or "attack") as advance:
        for chunk in batches:
            # the points' positions in x key their random draws: results do not depend on
            # the batch size
            t = None if target is None else target[chunk].to(dev)
            r = attack(model, x[chunk].to(dev), y[chunk].to(dev), t, index=chunk)
            parts.append(r)
            advance(chunk.numel())
    parts = distributed.gather_results(parts, idx.numel(), batch_size, like_adv=x[:0].to(dev),
                                       like_logits=clean_logits[:0])
    result = _assemble(x, y, clean_logits, idx, parts, target)
    robust = todo & ~result.success  # outside the mask or misclassified: non-robust
    fooled = todo & result.success
    l2_mean, l2_median = _stats(result.l2[fooled])
    linf_mean, linf_median = _stats(result.linf[fooled])
    n, n_att, n_fool = x.shape[0], int(todo.sum()), int(fooled.sum())
    config = attack.config()
    return RobustEvaluation(
        attack=config, n=n, clean_accuracy=clean_correct.float().mean().item(),
        robust_accuracy=robust.float().mean().item(),
        success_rate=n_fool / n_att if n_att else float("nan"), n_attacked=n_att,
        n_fooled=n_fool, l2_mean=l2_mean, l2_median=l2_median, linf_mean=linf_mean,
        linf_median=linf_median, seconds=time.perf_counter() - start, batch_size=batch_size,
        clean_correct=clean_correct, robust=robust, attacked=todo, result=result)


def worst_case(evaluations: Sequence[RobustEvaluation]) -> RobustEvaluation:
    """The cumulative worst case over evaluations of the same points (AutoAttack's report).

    A point is robust only if robust in every evaluation. Its per-sample row comes from the
    first evaluation that fooled it (else from the last one), so the norms, adversarial
    examples and success rate describe the strongest attack found per point. Use it after an
    ordered list of attacks run with ``mask=previous.robust``, or over an ε sweep.
    """
    if not evaluations:
        raise ValueError("expected at least one RobustEvaluation, got none")
    n = evaluations[0].n
    if any(ev.n != n for ev in evaluations):
        raise ValueError(f"expected evaluations of the same {n} points, got sizes "
                         f"{[ev.n for ev in evaluations]}")
    if len(evaluations) == 1:
        return evaluations[0]
    dev = evaluations[0].robust.device
    pick = torch.full((n,), len(evaluations) - 1, dtype=torch.int64, device=dev)
    taken = torch.zeros(n, dtype=torch.bool, device=dev)
    robust, attacked = evaluations[0].robust.clone(), evaluations[0].attacked.clone()
    for i, ev in enumerate(evaluations):
        newly = ev.fooled & ~taken
        pick[newly], taken = i, taken | newly
        robust &= ev.robust
        attacked |= ev.attacked
    names = ("adv", "success", "l2", "linf", "pred", "logits", "iterations")
    rows = {k: getattr(evaluations[-1].result, k).clone() for k in names}
    for i, ev in enumerate(evaluations[:-1]):
        sel = torch.nonzero(pick == i).squeeze(1)
        for k in names:
            rows[k][sel] = getattr(ev.result, k)[sel]
    result = AttackResult(**rows, info={"evaluations": [ev.attack for ev in evaluations]})
    fooled = attacked & ~robust & evaluations[0].clean_correct
    l2_mean, l2_median = _stats(result.l2[fooled])
    linf_mean, linf_median = _stats(result.linf[fooled])
    n_att, n_fool = int(attacked.sum()), int(fooled.sum())
    return RobustEvaluation(
        attack={"worst_case_of": [ev.attack for ev in evaluations]}, n=n,
        clean_accuracy=evaluations[0].clean_accuracy,
        robust_accuracy=robust.float().mean().item(),
        success_rate=n_fool / n_att if n_att else float("nan"), n_attacked=n_att,
        n_fooled=n_fool, l2_mean=l2_mean, l2_median=l2_median, linf_mean=linf_mean,
        linf_median=linf_median, seconds=sum(ev.seconds for ev in evaluations),
        batch_size=max(ev.batch_size for ev in evaluations),
        clean_correct=evaluations[0].clean_correct, robust=robust, attacked=attacked,
        result=result)


def clean_accuracy(model: Model, x: Tensor, y: Tensor, *, batch_size: int = 1000,
                   device: torch.device | str | None = None) -> float:
    """Fraction of ``x`` classified as ``y``."""
    check_data(x, y)
    logits = predict(model, x, batch_size, device)
    check_labels_fit(y, logits)
    return (logits.argmax(1) == y.to(x.device)).float().mean().item()


# --- accuracy over a list of ε --------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyCurve:
    """Robust accuracy at each ε (ascending), with the evaluations that produced it."""

    attack: str
    params: dict[str, Any]  # the attack's parameters other than eps
    norm: str  # the norm ε is measured in
    eps: list[float]
    accuracy: list[float]
    clean_accuracy: float
    n: int
    minimal: bool  # True: one run of a minimal-perturbation attack gave the whole curve
    cumulative: bool  # fixed budget: a point fooled at a smaller ε stays fooled
    seconds: float
    evaluations: list[RobustEvaluation] = field(repr=False)  # one per ε, or the single run

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "params": self.params, "norm": self.norm,
                "eps": self.eps, "accuracy": self.accuracy,
                "clean_accuracy": self.clean_accuracy, "n": self.n, "minimal": self.minimal,
                "cumulative": self.cumulative, "seconds": self.seconds}


def accuracy_from_norms(clean_correct: Tensor, fooled: Tensor, norms: Tensor,
                        eps: Sequence[float]) -> list[float]:
    """Accuracy at each ε from one minimal-perturbation run (as Foolbox does).

    A point is robust at ε when it is correctly classified and the attack either failed on it
    or needed a perturbation of norm > ε (a perturbation of norm exactly ε lies in the ball).
    ``clean_correct``, ``fooled`` (N,) bool; ``norms`` (N,) float.
    """
    for name, t, kind in (("clean_correct", clean_correct, "bool"), ("fooled", fooled, "bool"),
                          ("norms", norms, "float")):
        if not isinstance(t, Tensor):
            raise ValueError(f"expected {name} to be a {kind} tensor, got {type(t).__name__}")
        if kind == "bool" and t.dtype != torch.bool:
            raise ValueError(f"expected {name} to be a bool tensor, got {t.dtype}")
    shapes = [tuple(t.shape) for t in (clean_correct, fooled, norms)]
    if len(shapes[0]) != 1 or shapes.count(shapes[0]) != 3:
        raise ValueError(f"expected clean_correct, fooled and norms of the same shape (N,), "
                         f"got {shapes[0]}, {shapes[1]} and {shapes[2]}")
    eps_t = torch.as_tensor(list(eps), dtype=torch.float32, device=norms.device)  # (E,)
    robust = clean_correct[None] & (~fooled[None] | (norms[None].float() > eps_t[:, None]))
    return robust.float().mean(dim=1).tolist()


def _check_eps_list(eps_list: Sequence[float]) -> list[float]:
    eps = [float(e) for e in eps_list]
    if not eps or any(not math.isfinite(e) or e < 0 for e in eps):
        raise ValueError(f"expected a non-empty list of finite eps >= 0, got {list(eps_list)!r}")
    return sorted(eps)


def robust_accuracy_curve(model: Model, x: Tensor, y: Tensor, attack_name: str,
                          eps_list: Sequence[float], *, cumulative: bool = True,
                          batch_size: int | None = None, progress: bool = False,
                          device: torch.device | str | None = None,
                          source: Model | None = None,
                          fit_on: tuple[Tensor, Tensor] | None = None,
                          **params: Any) -> AccuracyCurve:
    """Accuracy of ``model`` under attack ``attack_name`` at every ε of ``eps_list`` (sorted).

    Minimal-perturbation attacks (``attack.minimal``: deepfool, cw) run once; accuracy(ε) is
    the fraction of points correctly classified whose perturbation has norm > ε or that the
    attack never fooled (``accuracy_from_norms``), the norm being the attack's (``norm``
    parameter, else ℓ2). ``params`` must then not contain ``eps``.

    Fixed-budget attacks (fgsm, pgd, noise) run once per ε, built as
    ``create(attack_name, eps=ε, **params)``. With ``cumulative=True`` each run attacks only the
    points still robust at the previous, smaller ε: a point fooled at ε₁ is fooled at every
    ε₂ ≥ ε₁, because its adversarial example lies inside the larger ball (and the box), so
    skipping it is valid and saves time. The curve is then the accuracy against the best
    attack found at any ε' ≤ ε of the list; it never increases. With ``cumulative=False`` every
    ε attacks all correctly classified points: the plain accuracy of that one attack, which
    for FGSM need not fall monotonically (use it to reproduce published FGSM curves).

    With a ``source`` model every attack is crafted on it and evaluated on ``model`` (a
    ``Transfer`` of the attack: the black-box setting); the cumulative argument still holds,
    as a transferred example that fools ``model`` at ε₁ lies in every larger ball.

    An attack crafted once on a set and applied to others (one with a ``fit`` method:
    ``universal``) needs ``fit_on = (x_fit, y_fit)``: at every ε one perturbation is fitted on
    that set (on ``source`` when given) and added to every point of ``x``, so the result does
    not depend on how ``x`` is batched.
    """
    check_data(x, y)
    eps = _check_eps_list(eps_list)
    if params.get("eps") is not None:
        raise ValueError("expected the budgets in eps_list, got eps in the attack parameters too")
    params = {k: v for k, v in params.items() if v is not None and k != "eps"}
    probe = create(attack_name, **params)  # unknown names and parameters fail here, at once
    fits = probe.fitted
    if fits and fit_on is None:
        raise ValueError(f"attack {attack_name!r} crafts one perturbation on a set and applies "
                         "it to others: pass fit_on=(x_fit, y_fit), e.g. training points "
                         "(CLI: --fit-n points of the training split)")
    if fit_on is not None and not fits:
        raise ValueError(f"fit_on is for attacks crafted once on a set (universal), not "
                         f"{attack_name!r}")
    start = time.perf_counter()
    dev = model_device(model, x, device)
    if fit_on is not None:
        if not isinstance(fit_on, tuple) or len(fit_on) != 2:
            raise ValueError("expected fit_on to be a tuple (x_fit, y_fit)")
        check_data(*fit_on)
        if tuple(fit_on[0].shape[1:]) != tuple(x.shape[1:]):
            dims = ", ".join(map(str, x.shape[1:]))
            raise ValueError(f"expected fit_on inputs of shape (N, {dims}) like x, got "
                             f"{tuple(fit_on[0].shape)}")
        x_fit, y_fit = fit_on[0].to(dev), fit_on[1].to(dev)

    def build(**kw: Any) -> Attack:
        attack = create(attack_name, **kw)
        if fit_on is not None:  # the fitted perturbation is fixed: nothing to transfer
            return attack.fit(model if source is None else source, x_fit, y_fit)
        return attack if source is None else create("transfer", attack=attack, source=source)

    minimal = probe.minimal
    norm_of_probe = probe.distance
    if source is not None and fit_on is None:
        probe = build(**params)
    clean_logits = predict(model, x, batch_size, dev)  # robust_accuracy checks y against it
    if minimal:
        ev = robust_accuracy(model, x, y, probe, batch_size=batch_size, progress=progress,
                             device=dev, clean_logits=clean_logits)
        norm = norm_of_probe  # the inner attack's when transferred
        norms = ev.result.l2 if norm == "l2" else ev.result.linf
        acc = accuracy_from_norms(ev.clean_correct, ev.fooled, norms, eps)
        evaluations = [ev]
    else:
        evaluations, acc, mask = [], [], None
        for e in eps:
            attack = build(eps=e, **params)
            ev = robust_accuracy(model, x, y, attack, batch_size=batch_size,
                                 mask=mask if cumulative else None, progress=progress,
                                 device=dev, clean_logits=clean_logits)
            evaluations.append(ev)
            acc.append(ev.robust_accuracy)
            mask = ev.robust
        threat = probe.threat
        norm = threat.norm if threat is not None else "linf"
    clean_acc = (clean_logits.argmax(1) == y.to(x.device)).float().mean().item()
    return AccuracyCurve(attack=attack_name, params=params, norm=norm, eps=eps, accuracy=acc,
                         clean_accuracy=clean_acc, n=x.shape[0], minimal=minimal,
                         cumulative=cumulative and not minimal,
                         seconds=time.perf_counter() - start, evaluations=evaluations)


# --- ε_ref: the FGSM ε at which accuracy falls to 50% ----------------------------------------

@dataclass(frozen=True)
class EpsRef:
    """The smallest FGSM ε found at which accuracy is <= ``level`` (inf if none up to eps_max)."""

    eps: float
    accuracy: float  # FGSM accuracy at ``eps``
    level: float
    bracket: tuple[float, float]  # (lo, hi): accuracy(lo) > level >= accuracy(hi)
    history: list[tuple[float, float]]  # every (ε, accuracy) evaluated, in order

    def to_dict(self) -> dict[str, Any]:
        return {"eps": finite_or_none(self.eps), "accuracy": finite_or_none(self.accuracy),
                "level": self.level, "bracket": [finite_or_none(b) for b in self.bracket],
                "evaluations": len(self.history)}


def eps_ref(model: Model, x: Tensor, y: Tensor, *, level: float = 0.5, eps_max: float = 1.0,
            tol: float = 1e-3, grid: int = 8, batch_size: int | None = None,
            device: torch.device | str | None = None) -> EpsRef:
    """ε_ref of the Deep Defense report: the smallest FGSM ε at which accuracy falls to ``level``.

    Accuracy is the robust accuracy of plain FGSM at that ε (correct on clean and on the FGSM
    image, all correctly classified points attacked afresh at every ε).

    FGSM accuracy is not monotone in ε (a long signed step can overshoot into the right class
    again), so a bare bisection over [0, eps_max] could land on a later crossing. Instead:
    1. scan the grid eps_max·i/grid (i = 1..grid) upward and stop at the first point where
       accuracy <= level; 2. bisect between it and the previous grid point, keeping the
    invariant accuracy(lo) > level >= accuracy(hi), until hi − lo <= tol; return hi.
    The result is within ``tol`` of a crossing in the first grid bracket that contains one;
    when accuracy is monotone on [0, hi] it is the smallest crossing. A dip below ``level``
    narrower than the grid step before that bracket can be missed: raise ``grid`` to look
    closer. Returns eps = inf when accuracy stays above ``level`` up to ``eps_max``.

    ``level`` in [0, 1); ``eps_max`` a finite number > 0; ``tol`` > 0: a ``tol`` below the
    float spacing at the crossing cannot be met, and the bisection then stops when lo and hi
    are adjacent floats (nothing lies between them); ``grid`` an integer in [1, 10000] (each
    grid point costs one FGSM evaluation).
    """
    grid_max = 10_000

    def number(v: object) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    check_data(x, y)
    if not (number(level) and 0 <= level < 1):
        raise ValueError(f"expected level to be a number in [0, 1), got {level!r}")
    if not (number(eps_max) and math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"expected eps_max to be a finite number > 0, got {eps_max!r}")
    if not (number(tol) and tol > 0):
        raise ValueError(f"expected tol to be a number > 0, got {tol!r}")
    if not (number(grid) and math.isfinite(grid) and int(grid) == grid
            and 1 <= grid <= grid_max):
        raise ValueError(f"expected grid to be an integer in [1, {grid_max}], got {grid!r}")
    dev = model_device(model, x, device)
    clean_logits = predict(model, x, batch_size, dev)
    check_labels_fit(y, clean_logits)
    history: list[tuple[float, float]] = []

    def acc(e: float) -> float:
        ev = robust_accuracy(model, x, y, create("fgsm", eps=e), batch_size=batch_size,
                             device=dev, clean_logits=clean_logits)
        history.append((e, ev.robust_accuracy))
        return ev.robust_accuracy

    lo, a_hi = 0.0, acc(0.0)
    if a_hi <= level:
        return EpsRef(0.0, a_hi, level, (0.0, 0.0), history)
    hi = None
    for i in range(1, int(grid) + 1):
        e = eps_max * i / grid
        a = acc(e)
        if a <= level:
            hi, a_hi = e, a
            break
        lo = e
    if hi is None:
        return EpsRef(math.inf, float("nan"), level, (lo, math.inf), history)
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if not lo < mid < hi:  # lo and hi are adjacent floats: tol is below their spacing
            break
        a = acc(mid)
        if a <= level:
            hi, a_hi = mid, a
        else:
            lo = mid
    return EpsRef(hi, a_hi, level, (lo, hi), history)


# --- ρ₂: mean ‖r‖₂ / ‖x‖₂ of DeepFool perturbations ------------------------------------------

RHO_CONVENTIONS = ("correct", "all")


@dataclass(frozen=True)
class Rho2:
    """ρ₂ = mean of ‖r‖₂ / ‖x‖₂ over the points named by ``over`` (see ``rho2``)."""

    value: float
    over: str
    n_used: int  # points in the mean
    n_failed: int  # points DeepFool did not fool within its steps
    ratios: Tensor = field(repr=False)  # (N,) ‖r‖₂ / ‖x‖₂, NaN where not in the mean
    evaluation: RobustEvaluation = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rho2": finite_or_none(self.value), "over": self.over, "n_used": self.n_used,
                "n_failed": self.n_failed, "attack": self.evaluation.attack}


def l2_ratios(ev: RobustEvaluation, x: Tensor, among: Tensor) -> tuple[Tensor, Tensor]:
    """‖r‖₂ / ‖x‖₂ per point of ``ev`` (NaN outside ``use``) and ``use`` = ``among`` where
    ‖x‖₂ > 0: the terms of ρ₂ (Moosavi-Dezfooli et al.)."""
    x_norm = lp_norm(x.float(), "l2").to(ev.result.l2.device)
    use = among.to(x_norm.device) & (x_norm > 0)
    return torch.where(use, ev.result.l2 / x_norm.clamp_min(1e-12), torch.nan), use


def rho2(model: Model, x: Tensor, y: Tensor, *, over: str = "correct",
         batch_size: int | None = None, progress: bool = False,
         device: torch.device | str | None = None, **deepfool_params: Any) -> Rho2:
    """ρ₂ of Moosavi-Dezfooli et al.: the mean of ‖r(x)‖₂ / ‖x‖₂ of DeepFool perturbations r.

    ``over="correct"`` (default): DeepFool attacks the correctly classified points (true label);
    the mean is over those it fooled; failures are counted in ``n_failed``, not averaged.
    ``over="all"``: the Deep Defense code's convention (ZiangYan/deepdefense.pytorch, ``test``
    in main.py): every point is attacked away from the model's own prediction, and the mean is
    over all points, failures included with the perturbation reached after the last step (the
    report uses DeepFool with at most 5 steps and overshoot 0.02: ``steps=5``). Points with
    ‖x‖₂ = 0 are left out of both means. ``deepfool_params`` go to ``create("deepfool", ...)``.
    """
    if over not in RHO_CONVENTIONS:
        raise ValueError(f"expected over in {', '.join(map(repr, RHO_CONVENTIONS))}, got {over!r}")
    check_data(x, y)
    attack = create("deepfool", **deepfool_params)
    dev = model_device(model, x, device)
    clean_logits = predict(model, x, batch_size, dev)
    check_labels_fit(y, clean_logits)  # also with over="all": y must still be class indices
    labels = y.to(x.device) if over == "correct" else clean_logits.argmax(1)
    ev = robust_accuracy(model, x, labels, attack, batch_size=batch_size, progress=progress,
                         device=dev, clean_logits=clean_logits)
    ratios, use = l2_ratios(ev, x, ev.fooled if over == "correct" else ev.attacked)
    value = ratios[use].mean().item() if use.any() else float("nan")
    return Rho2(value=value, over=over, n_used=int(use.sum()),
                n_failed=int((ev.attacked & ~ev.result.success).sum()), ratios=ratios,
                evaluation=ev)
