"""Issue 16, item 16: ``pip install -e .`` without setuptools' deprecation warning about the
``project.license`` table: the SPDX string form, with a setuptools that understands it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_the_license_is_an_spdx_string_and_setuptools_supports_it():
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert config["project"]["license"] == "MIT"
    assert "setuptools>=77" in config["build-system"]["requires"]
    classifiers = config["project"].get("classifiers", [])
    assert not any(c.startswith("License ::") for c in classifiers)  # refused with SPDX


def test_setuptools_reads_the_project_table_without_a_deprecation_warning():
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), PYPROJECT)
    messages = [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert messages == []
