"""advlab.tuning: the measured attack batch size, its cache and its override."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advlab import tuning
from advlab.attacks import create
from advlab.eval.robust import robust_accuracy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def measured(monkeypatch, tmp_path):
    monkeypatch.delenv("ADVLAB_BATCH_SIZE", raising=False)
    monkeypatch.setenv("ADVLAB_CACHE", str(tmp_path))
    tuning._memo.clear()
    yield tmp_path
    tuning._memo.clear()


def test_measures_a_candidate_caches_it_and_reads_the_cache(measured, monkeypatch):
    model = _model()
    model.train()
    b = tuning.auto_batch_size(model, (1, 4, 4), "cpu", candidates=(8, 16, 32), reps=1)
    assert b in (8, 16, 32)
    assert model.training  # mode restored
    cache = json.loads((measured / "batch_sizes.json").read_text())
    assert list(cache.values()) == [b]
    # A fresh process (empty memo) reads the file instead of measuring again.
    tuning._memo.clear()
    monkeypatch.setattr(tuning, "_time_per_example",
                        lambda *a, **k: pytest.fail("measured although cached"))
    assert tuning.auto_batch_size(model, (1, 4, 4), "cpu", candidates=(8, 16, 32)) == b
    assert tuning.auto_batch_size(model, (1, 4, 4), "cpu", limit=3) == min(b, 3)


def test_another_architecture_or_shape_is_measured_apart(measured):
    a = tuning._key(_model(), (1, 4, 4), torch.device("cpu"))
    wider = nn.Sequential(nn.Flatten(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 3))
    assert tuning._key(wider, (1, 4, 4), torch.device("cpu")) != a
    assert tuning._key(_model(), (16,), torch.device("cpu")) != a


def test_a_corrupt_cache_is_measured_again(measured):
    (measured / "batch_sizes.json").write_text("{not json")
    b = tuning.auto_batch_size(_model(), (1, 4, 4), "cpu", candidates=(8, 16), reps=1)
    assert b in (8, 16)
    assert json.loads((measured / "batch_sizes.json").read_text())  # rewritten, valid


def test_override_and_its_validation(measured, monkeypatch):
    monkeypatch.setenv("ADVLAB_BATCH_SIZE", "7")
    assert tuning.auto_batch_size(_model(), (1, 4, 4), "cpu") == 7
    monkeypatch.setenv("ADVLAB_BATCH_SIZE", "seven")
    with pytest.raises(ValueError, match="ADVLAB_BATCH_SIZE"):
        tuning.auto_batch_size(_model(), (1, 4, 4), "cpu")


def test_robust_accuracy_records_the_batch_size_and_does_not_depend_on_it(measured,
                                                                          monkeypatch):
    model = _model().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    attack = create("pgd", eps=0.2, alpha=0.05, steps=10, random_start=False)
    ev_auto = robust_accuracy(model, x, y, attack)
    assert ev_auto.batch_size >= 1 and ev_auto.to_dict()["batch_size"] == ev_auto.batch_size
    ev_small = robust_accuracy(model, x, y, attack, batch_size=7)
    assert ev_small.batch_size == 7
    assert torch.equal(ev_auto.robust, ev_small.robust)  # no random start: chunking is moot
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(model, x, y, attack, batch_size=0)


class _DetachedInput(nn.Module):
    """A defense whose output has a gradient w.r.t. its weights but none w.r.t. its input (a
    purifier run outside autograd, like a projection without BPDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach().round())


def test_a_model_without_input_gradient_is_measured_and_flagged_not_crashed(measured):
    from advlab.eval.checks import check_gradients

    model = _DetachedInput()
    x = torch.rand(40, 1, 4, 4)
    y = model(x).argmax(1)  # every point correctly classified
    assert tuning.auto_batch_size(model, (1, 4, 4), limit=40) >= 1
    ev = robust_accuracy(model, x, y, create("fgsm", eps=0.3))
    assert ev.robust_accuracy == 1.0  # a zero gradient moves nothing: the "robustness" is fake
    check = check_gradients(model, x, y)
    assert not check.passed and "masked" in check.message


def test_a_slow_model_is_measured_once_and_larger_batches_are_skipped(measured, monkeypatch):
    calls = []

    def fake(model, shape, batch, device, reps, deadline=None):
        calls.append(batch)
        return {8: (2e-3, False), 16: (1e-3, True)}[batch]  # 16 is slow: stop there

    monkeypatch.setattr(tuning, "_time_per_example", fake)
    assert tuning.auto_batch_size(_model(), (1, 4, 4), "cpu", candidates=(64, 16, 8)) == 16
    assert calls == [8, 16]  # smallest first, 64 never tried


def test_the_slow_call_threshold_ends_the_measurement_after_the_warm_up(measured, monkeypatch):
    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.net(x)

    monkeypatch.setattr(tuning, "SLOW_CALL", 0.0)  # every call counts as slow
    model = Slow()
    per, slow = tuning._time_per_example(model, (1, 4, 4), 8, torch.device("cpu"), reps=3)
    assert slow and per > 0 and model.calls == 1
    monkeypatch.setattr(tuning, "SLOW_CALL", 1e9)
    per, slow = tuning._time_per_example(model, (1, 4, 4), 8, torch.device("cpu"), reps=3)
    assert not slow and model.calls == 1 + 4


# --- issue 16, item 9: a bad cache is ignored, named and rewritten; the measurement is short -


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(tuning, "_warned_bad_cache", False, raising=False)


@pytest.mark.parametrize("bad", [0, -3, "fifty", [50], 2.5, True, None])
def test_a_wrong_cached_value_is_ignored_named_and_rewritten(measured, fresh_warning, caplog,
                                                             bad):
    model = _model()
    key = tuning._key(model, (1, 4, 4), torch.device("cpu"))
    cache = measured / "batch_sizes.json"
    cache.write_text(json.dumps({key: bad, "other": 100}))
    with caplog.at_level("WARNING", logger="advlab"):
        b = tuning.auto_batch_size(model, (1, 4, 4), "cpu", candidates=(8, 16), reps=1)
        tuning._memo.clear()
        assert tuning.auto_batch_size(model, (1, 4, 4), "cpu", candidates=(8, 16)) == b
    assert b in (8, 16)
    assert json.loads(cache.read_text()) == {key: b, "other": 100}  # rewritten, the rest kept
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and str(cache) in warned[0]


@pytest.mark.parametrize("text", ["[1, 2]", '"fifty"', "{not json", '{"k": {"nested": 1}}'])
def test_a_malformed_cache_file_is_ignored_named_and_rewritten(measured, fresh_warning, caplog,
                                                               text):
    cache = measured / "batch_sizes.json"
    cache.write_text(text)
    with caplog.at_level("WARNING", logger="advlab"):
        b = tuning.auto_batch_size(_model(), (1, 4, 4), "cpu", candidates=(8, 16), reps=1)
    assert b in (8, 16) and b in json.loads(cache.read_text()).values()
    assert any(str(cache) in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


def test_the_measurement_is_announced_in_one_line_naming_the_cache(measured, caplog):
    with caplog.at_level("INFO", logger="advlab"):
        tuning.auto_batch_size(_model(), (1, 4, 4), "cpu", candidates=(8, 16), reps=1)
    said = [r.getMessage() for r in caplog.records if r.name == "advlab.tuning"]
    assert len(said) == 1 and "\n" not in said[0]
    assert str(measured / "batch_sizes.json") in said[0] and "once" in said[0]
    caplog.clear()
    tuning._memo.clear()
    with caplog.at_level("INFO", logger="advlab"):  # cached: nothing to announce
        tuning.auto_batch_size(_model(), (1, 4, 4), "cpu", candidates=(8, 16), reps=1)
    assert [r for r in caplog.records if r.name == "advlab.tuning"] == []


def test_the_measurement_takes_about_two_seconds_at_most(measured):
    """A model whose every call takes 0.25 s: five candidates of four calls each would take
    five seconds; the measurement stops at its budget with the best size seen so far."""
    import time

    class Sleepy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.25)
            return self.net(x)

    model = Sleepy()
    t = time.perf_counter()
    b = tuning.auto_batch_size(model, (1, 4, 4), "cpu")
    elapsed = time.perf_counter() - t
    assert b in tuning.CANDIDATES and elapsed < tuning.BUDGET + 0.6
    assert model.calls <= 9
