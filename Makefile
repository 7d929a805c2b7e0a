# Quickstart: `make demo` (the CPU speedrun) and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU wheel: any other spec can pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install dev system-deps demo test bench clean

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

# Programs some tests drive, as FILE:DEBIAN-PACKAGE (the browser test: chromium through chromedriver;
# the python tool's sandbox: bubblewrap; the LLM OS peripherals: espeak-ng speaks, tesseract reads images).
SYSTEM_DEPS := /usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver /usr/bin/bwrap:bubblewrap \
	/usr/bin/espeak-ng:espeak-ng /usr/bin/tesseract:tesseract-ocr

# Installs the missing ones where it can (root with apt-get). Elsewhere, or when apt fails, it says
# what is missing and lets the tests run: those that need a program skip, naming it, or fail under
# CI=true. `apt-get update` runs only when the install fails, since it is slow and needs the network.
system-deps:
	@missing=""; \
	for dep in $(SYSTEM_DEPS); do [ -e "$${dep%%:*}" ] || missing="$$missing $${dep#*:}"; done; \
	[ -n "$$missing" ] || exit 0; \
	install="apt-get install -y -q --no-install-recommends$$missing"; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "system-deps: missing Debian packages:$$missing (as root: $$install)"; exit 0; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$install || { apt-get update -q && $$install; } \
		|| echo "system-deps: could not install$$missing; the tests that need them will skip (fail under CI=true)"

demo: install
	$(BIN)/llmos speedrun --preset cpu

test: dev system-deps
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
