"""``advlab eval needed RUN``: the report's robustness (``perturbation_needed``) as a command."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from advlab import data, models
from advlab.cli.main import app
from advlab.eval import perturbation_needed
from advlab.weights import load_model, save_model

runner = CliRunner()
FAST = ["--steps", "40", "--lr", "0.05", "--lams", "0.1,0", "--n", "24", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A digits ``lrl`` run, trained for a few hundred Adam steps (well above chance)."""
    torch.manual_seed(0)
    model = models.create("lrl", "digits")
    train = data.load("digits", "train")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(train), (64,))
        loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("needed") / "run"
    save_model(path, model.eval(), {"dataset": "digits"})
    return path


def _needed(run, out, *args):
    res = runner.invoke(app, ["eval", "needed", str(run), *FAST, *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text())


def test_the_command_measures_what_the_library_measures_on_the_same_points(run, tmp_path):
    m = _needed(run, tmp_path / "nd")
    test = data.subset(data.load("digits", "test"), 24, seed=0)  # the command's --n subset
    want = perturbation_needed(load_model(run), test.x, test.y, (test.y + 1) % 10,
                               lams=(0.1, 0.0), steps=40, lr=0.05)
    assert m["robustness"] == pytest.approx(want.mean_all)
    assert m["mean_all"] == pytest.approx(want.mean_all)
    assert m["reached"] == pytest.approx(want.reached_fraction)
    assert m["reached_first"] == pytest.approx(want.reached_first_fraction)
    assert 0 < m["reached"] and m["robustness"] > 0  # a trained model: the attack got somewhere
    assert m["n"] == 24 and m["lams"] == [0.1, 0.0] and m["confidence"] == 0.95
    cfg = yaml.safe_load((tmp_path / "nd" / "config.yaml").read_text())
    assert cfg["command"] == "eval needed" and cfg["target"] == "next"
    assert (tmp_path / "nd" / "log.txt").is_file()
    assert set(m["figures"]) == {"needed_ratios.png", "adversarial_examples.png"}


def test_saved_adversaries_reach_their_targets_and_feed_eval_accuracy(run, tmp_path):
    m = _needed(run, tmp_path / "nd", "--save-adv", "--confidence", "0.9")
    saved = load_file(str(tmp_path / "nd" / "adversarial.safetensors"))
    test = data.subset(data.load("digits", "test"), 24, seed=0)
    assert torch.equal(saved["y"], test.y) and torch.equal(saved["target"], (test.y + 1) % 10)
    model = load_model(run)
    with torch.no_grad():
        probs = model(saved["x"]).softmax(1)
    p_target = probs.gather(1, saved["target"][:, None]).squeeze(1)
    assert saved["reached"].any()
    assert (p_target[saved["reached"]] >= 0.9 - 1e-6).all()
    assert saved["reached"].float().mean().item() == pytest.approx(m["reached"])
    ratio = (saved["x"] - test.x).flatten(1).norm(dim=1) / test.x.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, saved["ratio"], atol=1e-5)
    # the adversaries as a data file of `advlab eval`: the accuracy of the attacked model on them
    res = runner.invoke(app, ["eval", "accuracy", str(run), "--data",
                              str(tmp_path / "nd" / "adversarial.safetensors"), "--out",
                              str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    acc = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_acc"]
    assert acc == pytest.approx((probs.argmax(1) == test.y).float().mean().item())
    assert acc <= 1 - m["reached"] + 1e-6  # a reached point is classified as its target


def test_random_targets_are_seeded_and_never_the_label(run, tmp_path):
    files = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        _needed(run, tmp_path / name, "--target", "random", "--seed", seed, "--save-adv",
                "--steps", "1")
        files.append(load_file(str(tmp_path / name / "adversarial.safetensors")))
    a, b, c = files
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["x"], b["x"])
    for f in files:
        assert (f["target"] != f["y"]).all() and f["target"].min() >= 0 \
            and f["target"].max() < 10
    assert not torch.equal(a["target"], (a["y"] + 1) % 10)
    assert not torch.equal(a["y"], c["y"])  # another seed: another subset


@pytest.mark.parametrize(("args", "message"), [
    (["--confidence", "0"], "expected confidence"),
    (["--confidence", "1.5"], "expected confidence in (0, 1]"),
    (["--target", "prev"], "expected --target in next, random, got 'prev'"),
    (["--lams", "-0.1"], "expected --lams values >= 0"),
    (["--lams", "abc"], "expected --lams to be a finite number"),
    (["--steps", "-1"], "expected steps to be an integer >= 0"),
    (["--lr", "0"], "expected lr to be a finite number > 0"),
    (["--split", "val"], "expected split"),
    (["--n", "0"], "--n"),
])
def test_bad_options_are_one_line_errors_that_write_nothing(run, tmp_path, args, message):
    out = tmp_path / "nd"
    res = runner.invoke(app, ["eval", "needed", str(run), *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not out.exists()


def test_missing_run_or_model_is_named(tmp_path):
    out = tmp_path / "nd"
    res = runner.invoke(app, ["eval", "needed", str(tmp_path / "nothing"), "--out", str(out)])
    assert res.exit_code == 2 and "no model weights" in res.output
    res = runner.invoke(app, ["eval", "needed", "--out", str(out)])
    assert res.exit_code == 2 and "expected RUN" in res.output
    assert not out.exists()
