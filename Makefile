# Two commands do all set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv broker-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Mosquitto is the reference broker for the integration tests (Debian packages: mosquitto brings
# the broker and mosquitto_passwd, mosquitto-clients brings mosquitto_pub/mosquitto_sub, which
# the docs' commands use and the tests run). openssl makes the certificates docs/broker.md shows.
BROKER_TOOLS := mosquitto mosquitto_passwd mosquitto_pub mosquitto_sub openssl
broker-deps:
	@missing=""; for t in $(BROKER_TOOLS); do \
	  command -v $$t >/dev/null || test -x /usr/sbin/$$t || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "missing:$$missing: install the Debian packages mosquitto mosquitto-clients openssl"; exit 1; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq mosquitto mosquitto-clients openssl >/dev/null || exit 1; \
	fi

demo: venv
	$(BIN)/aedsim demo

# The suite mostly waits (brokers, watchdogs, virtual devices booting: about 5 CPU minutes in 19
# wall-clock minutes on one worker), so four pytest-xdist workers share the two cores well;
# worksteal keeps the long tests from queueing behind each other. `make test PYTEST_JOBS=` runs
# it in one process.
PYTEST_JOBS ?= -n 4 --dist worksteal
test: venv broker-deps
	$(BIN)/python -m pytest $(PYTEST_JOBS) $(PYTEST_ARGS)

# Benchmarks print figures and write JSON to bench-results/ (not part of `make test`).
bench: venv broker-deps
	mkdir -p bench-results
	$(BIN)/micropython tests/firmware/bench_token.py | tee bench-results/token.txt
	$(BIN)/micropython -X heapsize=8M tests/firmware/bench_refusals.py firmware bench-results/refusals.json
	$(BIN)/python -m simulator.bench.latency --json bench-results/latency.json
	$(BIN)/python -m simulator.bench.flash_cost --json bench-results/flash.json
	$(BIN)/python -m simulator.bench.mqtt_client --json bench-results/mqtt-client.json
	$(BIN)/aedsim bench --cabinets 2000 --workers 2 --shards 2 --json bench-results/fleet.json
	$(BIN)/aedsim soak --cabinets 1000 --hours 24 --json bench-results/soak.json

clean:
	rm -rf $(VENV) build *.egg-info
