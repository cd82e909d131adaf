"""The attack API for models and results a user brings: tuple/dict outputs, float64 models,
saved results, and the declared kinds of attacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab import attacks
from advlab.attacks import AttackResult
from attack_fixtures import single_thread, trained_digits  # noqa: F401 (autouse)


class TupleOut(nn.Module):
    def __init__(self, inner: nn.Module, as_dict: bool = False) -> None:
        super().__init__()
        self.inner, self.as_dict = inner, as_dict

    def forward(self, x):
        z = self.inner(x)
        return {"logits": z, "features": x.flatten(1)} if self.as_dict else (z, x.flatten(1))


def test_a_tuple_output_is_attacked_as_its_first_element():
    model, x, y = trained_digits()
    x, y = x[:20], y[:20]
    pgd = attacks.create("pgd", eps=0.1, steps=5)
    plain, wrapped = pgd(model, x, y), pgd(TupleOut(model), x, y)
    assert torch.equal(plain.adv, wrapped.adv) and torch.equal(plain.pred, wrapped.pred)


def test_a_dict_output_is_refused_with_its_keys_and_the_way_out():
    model, x, y = trained_digits()
    with pytest.raises(ValueError, match=r"dict with keys 'logits', 'features'.*output=KEY"):
        attacks.create("fgsm", eps=0.1)(TupleOut(model, as_dict=True), x[:4], y[:4])


def test_a_float64_model_is_attacked_in_float64():
    model, x, y = trained_digits()
    m64 = _copy(model).double()
    x, y = x[:30], y[:30]
    r64 = attacks.create("pgd", eps=0.1, steps=10)(m64, x.double(), y)
    r32 = attacks.create("pgd", eps=0.1, steps=10)(model, x, y)
    assert r64.adv.dtype == torch.float64
    # the budget holds to float64 precision
    assert (r64.adv - x.double()).abs().max().item() <= 0.1 + 1e-12
    assert (r64.success == r32.success).float().mean() >= 0.9


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_attack_result_saves_and_loads_without_code(tmp_path):
    model, x, y = trained_digits()
    r = attacks.create("pgd", eps=0.1, steps=5)(model, x[:12], y[:12])
    r.info["queries"] = torch.arange(12)
    r.info["note"] = "kept"
    path = r.save(tmp_path / "points.safetensors")
    back = AttackResult.load(path)
    for k in AttackResult.FIELDS:
        assert torch.equal(getattr(back, k), getattr(r, k)), k
    assert torch.equal(back.info["queries"], torch.arange(12)) and back.info["note"] == "kept"
    other = tmp_path / "other.safetensors"
    from advlab.io import save_state

    save_state(other, {"kind": "checkpoint"})
    with pytest.raises(ValueError, match="written by AttackResult.save"):
        AttackResult.load(other)


@pytest.mark.parametrize("name, kind", [("pgd", "budget"), ("fgsm", "budget"),
                                        ("deepfool", "minimal"), ("cw", "minimal"),
                                        ("universal", "fitted"), ("spatial", "search")])
def test_every_attack_declares_its_kind(name, kind):
    assert attacks.create(name).kind == kind


def test_every_registered_attack_has_a_kind_and_only_fitted_ones_fit():
    model, x, y = trained_digits()
    for name in attacks.available():
        a = attacks.create(name) if name != "transfer" else None
        if a is None:
            continue
        assert a.kind in ("budget", "minimal", "fitted", "search"), name
        if a.kind != "fitted":
            with pytest.raises(ValueError, match="expected a fitted attack"):
                a.fit(model, x[:4], y[:4])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_direct_call_runs_on_the_models_device_and_answers_on_the_callers():
    model, x, y = trained_digits()
    gpu = _copy(model).cuda()
    r_cpu = attacks.create("pgd", eps=0.1, steps=5)(model, x[:16], y[:16])
    r_gpu = attacks.create("pgd", eps=0.1, steps=5)(gpu, x[:16], y[:16])  # x, y on the CPU
    for k in AttackResult.FIELDS:
        assert getattr(r_gpu, k).device.type == "cpu", k
    assert (r_gpu.success == r_cpu.success).float().mean() >= 0.9


def test_attack_results_move_between_devices_with_their_info():
    model, x, y = trained_digits()
    r = attacks.create("square", eps=0.1, queries=20)(model, x[:4], y[:4])
    same = r.to("cpu")
    assert same is r and torch.equal(same.info["queries"], r.info["queries"])
    meta = r.to("meta")
    assert meta.adv.device.type == "meta" and meta.info["queries"].device.type == "meta"
