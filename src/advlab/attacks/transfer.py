"""Transfer attack: craft adversarial examples on a source model, judge them on the target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from advlab.attacks.base import Attack, Model, RunOutput
from advlab.attacks.registry import create, register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel


@register("transfer")
@dataclass(frozen=True, kw_only=True)
class Transfer(Attack):
    r"""Transfer (black-box) attack of 'Intriguing properties of neural networks' (Szegedy et
    al.) [https://arxiv.org/abs/1312.6199], studied at scale in 'Delving into Transferable
    Adversarial Examples and Black-box Attacks' (Liu et al.) [https://arxiv.org/abs/1611.02770]

    Distance measure: that of the inner attack (``threat`` is the inner attack's).

    ``Transfer(attack=..., source=surrogate)(victim, x, y)`` runs the inner attack white-box on
    ``source`` and returns its adversarial examples unchanged; ``success``, ``pred`` and
    ``logits`` are measured on the model passed to the call, the target (victim), which is only
    queried once, on the final images. ``source=None`` crafts on the target itself (the
    white-box case, the diagonal of a transferability matrix).

    Why the source is a field and the target the call's argument: every attack is called as
    ``attack(model, x, y)`` on the model under evaluation, so a ``Transfer`` drops into any code
    that evaluates attacks (robust accuracy, AutoAttack-style lists) with the victim as usual.
    The source is part of the threat (the attacker's surrogate); it is kept out of ``==``,
    ``hash`` and ``repr`` (``compare=False``), and ``config()`` records only its class name.
    Its train/eval flags are restored after the call like the target's; it is never moved:
    it must live on x's device.

    Arguments:
        attack (Attack | str): the inner attack, or its registered name. (Default: 'pgd')
        source (nn.Module | Callable | None): the model to craft on. (Default: None: the target)
        attack_params (dict): parameters of the inner attack when it is given by name (an error
            with an ``Attack`` instance: set them on the instance). They go into the inner
            attack at construction, after which this field is empty. (Default: {})
        seed (int): the inner attack's seed when it is given by name and ``attack_params`` has
            none; otherwise unused. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> attack = Transfer(attack="pgd", source=surrogate, attack_params={"eps": 0.3})
        >>> result = attack(victim, x, y)  # success on the victim
        >>> result.info["source_success"].float().mean()  # white-box success on the surrogate
    """

    attack: Attack | str = "pgd"
    source: nn.Module | Model | None = field(default=None, compare=False, repr=False)
    attack_params: dict[str, Any] = field(default_factory=dict, compare=False)

    def check_params(self) -> None:
        if not isinstance(self.attack_params, dict):
            raise ValueError(f"expected attack_params to be a dict, "
                             f"got {type(self.attack_params).__name__}")
        inner = self.attack
        if isinstance(inner, str):
            params = {"seed": self.seed, **self.attack_params}
            if inner == self.name:
                raise ValueError("expected an inner attack other than 'transfer', got 'transfer'")
            inner = create(inner, **params)
        elif isinstance(inner, Attack):
            if self.attack_params:
                raise ValueError("expected attack_params only with an attack given by name, got "
                                 f"an {type(inner).__name__} instance and {self.attack_params!r}: "
                                 "set its parameters on the instance")
        else:
            raise ValueError(f"expected attack to be an Attack or a registered name, "
                             f"got {type(inner).__name__}")
        # From here on ``attack`` is an Attack instance that holds the parameters, and
        # ``attack_params`` is empty (so ``dataclasses.replace`` on a Transfer stays valid).
        object.__setattr__(self, "attack", inner)
        object.__setattr__(self, "attack_params", {})
        if self.source is not None and not callable(self.source):
            raise ValueError(f"expected source to be a model (callable) or None, "
                             f"got {type(self.source).__name__}")

    @property
    def inner(self) -> Attack:
        return self.attack  # type: ignore[return-value]  # an Attack after check_params

    @property
    def targeted(self) -> bool:
        return self.inner.targeted

    @property
    def threat(self) -> ThreatModel | None:
        return self.inner.threat

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def distance(self) -> str:
        return self.inner.distance

    def config(self) -> dict[str, Any]:
        source = None if self.source is None else type(self.source).__name__
        return {"attack": self.name, "seed": self.seed, "inner": self.inner.config(),
                "source": source}

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        source = model if self.source is None else self.source
        crafted = self.inner(source, x, y, target, index=rng.index)  # checks, eval mode
        info = {"source_success": crafted.success, "source_pred": crafted.pred,
                "inner": crafted.info}
        return RunOutput(crafted.adv, crafted.iterations, info)
