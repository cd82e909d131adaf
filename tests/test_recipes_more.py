"""The ``latent-defenses`` and ``gan-vae`` recipes: their jobs are valid commands, and the quick
chains run end to end with a number in every verdict row."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.recipes import load
from advlab.recipes.runner import _accepts

RECIPES = ("latent-defenses", "gan-vae")
DATA = {"latent-defenses": ("mnist", "fashion-mnist"),
        "gan-vae": ("mnist", "fashion-mnist", "cifar10-jpeg")}
# a row read from a list of a job's metrics (a sweep): the entry's own eps / fraction
_INDEXED = re.compile(r"\{([a-z0-9-]+):(per_eps|rows|certified_accuracy)\.(\d+)\.")
_KEY = {"per_eps": "eps", "rows": "fraction", "certified_accuracy": "eps"}
_LABEL = re.compile(r"(?:eps|at|SVD) (\d+(?:\.\d+)?)(?:/(\d+))?")


def _missing(names: tuple[str, ...]) -> list[str]:
    root = os.environ.get("ADVLAB_DATA", "").strip()
    return [n for n in names if not root or not (Path(root) / n).is_dir()]


@pytest.mark.parametrize("name", RECIPES)
def test_every_option_is_one_its_command_takes(name):
    recipe = load(name)
    assert set(recipe.data) == set(DATA[name])
    for job in recipe.jobs:
        accepts = _accepts(job.command)
        for quick in (False, True):
            for key in job.settings(quick):
                assert "--" + key in accepts, f"{name}/{job.name}: {job.command} has no --{key}"


def test_every_cifar_quantity_is_labelled_as_the_jpeg_re_encoding():
    recipe = load("gan-vae")
    cifar = [v for v in recipe.verdicts if "cifar" in v.value]
    assert len(cifar) >= 10
    for v in cifar:
        assert v.quantity.startswith("CIFAR-10 (JPEG re-encoding)"), v.quantity


def test_the_judged_rows_are_the_sources_claims():
    judged = {name: [v for v in load(name).verdicts if isinstance(v.source, int | float)]
              for name in RECIPES}
    lip = [v for v in judged["gan-vae"] if "Lipschitz / plain" in v.quantity]
    assert len(lip) == 1 and lip[0].compare == "at_least" and lip[0].source == 1.0
    assert {v.source for v in judged["gan-vae"]} == {1.0, 0.9236, 0.7982, 0.0}
    own = [v for v in judged["gan-vae"] if v.source == 0.0]  # advlab's own checks, not claims
    assert len(own) == 2 and all("-robust:" in v.value for v in own)
    ratios = [v for v in judged["latent-defenses"] if v.compare == "at_least"]
    assert len(ratios) == 12 and all(v.value.startswith("={needed-") for v in ratios)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_quick_recipe_runs_every_job_and_measures_every_verdict(name, tmp_path):
    missing = _missing(DATA[name])
    if missing:
        pytest.skip(f"ADVLAB_DATA lacks {', '.join(missing)}")
    recipe = load(name)
    root = tmp_path / name
    res = CliRunner().invoke(app, ["reproduce", name, "--quick", "--out", str(root), "--device",
                                   "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((root / "metrics.json").read_text())
    state = json.loads((root / "jobs.json").read_text())
    assert list(state) == [j.name for j in recipe.jobs]
    for job in recipe.jobs:
        assert state[job.name]["status"] == "done"
        assert (root / job.name / "metrics.json").is_file(), job.name
    rows = metrics["verdicts"]
    assert [r["quantity"] for r in rows] == [v.quantity for v in recipe.verdicts]
    unmeasured = [r["quantity"] for r in rows
                  if not isinstance(r["advlab"], float) or not math.isfinite(r["advlab"])]
    assert not unmeasured, unmeasured
    judged = [r for r in rows if isinstance(r["source"], int | float)]
    assert judged and all(r["within"] in (True, False) for r in judged)
    assert (root / "report.html").is_file()
    # a row of a sweep reads the entry its label names (attack puts eps 0 first, for one)
    for v in recipe.verdicts:
        m = _INDEXED.search(v.value)
        if m:
            entry = json.loads((root / m[1] / "metrics.json").read_text())[m[2]][int(m[3])]
            label = _LABEL.search(v.quantity)
            want = float(label[1]) / (float(label[2]) if label[2] else 1.0)
            assert entry[_KEY[m[2]]] == pytest.approx(want), v.quantity
