"""A scripted ADS server (grpc.aio, state of the world and Delta) for tests and benchmarks:
it serves what it is told to, on request and on push(), and records every request."""

from __future__ import annotations

import asyncio
import itertools
import time

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves `self.resources[type_url]` (version, [messages]) on request and on push();
    records every request the client sends."""

    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, list]] = {}
        self.removed: dict[str, tuple] = {}  # type -> names a Delta response removes
        self.requests: list = []
        self.queues: list[asyncio.Queue] = []
        self.nonces = itertools.count(1)
        self.sent: dict[str, str] = {}  # type -> last nonce sent
        self.sent_at: dict[str, float] = {}  # nonce -> when its response was made
        self.answered: dict[str, float] = {}  # nonce -> when its ACK/NACK arrived
        self.pushed: dict[str, int] = {}  # type -> last nonce sent before the last push
        self.identifier = ""  # when set, every response's control_plane.identifier

    def push(self, type_url: str, version: str, msgs: list, removed: tuple = ()) -> str:
        """Serves `msgs` from now on. SotW: the whole set. Delta: the resources sent (what
        changed), and `removed` names in removed_resources."""
        self.resources[type_url] = (version, msgs)
        self.removed[type_url] = tuple(removed)
        self.pushed[type_url] = int(self.sent.get(type_url, "0"))
        for q in self.queues:
            q.put_nowait(type_url)
        return version

    def _nonce(self, type_url: str) -> str:
        n = str(next(self.nonces))
        self.sent[type_url] = n
        self.sent_at[n] = time.monotonic()
        return n

    async def _serve(self, requests, make, types=None):
        """types: the resource types this stream carries (None: all, ADS)."""
        q: asyncio.Queue = asyncio.Queue()
        self.queues.append(q)

        async def read() -> None:
            async for req in requests:
                self.requests.append(req)
                if req.response_nonce:
                    self.answered.setdefault(req.response_nonce, time.monotonic())
                if not req.response_nonce and req.type_url in self.resources:
                    q.put_nowait(req.type_url)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                t = await q.get()
                if types is None or t in types:
                    yield make(t)
        finally:
            reader.cancel()
            self.queues.remove(q)

    async def StreamAggregatedResources(self, requests, context, types=None):
        def make(t: str):
            version, msgs = self.resources[t]
            r = discovery_pb2.DiscoveryResponse(
                type_url=t, version_info=version, nonce=self._nonce(t)
            )
            if self.identifier:
                r.control_plane.identifier = self.identifier
            for m in msgs:
                a = any_pb2.Any()
                a.Pack(m)
                r.resources.append(a)
            return r

        async for r in self._serve(requests, make, types):
            yield r

    async def DeltaAggregatedResources(self, requests, context, types=None):
        def make(t: str):
            version, msgs = self.resources[t]
            r = discovery_pb2.DeltaDiscoveryResponse(
                type_url=t, system_version_info=version, nonce=self._nonce(t)
            )
            if self.identifier:
                r.control_plane.identifier = self.identifier
            for m in msgs:
                name = m.cluster_name if hasattr(m, "cluster_name") else m.name  # EDS
                res = r.resources.add(name=name, version=version)
                res.resource.Pack(m)
            r.removed_resources.extend(self.removed.get(t, ()))
            return r

        async for r in self._serve(requests, make, types):
            yield r

    async def answer(self, type_url: str, timeout: float = 10.0):
        """The client's request answering the newest response of `type_url` sent after the
        last push (ACK or NACK)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nonce = self.sent.get(type_url)
            if nonce is not None and int(nonce) > self.pushed.get(type_url, 0):
                for r in self.requests:
                    if r.type_url == type_url and r.response_nonce == nonce:
                        return r
            await asyncio.sleep(0.02)
        raise AssertionError(f"no answer to the last {type_url} push")

    async def acked(self, type_url: str, timeout: float = 10.0) -> float:
        """Waits for the answer to the last push; its arrival time (time.monotonic()).
        Raises if it is a NACK."""
        r = await self.answer(type_url, timeout)
        if r.error_detail.code:
            raise AssertionError(f"NACK: {r.error_detail.message}")
        return self.answered[r.response_nonce]


_T = "type.googleapis.com/envoy."
# non-aggregated discovery services (api_config_source): service -> (type, SotW, Delta)
_PER_TYPE = {
    "cds": (_T + "config.cluster.v3.Cluster", "StreamClusters", "DeltaClusters"),
    "eds": (_T + "config.endpoint.v3.ClusterLoadAssignment", "StreamEndpoints", "DeltaEndpoints"),
    "lds": (_T + "config.listener.v3.Listener", "StreamListeners", "DeltaListeners"),
    "rds": (_T + "config.route.v3.RouteConfiguration", "StreamRoutes", "DeltaRoutes"),
}


class ScriptedXds(ScriptedAds):
    """ScriptedAds that also serves each type on its own discovery service (CDS, EDS, LDS,
    RDS: what `api_config_source` streams to); `streams` records which method each stream
    used."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[str] = []
        for t, sotw, delta in _PER_TYPE.values():
            setattr(self, sotw, self._per_type(sotw, t, False))
            setattr(self, delta, self._per_type(delta, t, True))
            setattr(self, sotw.replace("Stream", "Fetch"), None)  # REST: not served

    def _per_type(self, method: str, type_url: str, delta: bool):
        base = self.DeltaAggregatedResources if delta else self.StreamAggregatedResources

        async def serve(requests, context):
            self.streams.append(method)
            async for r in base(requests, context, {type_url}):
                yield r

        return serve

    async def StreamAggregatedResources(self, requests, context, types=None):
        if types is None:
            self.streams.append("StreamAggregatedResources")
        async for r in super().StreamAggregatedResources(requests, context, types):
            yield r

    async def DeltaAggregatedResources(self, requests, context, types=None):
        if types is None:
            self.streams.append("DeltaAggregatedResources")
        async for r in super().DeltaAggregatedResources(requests, context, types):
            yield r

    def add_to(self, server) -> None:
        """Registers ADS and the four per-type services on a grpc.aio server."""
        from envoy.service.cluster.v3 import cds_pb2_grpc
        from envoy.service.endpoint.v3 import eds_pb2_grpc
        from envoy.service.listener.v3 import lds_pb2_grpc
        from envoy.service.route.v3 import rds_pb2_grpc

        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(self, server)
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(self, server)
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(self, server)
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(self, server)
