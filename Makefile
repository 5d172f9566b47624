# Every target works on a fresh machine: the first one that needs the environment creates it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO  := protos/elido/forwarder/v1/forwarder.proto

.PHONY: run test test-fast lint typecheck proto proto-check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start a local OpenBao and the forwarder on 127.0.0.1:50051 (Ctrl-C stops both)
run: $(STAMP)
	$(BIN)/python -m server.devstack

# promtool checks the shipped alert rules and the dashboard's queries (tests/observability).
# Taken from Debian's prometheus package without installing it (no service is set up). Best
# effort: where apt has no such package, those checks are skipped and the rules only parsed.
$(BIN)/promtool: | $(STAMP)
	@tmp=$$(mktemp -d) && cd $$tmp && \
	if { apt-get download prometheus >/dev/null 2>&1 || \
	     { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } && \
	   dpkg -x prometheus_*.deb x; then \
	  cp x/usr/bin/promtool $(abspath $(BIN))/promtool; \
	else echo "promtool unavailable (no apt package): alert rules are parsed, not promtool-checked"; fi; \
	rm -rf $$tmp

## test: every test against real parts (OpenBao, gRPC over loopback, grpcurl, SQLite), slow suites included
test: $(STAMP) proto-check $(BIN)/promtool
	$(BIN)/python -m pytest

## test-fast: the suite without the slow fault/soak tests
test-fast: $(STAMP) $(BIN)/promtool
	$(BIN)/python -m pytest -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy server client ingest_sidecar elido_common

## proto: regenerate the checked-in stubs and their .pyi types
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=protos --grpc_python_out=protos --mypy_out=protos --mypy_grpc_out=protos $(PROTO)

## proto-check: fail when the checked-in stubs differ from what the .proto generates
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) >/dev/null 2>&1 && \
	for f in forwarder_pb2.py forwarder_pb2.pyi forwarder_pb2_grpc.py forwarder_pb2_grpc.pyi; do \
	  diff -q $$tmp/elido/forwarder/v1/$$f protos/elido/forwarder/v1/$$f >/dev/null || \
	  { echo "generated stubs are stale: $$f differs; run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated stubs match $(PROTO)"

## bench: print throughput, latency and memory figures (not a test)
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/sidecar.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
