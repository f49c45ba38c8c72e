"""Starting sofamesh and real Envoy on the same bootstrap, and talking HTTP to them."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import envoy_binary, sofamesh_command

BOOTSTRAP = """
node: {{id: n1, cluster: c1}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


def write_bootstrap(path: Path, *, admin: int, port: int = 0, upstream: int = 1) -> Path:
    path.write_text(BOOTSTRAP.format(admin=admin, port=port, upstream=upstream))
    return path


def request(port: int, method: str, target: str, timeout: float = 5.0) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target)
        r = conn.getresponse()
        body = r.read().decode()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def get(port: int, target: str) -> tuple[int, str]:
    s, _, b = request(port, "GET", target)
    return s, b


def post(port: int, target: str) -> tuple[int, str]:
    s, _, b = request(port, "POST", target)
    return s, b


def wait_live(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode}: {out}")
        try:
            status, body = get(port, "/ready")
            if status == 200 and body.strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("admin never became LIVE")


def start_sofamesh(
    config: Path, admin: int, *extra: str, cwd: Path | None = None
) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*sofamesh_command(), "proxy", "-c", str(config), "-l", "info", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    try:
        wait_live(admin, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_envoy(config: Path, admin: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            envoy_binary(),
            "-c",
            str(config),
            "-l",
            "error",
            "--disable-hot-restart",
            "--concurrency",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_live(admin, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def children(pid: int) -> list[int]:
    """The direct children of `pid` (a sofamesh pool's worker processes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def stop_with_workers(proc: subprocess.Popen) -> None:
    """stop(), then SIGKILL any worker that outlived its pool: nothing may outlive a test."""
    kids = children(proc.pid)
    stop(proc)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
