# advlab: `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch requirement used for the local environment. On this lab's machines the CPU wheel of
# torch 2.13.0 lies on disk; elsewhere override it, e.g. `make demo TORCH_SPEC='torch>=2.3'`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.advlab-installed

.PHONY: demo test test-fast bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,oracles]"
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/advlab demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m bench.run

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build src/*.egg-info
