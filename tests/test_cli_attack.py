"""``advlab attack`` end to end on a tiny digits classifier, and the demo's attack part."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advlab import data
from advlab.attacks import create
from advlab.cli.main import app
from advlab.eval import robust_accuracy
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.train.config import TrainConfig
from advlab.weights import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An MLP trained for 2 epochs on digits, saved as a classifier run directory."""
    out = tmp_path_factory.mktemp("clf") / "run"
    job = ClassifierJob(dataset="digits", model="mlp",
                        train=TrainConfig(epochs=2, lr=5e-3, batch_size=64, seed=0,
                                          device="cpu"))
    train_classifier(job, out, progress=False)
    return out


def read_json(path):
    """metrics.json must be strict JSON: no NaN or Infinity."""
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=reject)


def invoke(*args: str):
    return runner.invoke(app, ["attack", *args, "--device", "cpu", "--no-progress"])


def test_attack_prints_table_and_writes_metrics_and_figures(run_dir, tmp_path):
    out = tmp_path / "att"
    res = invoke(str(run_dir), "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--n", "60",
                 "--n-checks", "40", "--out", str(out))
    assert res.exit_code == 0, res.output
    for text in ("clean accuracy", "robust accuracy", "success rate", "l2 mean / median",
                 "soundness checks", "unbounded", "max linf", "results in"):
        assert text in res.output
    m = read_json(out / "metrics.json")
    assert m["attack"] == "pgd" and m["n"] == 60 and m["eps"] == 0.1
    assert 0 <= m["robust_accuracy"] <= m["clean_accuracy"] <= 1
    assert m["params"] == {"steps": 5, "early_stop": True, "seed": 0}
    assert {c["name"] for c in m["checks"]} >= {"gradients", "unbounded", "more-steps"}
    assert m["reliable"] == all(c["passed"] for c in m["checks"])
    assert m["curve"]["eps"] == [0.0, 0.1]
    assert m["curve"]["accuracy"][0] == pytest.approx(m["clean_accuracy"])
    for name in ("adversarial_grid.png", "accuracy_vs_eps.png", "roc.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["attack"] == "pgd" and cfg["n"] == 60 and cfg["source_run"] == str(run_dir)
    # the numbers are the library's on the same seeded subset
    ds = data.subset(data.load("digits", "test"), 60, seed=0)
    ev = robust_accuracy(load_model(run_dir), ds.x, ds.y,
                         create("pgd", eps=0.1, steps=5, early_stop=True, seed=0))
    assert m["robust_accuracy"] == pytest.approx(ev.robust_accuracy)
    assert m["clean_accuracy"] == pytest.approx(ev.clean_accuracy)


def test_fgsm_sweep_gives_a_falling_curve(run_dir, tmp_path):
    out = tmp_path / "sweep"
    res = invoke(str(run_dir), "--attack", "fgsm", "--eps", "0:0.2:0.1", "--n", "80",
                 "--no-checks", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "sweep" in res.output
    m = read_json(out / "metrics.json")
    assert [r["eps"] for r in m["per_eps"]] == [0.0, 0.1, 0.2]
    acc = m["curve"]["accuracy"]
    assert acc[0] == pytest.approx(m["clean_accuracy"])
    assert acc[0] >= acc[1] >= acc[2] and acc[2] == pytest.approx(m["robust_accuracy"])
    assert m["checks"] == [] and m["reliable"] is True


def test_deepfool_curve_from_one_run(run_dir, tmp_path):
    out = tmp_path / "df"
    res = invoke(str(run_dir), "--attack", "deepfool", "--eps", "0.5,2.0", "--n", "50",
                 "--overshoot", "0.02", "--no-checks", "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    assert m["minimal"] and m["per_eps"] == [] and m["curve"]["eps"] == [0.5, 2.0]
    assert m["curve"]["accuracy"][0] >= m["curve"]["accuracy"][1]
    assert m["success_rate"] > 0.9  # DeepFool fools an undefended model


def test_unknown_attack_lists_the_valid_ones(run_dir, tmp_path):
    res = invoke(str(run_dir), "--attack", "pgdd", "--out", str(tmp_path / "x"))
    assert res.exit_code == 2
    assert "unknown attack 'pgdd'" in res.output and "fgsm" in res.output
    assert not (tmp_path / "x").exists()  # nothing written for a user error


def test_parameter_the_attack_does_not_take_is_a_clear_error(run_dir, tmp_path):
    res = invoke(str(run_dir), "--attack", "fgsm", "--steps", "10", "--out", str(tmp_path / "x"))
    assert res.exit_code == 2
    assert "unknown parameter 'steps' for attack 'fgsm'" in res.output
    res = invoke(str(run_dir), "--attack", "pgd", "--eps", "0:0.1", "--out", str(tmp_path / "y"))
    assert res.exit_code == 2 and "start:stop:step" in res.output
    res = invoke(str(tmp_path / "missing"), "--attack", "fgsm", "--eps", "0.1")
    assert res.exit_code == 2 and "no model weights" in res.output


@pytest.mark.parametrize("value", ["0", "-5"])
def test_n_checks_below_one_is_refused_before_any_work(run_dir, tmp_path, value):
    res = invoke(str(run_dir), "--attack", "fgsm", "--eps", "0.1", "--n-checks", value,
                 "--out", str(tmp_path / "x"))
    assert res.exit_code == 2
    assert "--n-checks" in res.output and "greater than or equal to 1" in res.output
    assert not (tmp_path / "x").exists()


def test_attack_named_transfer_points_to_transfer_from(run_dir, tmp_path):
    res = invoke(str(run_dir), "--attack", "transfer", "--eps", "0.1",
                 "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "--transfer-from" in res.output
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """Another digits MLP (another seed and width): the source of transfer attacks."""
    out = tmp_path_factory.mktemp("clf") / "other"
    job = ClassifierJob(dataset="digits", model="mlp", model_kwargs={"widths": [32]},
                        train=TrainConfig(epochs=2, lr=5e-3, batch_size=64, seed=1,
                                          device="cpu"))
    train_classifier(job, out, progress=False)
    return out


def test_transfer_from_crafts_on_the_source_and_evaluates_the_run(run_dir, other_run,
                                                                  tmp_path):
    res = invoke(str(run_dir), "-a", "pgd", "--eps", "0.05,0.1", "--steps", "10", "--n", "150",
                 "--no-random-start", "--transfer-from", str(other_run), "--no-checks",
                 "--out", str(tmp_path / "t"))
    assert res.exit_code == 0, res.output
    assert "transfer" in res.output
    m = read_json(tmp_path / "t" / "metrics.json")
    assert m["transfer"] is True and m["transfer_from"] == str(other_run)
    # the same numbers by hand: PGD (deterministic: no random start) crafted on the source,
    # the run evaluated on its examples; the curve is cumulative over the eps list
    ds = data.subset(data.load("digits", "test"), 150, seed=0)
    victim, source = load_model(run_dir), load_model(other_run)
    robust = torch.ones(150, dtype=torch.bool)
    by_eps = {r["eps"]: r for r in m["per_eps"]}
    for eps in (0.05, 0.1):
        pgd = create("pgd", eps=eps, steps=10, random_start=False, early_stop=True, seed=0)
        ev = robust_accuracy(victim, ds.x, ds.y, create("transfer", attack=pgd, source=source))
        robust &= ev.robust
        assert by_eps[eps]["robust_accuracy"] == pytest.approx(robust.float().mean().item())
    white = robust_accuracy(victim, ds.x, ds.y, create("pgd", eps=0.1, steps=10,
                                                       random_start=False, early_stop=True))
    assert m["robust_accuracy"] > white.robust_accuracy  # black box: weaker than white box
    # a source of another data set is refused, before any run directory exists
    from advlab import models
    from advlab.weights import save_model

    save_model(tmp_path / "ring", models.create("mlp", dataset="ring8"), {"dataset": "ring8"})
    res = invoke(str(run_dir), "-a", "fgsm", "--eps", "0.1", "--transfer-from",
                 str(tmp_path / "ring"), "--out", str(tmp_path / "u"))
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "a model of 'ring8'" in text and "'digits'" in text
    assert not (tmp_path / "u").exists()


def test_transfer_from_the_run_itself_equals_the_white_box_attack(run_dir, tmp_path):
    args = ["-a", "pgd", "--eps", "0.1", "--steps", "10", "--n", "100", "--no-checks"]
    res = invoke(str(run_dir), *args, "--out", str(tmp_path / "w"))
    assert res.exit_code == 0, res.output
    res = invoke(str(run_dir), *args, "--transfer-from", str(run_dir), "--out",
                 str(tmp_path / "t"))
    assert res.exit_code == 0, res.output
    white, transfer = (read_json(tmp_path / d / "metrics.json") for d in ("w", "t"))
    assert transfer["robust_accuracy"] == white["robust_accuracy"]
    assert transfer["l2_mean"] == pytest.approx(white["l2_mean"])


@pytest.mark.parametrize("spec", ["", ",", "0.1,,0.2", "nan", "inf", "0.1,-inf"])
def test_eps_lists_with_empty_or_non_finite_items_are_refused(run_dir, tmp_path, spec):
    res = invoke(str(run_dir), "--attack", "fgsm", "--eps", spec, "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "--eps" in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("spec", ["-0.1", "-0.2:0.1:0.1"])
def test_negative_eps_is_refused(run_dir, tmp_path, spec):
    res = invoke(str(run_dir), "--attack", "fgsm", "--eps", spec, "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "--eps" in res.output and ">= 0" in res.output
    assert not (tmp_path / "x").exists()


def test_universal_is_crafted_once_on_training_points_and_applied_to_every_point(run_dir,
                                                                                  tmp_path):
    """`-a universal`: one perturbation per ε, fitted on --fit-n training points, added to
    every evaluated point; the numbers do not depend on the batch size."""
    outs = {}
    for bs in ("7", "60"):
        out = tmp_path / f"uni{bs}"
        res = invoke(str(run_dir), "-a", "universal", "--eps", "0.2", "--n", "60",
                     "--fit-n", "150", "--batch-size", bs, "--no-checks", "--out", str(out))
        assert res.exit_code == 0, res.output
        assert "fitted on 150 training points" in " ".join(res.output.split())
        outs[bs] = read_json(out / "metrics.json")
    a, b = outs["7"], outs["60"]
    assert a["fit_n"] == 150 and a["robust_accuracy"] == b["robust_accuracy"]
    assert 0 < a["n_fooled"]  # the perturbation does something at eps 0.2
    assert yaml.safe_load((tmp_path / "uni7" / "config.yaml").read_text())["fit_n"] == 150

    # the same numbers from the API: fit on the same 150 training points, apply to the 60
    model = load_model(run_dir)
    test = data.subset(data.load("digits", "test"), 60, seed=0)
    train = data.subset(data.load("digits", "train"), 150, seed=0)
    fitted = create("universal", eps=0.2).fit(model, train.x, train.y)
    with torch.no_grad():
        correct = model(test.x).argmax(1) == test.y
        robust = correct & (model(fitted.apply(test.x)).argmax(1) == test.y)
    assert a["robust_accuracy"] == pytest.approx(robust.float().mean().item())
    v = a["per_eps"][-1]["attack"]["perturbation"]
    assert v["linf"] <= 0.2 + 1e-6 and v["shape"] == list(test.x.shape[1:])


def test_fit_n_is_refused_for_attacks_that_are_not_fitted(run_dir, tmp_path):
    res = invoke(str(run_dir), "-a", "pgd", "--eps", "0.1", "--fit-n", "100", "--out",
                 str(tmp_path / "p"))
    assert res.exit_code == 2 and "--fit-n is for attacks crafted once" in res.output
    assert not (tmp_path / "p").exists()


def test_universal_needs_a_fit_set_in_the_api_and_others_refuse_one():
    from advlab.eval import robust_accuracy_curve

    test = data.subset(data.load("digits", "test"), 20, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="pass fit_on=\\(x_fit, y_fit\\)"):
        robust_accuracy_curve(model, test.x, test.y, "universal", [0.1])
    with pytest.raises(ValueError, match="fit_on is for attacks crafted once on a set"):
        robust_accuracy_curve(model, test.x, test.y, "pgd", [0.1], fit_on=(test.x, test.y))
    with pytest.raises(ValueError, match="fit_on inputs of shape"):
        robust_accuracy_curve(model, test.x, test.y, "universal", [0.1],
                              fit_on=(test.x.flatten(1), test.y))


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "batch_size"),
    (["--eps", "8"], r"linf --eps <= 1.*divide by 255"),
    (["--eps", "0:8:4"], r"got 4, 8"),
])
def test_late_or_meaningless_options_are_refused_before_the_run_directory(run_dir, tmp_path,
                                                                          args, message):
    out = tmp_path / "att"
    res = invoke(str(run_dir), "-a", "pgd", "--steps", "2", "--out", str(out), *args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert pytest.importorskip("re").search(message, res.output.replace("\n", " ")), res.output
    assert not out.exists()  # nothing half-made: the same --out works after the fix
    ok = invoke(str(run_dir), "-a", "fgsm", "--eps", "0.1", "--n", "20", "--no-checks",
                "--out", str(out))
    assert ok.exit_code == 0, ok.output


def test_metrics_are_written_before_figures_and_survive_a_failing_figure(run_dir, tmp_path,
                                                                         monkeypatch):
    import matplotlib.figure

    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    out = tmp_path / "att"
    res = invoke(str(run_dir), "-a", "fgsm", "--eps", "0.1", "--n", "30", "--no-checks",
                 "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    assert m["robust_accuracy"] is not None and m["figures"] == []
    assert not list((out / "figures").glob("*.png"))  # no empty or partial PNG left


@pytest.mark.parametrize("args, minimal", [
    (["-a", "apgd", "--eps", "0.1", "--steps", "10"], False),
    (["-a", "apgd-t", "--eps", "0.1", "--steps", "5", "-p", "n_target_classes=2"], False),
    (["-a", "square", "--eps", "0.1", "-p", "queries=100"], False),
    (["-a", "fab-t", "--steps", "5", "-p", "n_target_classes=2"], True),
    (["-a", "hopskipjump", "-p", "max_queries=200"], True),
])
def test_autoattack_and_black_box_attacks_run_from_the_command_line(run_dir, tmp_path, args,
                                                                    minimal):
    out = tmp_path / "att"
    res = invoke(str(run_dir), *args, "--n", "30", "--no-checks", "--out", str(out))
    assert res.exit_code == 0, res.output
    m = read_json(out / "metrics.json")
    assert m["minimal"] == minimal and m["robust_accuracy"] <= m["clean_accuracy"]
    given = dict(a.split("=") for a in args[args.index("-p") + 1:][:1]) if "-p" in args else {}
    for k, v in given.items():
        assert str(m["params"][k]) == v
    if minimal:
        assert m["curve"]["minimal"] and m["curve"]["accuracy"][0] == m["clean_accuracy"]


def test_param_cannot_shadow_an_option(run_dir, tmp_path):
    res = invoke(str(run_dir), "-a", "pgd", "--eps", "0.1", "--steps", "5", "-p", "steps=3",
                 "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "--steps" in res.output
    res = invoke(str(run_dir), "-a", "square", "--eps", "0.1", "-p", "quries=3", "--out",
                 str(tmp_path / "b"))
    assert res.exit_code == 2 and "queries" in res.output  # the close name is suggested
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
