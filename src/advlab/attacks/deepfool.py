"""DeepFool: step to the nearest linearized decision boundary until the label flips (batched)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks import backward
from advlab.attacks.base import (
    Attack,
    Model,
    RunOutput,
    check_differentiable,
    check_int,
    check_nonneg,
    expand_as,
)
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import check_norm, clip_box, lp_norm


def candidate_grads(logits: Tensor, x: Tensor, weights: Tensor) -> Tensor:
    """Gradients w.r.t. ``x`` (A, ...) of ``(weights[m] * logits).sum()`` for each m.

    ``weights`` (M, A, K) -> (M, A, ...): one forward graph, M backward passes through it (on
    CPU faster than one vmapped backward, ``is_grads_batched``, and than M forward+backward).
    """
    check_differentiable(logits)
    return torch.stack([backward.grad(logits, x, grad_outputs=w, retain_graph=True)[0]
                        for w in weights])


@register("deepfool")
@dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    r"""DeepFool in 'DeepFool: a simple and accurate method to fool deep neural networks'
    (Moosavi-Dezfooli et al.) [https://arxiv.org/abs/1511.04599]

    Distance measure: L2 (or Linf with ``norm='linf'``). A minimal-perturbation attack.

    Each step linearizes the logit differences f_k − f_0 of the candidate classes (the top
    ``num_classes`` logits at x, class 0 being the prediction) and moves the *unclipped* total
    perturbation r_tot to the nearest linear boundary; the image is x + (1 + overshoot) * r_tot,
    clipped to [0, 1], and the next step linearizes at that clipped image. Clipping r_tot itself
    at every step (torchattacks) stalls short of the boundary. A sample stops once misclassified.
    Batched: per step, one forward of the samples still standing and one backward per candidate.

    Arguments:
        steps (int): maximum number of steps. (Default: 50)
        overshoot (float): relative overshoot of the boundary. (Default: 0.02)
        num_classes (int): candidate classes, the top-k logits at x. (Default: 10)
        norm (str): 'l2' or 'linf'. (Default: 'l2')

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y: (B,) int64; result.adv: like x.

    Examples::
        >>> result = DeepFool(steps=50, overshoot=0.02)(model, x, y)
        >>> rho2 = (result.l2 / x.flatten(1).norm(dim=1))[result.success].mean()
    """

    minimal = True

    steps: int = 50
    overshoot: float = 0.02
    num_classes: int = 10
    norm: str = "l2"

    def check_params(self) -> None:
        check_int("steps", self.steps)
        check_nonneg("overshoot", self.overshoot)
        check_int("num_classes", self.num_classes, low=2)
        check_norm(self.norm)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        batch = x.shape[0]
        adv, r_tot = x.clone(), torch.zeros_like(x)  # (B, ...)
        iters = torch.zeros(batch, dtype=torch.int64, device=x.device)
        active = torch.arange(batch, device=x.device)  # samples not fooled yet
        classes: Tensor | None = None  # (B, k) candidates, column 0 = prediction at x
        for _ in range(self.steps):
            xa = adv[active].detach().requires_grad_(True)  # (A, ...)
            logits = model(xa)  # (A, K)
            check_differentiable(logits)  # even when every sample is already fooled
            if classes is None:
                k = min(self.num_classes, logits.shape[1])
                classes = logits.detach().topk(k, dim=1).indices
            cls = classes[active]  # (A, k)
            # (G,) the rows of active not fooled yet, as indices: the step's one host sync
            going = (logits.detach().argmax(dim=1) == y[active]).nonzero().squeeze(1)
            idx = active[going]
            if idx.numel() == 0:  # all fooled: skip the backward passes
                break
            onehot = F.one_hot(cls, logits.shape[1]).to(logits.dtype)  # (A, k, K)
            weights = (onehot[:, 1:] - onehot[:, :1]).transpose(0, 1)  # (k-1, A, K)
            f = (logits.gather(1, cls[:, 1:]) - logits.gather(1, cls[:, :1])).detach()
            w = candidate_grads(logits, xa, weights).transpose(0, 1)  # (A, k-1, ...)
            w_flat = w.reshape(w.shape[0], w.shape[1], -1)  # (A, k-1, D)
            dual = "l1" if self.norm == "linf" else "l2"
            w_norm = lp_norm(w_flat.flatten(0, 1), dual).view(w_flat.shape[:2])  # (A, k-1)
            dist = f.abs() / (w_norm + 1e-8)  # (A, k-1) distance to each linear boundary
            best = dist.argmin(dim=1, keepdim=True)  # (A, 1) the nearest boundary
            step_len = dist.gather(1, best).squeeze(1) + 1e-4  # + 1e-4 as Foolbox
            w_best = w[torch.arange(w.shape[0], device=x.device), best.squeeze(1)]  # (A, ...)
            if self.norm == "l2":
                norm_best = w_norm.gather(1, best).squeeze(1) + 1e-8
                r = expand_as(step_len / norm_best, w_best) * w_best
            else:
                r = expand_as(step_len, w_best) * w_best.sign()
            r_tot[idx] += r[going]
            adv[idx] = clip_box(x[idx] + (1 + self.overshoot) * r_tot[idx])
            iters[idx] += 1
            active = idx
        return RunOutput(adv, iters)
