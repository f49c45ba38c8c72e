"""Envoy's access log filters (envoy.config.accesslog.v3.AccessLogFilter), compiled once into
a predicate `test(stream, duration_ms) -> bool` that a logger asks before formatting.

Implemented: status_code_filter, duration_filter, not_health_check_filter, traceable_filter,
runtime_filter (the default fraction: sofamesh has no runtime layers to override it),
and_filter, or_filter, header_filter, response_flag_filter, grpc_status_filter. The others
(metadata_filter, log_type_filter, extension_filter) are refused by name at load.
A tcp_proxy logger's filter sees the connection's entry (rpc_tcp.TcpDownstream.log_entry):
status 0, its duration, its response flags; header-based kinds are refused there.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from sofamesh._core import log_fields as F
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.log_format import LONG_FLAGS

Test = Callable[[Any, float], bool]

_OPS = {
    0: lambda a, b: a == b,  # EQ
    1: lambda a, b: a >= b,  # GE
    2: lambda a, b: a <= b,  # LE
    3: lambda a, b: a != b,  # NE
}
_DENOM = {0: 100, 1: 10_000, 2: 1_000_000}  # FractionalPercent.DenominatorType

# Envoy's Grpc::Utility::httpToGrpcStatus, for responses without grpc-status
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


class FilterContext:
    """What a filter needs from its connection manager: the names its health_check filters
    mark a stream with (not_health_check_filter), and whether a format already keeps the
    response (grpc_status_filter sets `capture`)."""

    def __init__(self, health_check_names: tuple = (), tcp: bool = False) -> None:
        self.health_check_names = health_check_names
        self.tcp = tcp
        self.capture = False


def _comparison(c: Any, path: str) -> tuple[Callable[[Any, Any], bool], int]:
    op = _OPS.get(c.op)
    if op is None:
        raise UnsupportedConfig(f"{path}.op: unknown comparison {c.op}")
    return op, c.value.default_value


def compile_filter(f: Any, path: str, ctx: FilterContext) -> Test:
    kind = f.WhichOneof("filter_specifier")
    sub = f"{path}.{kind}"
    if kind == "status_code_filter":
        op, v = _comparison(f.status_code_filter.comparison, sub + ".comparison")
        if ctx.tcp:
            return lambda e, ms: op(0, v)
        return lambda s, ms: op(s.resp_status, v)
    if kind == "duration_filter":
        op, v = _comparison(f.duration_filter.comparison, sub + ".comparison")
        return lambda s, ms: op(int(ms), v)
    if kind == "not_health_check_filter":
        names = ctx.health_check_names
        if ctx.tcp or not names:
            return lambda s, ms: True

        def not_hc(s: Any, ms: float) -> bool:
            fs = s.filter_state
            return fs is None or not any(fs.get(n) for n in names)

        return not_hc
    if kind == "traceable_filter":
        if ctx.tcp:
            return lambda s, ms: False

        def traceable(s: Any, ms: float) -> bool:
            # Envoy logs requests whose trace was forced by the service (x-request-id
            # marked 'a'), and only with tracing configured on the connection manager
            if s.config.tracer is None:
                return False
            rid = F.request_header(s, b"x-request-id") or s.request_id
            return bool(rid) and len(rid) > 14 and rid[14] == 0x61

        return traceable
    if kind == "runtime_filter":
        rf = f.runtime_filter
        pct = rf.percent_sampled
        num = pct.numerator if rf.HasField("percent_sampled") else 0
        den = _DENOM.get(pct.denominator, 100)
        indep = rf.use_independent_randomness or ctx.tcp

        def runtime(s: Any, ms: float) -> bool:
            r = None
            if not indep:
                rid = F.request_header(s, b"x-request-id") or s.request_id
                if rid and len(rid) >= 8:
                    try:
                        r = int(rid[:8], 16)
                    except ValueError:
                        r = None
            if r is None:
                r = random.getrandbits(64)
            return r % den < num

        return runtime
    if kind in ("and_filter", "or_filter"):
        subs = tuple(
            compile_filter(x, f"{sub}.filters[{i}]", ctx)
            for i, x in enumerate(getattr(f, kind).filters)
        )
        if kind == "and_filter":
            return lambda s, ms: all(t(s, ms) for t in subs)
        return lambda s, ms: any(t(s, ms) for t in subs)
    if kind == "header_filter":
        if ctx.tcp:
            raise UnsupportedConfig(f"{sub}: a header filter on a tcp_proxy access log")
        from sofamesh.proxy.routes import header_matcher

        m = header_matcher(f.header_filter.header, sub + ".header")
        test = m.test  # type: ignore[attr-defined]  # HeaderMatcher.test (router.pyx)
        return lambda s, ms: s.resp_flags != "DPE" and bool(test(s.request_head))
    if kind == "response_flag_filter":
        flags = list(f.response_flag_filter.flags)
        for i, fl in enumerate(flags):
            if fl not in LONG_FLAGS:
                raise UnsupportedConfig(f"{sub}.flags[{i}]: unknown response flag {fl!r}")
        want = frozenset(flags)

        def flag_of(x: Any) -> str:
            return (x[9] or "-") if ctx.tcp else x.resp_flags

        if not want:
            return lambda s, ms: flag_of(s) != "-"
        return lambda s, ms: not want.isdisjoint(flag_of(s).split(","))
    if kind == "grpc_status_filter":
        if ctx.tcp:
            raise UnsupportedConfig(f"{sub}: a gRPC status filter on a tcp_proxy access log")
        g = f.grpc_status_filter
        statuses = frozenset(int(x) for x in g.statuses)
        exclude = g.exclude
        ctx.capture = True

        def grpc_status(s: Any, ms: float) -> bool:
            # Envoy: the trailers' grpc-status, the headers', else one mapped from the
            # HTTP status (UNKNOWN when there is none)
            v = F.response_trailer(s, b"grpc-status") or F.response_header(s, b"grpc-status")
            st = 2
            if v is not None:
                try:
                    st = int(v)
                except ValueError:
                    st = 2
            elif s.resp_status:
                st = _HTTP_TO_GRPC.get(s.resp_status, 2)
            return (st in statuses) != exclude

        return grpc_status
    raise UnsupportedConfig(
        f"{path}: access log filter {kind or '(empty)'} is not implemented by sofamesh"
    )
