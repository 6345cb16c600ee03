# The README's commands. `make run` to try tq, `make test` to test it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .tq

.PHONY: run test lint unit integration chaos clean

$(BIN)/tq-host: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/tq-host

# tq-host and 4 workers in the foreground, state under ./.tq; Ctrl-C stops them.
run: $(BIN)/tq-host
	BIN=$(BIN) scripts/run.sh $(RUN_DIR)

lint: $(BIN)/tq-host
	$(BIN)/ruff check daemons tests
	$(BIN)/mypy

unit: $(BIN)/tq-host
	$(BIN)/pytest -q tests/unit

integration: $(BIN)/tq-host
	$(BIN)/pytest -q tests/integration

test: lint $(BIN)/tq-host
	$(BIN)/pytest -q tests

# A long chaos run: kill -9, SIGSTOP and SIGTERM of host and workers while clients submit.
CHAOS_JOBS ?= 50000
CHAOS_FAULTS ?= 2000
chaos: $(BIN)/tq-host
	$(BIN)/python tests/reliability/chaos.py --jobs $(CHAOS_JOBS) --faults $(CHAOS_FAULTS)

clean:
	rm -rf $(VENV) $(RUN_DIR) build dist *.egg-info daemons/*.egg-info .pytest_cache .mypy_cache .ruff_cache
