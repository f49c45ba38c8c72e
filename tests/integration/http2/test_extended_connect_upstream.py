"""WebSocket to an HTTP/2 upstream: the proxy under test (Envoy 1.40 or sofamesh, one
bootstrap) routes a WebSocket, asked for over HTTP/1.1 (`Upgrade: websocket`) or over
HTTP/2 (extended CONNECT, RFC 8441), to a cluster that speaks HTTP/2 only, where it must go
as an extended CONNECT stream (`:method CONNECT`, `:protocol websocket`). Behind that
cluster an Envoy 1.40 takes extended CONNECT (`allow_connect`) and hands the socket to the
recording upstream's WebSocket echo as an HTTP/1.1 upgrade.

What is compared: what the client gets (the 101 or the 200, its headers, the echo of two
messages), what the echo server was asked, and the proxy's counters."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.http_filters.conftest import bootstrap
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream

from .test_extended_connect import websocket

VOLATILE = {"date", "x-envoy-upstream-service-time", "server", "x-request-id"}
H2 = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
}
WS_HCM = {
    "codec_type": "AUTO",
    "http2_protocol_options": {"allow_connect": True},
    "upgrade_configs": [{"upgrade_type": "websocket"}],
}


def _h1_websocket(port: int) -> list:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    out: list = []
    try:
        s.sendall(
            b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"x-upstream-action: ws\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                out.append(("closed", got))
                return out
            got += chunk
        head, _, rest = got.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = sorted(
            (k.lower(), v.strip())
            for k, _, v in (ln.partition(":") for ln in lines[1:])
            if k.lower() not in VOLATILE
        )
        out.append((lines[0], fields))
        echoed = rest
        for msg in (b"hello", b"again"):
            s.sendall(msg)
            deadline = time.monotonic() + 5
            while not echoed.endswith(b"echo:" + msg) and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    out.append("closed")
                    return out
                echoed += chunk
        out.append(("echoed", echoed))
    except ConnectionResetError:
        # the connection closed after a refusal: Envoy resets it when the client's bytes
        # arrive after its close, sofamesh reads and drops them first (its delayed close,
        # tests/integration/proxy/test_delayed_close.py): either way, closed
        out.append("closed")
    except OSError as e:
        out.append(("error", type(e).__name__))
    finally:
        s.close()
    return out


def _backend(tmp_path_factory, hcm: dict):
    up = RecordingUpstream(["a"]).start()
    admin, port = free_port(), free_port()
    boot = bootstrap(port, admin, up.ports["a"], [], hcm_extra=hcm)
    proc = ProxyProcess.envoy(envoy_binary(), boot, tmp_path_factory.mktemp("backend"))
    with proc:
        yield port, up
    up.stop()


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The HTTP/2 WebSocket server: Envoy taking extended CONNECT, in front of the echo."""
    yield from _backend(tmp_path_factory, WS_HCM)


@pytest.fixture(scope="module")
def backend_no_ws(tmp_path_factory):
    """An HTTP/2 server that takes extended CONNECT but not WebSocket: its 403."""
    yield from _backend(tmp_path_factory, {**WS_HCM, "upgrade_configs": []})


def run(kind: str, tmp_path, backend, client) -> dict:
    port_b, up = backend
    before = len(up.snapshot())
    admin, port = free_port(), free_port()
    boot = bootstrap(port, admin, port_b, [], hcm_extra=WS_HCM, cluster_extra=H2)
    wd = tmp_path / kind
    proc = (
        ProxyProcess.envoy(envoy_binary(), boot, wd)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), boot, wd)
    )
    with proc:
        seen = client(port)
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
            stats = r.read().decode()
    asked = [
        (
            r.method,
            r.target,
            sorted(
                (k.lower(), "V" if k.lower() in VOLATILE else v)
                for k, v in r.headers
                if k.lower() != "x-forwarded-for"
            ),
        )
        for r in up.snapshot()[before:]
    ]
    counters = {
        name: int(value)
        for name, _, value in (ln.partition(": ") for ln in stats.splitlines())
        if name
        in (
            "http.ingress.downstream_cx_upgrades_total",
            "http.ingress.downstream_rq_response_before_rq_complete",
            "http.ingress.downstream_cx_destroy_local",
            "cluster.backend.upstream_cx_http2_total",
            "cluster.backend.upstream_rq_total",
        )
    }
    return {"client": seen, "upstream": asked, "counters": counters}


@pytest.mark.parametrize("client", [_h1_websocket, websocket], ids=["h1", "h2"])
def test_websocket_to_an_h2_upstream_as_envoy(tmp_path, backend, client):
    envoy = run("envoy", tmp_path, backend, client)
    ours = run("sofamesh", tmp_path, backend, client)
    assert envoy["client"][-1] == ("echoed", b"echo:helloecho:again"), envoy
    # the client's own form of "taken": HTTP/1.1's 101 with its accept key, HTTP/2's 200
    first = envoy["client"][0]
    assert first[0] == "HTTP/1.1 101 Switching Protocols" or envoy["client"][1][1][0] == (
        ":status",
        "200",
    )
    assert envoy["upstream"][0][:2] == ("GET", "/chat")
    assert envoy["counters"]["cluster.backend.upstream_cx_http2_total"] == 1
    assert ours == envoy


@pytest.mark.parametrize("client", [_h1_websocket, websocket], ids=["h1", "h2"])
def test_websocket_refused_by_the_h2_upstream_as_envoy(tmp_path, backend_no_ws, client):
    envoy = run("envoy", tmp_path, backend_no_ws, client)
    ours = run("sofamesh", tmp_path, backend_no_ws, client)
    first = envoy["client"][0]
    assert "403" in first[0] or envoy["client"][1][1][0] == (":status", "403"), envoy
    assert envoy["upstream"] == []
    assert ours == envoy


pytestmark = pytest.mark.timeout(120)
