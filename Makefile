# Two commands for a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast benchmarks default-model

setup: $(STAMP)  ## virtual environment + ResNet50 ImageNet weights (idempotent)
	$(PY) -m lung_classifier.model.backbone

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: setup  ## serve the Gradio demo on the embedded default model
	$(PY) app.py

test: setup  ## the whole suite, browser and slow tests included
	$(PY) -m pytest

test-fast: setup  ## unit tests only (no real ResNet50, no browser)
	$(PY) -m pytest -m "not slow and not browser"

benchmarks: setup
	$(PY) -m benchmarks

default-model: setup  ## retrain the embedded default model on the shared IQ-OTH/NCCD copy
	$(PY) -m training --data ../shared/data/iqothnccd --output lung_classifier/default_model --head-only
