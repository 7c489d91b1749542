# Two entry points for a fresh machine (see README.md):
#   make run   - set up .venv and run the demo on embedded defaults (broker, DynamoDB, ingest,
#                a simulated fleet, the dashboard at http://127.0.0.1:8080/)
#   make test  - set up .venv and the test services' binaries, then lint, type-check and test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TOOLS   = .tools

.PHONY: run test lint typecheck pytest deps test-deps bench-quick audit fuzz-api clean lock

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

deps: $(BIN)/.installed

# Binaries the tests start themselves: Mosquitto and Chromium (Debian packages), dynalite (npm),
# and the interop suite's brokers (docs/brokers.md): nats-server and ejabberd (Debian packages;
# the system services their packages may start are stopped and disabled: the tests start their
# own on free ports), Aedes (npm). amqtt is a Python dependency.
test-deps:
	@command -v openssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
	@command -v mosquitto >/dev/null 2>&1 || { \
	  echo "installing mosquitto (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the dashboard's browser test)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@test -x $(TOOLS)/node_modules/.bin/dynalite || { \
	  echo "installing dynalite (npm)"; \
	  npm install --silent --no-audit --no-fund --prefix $(TOOLS) dynalite@4.0.0 >/dev/null; }
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || { \
	  echo "installing nats-server (Debian package, for the interop tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server >/dev/null; \
	  ! command -v systemctl >/dev/null 2>&1 || $$SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true; }
	@ls /usr/lib/*/ejabberd-*/ebin/ejabberd.app >/dev/null 2>&1 || { \
	  echo "installing ejabberd (Debian package, for the interop tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq ejabberd >/dev/null; \
	  ! command -v systemctl >/dev/null 2>&1 || $$SUDO systemctl disable --now ejabberd >/dev/null 2>&1 || true; }
	@test -f $(TOOLS)/node_modules/aedes/aedes.js || { \
	  echo "installing aedes (npm, for the interop tests)"; \
	  npm install --silent --no-audit --no-fund --prefix $(TOOLS) aedes@1.2.0 >/dev/null; }

run: deps
	$(BIN)/iot-ingest demo

lint: deps
	$(BIN)/ruff check ingest simulator queries bench tests
	$(BIN)/ruff format --check ingest simulator queries bench tests
	$(BIN)/lint-imports --no-cache

typecheck: deps
	$(BIN)/mypy

pytest: deps test-deps
	$(BIN)/pytest

test: deps test-deps lint typecheck pytest

bench-quick: deps test-deps
	$(BIN)/iot-ingest bench --quick --output bench/results/quick

# Known vulnerabilities in the pinned dependencies (needs the PyPI JSON API).
audit: deps
	$(BIN)/pip-audit -r constraints.txt --strict

# Longer fuzzing of the query API than the test suite's bounded run.
fuzz-api: deps test-deps
	SCHEMATHESIS_MAX_EXAMPLES=200 $(BIN)/pytest tests/queries/test_schemathesis.py --timeout=1800

# Re-pin constraints.txt from the current venv (after changing dependencies).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
