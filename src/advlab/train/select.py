"""Epoch selection on held-out training points: ``--select-by CRITERION --holdout N``.

Wong, Rice and Kolter 2020, 'Fast is better than free: revisiting adversarial training'
[https://arxiv.org/abs/2001.03994], guard fast adversarial training against catastrophic
overfitting (PGD accuracy falling to about 0 within an epoch while FGSM accuracy keeps
rising) by measuring PGD accuracy on held-out data after every epoch and keeping the best
epoch. Here ``N`` points come out of the training split by a permutation seeded with the
training seed, before the training subset and the validation split are drawn (``split_holdout``),
and are never trained on; after every epoch ``HoldoutScore`` measures the criterion on them
and ``advlab.train.fit`` keeps the weights of the epoch that scored best.

Criteria (``parse_criterion``): ``clean`` (held-out accuracy), ``fgsm`` (FGSM accuracy, ℓ∞) and
``pgdN`` (accuracy under PGD with ``N`` steps, random start, per-point early stop; step
``2.5·ε/N`` as Madry et al. unless given). The attacks use the training objective's threat model
(a defense knows its ε and norm) unless ε is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from advlab import attacks, distributed
from advlab.attacks.base import Attack
from advlab.data.base import TensorSet
from advlab.eval.classification import predict_logits
from advlab.eval.robust import robust_accuracy
from advlab.modes import eval_mode

CRITERIA = ("clean", "fgsm", "pgdN")  # pgdN: N steps of PGD, e.g. pgd20
_PGD = re.compile(r"pgd([1-9][0-9]*)")


def parse_criterion(spec: object) -> tuple[str, int]:
    """``"clean"`` -> ("clean", 0), ``"fgsm"`` -> ("fgsm", 1), ``"pgd20"`` -> ("pgd", 20)."""
    if spec in ("clean", "fgsm"):
        return str(spec), int(spec == "fgsm")
    match = _PGD.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"--select-by: expected one of {', '.join(CRITERIA)} (pgdN: PGD with "
                         f"N >= 1 steps, e.g. pgd20), got {spec!r}")
    return "pgd", int(match.group(1))


def check_options(select_by: str | None, holdout: int | None, eps: float | None,
                  alpha: float | None) -> None:
    """Refuse a combination of the selection options that cannot be honoured: a criterion
    without held-out points or the reverse, ε or a step size where nothing is attacked or
    (FGSM) where the step is ε, a non-positive or non-finite number."""
    if (select_by is None) != (holdout is None):
        given, missing = (("--select-by", "--holdout N") if holdout is None
                          else ("--holdout", "--select-by CRITERION"))
        raise ValueError(f"{given} needs {missing}: the criterion is measured on N training "
                         f"points held out of training (e.g. --select-by pgd20 --holdout 500)")
    for option, value in (("--select-eps", eps), ("--select-alpha", alpha)):
        if value is not None and select_by is None:
            raise ValueError(f"{option} sets the attack of --select-by; expected it with "
                             f"--select-by fgsm or pgdN, got no --select-by")
        if value is not None and not (isinstance(value, (int, float))
                                      and math.isfinite(value) and value > 0):
            raise ValueError(f"{option}: expected a finite number > 0, got {value!r}")
    if select_by is None:
        return
    kind, _ = parse_criterion(select_by)
    if kind == "clean" and (eps is not None or alpha is not None):
        raise ValueError("--select-eps/--select-alpha set an attack, and --select-by clean "
                         "attacks nothing; expected --select-by fgsm or pgdN with them, got clean")
    if kind == "fgsm" and alpha is not None:
        raise ValueError(f"--select-alpha: FGSM takes one step of ε, expected no step size "
                         f"with --select-by fgsm, got {alpha!r} (use pgd1 for another step)")
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 1:
        raise ValueError(f"--holdout: expected an integer >= 1, got {holdout!r}")


def holdout_attack(select_by: str, objective: object | None = None, eps: float | None = None,
                   alpha: float | None = None) -> Attack | None:
    """The attack of criterion ``select_by`` (None for ``clean``): at ``eps``, else at the
    training ``objective``'s threat model (its ``threat``: ε and norm; ℓ∞ when ``eps`` is
    given and the objective has none)."""
    kind, steps = parse_criterion(select_by)
    if kind == "clean":
        return None
    threat = getattr(objective, "threat", None)
    if eps is None and threat is None:
        which = ("no defense is trained" if objective is None else
                 f"the defense {getattr(objective, 'name', type(objective).__name__)!r} has no "
                 f"threat model")
        raise ValueError(f"--select-by {select_by}: the attack's ε is the training defense's, "
                         f"and {which}; expected --select-eps or an adversarial-training "
                         f"--defense (fgsm-at, pgd-at, fast-at), got neither")
    norm = threat.norm if threat is not None else "linf"
    eps = float(threat.eps if eps is None else eps)
    if kind == "fgsm":
        if norm != "linf":
            raise ValueError(f"--select-by fgsm: FGSM is an ℓ∞ attack; expected a linf "
                             f"defense, got a {norm} one (use pgd1 .. pgdN)")
        return attacks.create("fgsm", eps=eps)
    return attacks.create("pgd", eps=eps, alpha=2.5 * eps / steps if alpha is None else alpha,
                          steps=steps, norm=norm, random_start=True, early_stop=True)


def split_holdout(train: TensorSet, n: int, seed: int) -> tuple[TensorSet, TensorSet]:
    """(the rest, the ``n`` held-out points) of ``train``, both in their original order; the
    held-out points are the first ``n`` of a permutation seeded by ``seed``."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n < len(train):
        raise ValueError(f"--holdout: expected an integer in 1..{len(train) - 1} (the training "
                         f"split has {len(train)} examples), got {n!r}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, rest = torch.sort(perm[:n]).values, torch.sort(perm[n:]).values
    return train.subset(rest), TensorSet(train.x[held], train.y[held], train.info, "holdout")


@dataclass(frozen=True)
class HoldoutScore:
    """The criterion ``select_by`` of a model on the held-out points (higher is better): what
    ``advlab.train.fit(..., select=...)`` measures after every epoch.

    Under torchrun every process calls it: the attack is sharded over the processes (results
    gathered, as ``robust_accuracy`` does) and rank 0's number is broadcast, so every process
    keeps the same epoch."""

    select_by: str
    holdout: TensorSet
    attack: Attack | None  # None: clean accuracy
    batch_size: int = 1000

    @property
    def key(self) -> str:
        """The history column, e.g. ``holdout_pgd20_acc``."""
        return f"holdout_{self.select_by}_acc"

    def __call__(self, model: nn.Module) -> float:
        device = next((p.device for p in model.parameters()), None)
        x, y = self.holdout.x, self.holdout.y
        with eval_mode(model):
            logits = predict_logits(model, x, self.batch_size, device)  # (N, K), on the CPU
            if self.attack is None or bool((logits == logits[:1]).all()):
                # clean accuracy; also the robust accuracy of a model whose output ignores
                # its input (e.g. every ReLU dead after a step too large), which no attack
                # can change and robust_accuracy refuses to attack
                value = (logits.argmax(1) == y.cpu()).float().mean().item()
            else:
                value = robust_accuracy(model, x, y, self.attack, batch_size=self.batch_size,
                                        device=device, clean_logits=logits).robust_accuracy
        if distributed.active():
            value = distributed.broadcast_object(value)
        return float(value)
