r"""The Deep Defense report's two fine-tuning recipes: ``deep-defense`` and ``deepfool-finetune``.

Yan, Guo and Zhang 2018, 'Deep Defense: Training DNNs with Improved Adversarial Robustness'
[https://arxiv.org/abs/1803.00404]; reference code ZiangYan/deepdefense.pytorch.

``deep-defense`` fine-tunes a trained model on

    mean CE(f(x), y) + (λ / B) · [ Σ_correct exp(−c·‖Δ(x)‖₂/‖x‖₂) + Σ_wrong exp(d·‖Δ(x)‖₂/‖x‖₂) ]

over a batch of B examples, where Δ(x) is the DeepFool perturbation of x (at most ``steps`` = 5
iterations, overshoot 0.02), *differentiated through*: every DeepFool step is a function of the
weights (the logits and the input gradients at the current point, built with
``create_graph=True``), so the regularizer's gradient reaches the weights through all steps,
like the "recursive network" of the report. Only the choice of the nearest boundary and the
per-sample stopping are piecewise constant. As in the reference code:

* correct examples (prediction y) move away from y towards the nearest linearized boundary among
  all other classes, and stop once misclassified at x + (1 + overshoot)·r;
* wrong examples move towards the true class: each step linearizes f_y − f_p, p the current
  prediction, and stops once x + (1 + overshoot)·r is classified y;
* the next step linearizes at x + r (without overshoot); Δ = (1 + overshoot)·r; nothing is
  clipped to the pixel box (Δ measures the distance to the boundary, not a valid image);
* the DeepFool forwards run in the mode the training loop set (train): the report's models have
  no dropout or batch norm. With dropout, every forward would draw its own mask.

``deepfool-finetune`` is the report's baseline: fine-tune on DeepFool adversarial examples of the
current weights (advlab's ``DeepFool`` attack, eval mode, clipped to [0, 1]), mixed with the clean
loss by ``clean_weight`` (0 = perturbed examples only, as Moosavi-Dezfooli et al. 2016, §4.3).

Both start from a trained run: ``advlab train classifier --init RUN --defense deep-defense``. The
report fine-tunes with SGD (momentum 0.9) at lr 5e-4 for 5 epochs, batch 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks.deepfool import DeepFool
from advlab.defenses.common import check_fraction, check_int, check_number, mode
from advlab.defenses.registry import build, register
from advlab.train.objective import StepOutput

_TINY = 1e-12  # inside square roots, so that a zero vector has a finite norm gradient
_MAX_EXPONENT = 50.0  # cap of d·ρ in exp(d·ρ): e^50 ≈ 5e21 is finite in float32


@dataclass
class DeepFoolPerturbation:
    """The differentiable DeepFool perturbation of a batch of B examples."""

    delta: Tensor  # (B, ...) (1 + overshoot)·r, differentiable w.r.t. the weights
    logits: Tensor  # (B, K) logits at x (differentiable; the first DeepFool forward)
    correct: Tensor  # (B,) bool: classified y at x
    reached: Tensor  # (B,) bool: crossed (correct) or reached (wrong) the boundary
    iterations: Tensor  # (B,) int64: steps taken per example


def _norm(v: Tensor) -> Tensor:
    """Per-row ℓ2 norm of (B, D) with a finite gradient at 0."""
    return (v.pow(2).sum(dim=1) + _TINY).sqrt()


def _input_jacobian(logits: Tensor, xi: Tensor, create_graph: bool) -> Tensor:
    """∂ logits / ∂ xi as (B, K, D): one backward per class (a loop over classes, not samples)."""
    rows = [torch.autograd.grad(logits[:, k].sum(), xi, create_graph=create_graph,
                                retain_graph=True)[0].flatten(1)
            for k in range(logits.shape[1])]
    return torch.stack(rows, dim=1)


def deepfool_perturbation(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 5,
                          overshoot: float = 0.02, create_graph: bool = True
                          ) -> DeepFoolPerturbation:
    """Batched DeepFool (ℓ2) of the Deep Defense report for ``x`` (B, ...) and labels ``y`` (B,).

    With ``create_graph=True`` the returned ``delta`` and ``logits`` are differentiable w.r.t.
    the model's parameters through every step (see the module docstring for the rules).
    """
    with torch.enable_grad():
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        x_leaf = x.detach().requires_grad_(True)
        r = torch.zeros_like(x_leaf).flatten(1)  # (B, D) the accumulated perturbation
        xi = x_leaf + r.view_as(x)
        logits0 = logits = model(xi)  # (B, K)
        correct = logits0.detach().argmax(1) == y
        not_y = torch.ones_like(logits0, dtype=torch.bool)
        not_y[rows, y] = False  # candidates of correct examples: every class but y
        allowed = torch.where(correct.unsqueeze(1), not_y, ~not_y)  # wrong: only y
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        reached = torch.zeros_like(active)
        iters = torch.zeros(b, dtype=torch.int64, device=x.device)
        for i in range(steps):
            if i > 0:
                xi = x_leaf + r.view_as(x)  # linearize at x + r (no overshoot)
                logits = model(xi)
            jac = _input_jacobian(logits, xi, create_graph)  # (B, K, D)
            source = torch.where(correct, y, logits.detach().argmax(1))  # (B,)
            f = logits - logits.gather(1, source.unsqueeze(1))  # (B, K)
            w = jac - jac[rows, source].unsqueeze(1)  # (B, K, D)
            w_norm = (w.pow(2).sum(dim=2) + _TINY).sqrt()  # (B, K)
            dist = torch.where(allowed, f.detach().abs() / w_norm.detach(), torch.inf)
            k = dist.argmin(dim=1)  # (B,) the nearest linearized boundary
            f_k, w_k, n_k = f[rows, k], w[rows, k], w_norm[rows, k]
            step = (f_k.abs() / n_k.pow(2)).unsqueeze(1) * w_k  # (B, D)
            r = r + torch.where(active.unsqueeze(1), step, torch.zeros_like(step))
            iters = iters + active.long()
            with torch.no_grad():
                pred = model(x + (1 + overshoot) * r.detach().view_as(x)).argmax(1)
            now = torch.where(correct, pred != y, pred == y)
            reached = reached | (active & now)
            active = active & ~now
            if not bool(active.any()):
                break
        delta = ((1 + overshoot) * r).view_as(x)
    return DeepFoolPerturbation(delta=delta, logits=logits0, correct=correct, reached=reached,
                                iterations=iters)


def deepfool_ratios(model: nn.Module, x: Tensor, y: Tensor | None = None, *, steps: int = 5,
                    overshoot: float = 0.02, batch_size: int = 500) -> Tensor:
    """‖Δ(x)‖₂/‖x‖₂ per example (N,) with the Deep Defense report's DeepFool (unclipped, at
    most ``steps`` steps, overshoot; away from the prediction when ``y`` is None, as the
    reference code's test). Its mean is the report's ρ₂. Eval mode, no graph kept."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else x.device
    out = []
    with mode(model, False):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device)
            with torch.no_grad():
                yb = model(xb).argmax(1) if y is None else y[i:i + batch_size].to(device)
            df = deepfool_perturbation(model, xb, yb, steps=steps, overshoot=overshoot,
                                       create_graph=False)
            norm = xb.flatten(1).norm(dim=1).clamp_min(_TINY)
            out.append((df.delta.detach().flatten(1).norm(dim=1) / norm).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def deep_defense_regularizer(model: nn.Module, x: Tensor, y: Tensor, *, lam: float = 15.0,
                             c: float = 25.0, d: float = 5.0, steps: int = 5,
                             overshoot: float = 0.02) -> tuple[Tensor, DeepFoolPerturbation]:
    """(λ / B)·[Σ_correct exp(−c·ρ) + Σ_wrong exp(d·ρ)], ρ = ‖Δ‖₂/‖x‖₂; returns it (scalar,
    differentiable through DeepFool) and the perturbation. Examples with ‖x‖ = 0 are skipped."""
    df = deepfool_perturbation(model, x, y, steps=steps, overshoot=overshoot)
    x_norm = x.detach().flatten(1).norm(dim=1)  # (B,)
    ratio = _norm(df.delta.flatten(1)) / x_norm.clamp_min(_TINY)  # (B,)
    # each branch sees only its own examples' ratios (0 elsewhere): torch.where differentiates
    # both branches, and an exp(d·ρ) that overflows in the branch *not* taken would still turn
    # the gradient into NaN (inf · 0). The growth exponent is capped at _MAX_EXPONENT: a
    # misclassified example whose DeepFool perturbation is over 50/d times its norm adds a
    # constant e^50 (no gradient) instead of inf; the cross-entropy still pulls it back.
    zero = torch.zeros_like(ratio)
    r_correct = torch.where(df.correct, ratio, zero)
    r_wrong = torch.where(df.correct, zero, ratio)
    terms = torch.where(df.correct, torch.exp(-c * r_correct),
                        torch.exp((d * r_wrong).clamp(max=_MAX_EXPONENT)))
    terms = torch.where(x_norm > 0, terms, torch.zeros_like(terms))
    return lam * terms.sum() / x.shape[0], df


@dataclass(frozen=True)
class DeepDefense:
    """Cross-entropy plus the Deep Defense regularizer (see the module docstring)."""

    name: str = "deep-defense"
    lam: float = 15.0  # λ, weight of the regularizer
    c: float = 25.0  # decay rate for correctly classified examples
    d: float = 5.0  # growth rate for misclassified examples
    steps: int = 5  # DeepFool iterations
    overshoot: float = 0.02

    def __post_init__(self) -> None:
        for key in ("lam", "c", "d", "overshoot"):
            check_number(key, getattr(self, key))
        check_int("steps", self.steps)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        reg, df = deep_defense_regularizer(model, x, y, lam=self.lam, c=self.c, d=self.d,
                                           steps=self.steps, overshoot=self.overshoot)
        ce = F.cross_entropy(df.logits, y)
        with torch.no_grad():
            rho = df.delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(_TINY)
            rho_correct = rho[df.correct].mean() if df.correct.any() else rho.new_zeros(())
        return StepOutput(loss=ce + reg, logits=df.logits.detach(),
                          metrics={"ce": ce.detach(), "reg": reg.detach(),
                                   "rho2_train": rho_correct})


REFRESH = ("batch", "epoch", "once")  # when DeepFoolFinetune recomputes its examples


@dataclass(frozen=True)
class DeepFoolFinetune:
    """Cross-entropy on DeepFool adversarial examples of the current weights (report baseline)."""

    name: str = "deepfool-finetune"
    steps: int = 50  # DeepFool iterations
    overshoot: float = 0.02
    num_classes: int = 10  # candidate classes of DeepFool
    clean_weight: float = 0.0  # weight of the clean loss; 0 = perturbed examples only
    # "batch": DeepFool examples of the current weights for every batch (online); "epoch":
    # the whole training set perturbed once per epoch, as Moosavi-Dezfooli et al. §4.3 ("for
    # each epoch, a new set of perturbed examples is generated"), then trained on as data;
    # "once": the training set perturbed once, by the weights fine-tuning starts from (the
    # trained model's own DeepFool examples), and trained on for every epoch
    refresh: str = "batch"
    batch_size: int = 1000  # DeepFool batch of the "epoch" and "once" refreshes
    # "clipped": advlab's DeepFool attack (every iterate clipped to [0, 1], valid images);
    # "report": the report's DeepFool that Deep Defense differentiates through and rho2
    # measures with (unclipped, at most ``steps`` steps; set steps=5 for the report's)
    deepfool: str = "clipped"

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_number("overshoot", self.overshoot)
        check_int("num_classes", self.num_classes, low=2)
        check_fraction("clean_weight", self.clean_weight)
        if self.refresh not in REFRESH:
            raise ValueError(f"refresh: expected one of {', '.join(map(repr, REFRESH))}, got "
                             f"{self.refresh!r}")
        if self.refresh != "batch" and self.clean_weight > 0:
            raise ValueError(f"refresh={self.refresh!r} trains on the perturbed set only: "
                             f"expected clean_weight=0, got {self.clean_weight}")
        check_int("batch_size", self.batch_size)
        if self.deepfool not in ("clipped", "report"):
            raise ValueError(f"deepfool: expected 'clipped' or 'report', got {self.deepfool!r}")

    @property
    def epoch_inputs(self):
        """With ``refresh="epoch"``, the hook ``fit`` calls at the start of every epoch."""
        return self._perturb_all if self.refresh == "epoch" else None

    @property
    def start_inputs(self):
        """With ``refresh="once"``, the hook ``fit`` calls once, with the starting weights."""
        return self._perturb_all if self.refresh == "once" else None

    def _adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """DeepFool examples of ``x`` (no graph); misclassified points stay as they are."""
        if self.deepfool == "clipped":
            attack = DeepFool(steps=self.steps, overshoot=self.overshoot,
                              num_classes=self.num_classes)
            return attack(model, x, y).adv  # eval mode inside; modes restored after
        with mode(model, False):
            df = deepfool_perturbation(model, x, y, steps=self.steps, overshoot=self.overshoot,
                                       create_graph=False)
        keep = df.correct.view(-1, *([1] * (x.dim() - 1)))
        return (x + torch.where(keep, df.delta, torch.zeros_like(df.delta))).detach()

    def _perturb_all(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return torch.cat([self._adversarial(model, xb, yb) for xb, yb in
                          zip(x.split(self.batch_size), y.split(self.batch_size), strict=True)])

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        if self.refresh != "batch":  # x is already a DeepFool example (of this epoch or start)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            return StepOutput(loss=loss, logits=logits.detach(),
                              metrics={"adv_loss": loss.detach(),
                                       "adv_acc": (logits.detach().argmax(1) == y).float()
                                       .mean()})
        adv = self._adversarial(model, x, y)
        adv_logits = model(adv)
        adv_loss = F.cross_entropy(adv_logits, y)
        if self.clean_weight > 0:
            logits = model(x)
            loss = (self.clean_weight * F.cross_entropy(logits, y)
                    + (1 - self.clean_weight) * adv_loss)
        else:
            loss = adv_loss
            with torch.no_grad():
                logits = model(x)
        rho = (adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(_TINY)
        return StepOutput(loss=loss, logits=logits.detach(),
                          metrics={"adv_loss": adv_loss.detach(),
                                   "adv_acc": (adv_logits.detach().argmax(1) == y).float().mean(),
                                   "rho2_train": rho.mean()})


@register("deep-defense")
def deep_defense(dataset: str | None = None, **params) -> DeepDefense:
    """Deep Defense: CE + λ·exp(∓·‖Δ‖/‖x‖) through a differentiable DeepFool (c=25, d=5, λ=15)."""
    return build(DeepDefense, "deep-defense", params)


@register("deepfool-finetune")
def deepfool_finetune(dataset: str | None = None, **params) -> DeepFoolFinetune:
    """Fine-tuning on DeepFool adversarial examples (the Deep Defense report's baseline)."""
    return build(DeepFoolFinetune, "deepfool-finetune", params)
