# Atlas developer commands. `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ATLAS := $(BIN)/atlas
STAMP := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest
STACK := infra/stack.sh

.PHONY: help run worker test test-unit test-integration test-cov lint fmt type check \
        migrate migration migration-history db-reset dev-up dev-down dev-status dev-logs \
        system-deps kafka-jars venv clean bench-streams bench-http

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP) ## Create .venv and install Atlas with its dev dependencies

system-deps: ## Install the Debian packages the stack and tests use (as root)
	infra/system-deps.sh

kafka-jars: ## Fetch the pinned Kafka broker and tools (ConsumerGroupCommand) jars from Maven Central
	infra/services/kafka.sh fetch
	infra/services/kafka.sh fetch-tools

dev-up: system-deps ## Start PostgreSQL, Redis and Kafka (reusing servers that already answer)
	$(STACK) up

dev-down: ## Stop the services this project started
	$(STACK) down

dev-status: ## One line per service
	$(STACK) status

dev-logs: ## Tail the services' logs
	$(STACK) logs

migrate: venv ## Apply pending migrations
	$(ATLAS) migrate

migration: venv ## Create the next migration file: make migration MSG="add foo"
	@test -n "$(MSG)" || { echo 'usage: make migration MSG="what it does"'; exit 2; }
	$(ATLAS) migration-new "$(MSG)"

migration-history: venv ## Show applied and pending migrations
	$(ATLAS) migration-history

db-reset: venv ## Drop every table and migrate again (refused in production)
	$(ATLAS) db-reset --yes

run: venv dev-up migrate ## Bring up the stack, migrate, run one worker in the foreground
	$(ATLAS) worker

worker: venv ## Run one worker against an already running stack
	$(ATLAS) worker

test: venv dev-up ## Every tier: unit, then integration against the real stack
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration

test-unit: venv ## Unit tests (no services)
	$(PYTEST) tests/unit

test-integration: venv dev-up ## Integration tests on the real stack
	$(PYTEST) tests/integration

test-cov: venv dev-up ## Every tier with a coverage report
	$(PYTEST) --cov=streams --cov=tables --cov=web --cov-report=term-missing tests

# Quix Streams, the streams benchmark's peer, in a virtualenv of its own (its pins are not ours).
QUIX_VENV := .local/bench-quix
QUIX_VERSION := 3.28.1
$(QUIX_VENV)/.installed-$(QUIX_VERSION):
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/pip install --quiet 'quixstreams==$(QUIX_VERSION)' orjson
	touch $@

bench-streams: venv dev-up migrate $(QUIX_VENV)/.installed-$(QUIX_VERSION) ## Payments throughput: Atlas vs raw aiokafka vs Quix Streams (ARGS="--events 20000")
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m tests.bench.bench_streams --quix-python $(QUIX_VENV)/bin/python $(ARGS)

bench-http: venv dev-up ## HTTP writes under wrk: Atlas vs bare aiohttp vs FastAPI (ARGS="--duration 5")
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m tests.bench.bench_http $(ARGS)

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: venv ## mypy --strict on streams, tables, web
	$(BIN)/mypy

check: lint type test ## Everything CI checks

clean: ## Remove caches and worker state (keeps Kafka jars and service data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov build *.egg-info
	rm -rf .local/worker-*
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
