# `make test` and `make bench` bootstrap .venv on first use: a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench bench-quick lint microbench tune-temporal clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[bench,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

microbench: $(STAMP)
	$(PY) -m bench.microbench

bench: $(STAMP)
	$(PY) -m bench run --matrix default

bench-quick: $(STAMP)
	$(PY) -m bench run --matrix quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

tune-temporal: $(STAMP)
	$(PY) -m baselines.temporal.tuning --sagas 300
