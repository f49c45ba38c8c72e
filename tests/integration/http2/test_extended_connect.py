"""WebSocket over HTTP/2 (extended CONNECT, RFC 8441) against Envoy 1.40, an h2c client in
front and an HTTP/1.1 WebSocket upstream behind (the recording upstream's `ws` mode: it
answers 101 and echoes what it reads).

- `http2_protocol_options.allow_connect` advertises SETTINGS_ENABLE_CONNECT_PROTOCOL; with
  `upgrade_configs: websocket` a `CONNECT :protocol websocket` stream reaches the upstream
  as the HTTP/1.1 upgrade it stands for (GET, `upgrade: websocket`, `connection: upgrade`),
  its 101 comes back as `:status 200` without the connection headers, and DATA frames
  carry the bytes both ways.
- Without allow_connect, :protocol is not allowed: the connection ends with no answer and
  nothing reaches the upstream (Envoy closes it; sofamesh says GOAWAY PROTOCOL_ERROR first).
- Without the websocket upgrade: GOAWAY (the connection drained), 403, the stream reset
  with NO_ERROR, and `downstream_rq_ws_on_non_ws_route`.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.http_filters.conftest import bootstrap as http_filters_bootstrap
from tests.support.envoy import ProxyProcess
from tests.support.h2raw import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    RST_STREAM,
    H2Client,
    data,
    headers,
)
from tests.support.http_upstream import RecordingUpstream

VOLATILE = {"date", "x-envoy-upstream-service-time", "server", "x-request-id"}


def bootstrap(admin: int, port: int, upstream: int, allow: bool, ws: bool) -> dict:
    """The http_filters tests' bootstrap (a router only), with the options under test."""
    hcm: dict = {"codec_type": "AUTO"}
    if allow:
        hcm["http2_protocol_options"] = {"allow_connect": True}
    if ws:
        hcm["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    return http_filters_bootstrap(port, admin, upstream, [], hcm_extra=hcm)


def websocket(port: int) -> list:
    """The client's view: SETTINGS_ENABLE_CONNECT_PROTOCOL, then each frame of stream 1
    (and GOAWAY) until the echo of two messages, a reset, or the connection's end."""
    out: list = []
    with H2Client(port) as c:
        c.handshake()
        out.append(("enable_connect_protocol", c.server_settings.get(8, 0)))
        fields = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", "/chat"),
            (":authority", "x"),
            ("x-upstream-action", "ws"),
            ("sec-websocket-version", "13"),
        ]
        c.send(headers(1, c.block(fields), END_HEADERS))
        sent = [b"hello", b"again"]
        echoed = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            f = c.read_frame(0.5)
            if f is None:
                if c.eof:
                    out.append("closed")
                    break
                continue
            if f.type == GOAWAY:
                out.append(("GOAWAY", "sent" if f.code else "NO_ERROR"))
            elif f.sid != 1:
                continue
            elif f.type == HEADERS:
                fields = sorted((k, v) for k, v in f.fields or [] if k not in VOLATILE)
                out.append(("HEADERS", fields, bool(f.flags & END_STREAM)))
                if f.flags & END_STREAM:
                    continue
                c.send(data(1, sent.pop(0)))
            elif f.type == DATA:
                echoed += f.payload
                if sent:
                    c.send(data(1, sent.pop(0)))
                elif echoed.endswith(b"again"):
                    out.append(("echoed", echoed))
                    break
            elif f.type == RST_STREAM:
                out.append(("RST_STREAM", f.code))
                break
    return out


def run(kind: str, tmp_path, allow: bool, ws: bool) -> dict:
    up = RecordingUpstream(["a"]).start()
    try:
        admin, port = free_port(), free_port()
        boot = bootstrap(admin, port, up.ports["a"], allow, ws)
        wd = tmp_path / f"{kind}-{allow}-{ws}"
        proc = (
            ProxyProcess.envoy(envoy_binary(), boot, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, wd)
        )
        with proc:
            frames = websocket(port)
            time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
                stats = r.read().decode()
        seen = [
            (
                r.method,
                r.target,
                sorted((k.lower(), "V" if k.lower() in VOLATILE else v) for k, v in r.headers),
            )
            for r in up.snapshot()
        ]
        counters = {
            name: int(value)
            for name, _, value in (ln.partition(": ") for ln in stats.splitlines())
            if name
            in (
                "http.ingress.downstream_cx_upgrades_total",
                "http.ingress.downstream_rq_ws_on_non_ws_route",
            )
        }
        return {"frames": frames, "upstream": seen, "counters": counters}
    finally:
        up.stop()


def _no_goaway(r: dict) -> dict:
    """A refused :protocol: Envoy closes the connection, sofamesh sends GOAWAY first."""
    return dict(r, frames=[f for f in r["frames"] if not (f and f[0] == "GOAWAY")])


def test_websocket_over_h2_as_envoy(tmp_path):
    envoy = run("envoy", tmp_path, True, True)
    ours = run("sofamesh", tmp_path, True, True)
    assert envoy["frames"][0] == ("enable_connect_protocol", 1)
    assert envoy["frames"][1][0] == "HEADERS" and envoy["frames"][1][1][0] == (":status", "200")
    assert envoy["frames"][-1] == ("echoed", b"echo:helloecho:again")
    assert envoy["upstream"][0][:2] == ("GET", "/chat")
    assert ("upgrade", "websocket") in envoy["upstream"][0][2]
    assert envoy["counters"]["http.ingress.downstream_cx_upgrades_total"] == 1
    assert ours == envoy


@pytest.mark.parametrize(("allow", "ws"), [(False, True), (True, False)])
def test_refused_as_envoy(tmp_path, allow, ws):
    envoy = run("envoy", tmp_path, allow, ws)
    ours = run("sofamesh", tmp_path, allow, ws)
    assert envoy["upstream"] == [] and ours["upstream"] == []
    if not allow:
        assert envoy["frames"] == [("enable_connect_protocol", 0), "closed"]
        assert ours["frames"] == [
            ("enable_connect_protocol", 0),
            ("GOAWAY", "sent"),
            "closed",
        ]
        assert _no_goaway(ours) == envoy
    else:
        assert ("HEADERS", [(":status", "403")], True) in envoy["frames"]
        assert envoy["counters"]["http.ingress.downstream_rq_ws_on_non_ws_route"] == 1
        assert ours == envoy


pytestmark = pytest.mark.timeout(120)
