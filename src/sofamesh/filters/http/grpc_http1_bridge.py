"""envoy.filters.http.grpc_http1_bridge: a gRPC call from an HTTP/1.1 client that cannot read
trailers, as Envoy 1.40 bridges it.

A request over HTTP/1.x with content-type application/grpc has its response held whole
(head and body, the downstream connection's hold_response) until it ends. When it ends with
trailers, their grpc-status (and grpc-message) are copied into the head, a grpc-status that
is not 0 turns the status into 503, and the body goes out with a content-length (the
trailers themselves are dropped: HTTP/1.1 has no place for them). A response that ends
without trailers goes out as it came. HTTP/2 calls pass unchanged. A held response over
1 MiB (Envoy's encoder buffer limit) is replaced by a local 500 (for these gRPC requests a
trailers-only answer: grpc-status 2, grpc-message Internal Server Error), counted in
http.<stat_prefix>.rs_too_large.

The filter keeps no gRPC counters: Envoy 1.40's does not either (its per-method gRPC
counters are the grpc_stats filter's, filters/http/grpc_stats.py). Refused at start-up, by path: `upgrade_protobuf_to_grpc`, `ignore_query_parameters`
(application/x-protobuf requests framed as gRPC).
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HOLD_LIMIT_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.grpc_http1_bridge"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"


class _Call:
    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0  # body bytes held


def _is_grpc(ct: bytes | None) -> bool:
    """Envoy's isGrpcRequestHeaders: application/grpc, alone or followed by + or ;."""
    if not ct or not ct.startswith(b"application/grpc"):
        return False
    rest = ct[16:]
    return not rest or rest[:1] in (b"+", b";")


class GrpcHttp1BridgeFilter(HttpFilter):
    def __init__(self, stats: Any, stat_prefix: str, name: str = NAME) -> None:
        super().__init__(name, wants_data=True, wants_encode=True)
        self.too_large = stats.counter(f"http.{stat_prefix}.rs_too_large")

    def _call(self, s: Any) -> _Call | None:
        st = s.filter_state
        return st.get(self.name) if st else None

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        if s.http_version < 20 and _is_grpc(s.get_request_header(b"content-type")):
            if s.filter_state is None:
                s.filter_state = {}
            s.filter_state[self.name] = _Call()
        return FILTER_CONTINUE_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        if not end_stream and self._call(s) is not None:
            s.hold_response()
        return FILTER_CONTINUE_

    def encode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        call = self._call(s)
        if call is not None:
            before = call.size
            call.size += len(data)
            if before <= HOLD_LIMIT_ < call.size:  # the connection answers 500 (http_proxy)
                self.too_large.value += 1
                self.too_large.used = True
        return FILTER_CONTINUE_

    def encode_trailers(self, s: Any, trailers: Any) -> int:
        call = self._call(s)
        if call is None:
            return FILTER_CONTINUE_
        status = message = None
        for k, v in trailers.pairs:
            if k == b"grpc-status" and status is None:
                status = v
            elif k == b"grpc-message" and message is None:
                message = v
        if status is not None:
            if status.strip() != b"0":
                s.set_response_status(503)
            s.set_response_header(b"grpc-status", status)
        if message is not None:
            s.set_response_header(b"grpc-message", message)
        s.set_response_header(b"content-length", str(call.size).encode())
        return FILTER_CONTINUE_


def factory(typed_config: Any, context: dict) -> GrpcHttp1BridgeFilter:
    from envoy.extensions.filters.http.grpc_http1_bridge.v3 import config_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    path = context.get("path", "")
    msg = config_pb2.Config()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    for f in ("upgrade_protobuf_to_grpc", "ignore_query_parameters"):
        if getattr(msg, f):
            raise UnsupportedConfig(f"{path}.typed_config.{f} is not implemented by sofamesh")
    return GrpcHttp1BridgeFilter(
        context["stats"], context.get("stat_prefix", ""), context.get("name") or NAME
    )


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
