# Each target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir

.PHONY: run test test-slow bench docs lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job: FDS on MNIST-1D generated larger (locally, no download), about a minute.
run: $(VENV)/.installed
	$(PY) -m launch.fds

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	$(PY) -m benchmarks.forward_cost

# Lint: ruff, configured in pyproject.toml for 2-space Google style.
lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache docs/_build docs/notebooks

# The documentation site, offline, warnings as errors.
docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -b html -q docs docs/_build/html
