"""`envoy.tracers.opentelemetry` (OTLP over gRPC or HTTP, W3C trace context), as Envoy
1.40 traces.

The hot path (_core/http_tracing, TRACE_W3C) reads an incoming `traceparent`
(00-<trace id>-<parent id>-<flags>): the request's span continues that trace as a child of
the caller's span, sampled when the caller's flag and the connection manager's decision
both say so, and carries `tracestate` on; an unreadable traceparent gives Envoy's null span
(nothing reported, the header passed on untouched); without one a trace starts (128-bit id,
sampled by the decision). The upstream request gets `traceparent` with this span's id (or,
with `spawn_upstream_span`, the id of a CLIENT child "router <cluster> egress") and
`tracestate` (empty when none came).

Spans are SERVER (CLIENT on an OUTBOUND listener), named "ingress" / "egress" unless the
route has a decorator, with Envoy's tags as string attributes (proxy/tracing) and Envoy's
status: ERROR for an HTTP status >= 500 (>= 400 on a CLIENT span), for a gRPC status the
server is to blame for on a SERVER span, any non-OK gRPC status on a CLIENT span; a gRPC
call's span otherwise carries an unset status. Batches go out as one
ExportTraceServiceRequest (resource: service.name = `service_name`, telemetry.sdk.*) to
`grpc_service` (opentelemetry.proto.collector.trace.v1.TraceService/Export on the
envoy_grpc cluster) or `http_service` (POST application/x-protobuf to http_uri).
Stats: tracing.opentelemetry.{spans_sent (delivered: Envoy counts a batch when its export
starts), spans_dropped (the buffer was full), timer_flushed, reports_failed (exports the
collector did not take)}.
Not implemented, refused by name: resource_detectors, sampler, google_grpc.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from sofamesh.proxy import tracing
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.tracing import (
    GRPC_SERVER_ERRORS,
    HttpCollector,
    SpanRecord,
    SpanReporter,
    _bump,
)

log = logging.getLogger("sofamesh.tracing")

OTEL_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
OTEL_NAMES = ("envoy.tracers.opentelemetry",)
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
DEFAULT_SERVICE = "unknown_service:envoy"  # Envoy's resource default: configs read the same
KIND_SERVER, KIND_CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2  # opentelemetry.proto.trace.v1.Status.StatusCode


def _seconds(d: Any, default: float) -> float:
    return d.ToNanoseconds() / 1e9 if d.ByteSize() else default


def span_status(kind: str, tags: dict[str, str]) -> int | None:
    """The OTLP status Envoy's span ends with (None: no status field), from its tags in the
    order they were set."""
    status = None
    for k, v in tags.items():
        if k == "http.status_code":
            code = int(v) if v.isdigit() else 0
            if code >= 500 or (kind == "CLIENT" and code >= 400):
                status = STATUS_ERROR
        elif k == "grpc.status_code":
            bad = v != "0" if kind == "CLIENT" else v in GRPC_SERVER_ERRORS
            status = STATUS_ERROR if bad else STATUS_UNSET
    return status


class OtelTracer(tracing.Tracer):
    TRACE_KIND = tracing.TRACE_W3C
    SPAWN = True

    def __init__(
        self,
        tracing_cfg: Any,
        server: Any,
        stat_prefix: str,
        local_ip: str,
        path: str,
        egress: bool,
    ) -> None:
        from envoy.config.trace.v3 import opentelemetry_pb2

        super().__init__(tracing_cfg, server, local_ip, path, egress)
        o = opentelemetry_pb2.OpenTelemetryConfig()
        if not tracing_cfg.provider.typed_config.Unpack(o):
            raise UnsupportedConfig(f"{path}.provider.typed_config: expected OpenTelemetryConfig")
        tp = f"{path}.provider.typed_config"
        for name in ("resource_detectors", "sampler", "max_cache_size"):
            if name in {f.name for f, _ in o.ListFields()}:
                raise UnsupportedConfig(f"{tp}.{name}: not implemented by sofamesh")
        self.service_name = o.service_name or DEFAULT_SERVICE
        self.grpc_cluster: str | None = None
        self.http: HttpCollector | None = None
        if o.HasField("grpc_service"):
            gs = o.grpc_service
            if gs.WhichOneof("target_specifier") != "envoy_grpc":
                raise UnsupportedConfig(
                    f"{tp}.grpc_service: only envoy_grpc is implemented by sofamesh"
                )
            self.grpc_cluster = gs.envoy_grpc.cluster_name
            self.grpc_authority = gs.envoy_grpc.authority or self.grpc_cluster  # Envoy's
            self.timeout = _seconds(gs.timeout, 5.0)
        elif o.HasField("http_service"):
            uri = o.http_service.http_uri
            u = urlsplit(uri.uri)
            self.http_path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            self.http_authority = u.netloc or uri.cluster
            self.http = HttpCollector(server, uri.cluster)
            self.timeout = _seconds(uri.timeout, 5.0)
            self.http_headers = [
                (h.header.key.lower(), h.header.value)
                for h in o.http_service.request_headers_to_add
            ]
        st = server.stats
        p = "tracing.opentelemetry."
        self.reports_failed = st.counter(p + "reports_failed")
        self.reporter = SpanReporter(
            self.loop,
            self._export,
            {
                "sent": st.counter(p + "spans_sent"),
                "timer_flushed": st.counter(p + "timer_flushed"),
                "dropped": st.counter(p + "spans_dropped"),
                "failed": self.reports_failed,
            },
            "opentelemetry",
        )
        for c in self.reporter.c.values():
            c.used = True  # listed from the start, as Envoy lists them
        self._channel: Any = None
        self._channel_addr: tuple[str, int] | None = None

    def report(self, records: list[SpanRecord]) -> None:
        if self.grpc_cluster is None and self.http is None:
            return  # no exporter configured: Envoy skips the report too
        for r in records:
            self.reporter.enqueue(r)

    # encoding (per batch, off the request path) --------------------------------------------
    def encode(self, batch: list[SpanRecord]) -> bytes:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2

        from sofamesh import __version__

        req = trace_service_pb2.ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        for k, v in (
            ("service.name", self.service_name),
            ("telemetry.sdk.name", "sofamesh"),
            ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.version", __version__),
        ):
            rs.resource.attributes.add(key=k, value=common_pb2.AnyValue(string_value=v))
        # field 2 of ResourceSpans: scope_spans in today's OTLP (the same wire bytes)
        scope = rs.instrumentation_library_spans.add()
        scope.instrumentation_library.name = "sofamesh"
        scope.instrumentation_library.version = __version__
        for r in batch:
            try:
                # OTLP trace ids are 16 bytes: a 64-bit one (a B3 context) is zero-extended
                ids = (
                    bytes.fromhex(r.trace_id.rjust(32, "0")),
                    bytes.fromhex(r.span_id),
                    bytes.fromhex(r.parent_id) if r.parent_id else b"",
                )
            except ValueError:  # ids that are not hex (a caller's B3 context): not OTLP
                _bump(self.reporter.c["dropped"])
                continue
            sp = scope.spans.add(
                trace_id=ids[0],
                span_id=ids[1],
                name=r.name,
                kind=KIND_CLIENT if r.kind == "CLIENT" else KIND_SERVER,
                start_time_unix_nano=r.start_us * 1000,
                end_time_unix_nano=r.end_us * 1000,
            )
            if ids[2]:
                sp.parent_span_id = ids[2]
            if r.tracestate:
                sp.trace_state = r.tracestate
            for k, v in r.tags.items():
                sp.attributes.add(key=k, value=common_pb2.AnyValue(string_value=v))
            status = span_status(r.kind, r.tags)
            if status is not None:
                sp.status.SetInParent()
                sp.status.code = status  # type: ignore[assignment]
        return req.SerializeToString()

    # export ------------------------------------------------------------------------------
    async def _export(self, batch: list[SpanRecord]) -> bool | None:
        body = self.encode(batch)
        if self.http is not None:
            try:
                status = await self.http.post(
                    self.http_path,
                    self.http_authority,
                    "application/x-protobuf",
                    body,
                    self.http_headers,
                    self.timeout,
                )
            except Exception:
                self.http.drop()
                raise
            if status is None:
                _no_host(self.http.cluster, len(batch))
                return False
            return 200 <= status < 300
        return await self._grpc_export(body, len(batch))

    async def _grpc_export(self, body: bytes, n: int) -> bool:
        import grpc

        addr = self._grpc_target()
        if addr is None:
            _no_host(self.grpc_cluster, n)
            return False
        if self._channel is None or self._channel_addr != addr:
            await self._close_channel()
            self._channel = grpc.aio.insecure_channel(
                f"{addr[0]}:{addr[1]}", options=[("grpc.default_authority", self.grpc_authority)]
            )
            self._channel_addr = addr
        call = self._channel.unary_unary(
            EXPORT, request_serializer=None, response_deserializer=None
        )
        try:
            await call(body, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            log.warning("opentelemetry export to %s failed: %s", self.grpc_cluster, e.code())
            return False
        return True

    def _grpc_target(self) -> tuple[str, int] | None:
        cl = self.server.clusters.get(self.grpc_cluster)
        if cl is None or not cl.hosts:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0].address, hosts[0].port

    async def _close_channel(self) -> None:
        if self._channel is not None:
            ch, self._channel = self._channel, None
            await ch.close()

    def close(self) -> None:
        self.reporter.close()
        if self.http is not None:
            self.http.drop()
        if self._channel is not None:
            self.loop.create_task(self._close_channel())


def _no_host(cluster: str | None, n: int) -> None:
    log.warning("opentelemetry collector cluster %r has no host: %d spans not sent", cluster, n)


def _factory(
    tracing_cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
) -> OtelTracer:
    return OtelTracer(tracing_cfg, server, stat_prefix, local_ip, path, egress)


tracing.register_provider(OTEL_TYPE, OTEL_NAMES, _factory)
