"""envoy.filters.http.fault: fault injection (delays and aborts), Envoy's semantics.

Filter-level config applies to every request; `typed_per_filter_config` on a virtual host or
route replaces it there (how Istio's VirtualService `fault` reaches the proxy). A request is
delayed (`fixed_delay`, or the `x-envoy-fault-delay-request` header with `header_delay`) with
the delay's `percentage`, then aborted (`http_status`, or `x-envoy-fault-abort-request` with
`header_abort`) with the abort's `percentage`: local reply, body `fault filter abort`, response
flag FI (DI for a delay). `max_active_faults` caps concurrent faults (`faults_overflow`).
Stats: `http.<stat_prefix>.fault.{delays_injected, aborts_injected, faults_overflow}`,
gauge `...fault.active_faults`. Runtime overrides (`*_runtime` keys) keep their defaults:
sofamesh has no runtime layer. Not implemented (refused at start-up): `headers`,
`upstream_cluster`, `downstream_nodes`, `response_rate_limit`, gRPC aborts.
"""

from __future__ import annotations

import random
from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.fault"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ABORT_BODY = b"fault filter abort"
_PER_MILLION = {0: 10_000, 1: 100, 2: 1}  # FractionalPercent HUNDRED, TEN_THOUSAND, MILLION


def _ppm(fp: Any) -> int:
    return min(1_000_000, fp.numerator * _PER_MILLION.get(fp.denominator, 1))


class FaultConfig:
    __slots__ = (
        "abort_header",
        "abort_ppm",
        "abort_status",
        "delay_header",
        "delay_ppm",
        "delay_s",
        "max_active",
    )

    def __init__(self, msg: Any, path: str) -> None:
        from sofamesh.proxy.errors import UnsupportedConfig

        for name in ("headers", "downstream_nodes"):
            if len(getattr(msg, name)):
                raise UnsupportedConfig(f"{path}.{name}: not implemented by sofamesh")
        if msg.upstream_cluster:
            raise UnsupportedConfig(f"{path}.upstream_cluster: not implemented by sofamesh")
        if msg.HasField("response_rate_limit"):
            raise UnsupportedConfig(f"{path}.response_rate_limit: not implemented by sofamesh")
        self.delay_s = 0.0
        self.delay_header = False
        self.delay_ppm = 0
        if msg.HasField("delay"):
            d = msg.delay
            kind = d.WhichOneof("fault_delay_secifier")
            if kind == "fixed_delay":
                self.delay_s = d.fixed_delay.seconds + d.fixed_delay.nanos / 1e9
            elif kind == "header_delay":
                self.delay_header = True
            self.delay_ppm = _ppm(d.percentage)
        self.abort_status = 0
        self.abort_header = False
        self.abort_ppm = 0
        if msg.HasField("abort"):
            a = msg.abort
            kind = a.WhichOneof("error_type")
            if kind == "http_status":
                self.abort_status = a.http_status
            elif kind == "header_abort":
                self.abort_header = True
            elif kind is not None:
                raise UnsupportedConfig(f"{path}.abort.{kind}: not implemented by sofamesh")
            self.abort_ppm = _ppm(a.percentage)
        self.max_active = msg.max_active_faults.value if msg.HasField("max_active_faults") else -1


def _hit(ppm: int) -> bool:
    return ppm >= 1_000_000 or (ppm > 0 and random.randrange(1_000_000) < ppm)


def _header_int(s: Any, name: bytes) -> int | None:
    v = s.get_request_header(name)
    if v is None:
        return None
    try:
        return int(v.strip())
    except ValueError:
        return None


class FaultFilter(HttpFilter):
    def __init__(
        self, cfg: FaultConfig, stats: Any, stat_prefix: str, loop: Any, name: str = NAME
    ) -> None:
        super().__init__(name)
        self.cfg = cfg
        self.loop = loop
        p = f"http.{stat_prefix}.fault."
        self.delays = stats.counter(p + "delays_injected")
        self.aborts = stats.counter(p + "aborts_injected")
        self.overflow = stats.counter(p + "faults_overflow")
        self.active = stats.gauge(p + "active_faults")

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        cfg = s.route_filter_config(self.name) or self.cfg
        delay = 0.0
        if cfg.delay_ppm and _hit(cfg.delay_ppm):
            if cfg.delay_header:
                ms = _header_int(s, b"x-envoy-fault-delay-request")
                delay = ms / 1000.0 if ms is not None and ms > 0 else 0.0
            else:
                delay = cfg.delay_s
        status = 0
        if cfg.abort_ppm and _hit(cfg.abort_ppm):
            if cfg.abort_header:
                code = _header_int(s, b"x-envoy-fault-abort-request")
                status = code if code is not None and 200 <= code < 600 else 0
            else:
                status = cfg.abort_status
        if delay <= 0 and not status:
            return FILTER_CONTINUE_
        if 0 <= cfg.max_active <= self.active.value:
            self.overflow.value += 1
            self.overflow.used = True
            return FILTER_CONTINUE_
        if delay > 0:
            self.delays.value += 1
            self.delays.used = True
            self._active(1)
            self.loop.call_later(delay, self._after_delay, s, status)
            return FILTER_STOP_
        self._abort(s, status, "FI")
        return FILTER_CONTINUE_

    def _active(self, n: int) -> None:
        self.active.value += n
        self.active.used = True

    def _after_delay(self, s: Any, status: int) -> None:
        self._active(-1)
        if not s.busy():
            return  # the client went away meanwhile
        if status:
            self._abort(s, status, "DI,FI")
        else:
            s.resp_flags = "DI"
            s.continue_decoding()

    def _abort(self, s: Any, status: int, flags: str) -> None:
        self.aborts.value += 1
        self.aborts.used = True
        s.send_local_reply(status, ABORT_BODY, (), flags)


def _unpack(typed_config: Any, path: str) -> Any:
    from envoy.extensions.filters.http.fault.v3 import fault_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    msg = fault_pb2.HTTPFault()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    return msg


def compile_config(typed_config: Any, context: dict) -> FaultConfig:
    path = context.get("path", "")
    return FaultConfig(_unpack(typed_config, path), path)


def factory(typed_config: Any, context: dict) -> FaultFilter:
    return FaultFilter(
        compile_config(typed_config, context),
        context["stats"],
        context.get("stat_prefix", ""),
        context["loop"],
        context.get("name") or NAME,
    )


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_config},
    )
)
