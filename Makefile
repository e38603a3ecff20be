# `make serve`: set up and serve the shipped default model. `make test`: set up and run every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve lsp test system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/code-assistant serve

lsp: setup
	$(BIN)/code-assistant lsp

# Debian tools the tests drive for real: promtool (prometheus), neovim, nginx, dockerd (docker.io), debootstrap.
system-deps:
	bash scripts/install-system-deps.sh

# The C kernels build at first use; building them here keeps that out of the tests' timeouts.
test: setup system-deps
	$(BIN)/python -m engine.kernels
	bash scripts/build-llama-cpp.sh  # the GGUF tests' oracle (~8-10 minutes once per machine, then cached)
	bash scripts/run-tests.sh
