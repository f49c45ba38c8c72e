"""envoy.filters.http.grpc_stats: per-cluster gRPC call statistics, as Envoy 1.40 names them.

For a gRPC request (content-type application/grpc...) routed to cluster C, counters appear
when first used (as Envoy's do):

    cluster.C.grpc[.SERVICE.METHOD].{success, failure, total, <grpc-status>}
    cluster.C.grpc[.SERVICE.METHOD].{request_message_count, response_message_count}

SERVICE.METHOD is there for every method with `stats_for_all_methods: true`, for the
listed ones with `individual_method_stats_allowlist`, and never otherwise (Envoy's default
since stats_for_all_methods became false by default). The status comes from the response's
trailers, or from its headers for a trailers-only response; messages are counted from the
5-byte gRPC frame prefixes of the request and response bodies. `replace_dots_in_grpc_service_name`
writes the service with `_` for `.` (with stats_for_all_methods; as in Envoy, not for the
allowlist's names). A response that is not gRPC (content-type) has no messages counted. `emit_filter_state` keeps the two message counts in the
stream's filter state under the filter's name (Envoy's GrpcStatsObject). Not implemented
(refused at start-up): `enable_upstream_stats` (the per-method upstream_rq_time histogram).
A call the proxy answers itself is counted once its cluster is known (no healthy upstream:
local replies pass the encode filters), not when no route matched (no cluster), as Envoy.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.grpc_stats"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


class _Frames:
    """Counts gRPC messages in a byte stream split anywhere: each 5-byte prefix (flag,
    32-bit length) starts one."""

    __slots__ = ("count", "head", "skip")

    def __init__(self) -> None:
        self.head = b""  # a prefix cut by a chunk boundary
        self.skip = 0  # message bytes still to pass over
        self.count = 0

    def feed(self, data: bytes) -> int:
        """Messages started in data."""
        n, i, started = len(data), 0, 0
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                continue
            need = 5 - len(self.head)
            self.head += data[i : i + need]
            i += min(need, n - i)
            if len(self.head) == 5:
                self.skip = int.from_bytes(self.head[1:5], "big")
                self.head = b""
                started += 1
        self.count += started
        return started


class _Call:
    __slots__ = ("charged", "grpc_resp", "name", "prefix", "req", "resp")

    def __init__(self, name: str) -> None:
        self.name = name  # "" or "SERVICE.METHOD."
        self.prefix = ""  # "cluster.C.grpc." + name, once the router chose C
        self.req = _Frames()
        self.resp = _Frames()
        self.charged = False
        self.grpc_resp = False  # the response is gRPC: its messages are counted


class GrpcStatsFilter(HttpFilter):
    def __init__(
        self,
        stats: Any,
        all_methods: bool,
        allow: frozenset | None,
        replace_dots: bool,
        emit_state: bool,
        name: str = NAME,
    ) -> None:
        super().__init__(name, wants_data=True, wants_encode=True)
        self.stats = stats
        self.all_methods = all_methods
        self.allow = allow  # {(service, method)} or None
        self.replace_dots = replace_dots
        self.emit_state = emit_state
        self._counters: dict[str, Any] = {}

    def _bump(self, name: str, n: int = 1) -> None:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = self.stats.counter(name)
        c.value += n
        c.used = True

    def _call(self, s: Any) -> _Call | None:
        """This stream's call, once its cluster is known (the router picks it after the
        filters' decode_headers)."""
        st = s.filter_state
        call = st.get(self.name) if st else None
        if call is not None and not call.prefix:
            cluster = s.upstream_cluster
            if cluster is None:
                return None
            call.prefix = f"cluster.{cluster}.grpc.{call.name}"
        return call

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        ct = s.get_request_header(b"content-type")
        if not ct or not ct.startswith(b"application/grpc"):
            return FILTER_CONTINUE_
        name = ""
        path = s.path.split(b"?", 1)[0]
        parts = path.split(b"/")
        if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:
            service, method = parts[1].decode("latin-1"), parts[2].decode("latin-1")
            if self.allow is not None:
                named = (service, method) in self.allow
            else:
                named = self.all_methods
            if named:
                if self.replace_dots and self.allow is None:  # (Envoy: not for the allowlist)
                    service = service.replace(".", "_")
                name = f"{service}.{method}."
        if s.filter_state is None:
            s.filter_state = {}
        s.filter_state[self.name] = _Call(name)
        return FILTER_CONTINUE_

    def decode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        call = self._call(s)
        if call is not None and data:
            n = call.req.feed(data)
            if n:
                self._bump(call.prefix + "request_message_count", n)
        return FILTER_CONTINUE_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        call = self._call(s)
        if call is not None:
            ct = s.get_response_header(b"content-type")
            call.grpc_resp = ct is not None and ct.startswith(b"application/grpc")
            code = s.get_response_header(b"grpc-status")
            if code is not None:  # trailers-only
                self._charge(call, code)
        return FILTER_CONTINUE_

    def encode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        call = self._call(s)
        if call is not None and call.grpc_resp and data:
            n = call.resp.feed(data)
            if n:
                self._bump(call.prefix + "response_message_count", n)
        return FILTER_CONTINUE_

    def encode_trailers(self, s: Any, trailers: Any) -> int:
        call = self._call(s)
        if call is not None:
            for k, v in trailers.pairs:
                if k == b"grpc-status":
                    self._charge(call, v)
                    break
        return FILTER_CONTINUE_

    def _charge(self, call: _Call, code: bytes) -> None:
        if call.charged:
            return
        call.charged = True
        c = code.decode("latin-1").strip()
        p = call.prefix
        self._bump(p + c)
        self._bump(p + ("success" if c == "0" else "failure"))
        self._bump(p + "total")


def factory(typed_config: Any, context: dict) -> GrpcStatsFilter:
    from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    path = context.get("path", "")
    msg = config_pb2.FilterConfig()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    if msg.enable_upstream_stats:
        raise UnsupportedConfig(
            f"{path}.typed_config.enable_upstream_stats: not implemented by sofamesh"
        )
    allow = None
    if msg.HasField("individual_method_stats_allowlist"):
        allow = frozenset(
            (svc.name, m)
            for svc in msg.individual_method_stats_allowlist.services
            for m in svc.method_names
        )
    return GrpcStatsFilter(
        context["stats"],
        msg.stats_for_all_methods.value if msg.HasField("stats_for_all_methods") else False,
        allow,
        msg.replace_dots_in_grpc_service_name,
        msg.emit_filter_state,
        context.get("name") or NAME,
    )


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
