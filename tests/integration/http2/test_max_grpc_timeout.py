"""`RouteAction.max_grpc_timeout` / `grpc_timeout_offset` (istiod writes `max_grpc_timeout:
0s` with `timeout: 0s` on every route), as Envoy 1.40 acts on them: a gRPC request's
grpc-timeout (less the offset when that leaves more than 0), capped by max_grpc_timeout
unless it is 0, is the router's timeout: the request times out there, and the upstream is
told it in x-envoy-expected-rq-timeout-ms and grpc-timeout. Envoy and sofamesh run the
same bootstrap; what the client and the gRPC server see is compared."""

from __future__ import annotations

import socket
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.http2.conftest import bootstrap, h2_request
from tests.support.envoy import ProxyProcess

SERVICE = "sofamesh.test.Slow"


class _Slow:
    """An HTTP/2 server (the `h2` library) answering gRPC-shaped requests after the seconds
    its x-sleep header names (an empty message, grpc-status 0). It records each request's
    x-envoy-expected-rq-timeout-ms and grpc-timeout exactly as they arrived, and, unlike a
    gRPC server, never enforces the deadline itself (so only the proxy times out)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        lock = threading.Lock()
        conn.initiate_connection()
        c.sendall(conn.data_to_send())
        heads: dict[int, dict] = {}

        def answer(sid: int, secs: float) -> None:
            time.sleep(secs)
            with lock:
                try:
                    conn.send_headers(
                        sid, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                    conn.send_data(sid, b"\0\0\0\0\0")
                    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                    c.sendall(conn.data_to_send())
                except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError, OSError):
                    pass

        try:
            while data := c.recv(65536):
                with lock:
                    events = conn.receive_data(data)
                    for ev in events:
                        if isinstance(ev, h2.events.RequestReceived):
                            heads[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                        elif isinstance(ev, h2.events.DataReceived):
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, h2.events.StreamEnded):
                            h = heads.pop(ev.stream_id)
                            self.seen[h["x-key"]] = (
                                h.get("x-envoy-expected-rq-timeout-ms"),
                                h.get("grpc-timeout"),
                            )
                            threading.Thread(
                                target=answer, args=(ev.stream_id, float(h["x-sleep"])), daemon=True
                            ).start()
                    c.sendall(conn.data_to_send())
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.sock.close()


def _vhost(name: str, route: dict) -> dict:
    return {
        "name": name,
        "domains": [name],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "grpc", **route}}],
    }


VHOSTS = [
    _vhost("istio", {"timeout": "0s", "max_grpc_timeout": "0s"}),
    # the route's own timeout does not apply to a gRPC request under max_grpc_timeout
    _vhost("routeto", {"timeout": "0.4s", "max_grpc_timeout": "0s"}),
    _vhost(
        "capped",
        {"timeout": "5s", "max_grpc_timeout": "0.6s", "grpc_timeout_offset": "0.1s"},
    ),
    # no max_grpc_timeout: the route timeout, grpc-timeout passed through
    _vhost("plain", {"timeout": "0.5s"}),
]

# (vhost, grpc-timeout header or None, seconds the server sleeps)
CASES = (
    ("istio", "400m", 3),  # times out at the header's 400 ms
    ("istio", None, 0.8),  # no header, no timeout: the slow answer arrives
    ("istio", "2S", 0),  # fast answer, the header told upstream in ms
    ("routeto", None, 0.8),
    ("routeto", "300m", 3),
    ("capped", "5S", 3),  # capped at 600 ms
    ("capped", "300m", 0),  # less the 100 ms offset
    ("capped", "50m", 0),  # the offset would leave nothing: not applied
    ("capped", None, 0),  # no header: the cap
    ("plain", "300m", 0),
    ("plain", None, 3),  # the route's 500 ms
)


def _call(port: int, host: str, timeout: str | None, key: str, secs: float) -> tuple:
    msg = b"hello"
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/{SERVICE}/Sleep"),
        (":authority", host),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-key", key),
        ("x-sleep", str(secs)),
    ]
    if timeout:
        headers.append(("grpc-timeout", timeout))
    t0 = time.monotonic()
    r = h2_request(port, headers, b"\0" + struct.pack(">I", len(msg)) + msg, timeout=15)
    took = time.monotonic() - t0
    head = dict(r["headers"] or [])
    tail = dict(r["trailers"] or [])
    status = head.get("grpc-status", tail.get("grpc-status"))
    message = head.get("grpc-message", tail.get("grpc-message"))
    return (head.get(":status"), status, message), took


@pytest.mark.parametrize("kind", ["sofamesh"])
def test_max_grpc_timeout_as_envoy(tmp_path, kind):
    got: dict[str, list] = {}
    for who in ("envoy", kind):
        slow = _Slow()
        grpc_port = slow.port
        port, admin = free_port(), free_port()
        boot = bootstrap(port, admin, grpc_port, free_port(), free_port())
        boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"
        ]["virtual_hosts"] = VHOSTS
        if who == "envoy":
            proc = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / who)
        else:
            proc = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / who)
        proc.start()
        try:
            rows = []
            for i, (host, hdr, secs) in enumerate(CASES):
                answer, took = _call(port, host, hdr, f"k{i}", secs)
                expected, left = slow.seen.get(f"k{i}", (None, None))
                rows.append((host, hdr, answer, expected, took, left))
        finally:
            proc.stop()
            slow.stop()
        got[who] = rows
    for e, s in zip(got["envoy"], got[kind], strict=True):
        # the client's answer, and x-envoy-expected-rq-timeout-ms and grpc-timeout as the
        # upstream got them: equal
        assert (s[:4], s[5]) == (e[:4], e[5]), (e, s)
        # when it answered (the timeouts): within 250 ms of Envoy's
        assert abs(s[4] - e[4]) < 0.25, (e, s)
    rows = {(h, t): r for h, t, *r in got["envoy"]}
    # Envoy's behaviour, spelled out
    timed_out = ("200", "14", "upstream request timeout")
    assert rows[("istio", "400m")][:2] == [timed_out, "400"]
    assert 0.35 < rows[("istio", "400m")][2] < 1.5
    assert rows[("istio", None)][0] == ("200", "0", None)
    assert rows[("routeto", None)][0] == ("200", "0", None)
    assert rows[("capped", "5S")][0] == timed_out
    assert rows[("capped", "300m")][1] == "200"
    assert rows[("capped", "50m")][1] == "50"
    assert rows[("capped", None)][1] == "600"
