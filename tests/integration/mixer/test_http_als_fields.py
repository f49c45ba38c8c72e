"""envoy.access_loggers.http_grpc, sofamesh against Envoy 1.40: the same bootstrap through
both, each sending to a recording access log service; the HTTPAccessLogEntry of the same
requests compared field by field. sofamesh encodes these entries itself, straight to wire
bytes (_core/als_wire), so this is what proves that encoding reads the right stream fields."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap
from tests.integration.mixer.test_tcp_grpc_access_log import RecordingAls
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _bootstrap(node: str, app: int, als: int) -> dict:
    admin, listen = free_ports(2)
    logger = {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": ALS,
            "common_config": {
                "log_name": "fields",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
                "buffer_flush_interval": "0.1s",
            },
        },
    }
    return http_bootstrap(
        node=node, admin=admin, listen=listen, app=app, mixer=als, access_log=[logger]
    )


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def _requests(port: int) -> list[int]:
    """A GET, a POST with a body, a 404 from the upstream and a HEAD, each on its own
    connection; returns the client ports (to find their entries)."""
    ports = []
    for method, path, body, headers in (
        ("GET", "/shop/cart?id=7", None, {"host": "shop.local"}),
        ("POST", "/orders", b"x" * 1234, {"host": "orders.local:8080"}),
        ("GET", "/missing", None, {"host": "a", "x-upstream-action": "status=404"}),
        ("HEAD", "/head", None, {"host": "head.local"}),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.connect()
        ports.append(conn.sock.getsockname()[1])
        conn.putrequest(method, path, skip_host="host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        r.read()
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    return ports


def _entries(als: RecordingAls, ports: list[int], timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        got = {
            e.common_properties.downstream_remote_address.socket_address.port_value: e
            for m in list(als.messages)
            for e in m.http_logs.log_entry
        }
        if all(p in got for p in ports) or time.monotonic() > deadline:
            return [got.get(p) for p in ports]
        time.sleep(0.1)


def _shape(e) -> dict:
    c, rq, rs = e.common_properties, e.request, e.response
    return {
        "protocol_version": e.protocol_version,
        "method": rq.request_method,
        "scheme": rq.scheme,
        "authority": rq.authority,
        "path": rq.path,
        "request_body_bytes": rq.request_body_bytes,
        "response_code": rs.response_code.value,
        "response_body_bytes": rs.response_body_bytes,
        "upstream_cluster": c.upstream_cluster,
        "upstream_address": (
            c.upstream_remote_address.socket_address.address,
            c.upstream_remote_address.socket_address.port_value,
        ),
        "downstream_ip": c.downstream_remote_address.socket_address.address,
        "has_start_time": c.start_time.seconds > 1_700_000_000,
        "has_duration": c.HasField("duration"),
    }


def test_http_entries_as_envoy_fills_them(tmp_path, upstream):
    shapes = {}
    for kind in ("envoy", "sofamesh"):
        with RecordingAls() as als:
            b = _bootstrap(kind, upstream.ports["a"], als.port)
            if kind == "envoy":
                p = ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind)
            else:
                p = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind)
            p.start()
            try:
                ports = _requests(_listen(p))
                entries = _entries(als, ports)
            finally:
                p.stop()
            assert all(e is not None for e in entries), (kind, entries)
            shapes[kind] = [_shape(e) for e in entries]
            # the stream's first message names the node and the log
            first = als.messages[0].identifier
            assert (first.node.id, first.log_name) == (kind, "fields")
    envoy, ours = shapes["envoy"], shapes["sofamesh"]
    assert envoy[0]["path"] == "/shop/cart?id=7" and envoy[1]["request_body_bytes"] == 1234
    assert envoy[2]["response_code"] == 404
    for want, got in zip(envoy, ours):
        assert got == want
