# Hyprstream. `make run` and `make test` do all set-up themselves (see scripts/setup.sh).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/hyprstream/target
# One optimised profile for run, test and bench: a warm build serves all three.
PROFILE := release
BIN := $(CARGO_TARGET_DIR)/$(PROFILE)
PYTHON ?= python3
DATA_DIR ?= ./hyprstream-data
ADDR ?= 127.0.0.1:50051

.PHONY: setup build run test test-rust test-python bench bench-ann gpu-check cuda-build clean

setup:
	@scripts/setup.sh

build: setup
	cargo build --profile $(PROFILE) --workspace --bins

run: build
	$(BIN)/hyprstream-server --data-dir $(DATA_DIR) --addr $(ADDR)

test: build cuda-build
	cargo test --profile $(PROFILE) --workspace
	HYPRSTREAM_SERVER_BIN=$(BIN)/hyprstream-server $(PYTHON) -m pytest -q integration-tests/python

test-rust: build
	cargo test --profile $(PROFILE) --workspace

test-python: build
	HYPRSTREAM_SERVER_BIN=$(BIN)/hyprstream-server $(PYTHON) -m pytest -q integration-tests/python

# Exact search beside faiss and LanceDB (writes docs/benchmarks.md). BENCH_ROWS=100000,1000000 for both sizes.
bench: build
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	$(PYTHON) bench/bench.py

# Approximate search: recall@10 vs latency beside hnswlib and LanceDB (synthetic low-rank and GloVe).
bench-ann: build
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	$(PYTHON) bench/ann.py

# Compiles the CUDA backend (cudarc, dynamic loading: no CUDA toolkit needed) so every test
# run checks that it builds; running it needs a GPU (gpu-check).
cuda-build: setup
	cargo build --profile $(PROFILE) -p hyprstream-kernels --features cuda --bin hyprstream-gpu-check

# Builds the GPU check here and leaves a stripped copy in .gpu/ (git-ignored) to carry to a
# machine with an NVIDIA GPU, where the one command is `./.gpu/hyprstream-gpu-check`.
gpu-check: cuda-build
	mkdir -p .gpu
	strip -o .gpu/hyprstream-gpu-check $(BIN)/hyprstream-gpu-check
	@ls -la .gpu/hyprstream-gpu-check
	@if ./.gpu/hyprstream-gpu-check; then :; else echo "(run .gpu/hyprstream-gpu-check on a GPU machine)"; fi

clean:
	cargo clean
