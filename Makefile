# DeSTA2.5-Audio, minimal. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the CPU build of torch on this kind of machine; on a GPU machine pip picks the CUDA build of the same version
TORCH  ?= torch==2.13.0

PRESET ?= tiny
NPROC  ?= 1
ifeq ($(PRESET),tiny)
DATA    ?= data_tiny
LLM     ?= HuggingFaceTB/SmolLM2-135M-Instruct
# one prompt per clip (>2,000 rows), short answers: what 2 CPU cores can write in minutes
SELFGEN ?= --k 1 --max-new-tokens 72 --batch-size 32
VALGEN  ?= --limit 160
CORPUS  ?=
else
DATA    ?= data
LLM     ?= DeSTA-ntu/Llama-3.1-8B-Instruct
SELFGEN ?= --k 4 --balance --batch-size 64 --dtype bf16
RECIPES ?= esc50 librispeech-train-clean-100 librispeech-dev-clean speech-commands crema-d vctk nsynth-test clotho
endif
SELFGEN_RUN = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC)) generate.py selfgen

.PHONY: setup setup-test test data bench bench-gpu clean

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

data: setup                    ## weights -> corpus -> seed manifest -> self-generated training manifests
	$(PY) data.py weights --preset $(PRESET)
ifeq ($(PRESET),tiny)
	$(PY) data.py corpus --root $(DATA) $(CORPUS)
else
	for r in $(RECIPES); do $(PY) data.py recipe $$r --root $(DATA) || exit 1; done
	$(PY) data.py seeds --root $(DATA)
endif
	$(SELFGEN_RUN) --seeds $(DATA)/seed_manifest.jsonl --llm $(LLM) --split train --out $(DATA)/train.jsonl $(SELFGEN)
	$(SELFGEN_RUN) --seeds $(DATA)/seed_manifest.jsonl --llm $(LLM) --split validation --out $(DATA)/validation.jsonl $(SELFGEN) $(VALGEN)
	$(PY) data.py summary $(DATA)/seed_manifest.jsonl $(DATA)/train.jsonl $(DATA)/validation.jsonl

bench: setup-test              ## speed table on this machine (bench/results.md)
	$(PY) data.py weights --preset tiny
	$(PY) bench/bench.py

bench-gpu:                     ## on a lent GPU machine (its python3 has CUDA torch): 8B-shaped random weights
	python3 bench/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
