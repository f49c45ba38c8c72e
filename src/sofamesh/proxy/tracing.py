"""HCM `tracing` with `envoy.tracers.zipkin` (HTTP JSON v2), as Envoy 1.40 traces.

Per request (the connection manager's stream, HTTP/1.1 or HTTP/2):
- `start(s)` when its headers are in, before the filters: continues an incoming B3 context
  (x-b3-traceid, x-b3-spanid, x-b3-sampled; with `shared_span_context` (default) the server
  span shares the caller's span id, else it is a child), or starts a trace; a new trace is
  sampled with `random_sampling` (Envoy's default 100 %) times `overall_sampling`.
- `inject(s, h)` when the router builds the upstream request: the B3 headers of this span
  (incoming ones replaced), and the x-request-id's trace mark (Envoy's UUID extension: the
  version nibble becomes 9 for a sampled trace).
- `finish(s, ms)` when the stream ends: a sampled span becomes a Zipkin v2 SERVER span with
  Envoy's name (the authority) and tags (http.method, http.url, http.status_code,
  http.protocol, upstream_cluster, response_flags, request/response_size, guid:x-request-id,
  peer.address, user_agent, component, downstream_cluster, error, custom_tags).
Spans leave the hot path as reports do: buffered, POSTed as one JSON array to the collector
cluster when 5 are waiting or every 5 s (Envoy's min_flush_spans and flush_interval_ms), at
most 10,000 waiting (later ones dropped and counted). Stats: tracing.zipkin.{spans_sent,
timer_flushed, reports_sent, reports_failed, reports_dropped,
reports_skipped_no_cluster}. Tracing off costs one attribute test per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.tracing")

ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
ZIPKIN_NAMES = ("envoy.tracers.zipkin", "envoy.zipkin")
MIN_FLUSH_SPANS = 5
FLUSH_INTERVAL_S = 5.0
MAX_PENDING = 10_000
B3 = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags", b"b3")


def _pct(p: Any, default: float = 100.0) -> float:
    return p.value if p is not None and p.ByteSize() else default


class ZipkinTracer:
    def __init__(
        self, tracing: Any, server: Any, stat_prefix: str, local_ip: str, path: str
    ) -> None:
        from envoy.config.trace.v3 import zipkin_pb2

        prov = tracing.provider
        if prov.typed_config.type_url != ZIPKIN_TYPE and prov.name not in ZIPKIN_NAMES:
            raise UnsupportedConfig(
                f"{path}.provider: tracer {prov.name or prov.typed_config.type_url!r} is not "
                "implemented by sofamesh (envoy.tracers.zipkin is)"
            )
        z = zipkin_pb2.ZipkinConfig()
        if not prov.typed_config.Unpack(z):
            raise UnsupportedConfig(f"{path}.provider.typed_config: expected ZipkinConfig")
        if z.collector_endpoint_version != 1:  # HTTP_JSON
            raise UnsupportedConfig(
                f"{path}.provider.typed_config.collector_endpoint_version: only HTTP_JSON is "
                "implemented by sofamesh"
            )
        if not z.collector_cluster or not z.collector_endpoint:
            raise UnsupportedConfig(
                f"{path}.provider.typed_config: collector_cluster and collector_endpoint are "
                "required"
            )
        self.server = server
        self.cluster = z.collector_cluster
        self.endpoint = z.collector_endpoint
        self.hostname = z.collector_hostname or z.collector_cluster
        self.shared = z.shared_span_context.value if z.HasField("shared_span_context") else True
        self.id128 = z.trace_id_128bit
        self.random = _pct(tracing.random_sampling if tracing.HasField("random_sampling") else None)
        self.overall = _pct(
            tracing.overall_sampling if tracing.HasField("overall_sampling") else None
        )
        self.max_path = (
            tracing.max_path_tag_length.value if tracing.HasField("max_path_tag_length") else 256
        )
        # (tag, value) literal ones, (tag, header name, default) request-header ones
        self.tags: list[tuple[str, str | None, str]] = []
        for i, t in enumerate(tracing.custom_tags):
            kind = t.WhichOneof("type")
            if kind == "literal":
                self.tags.append((t.tag, None, t.literal.value))
            elif kind == "request_header":
                rh = t.request_header
                self.tags.append((t.tag, rh.name.lower(), rh.default_value))
            elif kind == "environment":
                v = os.environ.get(t.environment.name, t.environment.default_value)
                self.tags.append((t.tag, None, v))
            else:
                raise UnsupportedConfig(
                    f"{path}.custom_tags[{i}].{kind}: not implemented by sofamesh"
                )
        self.local_ip = local_ip
        self.loop = server._loop
        self.pending: list[dict] = []
        self.timer: Any = None
        self.writer: Any = None
        self.reader: Any = None
        self.busy = False
        st = server.stats
        p = "tracing.zipkin."
        self.spans_sent = st.counter(p + "spans_sent")
        self.timer_flushed = st.counter(p + "timer_flushed")
        self.reports_sent = st.counter(p + "reports_sent")
        self.reports_failed = st.counter(p + "reports_failed")
        self.reports_dropped = st.counter(p + "reports_dropped")
        self.no_cluster = st.counter(p + "reports_skipped_no_cluster")

    # per request (the span context is made in Cython: _core/http_router start_trace) ------
    @property
    def sample_ppm(self) -> int:
        """New traces sampled per million: random_sampling x overall_sampling."""
        return int(self.random * self.overall * 100)

    def finish(self, s: Any, span: Any, status: int) -> None:
        """A sampled request's span (span: _core.http_stream.TraceCtx) to the report buffer."""
        end = int(time.time() * 1_000_000)
        authority = (s.authority or b"").decode("latin-1")
        route = s.route
        name = route.decorator if route is not None and route.decorator else authority
        path = (s.path or b"").decode("latin-1")
        proto = s.protocol
        tags = {
            "component": "proxy",
            "node_id": "",
            "guid:x-request-id": self._request_id(s, span),
            "http.url": ("http://" + authority + path)[: self.max_path],
            "http.method": (s.method or b"").decode("latin-1"),
            "downstream_cluster": _hdr(s, b"x-envoy-downstream-service-cluster") or "-",
            "user_agent": _hdr(s, b"user-agent") or "-",
            "http.protocol": proto,
            "peer.address": s.downstream_remote_address[0],
            "request_size": str(s.bytes_rx),
            "response_size": str(s.bytes_tx),
            "response_flags": s.resp_flags,
            "http.status_code": str(status),
        }
        del tags["node_id"]
        cluster = s.upstream_cluster
        if cluster is not None:
            tags["upstream_cluster"] = cluster
            tags["upstream_cluster.name"] = cluster
        if s.grpc:  # Envoy's gRPC request and response tags
            tags["grpc.path"] = path
            tags["grpc.authority"] = authority
            tags["grpc.content_type"] = _hdr(s, b"content-type") or ""
            timeout = _hdr(s, b"grpc-timeout")
            if timeout is not None:
                tags["grpc.timeout"] = timeout
            if span.grpc_status is not None:
                tags["grpc.status_code"] = span.grpc_status.decode("latin-1")
                if span.grpc_message:
                    tags["grpc.message"] = span.grpc_message.decode("latin-1")
        if status >= 500 or status == 0:
            tags["error"] = "true"
        for tag, header, v in self.tags:
            got = _hdr(s, header.encode()) if header is not None else None
            if got is not None:
                tags[tag] = got
            elif v:
                tags[tag] = v
        span_json: dict[str, Any] = {
            "traceId": span.trace_id.decode("latin-1"),
            "id": span.span_id.decode("latin-1"),
            "name": name,
            "kind": "SERVER",
            "timestamp": span.start_us,
            "duration": max(end - span.start_us, 0),
            "localEndpoint": {"ipv4": self.local_ip, "port": 0},
            "annotations": [{"timestamp": end, "value": "ss"}],
            "tags": tags,
        }
        if span.parent_id:
            span_json["parentId"] = span.parent_id.decode("latin-1")
        if span.shared:
            span_json["shared"] = True
        self._add(span_json)

    @staticmethod
    def _request_id(s: Any, span: Any) -> str:
        """The request's id; one the router did not set (a local reply) is made here,
        as Envoy's connection manager gives every request one, marked if sampled."""
        rid = s.request_id or s.get_request_header(b"x-request-id")
        if not rid:
            rid = str(uuid.uuid4()).encode()
            if span.decision:
                rid = rid[:14] + b"9" + rid[15:]
            s.request_id = rid
        return rid.decode("latin-1")

    # reporting ------------------------------------------------------------------------------
    def _add(self, span: dict) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.reports_dropped.value += 1
            self.reports_dropped.used = True
            return
        self.pending.append(span)
        if len(self.pending) >= MIN_FLUSH_SPANS:
            self._flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.pending:
            _bump(self.timer_flushed)
            self._flush()

    def _flush(self) -> None:
        if self.busy or not self.pending:
            return
        spans, self.pending = self.pending, []
        self.busy = True
        self.loop.create_task(self._send(spans))

    async def _send(self, spans: list[dict]) -> None:
        try:
            host = self._host()
            if host is None:
                _bump(self.no_cluster)
                return
            body = json.dumps(spans, separators=(",", ":")).encode()
            head = (
                f"POST {self.endpoint} HTTP/1.1\r\nhost: {self.hostname}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            for attempt in range(2):  # a kept-alive connection the collector closed: redial
                try:
                    if self.writer is None:
                        self.reader, self.writer = await asyncio.wait_for(
                            asyncio.open_connection(host.address, host.port), 5.0
                        )
                    self.writer.write(head + body)
                    status = await asyncio.wait_for(self._response(), 5.0)
                    break
                except (TimeoutError, OSError, ConnectionError, EOFError) as e:
                    self._drop_conn()
                    if attempt:
                        raise
                    log.debug("zipkin collector connection lost (%s); redialing", e)
            if 200 <= status < 300:
                self.spans_sent.value += len(spans)
                self.spans_sent.used = True
                _bump(self.reports_sent)
            else:
                _bump(self.reports_failed)
        except Exception as e:  # noqa: BLE001 - a report never takes the proxy down
            log.warning("zipkin report of %d spans failed: %s", len(spans), e)
            _bump(self.reports_failed)
            self._drop_conn()
        finally:
            self.busy = False
            if len(self.pending) >= MIN_FLUSH_SPANS:
                self._flush()
            elif self.pending and self.timer is None:
                self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._on_timer)

    async def _response(self) -> int:
        line = await self.reader.readline()
        if not line:
            raise EOFError("collector closed the connection")
        status = int(line.split()[1])
        length, chunked, close = 0, False, False
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k, v = k.strip().lower(), v.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v:
                chunked = True
            elif k == "connection" and v == "close":
                close = True
        if chunked:
            while True:
                n = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(n + 2)
                if n == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        if close:
            self._drop_conn()
        return status

    def _drop_conn(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None

    def _host(self) -> Any:
        cl = self.server.clusters.get(self.cluster)
        if cl is None:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0] if hosts else None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._drop_conn()


def _bump(c: Any) -> None:
    c.value += 1
    c.used = True


def _hdr(s: Any, name: bytes) -> str | None:
    v = s.get_request_header(name)
    return v.decode("latin-1") if v is not None else None


def build(tracing: Any, server: Any, stat_prefix: str, local_ip: str, path: str) -> Any:
    """The HCM's tracer, or None when `tracing` has no provider (Envoy then traces
    nothing: no tracer is configured)."""
    if not tracing.HasField("provider"):
        return None
    for f in ("client_sampling",):
        if tracing.HasField(f) and _pct(getattr(tracing, f)) != 100.0:
            raise UnsupportedConfig(f"{path}.{f}: not implemented by sofamesh")
    if tracing.spawn_upstream_span.value:
        raise UnsupportedConfig(f"{path}.spawn_upstream_span: not implemented by sofamesh")
    return ZipkinTracer(tracing, server, stat_prefix, local_ip, path)


def _register() -> None:
    from sofamesh.config.support import register_extension

    register_extension(ZIPKIN_TYPE, "sofamesh.proxy.tracing")


_register()
