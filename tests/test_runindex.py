"""advlab.runindex and ``advlab runs``: an index of run directories in SQLite that follows
the directories (the source of truth) and survives being corrupt."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.runindex import ABSENT, INDEX, Condition, RunIndex, config_differences
from report_fixtures import (
    demo_tree,
    make_run,
    robust_config,
    robust_metrics,
    train_config,
    train_metrics,
)

runner = CliRunner()


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Three classifiers (one adversarially trained), three robust evaluations of them, an
    attack, a demo with its parts."""
    r = tmp_path / "runs"
    make_run(r / "train-20260101-000001", train_config("mlp", lr=0.001), train_metrics(0.95))
    make_run(r / "train-20260101-000002", train_config("lenet5", lr=0.002),
             train_metrics(0.98))
    make_run(r / "train-20260101-000003", train_config("lenet5", "trades"), train_metrics(0.9))
    make_run(r / "eval-robust-20260102-000001", robust_config("runs/train-20260101-000001"),
             robust_metrics(0.95, 0.10))
    make_run(r / "eval-robust-20260102-000002",
             robust_config(str(r / "train-20260101-000002")), robust_metrics(0.98, 0.05))
    make_run(r / "eval-robust-20260102-000003", robust_config("runs/train-20260101-000003"),
             robust_metrics(0.9, 0.85, failed=("more-steps",)))
    make_run(r / "attack-20260103-000001",
             {"command": "attack", "source_run": "runs/train-20260101-000003/model.safetensors",
              "dataset": "digits", "attack": "pgd", "eps": [0.1]},
             {"attack": "pgd", "clean_accuracy": 0.9, "robust_accuracy": 0.82, "n": 100})
    demo_tree(r)
    stamp = 1_700_000_000
    for i, run in enumerate(sorted(p for p in r.iterdir() if p.is_dir())):
        for f in run.rglob("*.*"):  # creation order = name order
            os.utime(f, (stamp + i, stamp + i))
    monkeypatch.chdir(tmp_path)  # runs/... in the configs are relative to where they ran
    return r


def names(runs):
    return [r.name for r in runs]


def test_every_run_is_indexed_with_what_it_is(root):
    with RunIndex(root) as index:
        runs = {r.name: r for r in index.all()}
    assert (root / INDEX).is_file()
    assert set(runs) == {
        "train-20260101-000001", "train-20260101-000002", "train-20260101-000003",
        "eval-robust-20260102-000001", "eval-robust-20260102-000002",
        "eval-robust-20260102-000003", "attack-20260103-000001", "demo-20260101-000000",
        "demo-20260101-000000/classifier", "demo-20260101-000000/attacks",
        "demo-20260101-000000/generative/vae"}
    ev = runs["eval-robust-20260102-000003"]
    # an evaluation's model and defense are those of the run it evaluated
    assert (ev.command, ev.dataset, ev.model, ev.defense) == ("eval robust", "digits",
                                                              "lenet5", "trades")
    att = runs["attack-20260103-000001"]  # the source given as its weights file
    assert (att.command, att.model, att.defense, att.attack) == ("attack", "lenet5", "trades",
                                                                 "pgd")
    assert runs["eval-robust-20260102-000002"].model == "lenet5"  # an absolute source path
    assert runs["demo-20260101-000000"].command == "demo"
    assert runs["demo-20260101-000000/attacks"].command == "demo attacks"  # no config: a part
    assert runs["demo-20260101-000000/classifier"].model == "lenet5"
    assert ev.value("attacks.apgd-t.robust_accuracy") == 0.85
    assert ev.value("suite") == "quick" and ev.value("threat.eps") == 0.1
    assert ev.value("minimal.accuracy_at_eps.0.05") == 0.4  # a key holding a dot


def test_list_filters(root):
    with RunIndex(root) as index:
        assert names(index.select(command="eval-robust", where=["robust_accuracy>0.08"])) == [
            "eval-robust-20260102-000001", "eval-robust-20260102-000003"]
        assert names(index.select(command="eval robust", model="lenet5")) == [
            "eval-robust-20260102-000002", "eval-robust-20260102-000003"]
        assert names(index.select(defense="trades")) == [
            "attack-20260103-000001", "eval-robust-20260102-000003", "train-20260101-000003"]
        assert names(index.select(command="train")) == [  # a group: train classifier, ...
            "demo-20260101-000000/classifier", "demo-20260101-000000/generative/vae",
            "train-20260101-000001", "train-20260101-000002", "train-20260101-000003"]
        assert names(index.select(where=["reliable=false"])) == ["eval-robust-20260102-000003"]
        assert names(index.select(where=["train.lr=0.002"])) == ["train-20260101-000002"]
        assert names(index.select(where=["model=mlp"])) == ["train-20260101-000001"]
        assert names(index.select(where=["model!=mlp", "test_acc>=0.9"])) == [
            "demo-20260101-000000/classifier", "train-20260101-000002",
            "train-20260101-000003"]
        assert names(index.select(command="attack", where=["robust_accuracy<0.83"])) == [
            "attack-20260103-000001"]
        assert index.select(where=["robust_accuracy>2"]) == []


def test_sort_and_limit(root):
    with RunIndex(root) as index:
        ranked = index.select(sort="robust_accuracy", descending=True)
        values = [r.value("robust_accuracy") for r in ranked]
        numeric = [v for v in values if v is not None]
        assert numeric == sorted(numeric, reverse=True) == [0.85, 0.82, 0.1, 0.05]
        assert all(v is None for v in values[len(numeric):])  # runs without it last
        assert names(index.select(command="train classifier", sort="test_acc", limit=2)) == [
            "train-20260101-000003", "train-20260101-000001"]
        newest = index.select(descending=True, limit=1)
        assert names(newest) == ["train-20260101-000003"]  # the latest files (fixture order)


def test_best(root):
    with RunIndex(root) as index:
        assert index.best("robust_accuracy").name == "eval-robust-20260102-000003"
        assert index.best("robust_accuracy", command="eval-robust",
                          where=["reliable=true"]).name == "eval-robust-20260102-000001"
        assert index.best("robust_accuracy", lowest=True).name == "eval-robust-20260102-000002"
        assert index.best("attacks.apgd-ce.robust_accuracy", model="mlp").name == \
            "eval-robust-20260102-000001"
        with pytest.raises(ValueError, match="no run under .* has a numeric 'test_acc' among"):
            index.best("test_acc", command="attack")


@pytest.mark.parametrize("text, why", [
    ("robust_accuracy", "expected --where KEY OP VALUE"),
    ("robust_accuracy>", "expected --where KEY OP VALUE"),
    ("model>mlp", "> needs a number"),
])
def test_bad_conditions_are_refused(text, why):
    with pytest.raises(ValueError, match=why):
        Condition.parse(text)


def test_an_unknown_key_is_an_error_naming_close_ones(root):
    with RunIndex(root) as index, pytest.raises(ValueError, match="did you mean robust_accuracy"):
        index.select(where=["robust_acuracy>0.5"])


def test_get_by_name_path_or_unique_part(root):
    with RunIndex(root) as index:
        assert index.get("attack-20260103-000001").name == "attack-20260103-000001"
        assert index.get(str(root / "train-20260101-000002")).name == "train-20260101-000002"
        assert index.get("attack").name == "attack-20260103-000001"  # unique beginning
        assert index.get("generative/vae").name == "demo-20260101-000000/generative/vae"
        with pytest.raises(ValueError, match="expected one run, got 3"):
            index.get("train-2026")
        with pytest.raises(ValueError, match="no run 'nothing'"):
            index.get("nothing")


def test_the_index_follows_the_directories(root):
    with RunIndex(root) as index:
        assert index.refresh() == {"added": 0, "updated": 0, "removed": 0, "unchanged": 11}
    metrics = root / "train-20260101-000001" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["test_acc"] = 0.5
    metrics.write_text(json.dumps(m))
    os.utime(metrics, (1_800_000_000, 1_800_000_000))
    shutil.rmtree(root / "attack-20260103-000001")
    make_run(root / "train-new", train_config("cnn"), train_metrics(0.7))
    with RunIndex(root) as index:
        assert index.refresh()["unchanged"] == 11  # the constructor refreshed already
        runs = {r.name: r for r in index.all()}
        assert runs["train-20260101-000001"].value("test_acc") == 0.5
        assert "attack-20260103-000001" not in runs and runs["train-new"].model == "cnn"
        assert names(index.select(where=["test_acc<0.6"])) == ["train-20260101-000001"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "other-schema", "old-version",
                                    "directory"])
def test_a_damaged_index_is_rebuilt_never_fatal(root, damage):
    index_file = root / INDEX
    if damage == "garbage":
        index_file.write_bytes(b"this is not a database" * 100)
    elif damage == "empty":
        index_file.write_bytes(b"")
    elif damage == "other-schema":
        with sqlite3.connect(index_file) as db:
            db.execute("CREATE TABLE runs (x)")
    elif damage == "old-version":
        with RunIndex(root):
            pass
        with sqlite3.connect(index_file) as db:
            db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
            db.execute("UPDATE runs SET command = 'stale'")  # what an old schema meant
    else:
        index_file.mkdir()  # cannot be a database, cannot be replaced: built in memory
    with RunIndex(root) as index:
        assert len(index.all()) == 11 and "stale" not in {r.command for r in index.all()}
        assert index.best("robust_accuracy").name == "eval-robust-20260102-000003"
        assert index.in_memory == (damage == "directory")
    if damage != "directory":
        with sqlite3.connect(index_file) as db:  # a valid index again
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 11


def test_config_differences():
    from advlab.runindex import RunRecord

    a = RunRecord("a", None, None, None, None, None, None, 0.0,
                  {"model": "mlp", "train": {"lr": 0.1, "seed": 0}, "x": None})
    b = RunRecord("b", None, None, None, None, None, None, 0.0,
                  {"model": "mlp", "train": {"lr": 0.2, "seed": 0}, "y": 1})
    assert config_differences([a, b]) == [("train.lr", [0.1, 0.2]), ("x", [None, ABSENT]),
                                          ("y", [ABSENT, 1])]


def cli(*args: str):
    res = runner.invoke(app, ["runs", *args])
    return res.exit_code, " ".join(res.output.split())


def test_runs_cli(root):
    code, out = cli("list", "--root", str(root), "--command", "eval-robust", "--where",
                    "robust_accuracy>0.08", "--sort", "robust_accuracy", "--desc")
    assert code == 0 and "2 runs under" in out
    assert out.index("eval-robust-20260102-000003") < out.index("eval-robust-20260102-000001")
    assert "85%" in out and "10%" in out and "eval-robust-20260102-000002" not in out
    code, out = cli("list", "--root", str(root), "-m", "attacks.apgd-t.robust_accuracy")
    assert code == 0 and "11 runs under" in out and "attacks.apgd-t.robust_accuracy" in out
    code, out = cli("show", "eval-robust-20260102-000003", "--root", str(root))
    assert code == 0 and "suite" in out and "quick" in out and "robust_accuracy" in out
    assert "FAILED more-steps" in out
    code, out = cli("compare", "train-20260101-000001", "train-20260101-000002", "--root",
                    str(root))
    assert code == 0 and "test_acc" in out and "95%" in out and "98%" in out
    assert "configuration differences" in out and "train.lr" in out and "lenet5" in out
    code, out = cli("best", "--metric", "robust_accuracy", "--command", "eval-robust",
                    "--root", str(root))
    assert code == 0 and "best by robust_accuracy (highest): eval-robust-20260102-000003" in out
    code, out = cli("best", "--metric", "robust_accuracy", "--root", str(root), "--lowest")
    assert code == 0 and "eval-robust-20260102-000002 with 5%" in out


@pytest.mark.parametrize("args, message", [
    (["list", "--where", "robust_acuracy>1"], "did you mean robust_accuracy"),
    (["list", "--where", "nonsense"], "expected --where KEY OP VALUE"),
    (["show", "nothing"], "no run 'nothing'"),
    (["compare", "attack"], "expected at least two runs to compare, got 1"),
    (["best", "--metric", "test_acc", "--command", "attack"], "has a numeric 'test_acc'"),
])
def test_runs_cli_errors_are_one_line(root, args, message):
    code, out = cli(*args, "--root", str(root))
    assert code == 2 and message in out and "Traceback" not in out


def test_runs_cli_default_root_and_a_missing_one(root, tmp_path):
    code, out = cli("list")  # ./runs (the fixture's working directory)
    assert code == 0 and "11 runs under runs" in out
    code, out = cli("list", "--root", str(tmp_path / "none"))
    assert code == 2 and "no directory of runs at" in out


def test_damage_met_after_opening_falls_back_to_memory(root, tmp_path):
    with RunIndex(root) as index:
        index.db.close()  # the file goes bad under the open index
        (tmp_path / "bad.sqlite").write_bytes(b"garbage" * 1000)
        index.db = sqlite3.connect(tmp_path / "bad.sqlite")
        assert len(index.select(command="eval robust")) == 3 and index.in_memory
        assert len(index.all()) == 11
