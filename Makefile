# DeSTA2.5-Audio, minimal. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the CPU build of torch on this kind of machine; on a GPU machine pip picks the CUDA build of the same version
TORCH  ?= torch==2.13.0

.PHONY: setup setup-test test clean

$(VENV)/.runtime: requirements.txt requirements-tiny.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-tiny.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

setup: $(VENV)/.runtime        ## runtime + tiny-preset dependencies
setup-test: $(VENV)/.test      ## + test oracles (transformers, ...)

test: setup-test               ## the test suite (what CI runs)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
