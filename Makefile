# enclave: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup system-deps demo test bench lint clean

setup: $(VENV)/.setup-done

# torch first, pinned to the CPU build; axolotl's range admits it, so nothing heavier is pulled.
$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,train]'
	touch $@

demo: setup
	$(BIN)/python demo/run.py

# As root on Debian, the packages the tests drive for real are installed first (nothing when
# present); otherwise one line says what is missing and those tests skip with the reason.
system-deps:
	@bash devtools/system-deps.sh

test: setup system-deps
	$(BIN)/pytest -q

# The CPU benchmarks, each against its baseline in the same run (bench/README.md); the PII one
# (bench/pii.py, builds its own Presidio venv) and the GPU one (bench/qlora.py) run by hand.
bench: setup
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/install.py
	$(BIN)/python bench/aead.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
