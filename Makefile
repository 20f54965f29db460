# HXPE compendium: the only entry point. `make demo` and `make test` set up .venv on first use.
#   make demo                 the whole pipeline on the embedded demo profile (CPU, minutes)
#   make demo-backbones       retrain the demo's small CLIP and DINOv2 (committed; not part of make demo)
#   make test                 lint (ruff, mypy) + unit tests + the six notebooks as tests + nbval + the book in Chromium
#   make book                 static HTML book of results/PROFILE -> build/book/PROFILE/
#   make reproduce            the paper profile (runs `make doctor` first; A100-class GPU)
#   make <stage> PROFILE=p    one stage: data describe extract train evaluate figures
#   make app                  a local web page to score and explain your own images (127.0.0.1:7860)
# PROFILE=<name> picks notebooks/params/<name>.yaml; outputs go to results/<name>/.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PROFILE ?= demo
# PROFILE names one folder (results/PROFILE, build/book/PROFILE, which clean and book replace): one
# word of letters, digits, '.', '_' and '-', not '.' or '..'. Checked before any target runs.
PROFILE_CHARS := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P \
                 Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9 . _ -
without_chars = $(if $(2),$(call without_chars,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,99,$(2))),$(1))
comma := ,
PROFILE_PROBLEM := $(or \
  $(if $(strip $(PROFILE)),,is empty: name a profile (notebooks/params/<name>.yaml)$(comma) e.g. PROFILE=demo), \
  $(if $(word 2,$(PROFILE)),holds several words: name one profile), \
  $(if $(or $(findstring /,$(PROFILE)),$(findstring \,$(PROFILE))),holds a path separator: name a profile$(comma) not a path), \
  $(if $(or $(findstring ..,$(PROFILE)),$(filter .,$(PROFILE))),is '.' or holds '..': name a profile$(comma) not a path), \
  $(if $(call without_chars,$(PROFILE),$(PROFILE_CHARS)),holds other characters than letters$(comma) digits$(comma) '.'$(comma) '_' and '-'))
ifneq ($(PROFILE_PROBLEM),)
$(error PROFILE='$(PROFILE)' $(PROFILE_PROBLEM); nothing was run)
endif
PARAMS  := notebooks/params/$(PROFILE).yaml
# HXPE_RESULTS_ROOT moves every profile's results (make nbtest runs the demo into build/nbval).
OUT     := $(or $(HXPE_RESULTS_ROOT),results)/$(PROFILE)
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
KERNEL  ?= hxpe
STAMP   := $(VENV)/.installed
GPU_VENV  := .venv-vllm
GPU_STAMP := $(GPU_VENV)/.installed
# The agent stages run in the vLLM venv's kernel once `make gpu-env` has finished successfully (its
# stamp), never on a half-built .venv-vllm.
AGENT_KERNEL ?= $(if $(wildcard $(GPU_STAMP)),hxpe-vllm,$(KERNEL))
BOOK_STAMP := $(VENV)/.installed-book
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONHASHSEED := 0

NB := notebooks
PKG_COMMON := hxpe/config.py hxpe/pipeline.py hxpe/paths.py hxpe/results_layout.py hxpe/seeding.py
STAGE_RUN = $(PY) -m hxpe.cli stage $(1) --params $(PARAMS) --kernel $(2)

.PHONY: help demo all reproduce reproduce-dryrun test lint unit nbtest booktest book data describe \
        extract train evaluate protocol figures doctor fetch-models demo-backbones lab clean venv lock gpu-env gpu-smoke \
        verify bench format mutation nbval

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n",$$1,$$2}'

# ---------------------------------------------------------------- environment
# pip installs uv (its version pinned in constraints.txt), and uv installs the rest from the same
# constraints: it downloads and unpacks in parallel (fresh caches, this 2-core machine: 51 s for
# everything make test needs, against 292 s for pip). --compile-bytecode: uv, unlike pip, leaves the
# .pyc files to the first import, which then costs every later step (the first fresh-clone make test
# spent 222 s in the unit tests against 150 s in a warm venv).
UV_INSTALL = $(PY) -m uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt
$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it, or pass PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt uv
	$(UV_INSTALL) -e '.[notebooks,test,app]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (hxpe)" >/dev/null
	touch $@

venv: $(STAMP)  ## Create .venv from the pinned constraints and register the Jupyter kernel

# The book and its browser test (Sphinx, myst-nb, Playwright): only make book and make test need them.
$(BOOK_STAMP): $(STAMP)
	$(UV_INSTALL) -e '.[notebooks,test,app,book]'
	touch $@

# ---- locks and the vLLM environment (make lock, make gpu-env, make gpu-smoke) ----
lock: | $(STAMP)  ## Re-resolve constraints.txt and constraints-gpu.txt with uv (PyPI metadata only; UPGRADE=1 lifts pins)
	$(PY) -m hxpe.environment.lock $(if $(UPGRADE),--upgrade)

gpu-env: $(GPU_STAMP)  ## Build .venv-vllm from constraints-gpu.txt and register its hxpe-vllm kernel in .venv

$(GPU_STAMP): pyproject.toml constraints-gpu.txt | $(STAMP)
	@rm -f $@
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -c constraints-gpu.txt -e '.[gpu,notebooks]'
	$(GPU_VENV)/bin/python -c 'import vllm, ipykernel; print("vLLM", vllm.__version__)'
	$(PY) -m hxpe.environment.kernels --name hxpe-vllm --display-name "Python (hxpe, vLLM)" \
	  --python $(GPU_VENV)/bin/python --prefix $(VENV)
	touch $@

gpu-smoke: | $(STAMP)  ## Five-minute GPU check: vLLM stages 02-03 on tiny models, paper-size bf16 inference + a train step
	@test -f $(GPU_STAMP) || { echo "gpu-smoke: FAIL: no vLLM environment ($(GPU_STAMP) missing): run \`make gpu-env\` on a CUDA machine first"; exit 1; }
	$(GPU_VENV)/bin/python -m hxpe.gpu_smoke $(SMOKE_ARGS)
# ---- end of locks and the vLLM environment ----

# ---------------------------------------------------------------- pipeline
demo:  ## Run all six stages on the demo profile
	$(MAKE) all PROFILE=demo

all: $(OUT)/06_explainability_figures.ipynb  ## Run all six stages for PROFILE
	@echo "Done: executed notebooks and artifacts in $(OUT)/"

data: $(OUT)/01_data_prep.ipynb  ## Stage 01: build the dataset indexes
describe: $(OUT)/02_vlm_descriptions.ipynb  ## Stage 02: VLM descriptions
extract: $(OUT)/03_llm_extraction.ipynb  ## Stage 03: LLM extraction and verdicts
train: $(OUT)/04_training.ipynb  ## Stage 04: train the prompts
evaluate: $(OUT)/05_evaluation.ipynb  ## Stage 05: maps, metrics, tables
figures: $(OUT)/06_explainability_figures.ipynb  ## Stage 06: figures from stored artifacts

$(OUT)/01_data_prep.ipynb: $(NB)/01_data_prep.ipynb $(PARAMS) $(wildcard hxpe/data/*.py hxpe/data/*.yaml) $(PKG_COMMON) | $(STAMP)
	$(call STAGE_RUN,data,$(KERNEL))

$(OUT)/02_vlm_descriptions.ipynb: $(NB)/02_vlm_descriptions.ipynb $(OUT)/01_data_prep.ipynb $(wildcard hxpe/agent/*.py hxpe/agent/templates/*) | $(STAMP)
	$(call STAGE_RUN,describe,$(AGENT_KERNEL))

$(OUT)/03_llm_extraction.ipynb: $(NB)/03_llm_extraction.ipynb $(OUT)/02_vlm_descriptions.ipynb $(wildcard hxpe/agent/*.py hxpe/agent/templates/*) | $(STAMP)
	$(call STAGE_RUN,extract,$(AGENT_KERNEL))

# Training reads every model file but the evaluation-only inference path (hxpe/model/inference.py);
# notebooks 04 and 05 check and render their equations with hxpe/equations.py.
$(OUT)/04_training.ipynb: $(NB)/04_training.ipynb $(OUT)/03_llm_extraction.ipynb $(filter-out hxpe/model/inference.py,$(wildcard hxpe/model/*.py hxpe/model/*/*)) hxpe/train.py hxpe/equations.py | $(STAMP)
	$(call STAGE_RUN,train,$(KERNEL))

$(OUT)/05_evaluation.ipynb: $(NB)/05_evaluation.ipynb $(OUT)/04_training.ipynb $(wildcard hxpe/evaluation/*.py hxpe/evaluation/published/*) hxpe/model/inference.py hxpe/equations.py | $(STAMP)
	$(call STAGE_RUN,evaluate,$(KERNEL))

$(OUT)/06_explainability_figures.ipynb: $(NB)/06_explainability_figures.ipynb $(OUT)/05_evaluation.ipynb $(wildcard hxpe/figures/*.py) hxpe/explorer.py hxpe/predict.py | $(STAMP)
	$(call STAGE_RUN,figures,$(KERNEL))

protocol: | $(STAMP)  ## Stage 05 as a command, sharded: DATASETS="visa mpdd" (one shard per GPU), then MERGE=1
	$(PY) -m hxpe.cli evaluate --params $(PARAMS) $(foreach d,$(DATASETS),--dataset $(d)) $(if $(MERGE),--merge)

# The demo's small CLIP and DINOv2, retrained from their seed on generated scenes (two CPU threads;
# minutes, see hxpe/model/weights/demo/README.md). make demo and make test use the committed files.
DEMO_WEIGHTS := hxpe/model/weights/demo
demo-backbones: | $(STAMP)  ## Retrain the demo backbones into hxpe/model/weights/demo (CHECK=1: into build/, then compare)
	$(if $(CHECK),$(PY) -m hxpe.backbones --out build/demo-backbones --compare $(DEMO_WEIGHTS),$(PY) -m hxpe.backbones --out $(DEMO_WEIGHTS))

reproduce:  ## The paper profile: make doctor, then all stages (A100-class GPU, weights, datasets)
	$(MAKE) doctor PROFILE=paper
	$(MAKE) all PROFILE=paper AGENT_KERNEL=hxpe-vllm

reproduce-dryrun: | $(STAMP)  ## The paper path on CPU: real-size random-weight models, raw-layout fixtures of the 7 datasets, tiny agent LLMs
	$(PY) -m hxpe.dryrun --out build/dryrun
	$(MAKE) all PROFILE=dryrun
	$(MAKE) verify PROFILE=dryrun

doctor: | $(STAMP)  ## Say what is missing for PROFILE (GPU, vLLM, C compiler and Python.h, weights, datasets) and how to get it
	$(PY) -m hxpe.cli doctor --params $(PARAMS)

# The paper profile's weights unless PROFILE=... is given on the command line, or MODELS="clip llm".
FETCH_PARAMS = $(if $(filter command line,$(origin PROFILE)),$(PARAMS),notebooks/params/paper.yaml)
fetch-models: | $(STAMP)  ## Download the weights the paper profile loads (or PROFILE=p, e.g. demo-pretrained; or MODELS="clip llm"); needs internet
	HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 $(PY) -m hxpe.cli fetch-models --params $(FETCH_PARAMS) $(MODELS)

verify: | $(STAMP)  ## Recompute artifact hashes against results/PROFILE/provenance.json
	$(PY) -m hxpe.cli verify --params $(PARAMS)

# ---- app (issue 16)
.PHONY: app
APP_ARGS ?=
app: | $(STAMP)  ## Web page for your own images: upload, map, DINOv2 prompt, explanation (APP_ARGS="--port 8000")
	$(PY) -m hxpe.cli app --params $(PARAMS) $(APP_ARGS)
# ---- end app

book: | $(BOOK_STAMP)  ## Static HTML book of the executed PROFILE (README, method, notebooks, ledger) -> build/book/PROFILE/
	$(PY) -m hxpe.book --results $(OUT) --out build/book/$(PROFILE) --profile $(PROFILE)

# As root (containers commonly run so) JupyterLab needs --allow-root. Run a notebook by hand without
# touching results/PROFILE: copy it and point the kernel at the copy,
#   cp -r results/demo build/scratch/ && HXPE_RESULTS_ROOT=$PWD/build/scratch make lab
lab: | $(STAMP)  ## JupyterLab on the venv kernel (HXPE_RESULTS_ROOT=dir: results elsewhere)
	$(VENV)/bin/jupyter lab --notebook-dir=$(NB) $(if $(filter 0,$(shell id -u)),--allow-root)

clean:  ## Remove results/PROFILE and build outputs (keeps .venv)
	rm -rf $(OUT) build

bench: | $(STAMP)  ## Speed and memory: fast vs naive inference, train step, phrase cost, AUPRO -> results/bench/<host>.{json,md}
	$(PY) -m hxpe.bench $(BENCH_ARGS)

# ---------------------------------------------------------------- tests
# mypy checks the modules listed in pyproject.toml's [tool.mypy] `files`, strict; its cache is
# build/mypy (a fresh clone's first run also analyses torch and transformers: ~50 s of CPU; then ~2 s).
lint: | $(STAMP)  ## ruff (lint and format check) and mypy --strict on the modules [tool.mypy] lists
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# TEST_JOBS: pytest-xdist workers for the unit tests (test files stay whole on one worker, so module
# fixtures are built once); TEST_JOBS=0 runs them in this process. One torch/OpenMP thread per worker:
# the tiny models gain nothing from more, and two workers of two spinning threads each on two cores
# were slower than one process (measured: 203 s, against 235 s serial and 148 s with one thread).
TEST_JOBS ?= 2
unit: | $(BOOK_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -m "not slow and not browser and not executed and not demo_results" -q \
		-n $(TEST_JOBS) --dist loadfile tests hxpe

# The six notebooks as tests: the demo profile executed stage by stage (papermill, the same runner as
# make demo; a failing cell fails the target) into build/nbval/demo/, whose executed notebooks the
# book test then renders; then the demo's accuracy floors and switches on that run
# (tests/test_demo_accuracy.py).
nbtest: | $(STAMP)
	rm -rf build/nbval
	HXPE_RESULTS_ROOT=build/nbval $(MAKE) all PROFILE=demo
	HXPE_DEMO_RESULTS=build/nbval/demo OMP_NUM_THREADS=1 $(PY) -m pytest -q -m demo_results \
		-p no:cacheprovider tests/test_demo_accuracy.py

# nbval: the demo notebooks' outputs are reproducible. Two notebooks of that run are executed again
# in fresh kernels against the same results, and every text output (prints, tables, DataFrames,
# the equation checks' lines) must equal the stored one; tests/nbval_sanitize.cfg masks what may
# differ (durations, absolute paths, hashes). nbval compares no images. 03 redoes the agent's stage B
# from its cache and the verdict tables; 05 recomputes every metric and table from the stored maps.
NBVAL_NOTEBOOKS ?= 03_llm_extraction 05_evaluation
nbval: | $(STAMP)
	HXPE_RESULTS_ROOT=$(CURDIR)/build/nbval OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		$(foreach n,$(NBVAL_NOTEBOOKS),build/nbval/demo/$(n).ipynb)

# The book of that run, every page opened in headless Chromium (apt-get install chromium);
# screenshots in build/book-shots/. Without Chromium the browser tests are skipped and the last
# lines of `make test` say so.
booktest: | $(BOOK_STAMP)
	HXPE_RESULTS_ROOT=build/nbval $(MAKE) book PROFILE=demo
	rm -rf build/book-shots
	HXPE_BOOK_DIR=build/book/demo HXPE_NOTEBOOK_DIR=build/nbval/demo $(PY) -m pytest -q -rs \
		-m "browser or executed" -p no:cacheprovider tests/test_executed_notebooks.py tests/test_book_browser.py
	@$(PY) tests/support/browser.py

# lint runs beside the unit tests: mypy (one core, ~35 s) fills the time a worker spends waiting on
# PyPI in the lock tests; --output-sync keeps each target's output in one block.
test: | $(BOOK_STAMP)  ## ruff and mypy, pytest (unit tests), the six notebooks (demo) and nbval, the book in headless Chromium
	$(MAKE) -j2 --output-sync=target lint unit
	$(MAKE) nbtest nbval booktest

# Mutation testing: MUTATE (files or globs), MUTATION_TESTS (test files), MUTATION_JOBS (parallel runs),
# MUTANTS (mutant-name globs: a sample such as 'hxpe.*__mutmut_*0', one mutant in ten). Empty MUTATE /
# MUTATION_TESTS: the defaults of tests/mutation.py (its --help lists them).
MUTATE         ?=
MUTATION_TESTS ?=
MUTANTS        ?=
MUTATION_JOBS  ?= 2
$(VENV)/.mutation: constraints.txt | $(STAMP)
	$(UV_INSTALL) -e '.[mutation]'
	touch $@

mutation: $(VENV)/.mutation  ## mutmut over the model and training code against the fast tests -> build/mutation.txt
	$(PY) tests/mutation.py $(if $(MUTATE),--paths $(MUTATE)) $(if $(MUTATION_TESTS),--tests $(MUTATION_TESTS)) \
		--max-children $(MUTATION_JOBS) $(if $(MUTANTS),--mutants $(foreach m,$(MUTANTS),'$(m)'))

format: | $(STAMP)  ## Apply ruff's formatter and fixes
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .
