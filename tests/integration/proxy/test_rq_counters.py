"""Request counters Envoy 1.40 keeps for answers given before the request ended, compared:
`downstream_rq_response_before_rq_complete` counts every such answer (a codec's 400, the
408 of request_headers_timeout, a direct response to a request whose body is still coming,
over HTTP/1.1 and HTTP/2), and the router's `rq_total` counts each request the router
decoded (not those the codec refused)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.admin.helpers import BOOTSTRAP, get, start_envoy, start_sofamesh, stop
from tests.integration.proxy.test_delayed_close import REJECT
from tests.support.h2raw import END_HEADERS, H2Client, headers, req
from tests.support.servers import free_ports

NAMES = (
    "http.ingress_http.downstream_rq_response_before_rq_complete",
    "http.ingress_http.rq_total",
    "http.ingress_http.downstream_rq_total",
)


def _counters(admin: int) -> dict[str, int]:
    _, stats = get(admin, "/stats")
    out = {}
    for line in stats.splitlines():
        name, _, value = line.partition(": ")
        if name in NAMES:
            out[name] = int(value)
    return out


def _h1(port: int, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        s.sendall(data)
        return s.recv(100).split(b"\r\n", 1)[0]
    finally:
        s.close()


def _run(kind: str, tmp_path) -> list:
    admin, port = free_ports(2)
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(
        BOOTSTRAP.replace('              - match: {{prefix: "/"}}\n', REJECT)
        .replace(
            "          stat_prefix: ingress_http\n",
            "          stat_prefix: ingress_http\n          request_headers_timeout: 0.5s\n",
        )
        .format(admin=admin, port=port, upstream=1)
    )
    proc = start_envoy(cfg, admin) if kind == "envoy" else start_sofamesh(cfg, admin)
    seen = []
    try:
        steps = [
            ("bad request", lambda: _h1(port, b"GET / HTTP/1.1\r\nHost x\r\n\r\n")),
            ("header timeout", lambda: _h1(port, b"GET / HTTP/1.1\r\nHost: x\r\n")),
            (
                "early direct response",
                lambda: _h1(
                    port,
                    b"POST /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
                ),
            ),
            ("early direct response, HTTP/2", lambda: _h2_early(port)),
        ]
        for name, step in steps:
            answer = step()
            time.sleep(0.2)
            seen.append((name, answer, _counters(admin)))
        return seen
    finally:
        stop(proc)


def _h2_early(port: int) -> bytes:
    with H2Client(port) as c:
        c.handshake()
        c.send(headers(1, c.block(req("POST", "/reject", "x")), END_HEADERS))
        o = c.outcome(1)
        return str(o.status).encode()


def test_before_complete_and_router_totals_as_envoy(tmp_path):
    envoy = _run("envoy", tmp_path)
    ours = _run("sofamesh", tmp_path)
    assert [a for _, a, _ in envoy] == [
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 408 Request Timeout",
        b"HTTP/1.1 403 Forbidden",
        b"403",
    ]
    assert envoy[-1][2] == {
        "http.ingress_http.downstream_rq_response_before_rq_complete": 4,
        "http.ingress_http.rq_total": 2,
        "http.ingress_http.downstream_rq_total": 4,
    }
    assert ours == envoy


pytestmark = pytest.mark.timeout(60)
