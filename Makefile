# ftpipe: everything the demo and the tests need, installed and started from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FTPIPE := $(VENV)/bin/ftpipe
STAMP := $(VENV)/.installed-stamp
# No model or dataset hub is reachable: every model comes from a local path or S3.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-unit lint compile s3-up s3-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly this version: it takes the CPU build on disk (a looser spec pulls CUDA, GBs).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

install: $(STAMP)

demo: install
	$(FTPIPE) s3 up
	$(PY) scripts/prepare_demo.py
	$(FTPIPE) run --local --config pipelines/examples/sms-spam.yaml

test: install
	$(VENV)/bin/ruff check src components pipelines tests scripts
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m unit

lint: install
	$(VENV)/bin/ruff check src components pipelines tests scripts

compile: install
	$(FTPIPE) compile --config pipelines/examples/sms-spam.yaml -o out/pipeline.yaml

s3-up: install
	$(FTPIPE) s3 up

s3-down: install
	$(FTPIPE) s3 down

clean:
	rm -rf out .cache .pytest_cache .ruff_cache
