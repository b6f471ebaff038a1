# Two commands matter: `make demo` and `make test`. Everything they need is here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# chromium and chromium-driver: the status page's tests load it in a real headless browser.
DEB_PACKAGES := mosquitto mosquitto-clients socat pcscd libpcsclite-dev vsmartcard-vpcd gcc python3-dev python3-venv chromium chromium-driver
# The demo needs only Python and a broker: no test toolchain, no pcscd, no compiler.
DEMO_DEB_PACKAGES := mosquitto python3-venv
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
WHEELHOUSE ?= wheelhouse
EXTRAS ?=
CENTER_NODE := examples/center-node

.PHONY: test demo deps demo-deps venv demo-venv wheelhouse node lint typecheck pytest bench soak schemas clean

# Debian packages the tests and the demo need; skipped when already installed.
deps:
	@$(call apt_install,$(DEB_PACKAGES))
	@# The packaged mosquitto and pcscd services are not used: tests start their own.

demo-deps:
	@$(call apt_install,$(DEMO_DEB_PACKAGES))

define apt_install
	missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Everything: the tests' toolchain and PC/SC (pyscard builds with gcc). Covers the demo too.
$(STAMP): pyproject.toml | $(BIN)/pip
	$(BIN)/pip install -q -e '.[test,pcsc]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo: gatewayd and its runtime dependencies only.
$(DEMO_STAMP): pyproject.toml | $(BIN)/pip
	$(BIN)/pip install -q -e .
	touch $(DEMO_STAMP)

venv: deps $(STAMP)

# The Node.js center example (tests/test_node_center.py): Debian's nodejs and npm
# when there is no node, then the locked packages (npm's cache first: offline-safe).
$(CENTER_NODE)/node_modules/.installed: $(CENTER_NODE)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm; }
	cd $(CENTER_NODE) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	touch $@

node: $(CENTER_NODE)/node_modules/.installed

demo-venv: demo-deps $(DEMO_STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy --strict

pytest: venv node
	$(BIN)/pytest -q

test: venv node
	$(BIN)/ruff check .
	$(BIN)/mypy --strict
	$(BIN)/pytest -q

# The machine-readable contract, generated from the code's message types:
# docs/schemas/*.json and docs/asyncapi.yaml (a test fails when they differ).
schemas: venv
	$(BIN)/python -m gatewayd.tools.contract_docs

# The simulated building with the real daemon. Non-interactive form:
#   make demo ARGS="--duration 30"
demo: demo-venv
	$(BIN)/gatewayd demo $(ARGS)

# Wheels of gatewayd and every dependency, for a box without internet (README
# "Installing without internet"): make wheelhouse [EXTRAS=pcsc] [WHEELHOUSE=DIR].
# Build it on a machine of the box's architecture and Python version.
wheelhouse: | $(BIN)/pip
	rm -rf $(WHEELHOUSE)
	$(BIN)/pip wheel -q --wheel-dir $(WHEELHOUSE) '.$(if $(EXTRAS),[$(EXTRAS)])'
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE) | wc -l) wheels; on the box: pip install --no-index --find-links $(WHEELHOUSE) gatewayd"

# Benchmarks print figures; they assert nothing.
bench: venv
	$(BIN)/python bench/store.py
	$(BIN)/python bench/daemon_poll.py
	$(BIN)/python bench/tap.py
	$(BIN)/python bench/outbox.py
	$(BIN)/python bench/cards_load.py
	$(BIN)/python bench/dead_bus.py
	$(BIN)/python bench/store_restore.py

# Reliability campaigns, full length (the short versions run in make test).
soak: venv
	$(BIN)/python -m tests.soak $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache wheelhouse
