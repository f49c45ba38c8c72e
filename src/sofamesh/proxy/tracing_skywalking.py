"""HCM tracing with `envoy.tracers.skywalking`, as Envoy 1.40 traces: SkyWalking segments
streamed to an OAP collector (skywalking.v3.TraceSegmentReportService/collect, messages of
proto/skywalking), the context carried in the `sw8` header.

Per request (the span context is started on the hot path: _core/http_tracing start_sw8):
- a request with an sw8 header is traced whatever the sampling decision, as a continuation
  of the caller's segment when the header is valid (`1-trace-segment-span-service-
  instance-endpoint-target`, base64 fields), else as a new trace; one without is traced
  when the connection manager samples it, else not at all (no header, no segment);
- when the upstream host is chosen (RouterStream._attach -> `inject`): the upstream
  request's sw8 names this segment's exit span (1), the service and instance
  (client_config, else the node's cluster and id, else "EnvoyProxy"), the endpoint (the
  request's path) and the upstream address;
- when the request ends (`finish`): one segment, an Entry span (0: the path as operation,
  the downstream address as peer, Envoy's request tags with `url`, `status_code`, and
  isError for 5xx) and, when an upstream was chosen, an Exit span (1: the upstream address
  as peer, Envoy's upstream tags), layer Http, component 9000 (Envoy's).
Segments leave the hot path through a bounded queue (client_config.max_cache_size, default
1024; overflow dropped and counted) onto one kept-open client stream to the collector
cluster's first healthy host, reopened when it fails (what waited then is flushed). Stats:
tracing.skywalking.{segments_sent, segments_dropped, cache_flushed, segments_flushed}.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import uuid
from typing import Any

from sofamesh.proxy import tracing
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.tracing")

SKYWALKING_TYPE = "type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig"
SKYWALKING_NAMES = ("envoy.tracers.skywalking",)
COLLECT = "/skywalking.v3.TraceSegmentReportService/collect"
COMPONENT_ENVOY = 9000  # SkyWalking's component id for Envoy
LAYER_HTTP = 3
SPAN_EXIT = 1
DEFAULT_NAME = "EnvoyProxy"
DEFAULT_CACHE = 1024


def _messages() -> tuple[Any, Any]:
    from google.protobuf import descriptor_pool, message_factory

    import sofamesh.filters.network._proto  # noqa: F401  (proto/skywalking into the pool)

    pool = descriptor_pool.Default()
    seg = message_factory.GetMessageClass(pool.FindMessageTypeByName("skywalking.v3.SegmentObject"))
    cmds = message_factory.GetMessageClass(pool.FindMessageTypeByName("skywalking.v3.Commands"))
    return seg, cmds


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode("ascii")


def parse_sw8(v: bytes) -> tuple[str, ...] | None:
    """(trace, segment, span id, service, instance, endpoint, target) of a valid sw8 value."""
    parts = v.split(b"-")
    if len(parts) != 8:
        return None
    try:
        dec = [base64.b64decode(p, validate=True).decode() for p in parts[1:3] + parts[4:8]]
        span = int(parts[3])
    except (binascii.Error, ValueError):
        return None
    return dec[0], dec[1], str(span), dec[2], dec[3], dec[4], dec[5]


class SkyWalkingTracer(tracing.Tracer):
    TRACE_KIND = 2  # TRACE_SW8 (_core/http_tracing.pxd)

    def __init__(
        self, cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
    ) -> None:
        from envoy.config.trace.v3 import skywalking_pb2

        super().__init__(cfg, server, local_ip, path, egress)
        tp = f"{path}.provider.typed_config"
        sw = skywalking_pb2.SkyWalkingConfig()
        if not cfg.provider.typed_config.Unpack(sw):
            raise UnsupportedConfig(f"{tp}: expected SkyWalkingConfig")
        gs = sw.grpc_service
        if gs.WhichOneof("target_specifier") != "envoy_grpc":
            raise UnsupportedConfig(
                f"{tp}.grpc_service: only envoy_grpc is implemented by sofamesh"
            )
        if cfg.custom_tags:
            raise UnsupportedConfig(
                f"{path}.custom_tags: not implemented by sofamesh for envoy.tracers.skywalking"
            )
        self.cluster = gs.envoy_grpc.cluster_name
        self.authority = gs.envoy_grpc.authority or self.cluster  # Envoy's default
        node = getattr(getattr(server, "bootstrap", None), "node", None)
        opts = getattr(server, "options", None)
        node_cluster = getattr(opts, "service_cluster", "") or (node.cluster if node else "")
        node_id = getattr(opts, "service_node", "") or (node.id if node else "")
        cc = sw.client_config
        self.service = cc.service_name or node_cluster or DEFAULT_NAME
        self.instance = cc.instance_name or node_id or DEFAULT_NAME
        self.token = cc.backend_token
        cache = cc.max_cache_size.value if cc.HasField("max_cache_size") else DEFAULT_CACHE
        self.queue: collections.deque[bytes] = collections.deque()
        self.cache = max(cache, 1)
        self.wakeup = asyncio.Event()
        st = server.stats
        self.sent = st.counter("tracing.skywalking.segments_sent")
        self.dropped = st.counter("tracing.skywalking.segments_dropped")
        self.cache_flushed = st.counter("tracing.skywalking.cache_flushed")
        self.segments_flushed = st.counter("tracing.skywalking.segments_flushed")
        for c in (self.sent, self.dropped, self.cache_flushed, self.segments_flushed):
            c.used = True
        self.Segment, self.Commands = _messages()
        self._task: asyncio.Task | None = None
        self._b64_service = _b64(self.service)
        self._b64_instance = _b64(self.instance)

    # the context -----------------------------------------------------------------------
    @staticmethod
    def _ids(span: Any) -> bool:
        """The trace and segment ids, once: the caller's trace when its sw8 is valid. An
        unreadable sw8 counts as none: without the connection manager's decision the
        request is not traced (False; Envoy's null span, the header passed on as it is)."""
        if span.trace_id:
            return True
        caller = parse_sw8(span.tracestate) if span.tracestate else None
        if caller is None and not span.decision:
            span.trace_id = None
            span.sampled = False
            return False
        span.trace_id = (caller[0] if caller else str(uuid.uuid4())).encode()
        span.child_id = str(uuid.uuid4()).encode()  # this segment's id
        return True

    def inject(self, s: Any, span: Any, host: Any) -> None:
        """The upstream request's sw8: this segment's exit span, to `host`."""
        if not self._ids(span):
            return
        value = "-".join(
            (
                "1",
                _b64(span.trace_id.decode()),
                _b64(span.child_id.decode()),
                "1",
                self._b64_service,
                self._b64_instance,
                _b64((s.path or b"").decode("latin-1")),
                _b64(f"{host.address}:{host.port}"),
            )
        )
        s.remove_request_header(b"sw8")
        s.add_request_header(b"sw8", value)

    # the segment -----------------------------------------------------------------------
    def finish(self, s: Any, span: Any, status: int) -> None:
        import time

        end_ms = int(time.time() * 1000)
        if not self._ids(span):
            return
        path = (s.path or b"").decode("latin-1")
        authority = (s.authority or b"").decode("latin-1")
        seg = self.Segment(
            traceId=span.trace_id.decode(),
            traceSegmentId=span.child_id.decode(),
            service=self.service,
            serviceInstance=self.instance,
        )
        entry = seg.spans.add(
            spanId=0,
            parentSpanId=-1,
            startTime=span.start_us // 1000,
            endTime=end_ms,
            operationName=path,
            spanLayer=LAYER_HTTP,
            componentId=COMPONENT_ENVOY,
        )
        caller = parse_sw8(span.tracestate) if span.tracestate else None
        if caller is not None:
            entry.refs.add(
                traceId=caller[0],
                parentTraceSegmentId=caller[1],
                parentSpanId=int(caller[2]),
                parentService=caller[3],
                parentServiceInstance=caller[4],
                parentEndpoint=caller[5],
                networkAddressUsedAtPeer=caller[6],
            )
        self._fill(entry, self._server_tags(s, span, status, authority))
        if span.up_host is not None:
            exit_span = seg.spans.add(
                spanId=1,
                parentSpanId=0,
                startTime=(span.child_us or span.start_us) // 1000,
                endTime=end_ms,
                operationName=path,
                spanType=SPAN_EXIT,
                spanLayer=LAYER_HTTP,
                componentId=COMPONENT_ENVOY,
            )
            self._fill(exit_span, self._upstream_tags(s, span))
        self._enqueue(seg.SerializeToString())

    @staticmethod
    def _fill(sp: Any, tags: dict[str, str]) -> None:
        """Envoy's tags as its SkyWalking span sets them: peer.address is the span's peer,
        http.url is `url`, http.status_code `status_code`, error also marks the span."""
        for k, v in tags.items():
            if k == "peer.address":
                sp.peer = v
                continue
            if k == "error":
                sp.isError = True
            k = {"http.url": "url", "http.status_code": "status_code"}.get(k, k)
            sp.tags.add(key=k, value=v)

    def report(self, records: list) -> None:  # segments are built whole in finish
        raise NotImplementedError

    # reporting -------------------------------------------------------------------------
    def _enqueue(self, seg: bytes) -> None:
        if len(self.queue) >= self.cache:
            self.dropped.value += 1
            return
        self.queue.append(seg)
        self.wakeup.set()
        if self._task is None:
            self._task = self.loop.create_task(self._send_loop())

    def _target(self) -> tuple[str, int] | None:
        cl = self.server.clusters.get(self.cluster)
        if cl is None or not cl.hosts:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0].address, hosts[0].port

    async def _send_loop(self) -> None:
        import grpc

        backoff = 0.5
        failed = False
        while True:
            await self.wakeup.wait()
            addr = self._target()
            if addr is None:
                await asyncio.sleep(backoff)
                continue
            md = (("authentication", self.token),) if self.token else None
            try:
                async with grpc.aio.insecure_channel(
                    f"{addr[0]}:{addr[1]}", options=[("grpc.default_authority", self.authority)]
                ) as ch:
                    call = ch.stream_unary(
                        COLLECT,
                        request_serializer=None,
                        response_deserializer=self.Commands.FromString,
                    )(metadata=md)
                    if failed and self.queue:  # what waited while the collector was away
                        self.cache_flushed.value += 1
                        self.segments_flushed.value += len(self.queue)
                    failed = False
                    while True:
                        while self.queue:
                            await call.write(self.queue[0])
                            self.queue.popleft()
                            self.sent.value += 1
                            backoff = 0.5
                        self.wakeup.clear()
                        await self.wakeup.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the collector failed: reopen later
                log.debug("skywalking collector %s: %r", self.cluster, e)
                failed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _factory(
    cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
) -> SkyWalkingTracer:
    return SkyWalkingTracer(cfg, server, stat_prefix, local_ip, path, egress)


tracing.register_provider(SKYWALKING_TYPE, SKYWALKING_NAMES, _factory)
