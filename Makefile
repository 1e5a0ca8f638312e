# modelplane: `make demo` and `make test` are all a user needs; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the modelplane command (pyproject [project.scripts]); targets are thin names for it
MP := $(VENV)/bin/modelplane
EXTRAS ?= serve,train,similarity,text,explain,generate,dev
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup tools test lint format demo mlflow train-classify \
	export-classify train-generate export-generate \
	train-similarity export-similarity bench-similarity \
	train-text export-text bench-text \
	loadtest loadtest-check train-all export-all k8s image-sizes images test-stack image-check wrk bench-serve soak bench-export clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create or update the virtualenv (.venv) with every extra

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "==> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing modelplane[$(EXTRAS)] (torch is large: the first install takes minutes)"
	$(PY) -m pip install --progress-bar on --upgrade pip setuptools
	$(PY) -m pip install --progress-bar on -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# System tools some tests drive (Debian packages): docker-compose validates the compose file
# offline, prometheus (with promtool) runs the rule tests and a real server; kubectl
# (kustomize) is expected on the machine; chromium is the browser the docs-page tests drive
# (Playwright, no browser download).
TOOLS := docker-compose prometheus chromium
tools:  ## install the system tools the tests use (Debian packages), if missing
	@for tool in $(TOOLS); do command -v $$tool >/dev/null || { \
	  echo "==> installing $$tool (Debian package)"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y $$tool; }; done

test: setup tools  ## lint, import contracts, the whole suite, then the serve-onnx image for real
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest
	@$(MAKE) --no-print-directory image-check

lint: setup  ## ruff lint, format check and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup  ## the whole platform: MLflow, train + export what is missing, 5 services, a request each
	$(MP) demo $(DEMO_ARGS)

mlflow: setup  ## run the MLflow tracking server + registry on 127.0.0.1:5000
	$(MP) mlflow

train-classify: setup  ## train and register classify-torch@candidate (needs `make mlflow`)
	$(MP) train classify $(ARGS)

export-classify: setup  ## export classify-torch@candidate to classify@production
	$(MP) export classify $(ARGS)

bench-export: setup  ## export the default classify model, print its trade-off table (needs `make mlflow`)
	$(MP) bench export $(ARGS)

deploy-files: setup  ## rewrite what services/catalog.py drives: k8s/base, compose, scrape targets, serve-*, README
	$(PY) -m scripts.deploy

.PHONY: deploy-files
# >>> serve: generated from services/catalog.py by `python -m scripts.deploy`; do not edit
.PHONY: serve-classify serve-similarity serve-explain serve-generate serve-text
serve-classify: setup  ## classify digits (ONNX): classify @production on 127.0.0.1:8001
	$(MP) serve classify

serve-similarity: setup  ## embed, compare and search digits (ONNX + FAISS): similarity @production on 127.0.0.1:8002
	$(MP) serve similarity

serve-explain: setup  ## explain the classify model (Captum): classify @production on 127.0.0.1:8003
	$(MP) serve explain

serve-generate: setup  ## generate digit images (diffusion): generate @production on 127.0.0.1:8004
	$(MP) serve generate

serve-text: setup  ## language ID and code summaries: text-classify + text-generate @production on 127.0.0.1:8005
	$(MP) serve text
# <<< serve

train-similarity: setup  ## train the Siamese digit encoder, register similarity-torch@candidate (needs `make mlflow`)
	$(MP) train similarity $(ARGS)

export-similarity: setup  ## export similarity-torch@candidate (ONNX + gallery) to similarity@production
	$(MP) export similarity $(ARGS)

bench-similarity: setup  ## similarity AUC/EER/recall/mAP, ORT batch-32 throughput, search p50 over HTTP
	$(MP) bench similarity $(ARGS)

train-text: setup  ## train text-classify-torch and text-generate-torch @candidate (needs `make mlflow`)
	$(MP) train text-classify $(ARGS)
	$(MP) train text-generate $(ARGS)

export-text: setup  ## export them to text-classify / text-generate @production
	$(MP) export text-classify
	$(MP) export text-generate

bench-text: setup  ## tokens/s with/without KV cache (torch, onnx), TTFT, classify fp32 vs int8 at b32
	$(MP) bench text --tracking-uri $${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000} --url http://127.0.0.1:8005

train-generate: setup  ## train the digits diffusion model, register generate-torch@candidate
	$(MP) train generate $(ARGS)

export-generate: setup  ## export generate-torch@candidate to generate@production
	$(MP) export generate $(ARGS)

train-all: setup  ## train every model in turn (modelplane train all; needs `make mlflow`)
	$(MP) train all $(ARGS)

export-all: setup  ## export every trained model in turn (modelplane export all)
	$(MP) export all $(ARGS)

k8s: setup  ## regenerate k8s/base/<service>.yaml from services/catalog.py
	$(PY) -m scripts.k8s

image-sizes: setup  ## install each image's extras into a fresh venv: size + docker/constraints-*.txt
	$(PY) -m scripts.image_sizes $(ARGS)

# Images and the compose stack for real (docs/deployment.md). Docker's engine, debootstrap and
# docker-compose are Debian packages; the scripts start dockerd when none runs and stop it after.
.PHONY: images test-stack image-check
DOCKER_PACKAGES := docker.io debootstrap docker-compose
define docker-tools
@command -v dockerd >/dev/null || test -x /usr/sbin/dockerd && command -v debootstrap >/dev/null \
  && command -v docker-compose >/dev/null || { echo "==> installing $(DOCKER_PACKAGES) (Debian)"; \
  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y $(DOCKER_PACKAGES); }
endef
images: setup  ## build docker/Dockerfile's 4 images (no registry: Debian base + wheelhouse); sizes
	$(docker-tools)
	$(PY) -m scripts.images $(ARGS)

test-stack: setup  ## compose in containers: train, export, 5 services, Prometheus, alias, hardening
	$(docker-tools)
	$(PY) -m scripts.stack $(ARGS)

image-check: setup  ## CI's light check: build serve-onnx, run classify from a bundle, one request
	$(docker-tools)
	$(PY) -m scripts.image_smoke

loadtest: setup  ## Locust vs the running services (SERVICES, DURATION, USERS, SPAWN_RATE, *_URL)
	$(PY) -m loadtests.run $(ARGS)

loadtest-check: setup  ## latency gate vs loadtests/baseline.json: 1 regressed, 2 refused (unlike setup); ARGS=--update-baseline
	$(PY) -m loadtests.check $(ARGS)

wrk:  ## install wrk (Debian package), the load generator of bench-serve and soak, if missing
	@command -v wrk >/dev/null || { echo "==> installing wrk (Debian package)"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y wrk; }

bench-serve: setup wrk  ## classify over HTTP (wrk) vs raw onnxruntime, LitServe and mlflow serve; server CPU per request; needs a served bundle (make demo)
	$(MP) bench serve $(ARGS)

soak: setup wrk  ## classify at half its capacity for minutes: RSS and fd growth per 1,000 requests
	$(PY) -m loadtests.soak $(ARGS)

clean:  ## remove run outputs (MLflow store, caches); keeps .venv
	rm -rf .modelplane .pytest_cache .ruff_cache
