"""envoy.filters.listener.http_inspector: HTTP/1.x connections pick the filter chain that
matches application_protocols http/1.1 or http/1.0, anything else the chain without it
(a raw TCP client is answered at once, not held for a request line). One bootstrap through
Envoy 1.40 and sofamesh: the same answers and the same http_inspector.* counters."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.tls.test_tls_downstream import _addr, _Echo, _http, _Server, _tcp
from tests.support.envoy import ProxyProcess, admin_get

INSPECTOR = {
    "name": "envoy.filters.listener.http_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3"
        ".HttpInspector"
    },
}


def bootstrap(port: int, admin: int, echo: int) -> dict:
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "sniff",
                    "stat_prefix": "sniff",
                    "address": _addr(port),
                    "listener_filters": [INSPECTOR],
                    "filter_chains": [
                        {
                            "filter_chain_match": {
                                "application_protocols": ["http/1.1", "http/1.0"]
                            },
                            "filters": _http("sniff_http", "http chain"),
                        },
                        {"filters": _tcp("sniff_tcp")},
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(echo)}}]}],
                    },
                }
            ],
        },
    }


def exchange(port: int, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(payload)
        got = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
                if got.startswith(b"echo:") or got.endswith(b"http chain"):
                    break
        except OSError:
            pass
    if got.startswith(b"HTTP/"):
        return got.split(b"\r\n", 1)[0].decode() + " " + got.rsplit(b"\r\n\r\n", 1)[-1].decode()
    return got.decode(errors="replace") or "closed"


def run_cases(port: int) -> dict[str, str]:
    return {
        "HTTP/1.1": exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        "HTTP/1.0": exchange(port, b"GET / HTTP/1.0\r\n\r\n"),
        "raw bytes": exchange(port, b"hello raw"),  # no line end
        "a binary protocol": exchange(port, b"\xda\xbb\x02\x00binary"),
    }


def inspector_stats(admin: int) -> dict[str, int]:
    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k.startswith("http_inspector.") and v.strip().isdigit():
            out[k] = int(v)
    return out


@pytest.fixture(scope="module")
def echo():
    srv = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_inspector_as_envoy(echo, tmp_path):
    seen = {}
    for kind in ("envoy", "sofamesh"):
        port, admin = free_port(), free_port()
        b = bootstrap(port, admin, echo)
        wd = Path(tmp_path / kind)
        proc = (
            ProxyProcess.envoy(envoy_binary(), b, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), b, wd)
        )
        with proc:
            t0 = time.monotonic()
            cases = run_cases(port)
            took = time.monotonic() - t0
            time.sleep(0.3)
            seen[kind] = (cases, inspector_stats(admin), took)
    env, sofa = seen["envoy"], seen["sofamesh"]
    assert env[0]["HTTP/1.1"] == "HTTP/1.1 200 OK http chain", env
    # text without a line end could still become a request line: both wait (the client
    # gives up first); binary bytes go to the other chain at once
    assert env[0]["raw bytes"] == "closed", env
    assert env[0]["a binary protocol"].startswith("echo:"), env
    assert sofa[0] == env[0]
    assert sofa[1] == env[1]
