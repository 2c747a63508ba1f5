# Set-up and the two everyday commands. `make train ARGS="model.n_head=6 trainer.devices=2"`.
VENV ?= .venv
# what the venv is made from: python3 on PATH, unless given (.ci/run gives Debian's own)
PYTHON3 ?= python3
PYTHON := $(VENV)/bin/python

.PHONY: install train test lint

install: $(VENV)/.installed

# torch first and pinned: it is the one large download, and a pin keeps pip from fetching another build
$(VENV)/.installed: pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

train: install
	$(PYTHON) -m gptlab.train $(ARGS)

test: install
	$(PYTHON) -m pytest $(ARGS)

lint: install
	$(VENV)/bin/ruff check gptlab tests
	$(VENV)/bin/ruff format --check gptlab tests
