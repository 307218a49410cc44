# Two entry points for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both bootstrap .venv themselves (idempotent) and make sure the system tools the tests and the
# demo run for real (mosquitto, socat, postgresql) are present.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed
# sqlite3: the shell the tamper tests of `carbon-gateway verify` edit stores with (issue 11)
SYSTEM_TOOLS := mosquitto socat sqlite3

.PHONY: demo test lint bench bench-throughput sparkplug-proto system-tools venv clean

demo: venv system-tools
	$(VENV)/bin/python -m simulators.demo $(if $(DURATION),--duration $(DURATION)) $(if $(OUTPUT),--output $(OUTPUT)) \
		$(if $(TIME_SCALE),--time-scale $(TIME_SCALE))

test: venv system-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

# A short version of every plant benchmark (issue 8; docs/benchmarks.md): a soak across two period closes,
# the overload ramp and a backlog drain at 100 meters, bytes per reading, start-up with 500 meters, and the
# side-by-side comparison with ThingsBoard when the shared harness is there (PEER_BENCH, BENCH_TMP).
# The full-size runs are in docs/benchmarks.md. A few minutes in all.
PEER_BENCH ?= /work/shared/peer-bench
bench: venv system-tools
	$(VENV)/bin/python -m bench.plant short
	$(VENV)/bin/python -m bench.footprint --readings 50000
	$(VENV)/bin/python -m bench.startup --meters 500 --runs 1
	@if [ -f "$(PEER_BENCH)/bench.py" ]; then \
		tmp=$${BENCH_TMP:-$$(mktemp -d)}; \
		echo "side by side with ThingsBoard (100 meters, 20 s windows) in $$tmp"; \
		BENCH_TMP=$$tmp PEER_BENCH=$(PEER_BENCH) WARMUP=15 MEASURE=20 bench/peer/run_peer.sh tb 100 1 && \
		BENCH_TMP=$$tmp PEER_BENCH=$(PEER_BENCH) WARMUP=15 MEASURE=20 bench/peer/run_peer.sh cg 100 1 && \
		$(VENV)/bin/python bench/peer/summary.py $$tmp/results.jsonl; \
	else echo "side by side with ThingsBoard skipped: no harness at PEER_BENCH=$(PEER_BENCH)"; fi

bench-throughput: venv system-tools
	$(VENV)/bin/python -m bench.throughput

# Regenerate the committed Sparkplug B bindings from gateway/sparkplug/sparkplug_b.proto (issue 12). Only
# needed when the .proto changes; the gateway itself needs just the protobuf runtime. The protoc in
# grpcio-tools must match the protobuf major in pyproject.toml.
sparkplug-proto: venv
	$(VENV)/bin/python -m pip install --quiet "grpcio-tools>=1.85,<1.86"
	$(VENV)/bin/python -m grpc_tools.protoc --proto_path=gateway/sparkplug --python_out=gateway/sparkplug \
		gateway/sparkplug/sparkplug_b.proto

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { \
		echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# mosquitto_passwd ships with mosquitto; socat provides pseudo-terminal pairs for the RTU tests; postgresql's
# server binaries (initdb, postgres under /usr/lib/postgresql/*/bin) run the consumer tests' private database
# (issue 12; simulators/postgres.py), never the machine's own cluster.
system-tools:
	@missing=""; for t in $(SYSTEM_TOOLS); do \
		command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing:$$missing -- install with: sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
