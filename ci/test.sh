#!/usr/bin/env bash
# Runs the whole test suite (after ci/install.sh test). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
