#!/usr/bin/env bash
# npm peers for the RPC integration tests (sofa-rpc-node, sofa-bolt-node, dubbo-remoting),
# pinned by tests/peers/package-lock.json. Idempotent: skipped when node_modules matches.
set -euo pipefail
cd "$(dirname "$0")/../../tests/peers"
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q nodejs npm >/dev/null
fi
stamp=node_modules/.sofamesh-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "$want" > "$stamp"
