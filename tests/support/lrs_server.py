"""A scripted load reporting server (envoy.service.load_stats.v3, grpcio in a thread) for
tests: it records every LoadStatsRequest a proxy streams, and answers the first one of each
stream with `response` (the clusters to report on and the interval)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc


class ScriptedLrs(lrs_pb2_grpc.LoadReportingServiceServicer):
    def __init__(self, response: lrs_pb2.LoadStatsResponse) -> None:
        self.response = response
        self.requests: list[tuple[float, int, lrs_pb2.LoadStatsRequest]] = []  # (when, stream)
        self.streams = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def StreamLoadStats(self, request_iterator, context):
        with self._lock:
            self.streams += 1
            stream = self.streams
        first = True
        for req in request_iterator:
            with self._lock:
                self.requests.append((time.monotonic(), stream, req))
            if first:
                first = False
                yield self.response

    def start(self) -> ScriptedLrs:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        lrs_pb2_grpc.add_LoadReportingServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)

    def reports(self) -> list[lrs_pb2.LoadStatsRequest]:
        """The requests after each stream's first (the ones carrying load)."""
        with self._lock:
            seen: set[int] = set()
            out = []
            for _, s, r in self.requests:
                if s in seen:
                    out.append(r)
                seen.add(s)
            return out

    def wait(self, n: int, timeout: float = 30.0) -> list[lrs_pb2.LoadStatsRequest]:
        """Waits until `n` reports arrived; returns all of them."""
        deadline = time.monotonic() + timeout
        while len(self.reports()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.reports()
