"""A stand-in for SkyWalking's OAP collector (grpcio in a thread) for tests: it takes the
trace segments a proxy streams to skywalking.v3.TraceSegmentReportService/collect and keeps
them decoded (sofamesh's own declaration of the protocol's messages, proto/skywalking), and
records any other method called."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pool, message_factory

import sofamesh.filters.network._proto  # noqa: F401  (adds proto/skywalking to the pool)

_pool = descriptor_pool.Default()
SegmentObject = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("skywalking.v3.SegmentObject")
)
Commands = message_factory.GetMessageClass(_pool.FindMessageTypeByName("skywalking.v3.Commands"))
COLLECT = "/skywalking.v3.TraceSegmentReportService/collect"


class _Any(grpc.GenericRpcHandler):
    def __init__(self, oap: ScriptedOap) -> None:
        self.oap = oap

    def service(self, details):
        method = details.method
        with self.oap.lock:
            self.oap.methods.append(method)
        if method == COLLECT:
            return grpc.stream_unary_rpc_method_handler(
                self.oap.collect,
                request_deserializer=SegmentObject.FromString,
                response_serializer=Commands.SerializeToString,
            )
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: Commands().SerializeToString())


class ScriptedOap:
    def __init__(self) -> None:
        self.segments: list = []
        self.methods: list[str] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((_Any(self),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def collect(self, it, ctx):
        for seg in it:
            with self.lock:
                self.segments.append(seg)
        return Commands()

    def start(self) -> ScriptedOap:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)

    def wait(self, n: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.segments) >= n:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.segments)
