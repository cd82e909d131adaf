"""advlab.report.html: self-contained reports whose numbers are those of metrics.json."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.report import html as rh
from report_fixtures import (
    VERDICTS,
    checks,
    demo_tree,
    make_run,
    number_pointers,
    parse_report,
    png,
    robust_config,
    robust_metrics,
    train_config,
    train_metrics,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real classifier run: an MLP trained for one epoch on 300 digits (Python API)."""
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    out = tmp_path_factory.mktemp("report") / "train"
    job = ClassifierJob(dataset="digits", model="mlp", n_train=300,
                        train=TrainConfig(epochs=1, batch_size=64, seed=0, device="cpu"))
    train_classifier(job, out, progress=False)
    return out


def report_of(*runs: Path, tmp: Path) -> str:
    out = rh.report_runs(list(runs), tmp / "report.html")
    return out.read_text(encoding="utf-8")


def check_numbers(report, expect_all: bool = True) -> int:
    """Every number shown is the exact value at its data-path in its run's metrics.json;
    with ``expect_all`` every number of every metrics.json is shown. Returns how many."""
    shown: dict[str, set[str]] = {}
    for run, ptr, value in report.numbers:
        doc = json.loads((Path(run) / "metrics.json").read_text())
        truth = rh.resolve_pointer(doc, ptr)
        assert not isinstance(truth, bool) and isinstance(truth, (int, float)), (run, ptr)
        assert float(value) == truth and value == rh.exact(truth), (run, ptr, value, truth)
        shown.setdefault(run, set()).add(ptr)
    if expect_all:
        for run in report.sections:
            doc = json.loads((Path(run) / "metrics.json").read_text())
            missing = set(number_pointers(doc)) - shown.get(run, set())
            assert not missing, (run, sorted(missing)[:10])
    return len(report.numbers)


def test_a_real_run_report_holds_every_number_exactly_and_inlines_every_figure(trained,
                                                                                tmp_path):
    text = report_of(trained, tmp=tmp_path)
    report = parse_report(text)
    assert report.sections == [str(trained)]
    assert check_numbers(report) > 50  # history, confusion matrix, per-class accuracy ...
    figures = sorted((trained / "figures").glob("*.png"))
    assert len(figures) >= 2 and len(report.images) == len(figures)
    for src, path in zip(report.images, figures):
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data) == path.read_bytes()
    config = (trained / "config.yaml").read_text()
    assert "train classifier" in text and "train.lr" in text and "mlp" in config
    for lib in ("torch", "numpy", "scikit-learn"):  # library versions
        assert f"<th scope=\"row\">{lib}</th>" in text


def test_the_report_loads_nothing_from_elsewhere(trained, tmp_path):
    demo = demo_tree(tmp_path / "runs")
    text = report_of(trained, demo, tmp=tmp_path)
    report = parse_report(text)
    assert not report.tags & {"script", "link", "iframe", "object", "embed", "base", "form"}
    for tag, attr, url in report.urls:
        if tag == "img":
            assert url.startswith("data:image/"), url
        else:
            assert tag == "a" and attr == "href" and url.startswith("#"), (tag, attr, url)
    assert "url(" not in text and "@import" not in text
    assert "http:" not in text and "https:" not in text and "ftp:" not in text
    csp = [m["content"] for m in report.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [rh.CSP] and "default-src 'none'" in rh.CSP
    ids = set(re.findall(r' id="([^"]+)"', text))
    assert {u[1:] for _, _, u in report.urls if u.startswith("#")} <= ids  # links resolve


def test_sub_runs_are_reported_in_their_own_sections(tmp_path):
    demo = demo_tree(tmp_path / "runs")
    report = parse_report(report_of(demo, tmp=tmp_path))
    assert report.sections == [str(demo), str(demo / "attacks"), str(demo / "classifier"),
                               str(demo / "generative" / "vae")]
    check_numbers(report)
    assert len(report.images) == 3  # each sub-run's figure
    text = "".join(report.text)
    assert "advlab demo attacks" in text  # a part without a config.yaml: named after its run
    for i, part in enumerate(("attacks", "classifier", "generative/vae"), 1):
        assert f'<a href="#run-1-{i}">{part}</a>' in report_of(demo, tmp=tmp_path)


def test_eval_robust_attacks_are_one_row_each_and_checks_say_pass_or_fail(tmp_path):
    run = make_run(tmp_path / "ev", robust_config("runs/train"),
                   robust_metrics(0.59, 0.06, failed=("more-steps",)))
    text = report_of(run, tmp=tmp_path)
    check_numbers(parse_report(text))
    table = text[text.index("<caption>attacks</caption>"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr><th scope=\"row\">([^<]+)</th>", table)
    assert rows == ["apgd-ce", "apgd-t"]
    assert "<th>robust_accuracy</th>" in table and "<th>success_rate</th>" in table
    assert ">13%<" in table and ">6%<" in table  # accuracies as percentages, 4 digits
    assert "summary" not in table  # long text below the table, not in a cell
    # the checks: colour (class) and words
    assert re.search(r'<th scope="row">more-steps</th><td class="fail">✗ FAIL</td>', text)
    assert re.search(r'<th scope="row">gradients</th><td class="pass">✓ pass</td>', text)
    assert 'class="banner fail">✗ unreliable: failed more-steps' in text


def test_passing_checks_say_reliable(tmp_path):
    run = make_run(tmp_path / "ev", robust_config("r"), robust_metrics(0.9, 0.5))
    text = report_of(run, tmp=tmp_path)
    assert "✓ reliable: every soundness check passed" in text and "FAIL" not in text


def test_recipe_verdicts_show_the_source_beside_advlab(tmp_path):
    run = make_run(tmp_path / "recipe", {"command": "recipe"},
                   {**VERDICTS, "robust_accuracy": 0.8123456789})
    text = report_of(run, tmp=tmp_path)
    check_numbers(parse_report(text))
    table = text[text.index('<table class="verdicts">'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 4  # the head and one row per verdict
    robust = rows[2]
    assert ">89%<" in robust and ">81.23%<" in robust  # source beside advlab
    assert "−7.765 pp" in robust.replace("-", "−")  # the difference in percentage points
    assert 'class="fail">✗ outside tolerance' in robust and "fewer steps" in robust
    assert 'class="pass">✓ within tolerance' in rows[1]
    assert "not judged" in rows[3] and "about 0.1" in rows[3]
    assert "1 of 2 judged quantities within tolerance" in text
    assert "Madry et al. 2018, Table 2 &lt;adapted&gt;" in text


@pytest.mark.parametrize("bad, why", [
    ({"verdicts": "all fine"}, "expected verdicts to be a list"),
    ({"verdicts": [{"source": 1, "advlab": 1, "within": True}]}, "got no tolerance"),
    ({"verdicts": [{"source": 1, "advlab": 1, "tolerance": 0, "within": "yes"}]},
     "within to be true, false or null"),
    ({"verdicts": [{"source": [1], "advlab": 1, "tolerance": 0, "within": True}]},
     "source to be a number, a string or null"),
])
def test_verdicts_outside_the_schema_are_named_and_shown_as_metrics(tmp_path, bad, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        rh.check_verdicts(bad["verdicts"])
    run = make_run(tmp_path / "r", {"command": "recipe"}, {**bad, "n": 3})
    text = report_of(run, tmp=tmp_path)
    assert "do not follow the recipe verdict schema" in text and rh.esc(why) in text
    assert '<table class="verdicts">' not in text
    check_numbers(parse_report(text))  # its numbers are still all shown, exactly


def test_every_string_is_escaped(tmp_path):
    evil = "<script>alert('x')</script>&\""
    run = make_run(tmp_path / "e", {"command": evil, "model": evil, evil: 1},
                   {evil: evil, "nested": {evil: [evil, 1.5]}, "rows": [{evil: evil}],
                    "checks": [{"name": evil, "passed": False, "message": evil,
                                "values": {evil: 0.5}}]},
                   {"<img src=x>.png": png()})
    text = report_of(run, tmp=tmp_path)
    assert "<script" not in text and "<img src=x>" not in text and "alert('x')" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;" in text
    report = parse_report(text)
    assert "script" not in report.tags and len(report.images) == 1
    check_numbers(report)


@pytest.mark.parametrize("value, percent, shown", [
    (0.9777158498764038, True, "97.77%"), (1.0, True, "100%"), (0.0, True, "0%"),
    (0.0992274135351181, False, "0.09923"), (33.44009249100009, False, "33.44"),
    (359, False, "359"), (359, True, "359"), (1.5, True, "1.5"), (12345.678, False, "1.235e+04"),
    (-0.25, True, "-0.25"), (True, False, "true"),
])
def test_numbers_have_four_significant_digits_and_accuracies_are_percentages(value, percent,
                                                                            shown):
    assert rh.format_number(value, percent) == shown


@pytest.mark.parametrize("key, is_acc", [
    ("test_acc", True), ("clean_accuracy", True), ("robust_accuracy_after", True),
    ("accuracy", True), ("success_rate", True), ("per_class_acc", True),
    ("robust accuracy, PGD-40", True), ("lr", False), ("learning_rate", False),
    ("l2_median", False), ("macro_auc", False), ("accelerator", False),
    ("not_broken_within_eps", False),
])
def test_accuracy_keys(key, is_acc):
    assert rh.is_accuracy_key(key) is is_acc


def test_exact_values_round_trip_and_pointers_escape():
    for v in (0.1, 1 / 3, 1e-300, 2.5e17, 0.9777158498764038, 7, -0.0):
        assert float(rh.exact(v)) == v
    doc = {"a/b": {"~c": [1, {"d": 2.5}]}}
    ptr = rh.pointer(["a/b", "~c", 1, "d"])
    assert ptr == "/a~1b/~0c/1/d" and rh.resolve_pointer(doc, ptr) == 2.5


def test_a_broken_run_still_gets_a_report_saying_what_is_wrong(tmp_path):
    run = make_run(tmp_path / "broken", train_config(), None)
    (run / "metrics.json").write_text('{"test_acc": 0.9, "trunc')
    text = report_of(run, tmp=tmp_path)
    assert "metrics.json could not be read" in text and "train.lr" in text
    started = make_run(tmp_path / "started", train_config(), None)
    assert "no metrics.json: the run has not finished, or it failed" in report_of(
        started, tmp=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        rh.report_runs([tmp_path / "empty"], tmp_path / "x.html")


def test_write_reports_is_best_effort_and_returns_the_outer_reports(tmp_path):
    demo = demo_tree(tmp_path / "runs")
    other = make_run(tmp_path / "runs" / "train-x", train_config(), train_metrics())
    blocked = make_run(tmp_path / "runs" / "blocked", train_config(), train_metrics())
    (blocked / rh.REPORT).mkdir()  # a directory where the report should go: cannot write it
    warnings: list[str] = []
    top = rh.write_reports([demo, demo / "classifier", other, blocked], warn=warnings.append)
    assert top == [demo / rh.REPORT, other / rh.REPORT]
    for run in (demo, demo / "classifier", demo / "attacks", demo / "generative" / "vae"):
        assert (run / rh.REPORT).is_file()  # sub-runs too, also one not made by new_run_dir
    assert len(warnings) == 1 and str(blocked / rh.REPORT) in warnings[0]
    assert "results are not affected" in warnings[0]
    outer = parse_report((demo / rh.REPORT).read_text())
    assert len(outer.sections) == 4


def test_advlab_report_command(tmp_path):
    a = make_run(tmp_path / "a", train_config(), train_metrics(0.5))
    b = make_run(tmp_path / "b", robust_config(str(a)), robust_metrics(0.5, 0.25))
    res = runner.invoke(app, ["report", str(a), str(b), "-o", str(tmp_path / "both.html")])
    assert res.exit_code == 0, res.output
    assert f"report: {tmp_path / 'both.html'}" in " ".join(res.output.split())
    report = parse_report((tmp_path / "both.html").read_text())
    assert report.sections == [str(a), str(b)]
    check_numbers(report)
    res = runner.invoke(app, ["report", str(a)])  # one run: into the run directory
    assert res.exit_code == 0 and (a / "report.html").is_file()
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no run directory" in res.output


def test_a_command_ends_by_writing_its_report_and_a_failed_one_writes_none(trained, tmp_path):
    out = tmp_path / "ev"
    res = runner.invoke(app, ["eval", str(trained), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == f"report: {(out / 'report.html').absolute()}"
    report = parse_report((out / "report.html").read_text())
    assert report.sections == [str(out.absolute())] and check_numbers(report) > 10
    res = runner.invoke(app, ["eval", str(trained), "--out", str(tmp_path / "bad"),
                              "--split", "nonsense"])
    assert res.exit_code == 2 and "report:" not in res.output
    assert not (tmp_path / "bad" / "report.html").exists()


def test_collect_runs_sees_only_the_runs_made_inside_it(tmp_path):
    from advlab.runs import new_run_dir

    new_run_dir("x", tmp_path / "before")
    with rh.collect_runs() as outer:
        new_run_dir("x", tmp_path / "a")
        with rh.collect_runs() as inner:
            new_run_dir("x", tmp_path / "b")
        new_run_dir("x", tmp_path / "c")
    new_run_dir("x", tmp_path / "after")
    assert outer == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert inner == [tmp_path / "b"]


def test_checks_and_matrix_tables(tmp_path):
    run = make_run(tmp_path / "c", {"command": "attack"},
                   {"checks": checks(("unbounded",)), "reliable": False,
                    "confusion_matrix": [[1, 2], [3, 4]]})
    text = report_of(run, tmp=tmp_path)
    assert text.count('class="fail">✗ FAIL') == 1 and text.count('class="pass">✓ pass') == 2
    assert 'class="banner fail">✗ unreliable' in text
    assert '<table class="matrix">' in text
    check_numbers(parse_report(text))


def test_a_data_set_with_a_title_is_named_by_it_in_the_report(tmp_path):
    """Every result on the JPEG re-encoding of CIFAR-10 says so; other sets show no line."""
    jpeg = make_run(tmp_path / "a", {"command": "train classifier", "dataset": "cifar10-jpeg"},
                    {"dataset": "cifar10-jpeg", "test_acc": 0.7})
    plain = make_run(tmp_path / "b", {"command": "train classifier", "dataset": "digits"},
                     {"dataset": "digits", "test_acc": 0.9})
    assert "data set: CIFAR-10 (JPEG re-encoding)" in rh.render_report([rh.read_run(jpeg)])
    assert "data set:" not in rh.render_report([rh.read_run(plain)])
