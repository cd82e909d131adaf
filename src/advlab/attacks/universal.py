"""Universal adversarial perturbation: one v for a whole set, grown by batched DeepFool passes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Model,
    RunOutput,
    check_int,
    check_nonneg,
)
from advlab.attacks.deepfool import DeepFool
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel, check_norm, clip_box, lp_norm, project_ball

DEFAULT_EPS = {"linf": 10 / 255, "l2": 1.0}  # linf: the paper's ξ = 10 on 0–255 pixels


@register("universal")
@dataclass(frozen=True, kw_only=True)
class Universal(Attack):
    r"""UAP in 'Universal adversarial perturbations' (Moosavi-Dezfooli et al., CVPR 2017)
    [https://arxiv.org/abs/1610.08401]

    Distance measure: Linf or L2 (``norm``): ‖v‖ <= eps for the one perturbation v.

    One perturbation v (shape ``x.shape[1:]``) for every sample of the batch (a training subset):
    ``adv = clip(x + v, 0, 1)``. A sample is *fooled* when its prediction on ``x + v`` differs
    from its prediction on ``x`` (the paper's fooling rate, labels not needed); ``success`` still
    follows the base contract (prediction != y).

    Batched variant of the paper's Algorithm 1. The paper visits the points one at a time: for
    each x_i not fooled yet it adds DeepFool's minimal perturbation Δv_i of x_i + v to v and
    projects v back onto the ball before the next point (a Gauss–Seidel sweep). Here a pass runs
    advlab's batched ``DeepFool`` once on *all* the points not fooled at the current v and
    takes one step v ← P(v + Σ_i Δv_i) (a Jacobi sweep): every Δv_i is computed at the same v,
    the pass's updates are added at once and projected once, so the order of the points no
    longer matters (no shuffling; deterministic). The sum is dominated by the points still
    standing, so the fooling rate can oscillate from pass to pass (the sequential version's
    does too); the v with the highest fooling rate on the set over the passes is returned (the
    rate is measured every pass anyway). Summing beats averaging: the mean of Δv_i pointing to
    different classes nearly cancels and v barely grows in 10 passes. As in the paper, DeepFool
    is the ℓ2 one for both norms; the projection P makes the norm. Images are clipped to [0, 1]
    (x_i + v is clipped before DeepFool; Δv_i is measured between clipped images).

    ``info``: ``perturbation`` (v), ``fooling_rate`` (of v on the set), ``fooling_history`` (the
    rate before each pass, then after the last), ``passes`` (DeepFool passes run) and
    ``clean_pred`` (B,); ``iterations`` counts each sample's DeepFool steps over all passes.

    A fitted attack carries its perturbation: ``fitted = attack.fit(model, x_train, y_train)``
    returns a copy with ``perturbation`` set, and ``fitted(model, x_test, y_test)`` applies it
    without crafting (``fitted.apply(x_test)`` gives the images alone). ``==`` ignores the
    perturbation (a tensor), and ``config()`` records only its shape and norms.

    Arguments:
        eps (float): radius of the ball of v. (Default: 10/255 for linf, 1.0 for l2)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        max_passes (int): maximum number of passes over the set. (Default: 10)
        target_fooling_rate (float): stop once this fraction of the set is fooled (the paper's
            1 − δ). (Default: 0.8)
        deepfool_steps (int): DeepFool steps per pass. (Default: 10)
        overshoot (float): DeepFool's overshoot. (Default: 0.02)
        num_classes (int): DeepFool's candidate classes. (Default: 10)
        perturbation (Tensor | None): a fitted v, applied as is. (Default: None: craft it)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y: (B,) int64; result.adv: like x;
          result.info["perturbation"]: x.shape[1:].

    Examples::
        >>> fitted = Universal(eps=0.2, norm="linf").fit(model, x_train, y_train)
        >>> result = fitted(model, x_test, y_test)  # adv = clip(x_test + v)
        >>> fitted.perturbation.abs().max() <= 0.2
    """

    fitted: ClassVar[bool] = True

    eps: float | None = None
    norm: str = "linf"
    max_passes: int = 10
    target_fooling_rate: float = 0.8
    deepfool_steps: int = 10
    overshoot: float = 0.02
    num_classes: int = 10
    perturbation: Tensor | None = field(default=None, compare=False, repr=False)

    def check_params(self) -> None:
        check_norm(self.norm)
        if self.eps is None:
            object.__setattr__(self, "eps", DEFAULT_EPS[self.norm])
        check_nonneg("eps", self.eps)
        check_int("max_passes", self.max_passes, low=0)
        check_nonneg("target_fooling_rate", self.target_fooling_rate)
        if self.target_fooling_rate > 1:
            raise ValueError(f"expected target_fooling_rate in [0, 1], "
                             f"got {self.target_fooling_rate!r}")
        check_int("deepfool_steps", self.deepfool_steps)
        check_nonneg("overshoot", self.overshoot)
        check_int("num_classes", self.num_classes, low=2)
        v = self.perturbation
        if v is not None:
            if not isinstance(v, Tensor) or not v.is_floating_point():
                got = v.dtype if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"expected perturbation to be a floating-point tensor, got {got}")
            if not torch.isfinite(v).all():
                raise ValueError("expected a finite perturbation, got NaN or inf values")
            size = lp_norm(v.detach().float()[None], self.norm).item()
            if size > self.eps * (1 + 1e-5) + 1e-7:
                raise ValueError(f"expected a perturbation with {self.norm} norm <= eps = "
                                 f"{self.eps:.4g}, got {size:.4g}")

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, float(self.eps))

    def config(self) -> dict[str, Any]:
        cfg = {"attack": self.name, **{f.name: getattr(self, f.name)
                                       for f in dataclasses.fields(self)}}
        v = self.perturbation
        cfg["perturbation"] = None if v is None else {
            "shape": list(v.shape), "l2": lp_norm(v.detach().float()[None], "l2").item(),
            "linf": lp_norm(v.detach().float()[None], "linf").item()}
        return cfg

    def fit(self, model: Model, x: Tensor, y: Tensor) -> Universal:
        """Craft v on ``x`` (B, ...) and return a copy of this attack that applies it."""
        fresh = dataclasses.replace(self, perturbation=None)  # a fitted attack crafts anew
        return dataclasses.replace(self, perturbation=fresh(model, x, y).info["perturbation"])

    def apply(self, x: Tensor) -> Tensor:
        """``clip(x + v, 0, 1)`` for the fitted v (on ``x``'s device and dtype)."""
        v = self._fitted(x)
        return clip_box(x + v).to(x.dtype)

    def _fitted(self, x: Tensor) -> Tensor:
        v = self.perturbation
        if v is None:
            raise ValueError("expected a fitted attack (perturbation set; see fit()), got "
                             "perturbation=None")
        if tuple(v.shape) != tuple(x.shape[1:]):
            raise ValueError(f"expected inputs of shape (B, {', '.join(map(str, v.shape))}) "
                             f"to match the perturbation, got {tuple(x.shape)}")
        return v.detach().to(device=x.device, dtype=x.dtype)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        if self.perturbation is not None:
            v = self._fitted(x)
            return RunOutput(x + v, 0, {"perturbation": v.clone()})
        return self._craft(model, x, rng)

    def _craft(self, model: Model, x: Tensor, rng: SampleRNG) -> RunOutput:
        batch = x.shape[0]
        with torch.no_grad():
            clean = model(x).argmax(dim=1)  # (B,) the labels to move away from
        v = torch.zeros_like(x[0])  # (...) the universal perturbation
        iters = torch.zeros(batch, dtype=torch.int64, device=x.device)
        deepfool = DeepFool(steps=self.deepfool_steps, overshoot=self.overshoot,
                            num_classes=self.num_classes, norm="l2")
        history: list[float] = []
        passes = 0
        best_v, best_rate = v, -1.0
        for i in range(self.max_passes + 1):  # the last pass only measures the fooling rate
            xv = clip_box(x + v)  # (B, ...)
            with torch.no_grad():
                fooled = model(xv).argmax(dim=1) != clean  # (B,)
            rate = fooled.float().mean().item() if batch else 1.0
            history.append(rate)
            if rate > best_rate:
                best_v, best_rate = v, rate
            if i == self.max_passes or rate >= self.target_fooling_rate:
                break
            todo = (~fooled).nonzero().squeeze(1)  # (A,) points not fooled yet
            out = deepfool.run(model, xv[todo], clean[todo], None, rng.take(todo))
            dv = clip_box(out.adv.detach()) - xv[todo]  # (A, ...) each point's minimal step
            iters[todo] += out.iterations
            v = project_ball((v + dv.sum(dim=0))[None], float(self.eps), self.norm)[0]
            passes += 1
        v = best_v
        info = {"perturbation": v, "fooling_rate": best_rate, "fooling_history": history,
                "passes": passes, "clean_pred": clean}
        return RunOutput(x + v, iters, info)
