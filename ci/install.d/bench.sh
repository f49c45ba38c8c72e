#!/usr/bin/env bash
# Installs what benchmarks/http1_e2e.py and h2_bench.py need: nginx (the fixed upstream), wrk (the
# HTTP/1.1 load generator) and nghttp2-client (h2load, the HTTP/2 one, and nghttp).
# Idempotent and quiet; never leaves a packaged nginx service running (the benchmark starts its own).
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[ ${#need[@]} -eq 0 ] && exit 0

export DEBIAN_FRONTEND=noninteractive
# Keep the package's init script from starting a system nginx on port 80.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  own_policy=1
fi
trap 'if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
