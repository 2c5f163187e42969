# Makefile targets are the only entry points; CI calls exactly these.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

# The tiny model's matmuls stall with two threads on a 2-core machine (~25x slower).
export OMP_NUM_THREADS ?= 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)
# Nothing here may reach the Hugging Face Hub; all weights are local.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
# No tool phones home (MLflow writes an installation id and sends usage events by default).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT := true

.PHONY: help install lock tiny-model demo test lint typecheck pytest clean mlflow registry-status serving-repo metrics-diff triton bench-triton check-config check-load up down status install-registry audit deploy-check render-k8s images gpu-smoke gateway bench-gateway bench canary-eval

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.in requirements.lock scripts/system-packages.sh
	@bash scripts/system-packages.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.in -c requirements.lock
	@# `source .venv/bin/activate` then gives a shell where every README line works as shown.
	@grep -q "qwen3-vl-triton-pipeline" $(VENV)/bin/activate || printf '%s\n' \
	  '# qwen3-vl-triton-pipeline: project environment (added by make install)' \
	  'export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"' \
	  'export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true' \
	  'export OMP_NUM_THREADS="$${OMP_NUM_THREADS:-1}"' >> $(VENV)/bin/activate
	@touch $(STAMP)

# The promotion workflow needs only the registry CLI: the MLflow client and pydantic, pinned by the lock.
install-registry: ## Only what `python -m registry` needs (no torch, no Triton): for the promotion workflow
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock \
	  mlflow pydantic pydantic-settings pyyaml httpx "tritonclient[grpc]" "protobuf<7"

install: $(STAMP) ## Create .venv with the pinned dependencies and the Debian packages tests use (idempotent)

lock: ## Re-resolve requirements.in into requirements.lock in one resolver run
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Resolved from requirements.in in one pip run (make lock). Do not edit by hand."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

tiny-model: $(STAMP) ## Rebuild and retrain the embedded tiny Qwen3-VL (about 13 min of CPU on 2 cores)
	$(PY) -m tiny_model

demo: $(STAMP) ## The journey: dvc repro, then champion, a canary promoted and a bad one rolled back (~4 min)
	dvc repro
	$(PY) -m demo.summary
	$(PY) -m demo

lint: $(STAMP) ## ruff
	ruff check .
	ruff format --check .

typecheck: $(STAMP) ## mypy on the packages
	mypy core tiny_model pipelines registry serving validation demo bench deploy

pytest: $(STAMP) ## pytest only
	pytest

test: lint typecheck pytest ## ruff, mypy and pytest

triton: $(STAMP) ## Serve triton-models/ in a real Triton, foreground (TRITON_HTTP_PORT/GRPC_PORT/METRICS_PORT)
	$(PY) -m serving.triton --model-repository triton-models

bench-triton: $(STAMP) ## Direct Triton only: batching gain, stall check, Triton's own times, memory per instance (~1 min)
	$(PY) -m bench --parts triton

check-config: $(STAMP) ## Check every config.pbtxt under triton-models/ against Triton's rules (no server)
	$(PY) -m validation check-config triton-models --backends python

check-load: $(STAMP) ## Load every model of triton-models/ in a real Triton and report each version
	$(PY) -m validation check-load triton-models

BASE ?= main
SERVING_REPO ?= .run/serving-models

mlflow: $(STAMP) ## Serve the project's MLflow store (UI + API) on 127.0.0.1:5000, foreground
	$(PY) -m registry serve

registry-status: $(STAMP) ## Champion, canary and candidate with their lineage
	$(PY) -m registry status

serving-repo: $(STAMP) ## Download champion + canary from MLflow into SERVING_REPO/<N>/, every file checksum-verified
	$(PY) -m registry materialize --out $(SERVING_REPO)

metrics-diff: $(STAMP) ## Markdown table of metric changes against BASE (a git rev)
	@if git rev-parse -q --verify "$(BASE)^{commit}" >/dev/null; then \
	  echo "### Metrics against $(BASE)"; echo; dvc metrics diff --md "$(BASE)"; \
	else \
	  echo "### Metrics (no base commit \`$(BASE)\` to compare with, e.g. a new branch)"; echo; dvc metrics show --md; \
	fi

clean: ## Remove generated artefacts, the local MLflow store and run state (not the venv)
	rm -rf artifacts reports .mlflow .run .pytest_cache .mypy_cache .ruff_cache .*.swap
	find triton-models -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +

up: $(STAMP) ## Start MLflow, Triton, the controller, two gateways and nginx (127.0.0.1:8080) in the background
	$(PY) -m serving.stack up

down: $(STAMP) ## Stop exactly what `make up` started
	$(PY) -m serving.stack down

status: $(STAMP) ## What runs, and the rollout state
	$(PY) -m serving.stack status
	-$(PY) -m registry status

audit: ## pip-audit of requirements.lock against PyPI's advisory data (needs pypi.org; CI's audit job runs it)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip show --quiet pip-audit >/dev/null 2>&1 || $(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock pip-audit
	$(PY) -m pip_audit --strict --no-deps --disable-pip --progress-spinner off -r requirements.lock

DEPLOY_SETTINGS ?= deploy/settings.example.yaml
DEPLOY_OUT ?= rendered
IMAGE_REGISTRY ?= qwen3-vl
IMAGE_TAG ?= dev

deploy-check: $(STAMP) ## Offline checks of containers/ and deploy/ (hadolint, compose schema, pins, strict Kubernetes/KServe validation)
	pytest -p no:cacheprovider tests/deploy

render-k8s: $(STAMP) ## Kubernetes and KServe manifests from DEPLOY_SETTINGS into DEPLOY_OUT
	$(PY) -m deploy.render --settings $(DEPLOY_SETTINGS) --out $(DEPLOY_OUT)

images: ## Build the four images (needs a Docker engine); IMAGE_REGISTRY, IMAGE_TAG
	for image in gateway triton mlflow edge; do docker build -f containers/$$image.Dockerfile -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG) .; done

gpu-smoke: $(STAMP) ## Prove the GPU path on one NVIDIA GPU (~10 min; QWEN3_VL_CHECKPOINT for a real model)
	bash scripts/gpu_smoke.sh

gateway: $(STAMP) ## Serve the OpenAI-compatible canary gateway (GATEWAY_PORT, default 8000), foreground
	$(PY) -m serving.gateway

bench-gateway: $(STAMP) ## The gateway hop alone, against a zero-work Triton model (~1 min)
	$(PY) -m bench --parts hop

canary-eval: $(STAMP) ## How often the rollout controller promotes a bad build or rolls back a good one, simulated (~6 min)
	$(PY) -m bench.canary

bench: $(STAMP) ## Every speed claim measured and checked against its target; writes bench/ and the README's Figures (~13 min)
	$(PY) -m bench
