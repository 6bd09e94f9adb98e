# `make test` and `make bench` bootstrap .venv (and the Restate server, with npm) on first use:
# a fresh clone needs nothing else than Python 3.11 and npm.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench bench-chain bench-quick lint microbench tune-temporal tune-restate tune-dbos clean

$(STAMP): pyproject.toml baselines/restate/package.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[bench,dev]'
	# The Restate server binary, pinned in package.json, into the project (never global).
	SCARF_ANALYTICS=false npm ci --prefix baselines/restate --no-audit --no-fund --loglevel=error
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

microbench: $(STAMP)
	$(PY) -m bench.microbench

# The reference run, about 75 minutes on 2 cores with five systems (85 with the chain): the headline (one saga at a time, three
# repetitions), three zones, the crash scenarios and the capacity sweep into one
# results/<run-id>/ that becomes results/latest and the README's headline (each step prints its
# estimate first; `python -m bench run $(BENCH_PLAN) --dry-run` lists the cells); then the paper's
# chain benchmark, into results/<run-id>-chain/.
BENCH_PLAN := --matrix sequential,three-zones,crashes,server-crashes --sweep capacity

bench: $(STAMP)
	$(PY) -m bench run $(BENCH_PLAN) --name reference --publish
	$(MAKE) bench-chain

bench-chain: $(STAMP)
	$(PY) -m bench.chain --publish

# A smoke run of every system and of the sweep, a few minutes; not published.
bench-quick: $(STAMP)
	$(PY) -m bench run --matrix quick --sweep quick --name quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# What each baseline's settings buy (baselines/*/README.md quote these).
tune-temporal: $(STAMP)
	$(PY) -m baselines.temporal.tuning --sagas 300

tune-restate: $(STAMP)
	$(PY) -m baselines.restate.tuning --sagas 200

tune-dbos: $(STAMP)
	$(PY) -m baselines.dbos.tuning --sagas 200

# The project's image (Dockerfile): FROM $(BASE) if given, else python:3.11-slim if it is here or
# can be pulled, else a Debian base built here with debootstrap (deploy/build-image.sh says which).
IMAGE ?= accompanist
BASE ?=
.PHONY: image
image:
	deploy/build-image.sh $(IMAGE) $(BASE)
