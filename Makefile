# segserve developer entry points; CI calls `make test` (see .ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.DEFAULT_GOAL := help

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev,mmseg,paddle]'
	$(PIP_INSTALL) --no-deps paddleseg==2.8.0  # see the paddle extra in pyproject.toml
	@touch $(STAMP)

install: $(STAMP) ## Create/refresh .venv (torch pinned to the CPU-sized 2.13.0 by constraints.txt)

serve: $(STAMP) ## Start the service: HTTP :8000, gRPC :9000 (serve run serve_config.yaml)
	$(BIN)/serve run serve_config.yaml

# Each .proto and its stubs beside it (protoc -I . keeps the package path, so a _grpc stub
# imports its messages as deployments.protocols[.oip]...).
PROTO := deployments/protocols/segserve.proto
OIP_PROTO := deployments/protocols/oip/open_inference_grpc.proto
PROTOS := $(PROTO) $(OIP_PROTO)
STUBS := $(foreach p,$(PROTOS),$(foreach s,_pb2.py _pb2.pyi _pb2_grpc.py,$(basename $(p))$(s)))
PROTOC := $(BIN)/python -m grpc_tools.protoc -I .

proto: $(STAMP) ## Regenerate the gRPC stubs (with .pyi) from the .proto files
	$(PROTOC) --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

proto-check: $(STAMP) ## Fail when the checked-in gRPC stubs are stale
	@tmp=$$(mktemp -d) && $(PROTOC) --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) \
	  && for f in $(STUBS); do \
	       cmp -s $$tmp/$$f $$f || { echo "$$f is stale: run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	     done; rm -rf $$tmp

# The real v2 clients (tritonclient, kserve) pin protobuf < 7 and clash with segserve's stubs,
# so they live in their own venv; tests run tests/oip_clients/*.py with it as subprocesses.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed

$(CLIENTS_STAMP): tests/oip_clients/requirements.txt
	@test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/oip_clients/requirements.txt
	@touch $(CLIENTS_STAMP)

clients-venv: $(CLIENTS_STAMP) ## Create .venv-clients with tritonclient and kserve (OIP client tests)

lint: $(STAMP) proto-check ## ruff (lint + format check), mypy, stale-stub check
	$(BIN)/ruff check deployments clients tests benchmarks
	$(BIN)/ruff format --check deployments clients tests benchmarks
	$(BIN)/mypy deployments clients tests benchmarks

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix deployments clients tests benchmarks
	$(BIN)/ruff format deployments clients tests benchmarks

# The try-it page's browser test drives Debian's Chromium (a browser's own download step
# does not work offline); without root or apt-get the test skips and says why.
browser: ## Install Debian's chromium + chromium-driver when missing (root with apt-get)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
	  echo "browser: /usr/bin/chromium and /usr/bin/chromedriver are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver; } \
	  || echo "browser: apt-get could not install chromium: tests/e2e/test_browser.py will skip"; \
	else \
	  echo "browser: no /usr/bin/chromium and not root with apt-get: tests/e2e/test_browser.py will skip"; \
	fi

screenshots: $(STAMP) browser ## Rewrite docs/try-it.png (the README's) from the browser test
	SEGSERVE_UPDATE_SCREENSHOTS=1 $(BIN)/pytest tests/e2e/test_browser.py -q

test: lint browser ## Lint, then the whole test suite (unit, integration, e2e)
	$(MAKE) clients-venv || echo "no .venv-clients (no package index?): the real-client v2 tests will skip"
	$(BIN)/pytest tests

bench: $(STAMP) ## Benchmarks (JSON on stdout): overhead, photos, transports
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.photos
	$(BIN)/python -m benchmarks.photos --model paddleseg-ppliteseg-t-cityscapes
	$(BIN)/python -m benchmarks.transports

clean: ## Remove the virtual environments and caches
	rm -rf $(VENV) $(CLIENTS_VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install clients-venv serve proto proto-check lint format browser screenshots test bench \
	clean
