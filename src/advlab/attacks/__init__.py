"""Adversarial attacks: ``create(name, **params)``, ``available()``, and one class per attack.

>>> attack = create("pgd", eps=0.3, steps=40)
>>> result = attack(model, x, y)  # AttackResult: adv, success, l2, linf, pred, iterations
"""

from advlab.attacks.apgd import APGD, APGDT
from advlab.attacks.base import Attack, AttackResult, RunOutput
from advlab.attacks.cw import CW
from advlab.attacks.deepfool import DeepFool
from advlab.attacks.eot import EOT
from advlab.attacks.fab import FAB, FABT
from advlab.attacks.fgsm import FGSM
from advlab.attacks.hopskipjump import HopSkipJump
from advlab.attacks.noise import Noise
from advlab.attacks.optim import Optim
from advlab.attacks.pgd import PGD
from advlab.attacks.registry import ATTACKS, available, create, params, register
from advlab.attacks.spatial import Spatial
from advlab.attacks.square import Square
from advlab.attacks.threat import ThreatModel
from advlab.attacks.transfer import Transfer
from advlab.attacks.universal import Universal

__all__ = [
    "ATTACKS", "CW", "EOT", "FGSM", "PGD", "Attack", "AttackResult", "DeepFool", "Noise",
    "RunOutput", "ThreatModel", "available", "create", "params", "register", "FAB", "FABT",
    "HopSkipJump", "Optim", "Spatial", "Square", "Transfer", "Universal",
    "APGD", "APGDT",
]
