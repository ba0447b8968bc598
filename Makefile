# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each creates or reuses .venv and installs what it needs; PyTorch is pinned to a CPU build
# here so that a bare `torch` requirement cannot pull several GB of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.memrnn-installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint bench docs docs-serve install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,all]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m memrnn.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks experiments
	$(PY) -m ruff format --check src tests benchmarks experiments

bench: $(STAMP)
	$(PY) -m benchmarks.scan

# The documentation site, into site/: open site/index.html from disk (search and fonts work
# without a network), or serve it with `make docs-serve` (DOCS_PORT, default 8000).
DOCS_PORT ?= 8000
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
