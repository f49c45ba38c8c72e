"""envoy.access_loggers.tcp_grpc on tcp_proxy, sofamesh against Envoy 1.40: the same bootstrap
through both, each sending to a recording access log service; the entries of the same
connections compared field by field (addresses, bytes each way, upstream cluster, duration,
type, flags). Then both report to `sofamesh mixer`, which counts the connections and bytes;
and with the service gone, sofamesh keeps proxying and counts the entries it drops."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent import futures
from typing import Self

import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.mixer.conftest import mixer_cluster, wait_metric
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.servers import free_ports

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"


class RecordingAls(als_pb2_grpc.AccessLogServiceServicer):
    """An access log service that keeps every message it receives."""

    def __init__(self):
        self.messages: list = []
        self._cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def StreamAccessLogs(self, request_iterator, context):
        for m in request_iterator:
            with self._cond:
                self.messages.append(m)
                self._cond.notify_all()
        return als_pb2.StreamAccessLogsResponse()

    def tcp_entries(self, n: int, ports: set[int], timeout: float = 15.0) -> list:
        """At least `n` TCP entries of connections from these client `ports` (the proxy's
        readiness probe connects too), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [
                    e
                    for m in self.messages
                    for e in m.tcp_logs.log_entry
                    if _addr(e.common_properties.downstream_remote_address)[1] in ports
                ]
                if len(got) >= n or time.monotonic() > deadline:
                    return got
                self._cond.wait(0.1)

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)


class DoublingEcho:
    """A TCP upstream that answers each read with the bytes twice."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        with c:
            while data := c.recv(65536):
                c.sendall(data * 2)

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    e = DoublingEcho()
    yield e
    e.close()


def _cluster(name: str, port: int) -> dict:
    c = mixer_cluster(port)
    if name != "mixer":
        c = {k: v for k, v in c.items() if k != "typed_extension_protocol_options"}
    c["name"] = c["load_assignment"]["cluster_name"] = name
    return c


def tcp_bootstrap(node: str, app: int, als: int, flush: str = "0.1s", size: int | None = None):
    admin, listen = free_ports(2)
    common: dict = {
        "log_name": "tcplog",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
        "buffer_flush_interval": flush,
    }
    if size is not None:
        common["buffer_size_bytes"] = size
    proxy = {
        "@type": TCP_PROXY,
        "stat_prefix": "tcp",
        "cluster": "app",
        "access_log": [
            {
                "name": "envoy.access_loggers.tcp_grpc",
                "typed_config": {"@type": TCP_GRPC, "common_config": common},
            }
        ],
    }
    return {
        "node": {"id": node, "cluster": node},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "tcp",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster("app", app), _cluster("mixer", als)],
        },
    }


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def _conversation(port: int, hold: float = 0.3) -> dict:
    """5 bytes then 8 bytes out, each answered doubled; what the client knows of it."""
    t0 = time.time()
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = c.getsockname()
    got = b""
    for chunk in (b"hello", b"12345678"):
        c.sendall(chunk)
        want = len(got) + 2 * len(chunk)
        while len(got) < want:
            data = c.recv(1024)
            assert data, "connection closed early"
            got += data
        time.sleep(hold / 2)
    c.close()
    return {"start": t0, "duration": time.time() - t0, "client": client, "reply": got}


def _addr(a) -> tuple[str, int]:
    return a.socket_address.address, a.socket_address.port_value


def _shape(e) -> dict:
    """An entry with what differs between two connections replaced by its kind."""
    c = e.common_properties
    d = {f.name: v for f, v in c.ListFields()}
    for k in (
        "downstream_remote_address",
        "downstream_direct_remote_address",
        "downstream_local_address",
        "upstream_remote_address",
        "upstream_local_address",
    ):
        if k in d:
            d[k] = "address"
    for k in ("start_time", "duration", "stream_id"):
        if k in d:
            d[k] = k
    d["response_flags"] = sorted(f.name for f, _ in c.response_flags.ListFields())
    d["connection_properties"] = {f.name: v for f, v in e.connection_properties.ListFields()}
    return d


def _start_pair(tmp_path, app: int, als: tuple[int, int], **kw) -> list[ProxyProcess]:
    e = ProxyProcess.envoy(
        envoy_binary(), tcp_bootstrap("sidecar", app, als[0], **kw), tmp_path / "envoy"
    ).start()
    try:
        s = ProxyProcess.sofamesh(
            sofamesh_command(), tcp_bootstrap("sidecar", app, als[1], **kw), tmp_path / "sofamesh"
        ).start()
    except Exception:
        e.stop()
        raise
    return [e, s]


def test_tcp_entries_as_envoy_fills_them(tmp_path, echo):
    with RecordingAls() as e_als, RecordingAls() as s_als:
        procs = _start_pair(tmp_path, echo.port, (e_als.port, s_als.port))
        shapes: list = []
        try:
            for p, als in zip(procs, (e_als, s_als), strict=True):
                seen = [_conversation(_listen(p)) for _ in range(2)]
                assert all(c["reply"] == b"hellohello" + b"12345678" * 2 for c in seen)
                entries = als.tcp_entries(2, {c["client"][1] for c in seen})
                assert len(entries) == 2, p.name
                shapes.append([_shape(e) for e in entries])
                first = next(m for m in als.messages if m.HasField("identifier"))
                assert first.identifier.log_name == "tcplog"
                assert first.identifier.node.id == "sidecar"
                assert first.identifier.node.cluster == "sidecar"
                by_port = {
                    _addr(e.common_properties.downstream_remote_address)[1]: e for e in entries
                }
                for conv in seen:
                    e = by_port[conv["client"][1]]
                    c = e.common_properties
                    assert _addr(c.downstream_remote_address) == conv["client"]
                    assert _addr(c.downstream_direct_remote_address) == conv["client"]
                    assert _addr(c.downstream_local_address) == ("127.0.0.1", _listen(p))
                    assert _addr(c.upstream_remote_address) == ("127.0.0.1", echo.port)
                    up_local = _addr(c.upstream_local_address)
                    assert up_local[0] == "127.0.0.1" and up_local[1] > 0
                    assert c.upstream_cluster == "app"
                    assert e.connection_properties.received_bytes == 13
                    assert e.connection_properties.sent_bytes == 26
                    start = c.start_time.ToNanoseconds() / 1e9
                    assert abs(start - conv["start"]) < 0.5, (p.name, start, conv["start"])
                    dur = c.duration.ToNanoseconds() / 1e9
                    assert 0.25 <= dur <= conv["duration"] + 0.5, (p.name, dur, conv)
                    uuid.UUID(c.stream_id)
            assert shapes[0] == shapes[1]
            # closed both ways, the connections are gone (none left half-open)
            for p in procs:
                deadline = time.monotonic() + 5
                while _stat(p, "tcp.tcp.downstream_cx_active") and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _stat(p, "tcp.tcp.downstream_cx_active") == 0, p.name
        finally:
            for p in procs:
                p.stop()


def test_upstream_down_entry_as_envoy(tmp_path):
    down = free_port()  # nothing listens there
    with RecordingAls() as e_als, RecordingAls() as s_als:
        procs = _start_pair(tmp_path, down, (e_als.port, s_als.port))
        try:
            shapes = []
            for p, als in zip(procs, (e_als, s_als), strict=True):
                c = socket.create_connection(("127.0.0.1", _listen(p)), timeout=10)
                c.settimeout(10)
                port = c.getsockname()[1]
                assert c.recv(10) == b""  # closed when the upstream connect fails
                c.close()
                shapes.append([_shape(e) for e in als.tcp_entries(1, {port})])
            envoy, sofa = shapes
            assert len(envoy) == 1
            assert envoy[0]["response_flags"] == [
                "upstream_connection_failure",
                "upstream_retry_limit_exceeded",
            ]
            assert envoy == sofa
        finally:
            for p in procs:
                p.stop()


def _stat(p: ProxyProcess, name: str) -> int:
    _, text = admin_get(p.bootstrap["admin"]["address"]["socket_address"]["port_value"], "/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


def test_mixer_counts_tcp_connections_of_both(tmp_path, mixer_factory, echo):
    mixer = mixer_factory()
    e = ProxyProcess.envoy(
        envoy_binary(), tcp_bootstrap("envoy-side", echo.port, mixer.grpc_port), tmp_path / "e"
    ).start()
    s = ProxyProcess.sofamesh(
        sofamesh_command(), tcp_bootstrap("sofa-side", echo.port, mixer.grpc_port), tmp_path / "s"
    ).start()
    try:
        n = 7
        for p in (e, s):
            for _ in range(n):
                _conversation(_listen(p), hold=0)
        # + 1: the readiness probe's connection (ProxyProcess.start), closed at once
        for node in ("envoy-side", "sofa-side"):
            got = wait_metric(mixer, "istio_tcp_connections_closed_total", n + 1, reporter=node)
            assert got == n + 1, node
            labels = {"reporter": node, "destination": "app"}
            assert mixer.metric("istio_tcp_received_bytes_total", **labels) == 13 * n
            assert mixer.metric("istio_tcp_sent_bytes_total", **labels) == 26 * n
        assert _stat(s, "access_logs.grpc_access_log.logs_written") == n + 1
        assert _stat(s, "access_logs.grpc_access_log.logs_dropped") == 0
    finally:
        e.stop()
        s.stop()


def test_service_gone_connections_served_and_drops_counted(tmp_path, echo):
    """buffer_size_bytes 1: every entry is a batch of its own; the bounded queue (64 batches)
    fills and the rest are dropped and counted, while every connection is proxied."""
    down = free_port()
    s = ProxyProcess.sofamesh(
        sofamesh_command(),
        tcp_bootstrap("sidecar", echo.port, down, flush="10s", size=1),
        tmp_path / "s",
    ).start()
    try:
        n = 100
        for _ in range(n):
            assert _conversation(_listen(s), hold=0)["reply"] == b"hellohello" + b"12345678" * 2
        deadline = time.monotonic() + 10
        while _stat(s, "access_logs.grpc_access_log.logs_dropped") < n - 64:
            assert time.monotonic() < deadline, _stat(s, "access_logs.grpc_access_log.logs_dropped")
            time.sleep(0.1)
        dropped = _stat(s, "access_logs.grpc_access_log.logs_dropped")
        assert n + 1 - 64 <= dropped <= n + 1  # + 1: the readiness probe's connection
        assert _stat(s, "access_logs.grpc_access_log.logs_written") == 0
        assert _stat(s, "tcp.tcp.downstream_cx_total") == n + 1
    finally:
        s.stop()
