# dtinterp — developer entry points. Every target creates and uses .venv/ at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: install test lint format models app clean

# `make models` rebuilds every shipped agent (collect -> train -> evaluate -> calibrate -> card);
# `make models MODELS=memory-s7 DEVICE=cuda` rebuilds one, on a GPU.
MODELS ?=
DEVICE ?= cpu

$(PY):
	$(PYTHON) -m venv $(VENV)

# Install the pinned CPU torch wheel first so the package's `torch>=2.2` never pulls a CUDA build.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev,app,test-app,ray,minari,test-minari]"
	# The example plugin, installed like a third-party package: its analysis must show up everywhere.
	$(PIP) install -q --no-deps --no-build-isolation -e examples/dtinterp-example-plugin
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The web app on http://127.0.0.1:8050 with a shipped agent loaded.
app: $(STAMP)
	$(VENV)/bin/dtinterp app

models: $(STAMP)
	$(PY) -m dtinterp.train.reproduce $(MODELS) --device $(DEVICE)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
