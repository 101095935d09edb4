# Each target installs what it needs into .venv (created on first use), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-gpu lint clean

$(STAMP): pyproject.toml requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto

demo: $(STAMP)
	$(PY) -m spiketwin.demo

bench: $(STAMP)
	$(PY) -m bench $(BENCH)

bench-gpu: $(STAMP)
	$(PY) -m bench.gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info
