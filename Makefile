# Two commands for a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast benchmarks default-model int8-calibration

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

DATA ?= ../shared/data
OUTPUT ?= lung_classifier/default_model
SOURCES := \
	--source "iqothnccd=$(DATA)/iqothnccd;title=IQ-OTH/NCCD;licence=IQ-OTH/NCCD lung cancer dataset, Alyasriy & AL-Huseiny, Mendeley Data, doi 10.17632/bhmdr45bh2, CC BY 4.0 (as mirrors cite it)" \
	--source "chestctscan=$(DATA)/chestctscan;title=Chest CT-Scan;grouping=near-duplicates;labels=normal*:Normal,adenocarcinoma*:Malignant,large.cell*:Malignant,squamous*:Malignant;licence=Kaggle Chest CT-Scan images Dataset (train and valid splits), research use, cite the Kaggle dataset" \
	--source "covidctmd=$(DATA)/covidctmd;title=COVID-CT-MD;grouping=series;labels=*:Normal;findings=normal*:healthy (no finding),P*:COVID-19 pneumonia (no cancer),cap*:community-acquired pneumonia (no cancer);licence=COVID-CT-MD sample scans, Afshar et al., Scientific Data 2021, doi 10.1038/s41597-021-00900-3, development and evaluation use, cite the paper"

default-model: setup  ## retrain the embedded default model on the three shared sources (../shared/data)
	$(PY) -m training $(SOURCES) --output $(OUTPUT) --no-savedmodel
	$(if $(filter lung_classifier/default_model,$(OUTPUT)),cp $(OUTPUT)/README.md model_card.md)  # the repo's card

int8-calibration: setup  ## measure the embedded default model's int8 activation ranges on the shared sources again
	$(PY) -m training.int8_calibration $(OUTPUT) $(DATA)/iqothnccd $(DATA)/chestctscan $(DATA)/covidctmd
