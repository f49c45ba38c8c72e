#!/usr/bin/env bash
# Runs the whole test suite (after ci/install.sh test). Extra arguments go to pytest.
# The tests mostly wait on the processes they start (Envoy, sofamesh, ZooKeeper, ...), so they
# run in SOFAMESH_TEST_WORKERS (default 3) pytest-xdist workers, a whole file to a worker
# (--dist loadfile: a module's fixtures and its cross-parameter comparisons stay in one
# process), in collection order (--no-loadscope-reorder: xdist would otherwise start the files
# with most tests first and tests/install's wheel build, the longest file, near the end).
# `ci/test.sh -n 0 tests/...` runs in this process, as plain pytest does.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/install builds the wheel: its extensions compile two at a time (ci/build_ext.cfg)
export DIST_EXTRA_CONFIG="${DIST_EXTRA_CONFIG:-$PWD/ci/build_ext.cfg}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  -n "${SOFAMESH_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
