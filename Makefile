# Quickstart: `make demo` (the CPU speedrun) and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU wheel: any other spec can pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install dev demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/llmos speedrun --preset cpu

test: dev
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
