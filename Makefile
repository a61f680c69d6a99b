# segunet: `make train` and `make test` set up .venv on first use.
# GPU users: `make TORCH=torch train` (PyPI's Linux wheel of torch is the CUDA build).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tests of the optional parts (the napari widget, submitit sweeps, Dask) need their
# packages; make train does not.
EXTRAS_STAMP := $(VENV)/.installed-extras
ARGS ?=

.PHONY: help venv train test lint format clean

help:
	@echo "make train   set up .venv and train the quickstart U-Net on the embedded synthetic data"
	@echo "make test    set up .venv, lint and run the test suite"
	@echo "make lint    ruff check"
	@echo "variables:   TORCH='<pip spec of torch>' (default $(TORCH)), ARGS='<hydra overrides>'"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,bioimageio]'
	touch $@

$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[napari,slurm,dask]'
	touch $@

venv: $(STAMP)

train: $(STAMP)
	$(BIN)/segunet train experiment=quickstart $(ARGS)

# -n 2: two pytest workers, one per core of a 2-core machine (ARGS='-n 0' runs them in turn).
test: $(STAMP) $(EXTRAS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
