"""gRPC active health checks (grpc.health.v1 over HTTP/2) against grpcio's own health
servers (grpcio-health-checking): SERVING is healthy; NOT_SERVING or an unknown service
(NOT_FOUND) is an active failure, unhealthy after one check; a stopped server is a network
failure, counted toward unhealthy_threshold. service_name reaches the server (`authority`
is set as the channel's default authority; grpcio's server API does not show it).

Not compared with Envoy here: Envoy requires HTTP/2 protocol options on a cluster with a
gRPC health check, which sofamesh refuses (no HTTP/2 upstream yet), so the two cannot run
one bootstrap (DIVERGENCES: sofamesh accepts gRPC checks on any cluster)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.conftest import sofamesh_command
from tests.integration.health.helpers import bootstrap, hc_stats, host_flags, wait_flags
from tests.support.envoy import ProxyProcess, admin_port

INTERVAL = 0.2


class GrpcHealthServer:
    """grpcio's HealthServicer on 127.0.0.1:0 in a thread of its own; counts calls."""

    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self.checks = 0
        self.servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        self.started = threading.Event()
        self.port = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> None:
        up = self

        class Recorder(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details):
                if details.method == "/grpc.health.v1.Health/Check":
                    up.checks += 1
                return await continuation(details)

        self.server = grpc.aio.server(interceptors=[Recorder()])
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    def set(self, status: int) -> None:
        self.servicer.set("svc", status)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(5)

    def restart(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _hc(service: str = "svc") -> dict:
    return {
        "timeout": "1s",
        "interval": f"{INTERVAL}s",
        "no_traffic_interval": f"{INTERVAL}s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
        "grpc_health_check": {"service_name": service, "authority": "health.example"},
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_grpc_health_check(tmp_path, workers):
    """With 2 workers the checks (grpcio's client) run in the pool's main process."""
    srv = [GrpcHealthServer() for _ in range(3)]
    b = bootstrap([s.port for s in srv], _hc())
    try:
        with ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path, concurrency=workers):
            a = admin_port(b)
            # with 2 workers /clusters is read from the workers, which apply the main
            # process's first results a moment after it is LIVE (CI, 2026-12-04)
            deadline = time.monotonic() + (3.0 if workers > 1 else 0.0)
            while sorted(host_flags(a).values()) != ["healthy"] * 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sorted(host_flags(a).values()) == ["healthy"] * 3
            assert srv[0].checks > 0
            # NOT_SERVING: an active failure, out after one check
            srv[1].set(health_pb2.HealthCheckResponse.NOT_SERVING)
            assert wait_flags(a, srv[1].port, "/failed_active_hc", 2.0) < INTERVAL + 0.3
            s = hc_stats(a)
            assert s["health_check.failure"] >= 1 and s["health_check.network_failure"] == 0
            assert s["health_check.healthy"] == 2 and s["membership_healthy"] == 2
            srv[1].set(health_pb2.HealthCheckResponse.SERVING)
            assert INTERVAL * 0.5 < wait_flags(a, srv[1].port, "healthy", 2.0) < 3 * INTERVAL + 0.3
            # a server gone: network failures, out after unhealthy_threshold (2) checks
            srv[2].stop()
            t = time.monotonic()
            wait_flags(a, srv[2].port, "/failed_active_hc", 3.0)
            assert time.monotonic() - t > INTERVAL * 0.5
            assert hc_stats(a)["health_check.network_failure"] >= 2
            srv[2].restart()
            wait_flags(a, srv[2].port, "healthy", 5.0)
            assert hc_stats(a)["health_check.healthy"] == 3
    finally:
        for s in srv:
            s.close()


def test_grpc_unknown_service_fails(tmp_path):
    """The server answers NOT_FOUND for a service it does not know: unhealthy at once."""
    srv = [GrpcHealthServer() for _ in range(2)]
    b = bootstrap([s.port for s in srv], _hc("nosuch"))
    try:
        with ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path) as _p:
            a = admin_port(b)
            assert sorted(host_flags(a).values()) == ["/failed_active_hc"] * 2
            s = hc_stats(a)
            assert s["health_check.healthy"] == 0 and s["health_check.network_failure"] == 0
    finally:
        for s in srv:
            s.close()
