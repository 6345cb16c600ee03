# The README's commands. `make run` to try tq, `make test` to test it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .tq

.PHONY: run test lint unit integration system deb chaos bench bench-gateway bench-amqp clean

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
	$(BIN)/ruff check daemons tests bench packaging
	$(BIN)/mypy

unit: $(BIN)/tq-host
	$(BIN)/pytest -q tests/unit

integration: $(BIN)/tq-host
	$(BIN)/pytest -q tests/integration

# Everything: lint, unit, integration, reliability and (as root, where systemd-nspawn works) the system
# tests, which boot Debian bookworm with the .deb installed. Without root they are skipped, loudly.
test: lint $(BIN)/tq-host
	if [ "$$(id -u)" = 0 ]; then $(MAKE) deb; fi
	$(BIN)/pytest -q tests

system: $(BIN)/tq-host deb
	TQ_REQUIRE_SYSTEM_TESTS=1 $(BIN)/pytest -q tests/system

# dist/tq_<version>_<arch>.deb (dpkg-buildpackage -us -uc -b; as root it installs the build dependencies)
deb:
	sh packaging/build-deb.sh

# Throughput, latency, footprint and the makespan of mixed-length jobs with the shipped config; PEERS=1 adds
# beanstalkd -b (binlog) side by side.
PEERS ?= 0
bench: $(BIN)/tq-host
	if [ "$(PEERS)" = 1 ]; then \
	    $(BIN)/pip install --quiet greenstalk; \
	    command -v beanstalkd >/dev/null || { apt-get install -y -qq beanstalkd && { systemctl disable --now beanstalkd 2>/dev/null || service beanstalkd stop 2>/dev/null || true; }; }; \
	fi
	$(BIN)/python bench/bench.py $(if $(filter 1,$(PEERS)),--peers)

# tq-gateway's figures: drain with and without 200 SSE followers and a /metrics scrape a second (paired), the
# gateway's CPU per event and per scrape, /metrics through it beside tqctl metrics; MILLION=1 adds its RSS across
# 1,000,000 jobs. tq-host's instructions per job with the same observers: bench/instructions.py --shape gateway.
MILLION ?= 0
bench-gateway: $(BIN)/tq-host
	$(BIN)/python bench/gateway.py $(if $(filter 1,$(MILLION)),--million)

# Across machines (issue 28): tq-host here, worker "machines" as network namespaces with 4 remote workers each,
# a RabbitMQ of its own: 10 ms and 100 ms jobs on 1, 2, 3 machines, no-op jobs beside Celery (python3-celery),
# the transport's confirmed sends/s. Needs root and rabbitmq-server; not part of `make test`. docs/scaling.md.
bench-amqp: $(BIN)/tq-host
	$(BIN)/python bench/amqp.py

# A long chaos run: kill -9, SIGSTOP and SIGTERM of host and workers while clients submit.
CHAOS_JOBS ?= 50000
CHAOS_FAULTS ?= 2000
chaos: $(BIN)/tq-host
	$(BIN)/python tests/reliability/chaos.py --jobs $(CHAOS_JOBS) --faults $(CHAOS_FAULTS)

# First make run's queues (charged to you until removed; named after RUN_DIR's path): not while it runs.
clean:
	BIN=$(BIN) scripts/clean.sh $(RUN_DIR)
	rm -rf $(VENV) $(RUN_DIR) build dist *.egg-info daemons/*.egg-info .pytest_cache .mypy_cache .ruff_cache
