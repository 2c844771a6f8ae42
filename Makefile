# Hyprstream. `make run` and `make test` do all set-up themselves (see scripts/setup.sh).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/hyprstream/target
# One optimised profile for run, test and bench: a warm build serves all three.
PROFILE := release
BIN := $(CARGO_TARGET_DIR)/$(PROFILE)
PYTHON ?= python3
DATA_DIR ?= ./hyprstream-data
ADDR ?= 127.0.0.1:50051

.PHONY: setup build run test test-rust test-python bench bench-ann clean

setup:
	@scripts/setup.sh

build: setup
	cargo build --profile $(PROFILE) --workspace --bins

run: build
	$(BIN)/hyprstream-server --data-dir $(DATA_DIR) --addr $(ADDR)

test: build
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

clean:
	cargo clean
