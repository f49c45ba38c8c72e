# sofamesh: one entry point for people and CI. `make run` and `make test` are the quick start.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install install-test run test test-unit build lint bench clean

install:
	bash ci/install.sh main

install-test:
	bash ci/install.sh test

# Builds the extensions in place after editing a .pyx (SOFAMESH_ONLY=word limits the set).
build:
	$(VPY) setup.py build_ext --inplace -j 2

run: install
	$(VENV)/bin/sofamesh demo

test: install-test
	bash ci/test.sh

test-unit: build
	$(VPY) -m pytest tests/unit -q

lint:
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/cython-lint src/sofamesh/_core
	$(VENV)/bin/mypy

bench: install-test
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf build src/*.egg-info
	find src -name '*.so' -delete
	find src/sofamesh/_core -name '*.c' -delete
