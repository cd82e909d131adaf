"""Recipes (`advlab reproduce`): the schema, the values, the runner, and every shipped recipe's
--quick run (the same chain of commands on small subsets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advlab import recipes
from advlab.cli.main import app
from advlab.recipes import RecipeError, argv, arithmetic, metric, parse, substitute

runner = CliRunner()
DATA = Path(os.environ.get("ADVLAB_DATA", "../shared/data"))
# the recipes another test file runs (they read data sets this one does not check for)
ELSEWHERE = {"latent-defenses", "gan-vae"}


def _doc(**over):
    doc = {"name": "t", "title": "a test", "source": "none",
           "jobs": [{"name": "clf", "command": "train classifier",
                     "options": {"model": "lrl", "epochs": 2, "n-train": 300},
                     "quick": {"epochs": 1}},
                    {"name": "fgsm", "command": "attack", "run": "clf",
                     "options": {"attack": "fgsm", "eps": ["=0.5*{clf:test_acc}"], "n": 50,
                                 "checks": False}}],
            "verdicts": [{"quantity": "acc", "value": "{clf:test_acc}", "source": 0.0,
                          "compare": "at_least"},
                         {"quantity": "err", "value": "=1-{fgsm:robust_accuracy}"}]}
    doc.update(over)
    return doc


# --- schema ----------------------------------------------------------------------------------

def test_every_shipped_recipe_parses_and_names_its_source_and_times():
    names = recipes.names()
    assert {"deep-defense", "deepfool-table", "mnist-linf", "fgsm-at", "mode-collapse",
            "transfer", "demo"} <= set(names)
    for name in names:
        r = recipes.load(name)
        assert r.name == name and r.source and r.jobs
        assert {"full", "quick"} <= set(r.minutes), name
        for v in r.verdicts:
            assert v.compare in recipes.COMPARES


@pytest.mark.parametrize("change, message", [
    ({"jobs": [{"name": "a", "command": "train everything"}]}, "expected a command in"),
    ({"jobs": [{"name": "A b", "command": "attack"}]}, "lower-case letters"),
    ({"jobs": [{"name": "a", "command": "attack", "run": "b"}]}, "names no earlier job"),
    ({"jobs": [{"name": "a", "command": "attack", "options": {"eps": "{b:x}"}}]},
     "names no earlier job"),
    ({"jobs": [{"name": "a", "command": "attack", "options": {"--eps": 1}}]},
     "without dashes"),
    ({"jobs": [{"name": "a", "command": "attack", "options": {"out": "x"}}]},
     "without dashes"),
    ({"jobs": [{"name": "a", "command": "attack"}, {"name": "a", "command": "attack"}]},
     "used twice"),
    ({"jobs": [{"name": "a", "command": "attack", "config": {"train": {}}}]},
     "'config' is for the training commands"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"verdicts": [{"quantity": "q", "value": "{nope:x}"}]}, "names no job"),
    ({"verdicts": [{"quantity": "q", "value": "{clf:x}", "compare": "about"}]},
     "expected compare in within, at_least, at_most"),
    ({"verdicts": [{"quantity": "q", "value": "{clf:x}", "tolerance": -1}]},
     "tolerance >= 0"),
    ({"jobs": "clf"}, "expected 'jobs' to be a list"),
])
def test_a_recipe_off_the_schema_is_refused_naming_the_problem(change, message):
    with pytest.raises(RecipeError, match=message):
        parse(_doc(**change))


def test_unknown_recipe_names_the_valid_ones():
    with pytest.raises(RecipeError, match="expected a recipe name .*deep-defense"):
        recipes.load("deep-defence")
    res = runner.invoke(app, ["reproduce", "deep-defence", "--quick"])
    assert res.exit_code == 2 and "expected a recipe name" in res.output
    assert "Traceback" not in res.output


# --- values ----------------------------------------------------------------------------------

def test_metric_paths_index_mappings_and_lists_and_name_what_is_there():
    m = {"a": {"b": [1, 2, {"c": 3.5}]}}
    assert metric(m, "a.b.2.c") == 3.5 and metric(m, "a.b.-1.c") == 3.5
    with pytest.raises(RecipeError, match=r"no 'a.x' \(at 'x'; there: b\)"):
        metric(m, "a.x")
    with pytest.raises(RecipeError, match="a list of 3"):
        metric(m, "a.b.7")


def test_arithmetic_takes_numbers_and_operators_only():
    assert arithmetic("0.5*(2+4)/3-1") == pytest.approx(0.0)
    assert arithmetic("-2") == -2
    for bad in ("__import__('os')", "x+1", "2**8", "True+1", "[1]"):
        with pytest.raises(RecipeError, match="arithmetic on numbers"):
            arithmetic(bad)


def test_substitute_and_argv_build_the_command_line():
    lookup = {("clf", None): "/r/clf", ("clf", "acc"): "0.5"}

    def look(job, path):
        return lookup[(job, path)]

    job = recipes.Job("x", "attack", "clf",
                      {"eps": ["=2*{clf:acc}", 0.3], "init": "{clf}", "checks": False,
                       "defense-param": {"eps": 0.25}, "n": 10, "skip": None})
    opts = substitute(dict(job.options), look)
    assert opts["eps"] == [1.0, 0.3] and opts["init"] == "/r/clf"
    assert argv(job, opts, "/r/clf") == [
        "attack", "/r/clf", "--eps", "1.0,0.3", "--init", "/r/clf", "--no-checks",
        "--defense-param", "eps=0.25", "--n", "10"]


def test_quick_overrides_merge_and_null_drops_an_option():
    job = recipes.Job("x", "attack", None, {"n": 1000, "steps": 50}, {"n": 10, "steps": None})
    assert job.settings(False) == {"n": 1000, "steps": 50}
    assert job.settings(True) == {"n": 10}


@pytest.mark.parametrize("compare, tol, rel, value, within", [
    ("within", 0.1, False, 1.05, True), ("within", 0.1, False, 1.2, False),
    ("within", 0.1, True, 1.09, True), ("within", None, False, 1.0, None),
    ("at_least", 0.0, False, 0.99, False), ("at_least", 0.05, False, 0.96, True),
    ("at_most", 0.0, False, 1.0, True), ("at_most", 0.0, False, 1.01, False),
])
def test_verdicts_judge_within_tolerance_and_targets(compare, tol, rel, value, within):
    v = recipes.Verdict("q", "{a:b}", 1.0, tol, compare, rel)
    assert v.judge(value) is within
    assert v.judge(None) is None and v.judge(float("nan")) is None


# --- the runner ------------------------------------------------------------------------------

def _write(tmp_path, doc) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_a_recipe_runs_resumes_and_judges(tmp_path):
    """Two digits jobs, the second reading the first's number; a second call with --resume
    redoes nothing; the verdicts, jobs.json, config.yaml and report.html are written."""
    path, out = _write(tmp_path, _doc()), tmp_path / "r"
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    clf = json.loads((out / "clf" / "metrics.json").read_text())
    fgsm = json.loads((out / "fgsm" / "metrics.json").read_text())
    assert clf["epochs_completed"] == 2
    assert fgsm["eps"] == pytest.approx(0.5 * clf["test_acc"])  # the reference, computed
    acc, err = m["verdicts"]
    assert acc["advlab"] == pytest.approx(clf["test_acc"]) and acc["within"] is True
    assert err["advlab"] == pytest.approx(1 - fgsm["robust_accuracy"]) and err["within"] is None
    assert (m["within"], m["judged"]) == (1, 1)
    assert (out / "report.html").is_file() and "source vs advlab" in res.output
    jobs = json.loads((out / "jobs.json").read_text())
    assert jobs["clf"]["argv"][:3] == ["advlab", "train", "classifier"]
    stamp = (out / "clf" / "metrics.json").stat().st_mtime_ns
    again = runner.invoke(app, ["reproduce", path, "--out", str(out), "--resume",
                                "--device", "cpu", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "finished earlier" in again.output
    assert (out / "clf" / "metrics.json").stat().st_mtime_ns == stamp
    # the same directory without --resume: refused, nothing overwritten
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 2 and (out / "clf" / "metrics.json").stat().st_mtime_ns == stamp
    # --quick against a full run's directory: refused
    res = runner.invoke(app, ["reproduce", path, "--quick", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "quick=False" in " ".join(res.output.split())


def test_a_failing_job_is_named_and_the_run_continues_with_resume(tmp_path):
    doc = _doc()
    doc["jobs"][1]["options"]["attack"] = "fgsmm"  # unknown attack: the job fails
    path, out = _write(tmp_path, doc), tmp_path / "r"
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--device", "cpu",
                              "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "job 'fgsm' of recipe 't' failed" in text
    assert "--resume --out" in text and "Traceback" not in res.output
    assert "unknown attack 'fgsmm'" in text  # the command's own message is shown
    assert (out / "clf" / "metrics.json").is_file()
    doc["jobs"][1]["options"]["attack"] = "fgsm"  # fixed: the first job is kept
    path = _write(tmp_path, doc)
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--resume",
                              "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "[1/2] clf: finished earlier" in res.output


def test_list_and_show(tmp_path):
    res = runner.invoke(app, ["reproduce", "list"], terminal_width=200)
    assert res.exit_code == 0
    for name in recipes.names():
        assert name in res.output
    res = runner.invoke(app, ["reproduce", "show", "deepfool-table"], terminal_width=300)
    assert res.exit_code == 0
    assert ("advlab attack OUT/lenet --attack deepfool --norm l2 --steps 50 --overshoot 0.02 "
            "--n 10000 --no-checks --out OUT/lenet-deepfool") in res.output


# --- every shipped recipe, --quick -------------------------------------------------------------

def _needs(recipe) -> list[str]:
    from advlab import data

    missing = []
    for name in recipe.data:
        try:
            data.load(name, "test")
        except Exception:
            missing.append(name)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in recipes.names() if n not in ELSEWHERE])
def test_every_recipe_runs_quick(name, tmp_path):
    recipe = recipes.load(name)
    missing = _needs(recipe)
    if missing:
        pytest.skip(f"data sets not found: {', '.join(missing)} (set ADVLAB_DATA)")
    out = tmp_path / name
    res = runner.invoke(app, ["reproduce", name, "--quick", "--out", str(out), "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["jobs"]) == {j.name for j in recipe.jobs}
    for job in recipe.jobs:
        assert (out / job.name / "metrics.json").is_file(), job.name
    for v in m["verdicts"]:  # every quantity measured (the quick numbers are not judged here)
        assert isinstance(v["advlab"], float), v
    assert (out / "report.html").is_file()
    if name == "demo":
        pgd = json.loads((out / "pgd" / "metrics.json").read_text())
        deepfool = json.loads((out / "deepfool" / "metrics.json").read_text())
        acc = pgd["curve"]["accuracy"]
        assert all(a >= b for a, b in zip(acc, acc[1:]))  # cumulative over eps: never rises
        assert deepfool["robust_accuracy"] <= pgd["robust_accuracy"]  # minimal: any size
        assert deepfool["rho2"] > 0
        for job in ("vae", "gan"):
            assert (out / job / "figures" / "samples.png").is_file()


def test_a_recipe_run_becomes_a_markdown_section(tmp_path):
    path, out = _write(tmp_path, _doc()), tmp_path / "r"
    assert runner.invoke(app, ["reproduce", path, "--out", str(out), "--device", "cpu",
                               "--no-progress"]).exit_code == 0
    md = tmp_path / "section.md"
    res = runner.invoke(app, ["reproduce", "markdown", str(out), "-o", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    acc = json.loads((out / "clf" / "metrics.json").read_text())["test_acc"]
    assert text.startswith("## Recipe `t`: a test")
    assert f"| acc | 0 | {acc:.4g} | ≥ source | **yes** |" in text
    assert "`advlab attack OUT/clf --attack fgsm" in text  # the commands, paths made generic
    assert "1 of 1 judged quantities within tolerance" in text
    res = runner.invoke(app, ["reproduce", "markdown", str(out / "clf")])
    assert res.exit_code == 2 and "is not a recipe run" in " ".join(res.output.split())


@pytest.mark.slow
def test_a_recipe_under_torchrun_gives_the_single_process_numbers(tmp_path):
    """`advlab reproduce --nproc 2`: every job runs sharded / data-parallel on 2 gloo
    processes, rank 0 writes, and the verdicts equal one process's. A job with its own
    `nproc: 2` relaunches its own command (not the recipe's) from a one-process recipe, and
    runs on the recipe's processes under `--nproc 2`."""
    import subprocess
    import sys

    from test_distributed import TIMEOUT, env

    doc = _doc()
    rob = {"eps": 0.1, "suite": "quick", "n": 40, "aa-steps": 10}
    doc["jobs"].append({"name": "rob", "command": "eval robust", "run": "clf", "options": rob})
    doc["jobs"].append({"name": "rob2", "command": "eval robust", "run": "clf",
                        "options": {**rob, "nproc": 2}})
    doc["verdicts"].append({"quantity": "rob", "value": "{rob:robust_accuracy}"})
    doc["verdicts"].append({"quantity": "rob2", "value": "{rob2:robust_accuracy}"})
    path = _write(tmp_path, doc)
    one, two = tmp_path / "one", tmp_path / "two"
    res = runner.invoke(app, ["reproduce", path, "--out", str(one), "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    done = subprocess.run([sys.executable, "-m", "advlab", "reproduce", path, "--out", str(two),
                           "--device", "cpu", "--no-progress", "--nproc", "2"],
                          env=env(), capture_output=True, text=True, timeout=3 * TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    a = json.loads((one / "metrics.json").read_text())["verdicts"]
    b = json.loads((two / "metrics.json").read_text())["verdicts"]
    assert [v["advlab"] for v in b] == pytest.approx([v["advlab"] for v in a], abs=1e-6)
    # rob2 relaunched its own command on 2 processes (it used to relaunch the recipe's command
    # line, which refused the recipe's directory); its numbers are one process's
    assert a[-1]["advlab"] == pytest.approx(a[-2]["advlab"], abs=1e-6)
    assert done.stdout.count("source vs advlab") == 1  # rank 0 alone prints


def test_only_runs_the_jobs_named_and_a_last_call_judges_all(tmp_path):
    path, out = _write(tmp_path, _doc()), tmp_path / "r"
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--only", "x"])
    assert res.exit_code == 2 and "has no job 'x'" in " ".join(res.output.split())
    assert not out.exists()
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--only", "clf",
                              "--device", "cpu", "--no-progress"])  # a new run: just clf
    assert res.exit_code == 0, res.output
    assert (out / "clf" / "metrics.json").is_file() and not (out / "fgsm").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["verdicts"][1]["advlab"] is None and "not measured" in m["verdicts"][1]["note"]
    res = runner.invoke(app, ["reproduce", path, "--out", str(out), "--resume", "--device",
                              "cpu", "--no-progress"])
    assert res.exit_code == 0 and "[1/2] clf: finished earlier" in res.output
    assert json.loads((out / "metrics.json").read_text())["verdicts"][1]["advlab"] is not None
