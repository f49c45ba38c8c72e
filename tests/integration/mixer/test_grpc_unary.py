"""sofamesh's gRPC unary client (proxy/grpc_unary.py) against a real grpcio server: answers,
the server's status, the deadline, a refused connection, more calls than the server's
MAX_CONCURRENT_STREAMS (they wait for a free stream), and a server that comes back."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest
import uvloop
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from sofamesh.proxy.grpc_unary import DEADLINE_EXCEEDED, OK, UNAVAILABLE, GrpcUnaryChannel
from tests.conftest import free_port

PATH = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


class Rls(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, delay: float = 0.0, max_streams: int | None = None, port: int = 0):
        self.delay = delay
        self.active = self.peak = 0
        self._lock = threading.Lock()
        opts = [("grpc.max_concurrent_streams", max_streams)] if max_streams else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=opts)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def ShouldRateLimit(self, request, context):
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if request.domain == "fail":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
            time.sleep(self.delay)
            code = rls_pb2.RateLimitResponse.OVER_LIMIT if request.domain == "over" else 1
            return rls_pb2.RateLimitResponse(overall_code=code)
        finally:
            with self._lock:
                self.active -= 1


def _req(domain: str) -> bytes:
    return rls_pb2.RateLimitRequest(domain=domain).SerializeToString()


def _run(port: int, calls: list[tuple[str, float]], connect_timeout: float = 2.0) -> list:
    async def main():
        loop = asyncio.get_running_loop()
        ch = GrpcUnaryChannel(loop, "127.0.0.1", port, connect_timeout)
        futs = []
        for domain, timeout in calls:
            f = loop.create_future()
            ch.call(PATH, _req(domain), timeout, lambda st, d, f=f: f.set_result((st, d)))
            futs.append(f)
        out = await asyncio.gather(*futs)
        ch.close()
        return [
            (st, rls_pb2.RateLimitResponse.FromString(d).overall_code if d is not None else None)
            for st, d in out
        ]

    return uvloop.run(main())


def test_answers_and_server_status():
    s = Rls()
    try:
        got = _run(s.port, [("ok", 5), ("over", 5), ("fail", 5)])
        assert got == [(OK, 1), (OK, 2), (7, None)]  # 7: PERMISSION_DENIED
    finally:
        s.server.stop(0)


def test_deadline_and_refused():
    s = Rls(delay=1.0)
    try:
        t0 = time.monotonic()
        assert _run(s.port, [("ok", 0.2)]) == [(DEADLINE_EXCEEDED, None)]
        assert time.monotonic() - t0 < 0.9
    finally:
        s.server.stop(0)
    assert _run(free_port(), [("ok", 2.0)]) == [(UNAVAILABLE, None)]


@pytest.mark.parametrize("n", [12])
def test_more_calls_than_the_servers_streams_wait_for_one(n):
    s = Rls(delay=0.2, max_streams=3)
    try:
        got = _run(s.port, [("ok", 10.0)] * n)
        assert got == [(OK, 1)] * n
        assert s.peak <= 3
    finally:
        s.server.stop(0)


def test_reconnects_to_a_server_that_came_back():
    port = free_port()

    async def main():
        loop = asyncio.get_running_loop()
        ch = GrpcUnaryChannel(loop, "127.0.0.1", port, 2.0)

        async def one():
            f = loop.create_future()
            ch.call(PATH, _req("ok"), 5.0, lambda st, d: f.set_result(st))
            return await f

        first = await one()
        s = Rls(port=port)
        try:
            second = await one()
            s.server.stop(0)
            await asyncio.sleep(0.2)
            third = await one()
        finally:
            s.server.stop(0)
        ch.close()
        return first, second, third

    assert uvloop.run(main()) == (UNAVAILABLE, OK, UNAVAILABLE)
