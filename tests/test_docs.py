"""The README's Python example runs as written (after a demo run in the working directory)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from advlab.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no Python example"
    clf = tmp_path / "runs" / "demo-20260101-000000" / "classifier"  # what `make demo` writes
    result = CliRunner().invoke(app, ["train", "classifier", "--dataset", "digits", "--model",
                                      "mlp", "--widths", "16", "--epochs", "1", "--out",
                                      str(clf), "--no-progress"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    result = namespace["result"]
    assert len(result) == 359 and float(result.linf.max()) <= 0.1 + 1e-6
    assert "tensor(" in capsys.readouterr().out
