# `make serve`: set up and serve the shipped default model. `make test`: set up and run every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve lsp test system-deps wheel

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

# dist/code_assistant-*.whl: the C kernels compiled for three CPU levels and the default model inside
# (setup.py); setuptools from .venv, so no build environment is downloaded. build/ goes first: setuptools
# keeps what an older build left there, and it would ship in the wheel.
wheel: setup
	rm -rf build
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .

# Debian tools the tests drive for real: promtool (prometheus), neovim, nginx, dockerd (docker.io), debootstrap.
system-deps:
	bash scripts/install-system-deps.sh

# In a checkout the C kernels build at first use; building them here keeps that out of the tests' timeouts.
test: setup system-deps
	$(BIN)/python -m engine.kernels
	# llama.cpp, the GGUF tests' oracle (~8-10 minutes once per machine, then cached); without it they skip, saying why.
	PIP="$(BIN)/python -m pip" bash scripts/build-llama-cpp.sh || echo "llama.cpp was not built: the tests that need it skip"
	bash scripts/run-tests.sh
