"""Upstreams whose health can be switched, and bootstraps for the health check tests."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import free_port
from tests.support.envoy import admin_get


class HealthUpstream:
    """An HTTP/1.1 upstream on 127.0.0.1:0: `/health` answers `self.status` (200 by default;
    0: no answer),
    every other path answers 200 with the port; it records both kinds of request."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}  # added to /health answers
        self.checks: list[tuple[float, dict]] = []  # (time, headers) of each /health
        self.served = 0  # requests other than /health
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.startswith("/health"):
                    up.checks.append((time.monotonic(), dict(self.headers)))
                    code = up.status
                    if code == 0:  # no answer (a check that times out)
                        time.sleep(3)
                        return
                else:
                    up.served += 1
                    code = 200
                body = str(self.server.server_address[1]).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-length", str(len(body)))
                    if self.path.startswith("/health"):
                        for k, v in up.headers.items():
                            self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # a client gone (a check that timed out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def checks_since(self, t: float) -> int:
        return sum(1 for ts, _ in self.checks if ts >= t)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PingUpstream:
    """A TCP upstream: answers `ping` with `pong`, anything else with `port <n>`. `stop()`
    stops listening and closes its connections; `start()` listens again on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.conns: list[socket.socket] = []
        self.lsock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self.lsock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            while data := c.recv(4096):
                c.sendall(b"pong" if data == b"ping" else f"port {self.port}".encode())
        except OSError:
            pass

    def stop(self) -> None:
        if self.lsock is not None:
            self.lsock.shutdown(socket.SHUT_RDWR)
            self.lsock.close()
            self.lsock = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns = []


def bootstrap(
    ports: list[int],
    health_check: dict,
    listener: str = "http",
    cluster_extra: dict | None = None,
) -> dict:
    """One listener (HCM or tcp_proxy) to cluster `c` of `ports`, checked by `health_check`;
    healthy_panic_threshold 0 in both proxies (no panic mode: unhealthy hosts get no traffic
    however few are healthy)."""
    aport, lport = free_port(), free_port()
    if listener == "http":
        terminal = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ing",
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": "v",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                        }
                    ]
                },
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router"
                            ".v3.Router"
                        },
                    }
                ],
            },
        }
    else:
        terminal = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3"
                ".TcpProxy",
                "stat_prefix": "tcp",
                "cluster": "c",
            },
        }
    cluster = {
        "name": "c",
        "type": "STATIC",
        "connect_timeout": "1s",
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": p}
                                }
                            }
                        }
                        for p in ports
                    ]
                }
            ],
        },
        "health_checks": [health_check],
        **(cluster_extra or {}),
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": aport}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": lport}},
                    "filter_chains": [{"filters": [terminal]}],
                }
            ],
            "clusters": [cluster],
        },
    }


def host_flags(aport: int, cluster: str = "c") -> dict[int, str]:
    """admin /clusters: port -> health_flags of the cluster's hosts."""
    _, text = admin_get(aport, "/clusters")
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def hc_stats(aport: int) -> dict[str, int]:
    """cluster.c.health_check.* and membership_* from admin /stats."""
    _, text = admin_get(aport, "/stats")
    out = {}
    for line in text.splitlines():
        name, _, v = line.partition(": ")
        if name.startswith(("cluster.c.health_check.", "cluster.c.membership_")):
            try:
                out[name[len("cluster.c.") :]] = int(v)
            except ValueError:
                pass
    return out


def wait_flags(aport: int, port: int, want: str, timeout: float, cluster: str = "c") -> float:
    """Seconds until host `port` shows `want` in /clusters; fails after `timeout`."""
    t0 = time.monotonic()
    while True:
        got = host_flags(aport, cluster).get(port)
        if got == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"host {port}: {got!r} after {timeout}s, wanted {want!r}")
        time.sleep(0.01)
