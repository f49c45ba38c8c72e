"""HCM `request_headers_timeout` against Envoy 1.40: a client that trickles its request head
gets Envoy's 408 "request header timeout" (connection: close) once the head is that old,
counted in `downstream_rq_header_timeout`; a head that completes in time is served."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.admin.helpers import BOOTSTRAP, get, start_envoy, start_sofamesh, stop
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports


def _exercise(kind: str, tmp_path, upstream: int) -> dict:
    admin, port = free_ports(2)
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(
        BOOTSTRAP.format(admin=admin, port=port, upstream=upstream).replace(
            "          stat_prefix: ingress_http\n",
            "          stat_prefix: ingress_http\n          request_headers_timeout: 0.5s\n",
        )
    )
    proc = start_envoy(cfg, admin) if kind == "envoy" else start_sofamesh(cfg, admin)
    try:
        out: dict = {}
        # trickled: a byte every 0.1 s, never finishing
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(3)
        t0 = time.monotonic()
        head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: "
        got = b""
        for b in head:
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            s.setblocking(False)
            try:
                got = s.recv(1000)
            except BlockingIOError:
                got = b""
            s.setblocking(True)
            if got:
                break
            time.sleep(0.1)
        s.settimeout(3)
        while got and not got.endswith(b"request header timeout"):
            more = s.recv(1000)
            if not more:
                break
            got += more
        took = time.monotonic() - t0
        status, _, rest = got.partition(b"\r\n")
        headers = {
            k.lower(): v
            for k, _, v in (
                line.partition(b": ") for line in rest.split(b"\r\n\r\n")[0].split(b"\r\n")
            )
            if k.lower() in (b"connection", b"content-type", b"content-length")
        }
        out["trickled"] = (status, headers, got.rsplit(b"\r\n\r\n", 1)[-1])
        out["timed_out_near_0_5s"] = 0.4 < took < 2.0
        s.close()
        # in time: served
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        s.sendall(b"\r\n")
        s.settimeout(3)
        out["in_time"] = s.recv(1000).split(b"\r\n", 1)[0]
        s.close()
        _, body = get(admin, "/stats")
        for line in body.splitlines():
            if line.startswith("http.ingress_http.downstream_rq_header_timeout:"):
                out["counted"] = int(line.rsplit(" ", 1)[1])
        return out
    finally:
        stop(proc)


def test_request_headers_timeout_as_envoy(tmp_path):
    up = RecordingUpstream(["a"]).start()
    try:
        envoy = _exercise("envoy", tmp_path, up.ports["a"])
        ours = _exercise("sofamesh", tmp_path, up.ports["a"])
    finally:
        up.stop()
    assert envoy["trickled"][0] == b"HTTP/1.1 408 Request Timeout"
    assert envoy["counted"] == 1 and envoy["in_time"] == b"HTTP/1.1 200 OK"
    assert ours == envoy


pytestmark = pytest.mark.timeout(60)
