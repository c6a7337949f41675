# Quickstart: `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-quick lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,bench]"
	touch $@

demo: setup
	$(VENV)/bin/lungtumor demo

# One pytest worker per core (each single-threaded, see tests/conftest.py); idle workers steal queued tests
# (the suite ends with fewer long tests waiting on one worker: 99 s against 106 s here).
JOBS ?= 2

test: setup lint
	$(PY) -m pytest -q -n $(JOBS) --dist worksteal

# The suite without the end-to-end tests marked slow (a quick check while editing).
test-quick: setup lint
	$(PY) -m pytest -q -n $(JOBS) --dist worksteal -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) demo_run
