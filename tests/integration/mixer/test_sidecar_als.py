"""sofamesh's `envoy.access_loggers.http_grpc` to `sofamesh mixer`: N requests through the
sidecar are N in the mixer's metrics; with the mixer stopped the sidecar serves as fast as
before and counts what it drops."""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import pytest

from tests.conftest import sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap, wait_metric
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"


def als_logger(flush: str, size: int | None = None) -> dict:
    common: dict = {
        "log_name": "mesh",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
        "buffer_flush_interval": flush,
    }
    if size is not None:
        common["buffer_size_bytes"] = size
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {"@type": ALS, "common_config": common},
    }


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _sidecar(tmp_path, mixer_port: int, app: int, **als) -> ProxyProcess:
    admin, listen = free_ports(2)
    b = http_bootstrap(
        node="checkout",
        admin=admin,
        listen=listen,
        app=app,
        mixer=mixer_port,
        access_log=[als_logger(**als)],
    )
    # sofamesh's gRPC client speaks HTTP/2 on its own; its HTTP pools do not yet (issue 9),
    # so the mixer cluster carries no http2_protocol_options here
    for c in b["static_resources"]["clusters"]:
        c.pop("typed_extension_protocol_options", None)
    return ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / "sidecar")


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def _stat(p: ProxyProcess, name: str) -> int:
    _, text = admin_get(p.bootstrap["admin"]["address"]["socket_address"]["port_value"], "/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


def _load(port: int, seconds: float) -> int:
    """Requests completed on one keep-alive connection in `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    n = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            conn.request("GET", "/x")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            n += 1
    finally:
        conn.close()
    return n


def test_n_requests_through_sofamesh_are_n_in_the_mixer(tmp_path, mixer_factory, upstream):
    mixer = mixer_factory()
    p = _sidecar(tmp_path, mixer.grpc_port, upstream.ports["a"], flush="0.2s").start()
    try:
        n = _load(_listen(p), 1.0)
        assert n > 50
        got = wait_metric(mixer, "istio_requests_total", n, source="checkout", destination="app")
        assert got == n
        assert mixer.metric("istio_requests_total", response_code="200") == n
        assert mixer.metric("istio_request_duration_milliseconds_count", reporter="checkout") == n
        assert _stat(p, "access_logs.grpc_access_log.logs_written") == n
        assert _stat(p, "access_logs.grpc_access_log.logs_dropped") == 0
    finally:
        p.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(p: ProxyProcess, seconds: float) -> tuple[int, float]:
    """(requests, sidecar CPU microseconds per request) over `seconds` of load."""
    c0 = _cpu_seconds(p.pid)
    n = _load(_listen(p), seconds)
    return n, (_cpu_seconds(p.pid) - c0) / n * 1e6


def test_mixer_stopped_sidecar_keeps_speed_and_counts_drops(tmp_path, mixer_factory, upstream):
    mixer = mixer_factory()
    p = _sidecar(tmp_path, mixer.grpc_port, upstream.ports["a"], flush="0.05s", size=2048).start()
    try:
        _load(_listen(p), 0.5)  # warm up, stream open
        # CPU per request, the least of three runs (other work on a shared box only adds)
        up = [_measured(p, 1.0) for _ in range(3)]
        assert _stat(p, "access_logs.grpc_access_log.logs_dropped") == 0
        mixer.stop()
        time.sleep(0.3)
        c0 = _cpu_seconds(p.pid)
        time.sleep(2.0)
        idle = _cpu_seconds(p.pid) - c0
        down = [_measured(p, 1.0) for _ in range(3)]
        dropped = _stat(p, "access_logs.grpc_access_log.logs_dropped")
        written = _stat(p, "access_logs.grpc_access_log.logs_written")
        served = _stat(p, "http.ingress.downstream_rq_total")
        cpu_up, cpu_down = min(c for _, c in up), min(c for _, c in down)
        print(
            f"mixer up: {[n for n, _ in up]} rq/s, {cpu_up:.1f} us CPU/rq; mixer down: "
            f"{[n for n, _ in down]} rq/s, {cpu_down:.1f} us CPU/rq; idle CPU {idle:.2f} s "
            f"in 2 s; written {written}, dropped {dropped}, served {served}"
        )
        # the mixer gone costs the request path nothing: no reconnect loop spinning while
        # idle, and CPU per request does not grow (it drops: no entries are encoded)
        assert idle < 0.1
        assert cpu_down <= 1.5 * cpu_up, (cpu_up, cpu_down)
        # all but what the bounded queue holds (64 batches of ~14 entries at 2048 bytes)
        assert dropped > 0
        assert dropped >= sum(n for n, _ in down) - 64 * 20
        # every request is written, dropped, or still in the bounded queue / buffer
        assert written + dropped <= served
        assert written + dropped >= served - 64 * 20
    finally:
        p.stop()


def test_mixer_restarted_the_sidecar_reconnects(tmp_path, mixer_factory, upstream):
    """The mixer goes away and comes back on its address: the sidecar's stream is made again
    (with backoff) and what is served afterwards is reported to the new mixer, all of it."""
    first = mixer_factory()
    port = first.grpc_port
    p = _sidecar(tmp_path, port, upstream.ports["a"], flush="0.05s").start()
    try:
        before = _load(_listen(p), 0.3)
        wait_metric(first, "istio_requests_total", before, source="checkout")
        first.stop()
        time.sleep(0.3)
        _load(_listen(p), 0.3)  # queued (bounded) or dropped while the mixer is gone
        second = mixer_factory(grpc_port=port)
        n = _load(_listen(p), 1.0)
        # at least the requests served after it came back arrive (the queued ones may too)
        assert wait_metric(second, "istio_requests_total", n, source="checkout", timeout=15) >= n
        deadline = time.monotonic() + 5
        while True:  # the last batch flushed
            served = _stat(p, "http.ingress.downstream_rq_total")
            written = _stat(p, "access_logs.grpc_access_log.logs_written")
            dropped = _stat(p, "access_logs.grpc_access_log.logs_dropped")
            if written + dropped == served or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # every request was reported to one of the mixers, or counted as dropped
        assert written + dropped == served
        got = wait_metric(second, "istio_requests_total", written - before, source="checkout")
        assert got == written - before
    finally:
        p.stop()
