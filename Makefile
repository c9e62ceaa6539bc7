# The two README commands: `make demo` (set up + run the main job on the bundled sample) and
# `make test` (set up + lint + tests). Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keygrid-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# Reinstall when the dependency declarations change. constraints.txt pins every version CI uses
# (torch==2.13.0: the CPU wheel on our machines; an unpinned torch pulls GBs of CUDA packages).
$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dds,sim,train,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/keygrid demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
