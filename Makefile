# Two commands on a fresh machine: `make test` and `make demo` (both set up .venv first).
PYTHON ?= python3
VENV ?= .venv
# PyTorch is installed first, on its own: plain pip takes it from PyPI, which on Linux is the CUDA build
# (a few GB with its NVIDIA libraries). For the CPU-only build, pass its wheel index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install -q -e ".[test,onnx]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check src tests benchmarks docs

demo: setup
	$(PY) -m i2preg.cli demo --out outputs/demo

bench: setup
	$(PY) benchmarks/synth_speed.py
	$(PY) benchmarks/model_speed.py

clean:
	rm -rf $(VENV) outputs
