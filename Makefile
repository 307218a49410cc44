# Two entry points for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both bootstrap .venv themselves (idempotent) and make sure the system tools the tests and the
# demo run for real (mosquitto, socat) are present.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := mosquitto socat

.PHONY: demo test lint bench system-tools venv clean

demo: venv system-tools
	$(VENV)/bin/python -m simulators.demo $(if $(DURATION),--duration $(DURATION))

test: venv system-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv system-tools
	$(VENV)/bin/python -m bench.throughput

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { \
		echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# mosquitto_passwd ships with mosquitto; socat provides pseudo-terminal pairs for the RTU tests.
system-tools:
	@missing=""; for t in $(SYSTEM_TOOLS); do \
		command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
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
