# sofamesh: one entry point for people and CI. `make run` and `make test` are the quick start.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install install-test run test test-multicluster test-unit build lint bench bench-pilot perf-gate perf-baseline clean

install:
	bash ci/install.sh main

install-test:
	bash ci/install.sh test

# Builds the protos and extensions in place after editing a .proto or .pyx
# (SOFAMESH_ONLY=word limits the extensions built).
build:
	$(VPY) setup.py build_protos --inplace
	$(VPY) setup.py build_ext --inplace -j 2

run: install
	$(VENV)/bin/sofamesh demo

test: install-test
	bash ci/test.sh

# The clusters-in-network-namespaces tests alone (root: they make namespaces and veth links).
test-multicluster: install-test
	$(VPY) -m pytest -m multicluster tests/integration -q

test-unit: build
	$(VPY) -m pytest tests/unit -q

lint:
	$(VENV)/bin/pip install -q ruff mypy cython-lint pycodestyle
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/cython-lint src/sofamesh/_core
	$(VENV)/bin/mypy

# The side-by-side benchmarks (sofamesh and Envoy in one run, pinned; figures in
# benchmarks/RESULTS.md): HTTP/1.1 (~2 min), HTTP/2 and gRPC (~6 min), then Bolt and Dubbo (~1 min).
bench: install-test
	$(VPY) benchmarks/http1_e2e.py
	$(VPY) benchmarks/h2_bench.py
	$(VPY) benchmarks/rpc_bench.py

# The performance-regression gate: the hot path's callgrind instruction counts against
# benchmarks/perf_baseline.json (the suite runs it too); perf-baseline records a deliberate change.
perf-gate: install-test
	$(VPY) benchmarks/perf_gate.py

perf-baseline: install-test
	$(VPY) benchmarks/perf_gate.py --update

# The pilot at 10k services / 50k instances with a fresh Envoy and 100 ADS clients (~5 min).
bench-pilot: install-test
	$(VPY) benchmarks/pilot_scale.py

clean:
	rm -rf build src/*.egg-info
	find src -name '*.so' -delete
	find src/sofamesh/_core -name '*.c' -delete
