"""envoy.filters.http.csrf: Cross-Site Request Forgery checks as Envoy 1.40 makes them.

The filter's `CsrfPolicy` applies unless a virtual host's or route's typed_per_filter_config
holds one (the most specific replaces it). With `filter_enabled` or `shadow_enabled` (their
default_value: there is no runtime layer) a POST, PUT, DELETE or PATCH is checked: its source
origin (host[:port] of `origin`; of `referer` when origin is absent or empty; none when the
one present is no URL, `null` say) must equal
the request's host, or match one of `additional_origins`. A missing source counts
`http.<stat_prefix>.csrf.missing_source_origin`, a mismatch `request_invalid`, a match
`request_valid`. An invalid request is answered 403
`Invalid origin` when the filter is enabled; in shadow mode alone it passes.
"""

from __future__ import annotations

import random
from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.csrf"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
_PER_MILLION = {0: 10_000, 1: 100, 2: 1}  # FractionalPercent HUNDRED, TEN_THOUSAND, MILLION
_MODIFY = frozenset((b"POST", b"PUT", b"DELETE", b"PATCH"))


def _ppm(rfp: Any) -> int:
    d = rfp.default_value
    return min(1_000_000, d.numerator * _PER_MILLION.get(d.denominator, 1))


def _hit(ppm: int) -> bool:
    return ppm >= 1_000_000 or (ppm > 0 and random.randrange(1_000_000) < ppm)


def host_and_port(url: bytes) -> bytes:
    """The host[:port] of an absolute URL (`scheme://host[:port][/path...]`), or b""."""
    _, sep, rest = url.partition(b"://")
    if not sep:
        return b""
    for stop in (b"/", b"?", b"#"):
        rest = rest.split(stop, 1)[0]
    return rest


class CsrfPolicy:
    __slots__ = ("additional", "enabled_ppm", "shadow_ppm")

    def __init__(self, msg: Any, path: str) -> None:
        from sofamesh.proxy.routes import string_matcher

        self.enabled_ppm = _ppm(msg.filter_enabled)
        self.shadow_ppm = _ppm(msg.shadow_enabled) if msg.HasField("shadow_enabled") else 0
        self.additional = [
            string_matcher(m, f"{path}.additional_origins[{i}]")
            for i, m in enumerate(msg.additional_origins)
        ]


class CsrfFilter(HttpFilter):
    def __init__(self, policy: CsrfPolicy, stats: Any, stat_prefix: str, name: str) -> None:
        super().__init__(name)
        self.policy = policy
        p = f"http.{stat_prefix}.csrf."
        self.missing = stats.counter(p + "missing_source_origin")
        self.invalid = stats.counter(p + "request_invalid")
        self.valid = stats.counter(p + "request_valid")

    @staticmethod
    def _inc(c: Any) -> None:
        c.value += 1
        c.used = True

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        pol = s.route_filter_config(self.name)
        if not isinstance(pol, CsrfPolicy):
            pol = self.policy
        enabled = _hit(pol.enabled_ppm)
        if not enabled and not _hit(pol.shadow_ppm):
            return FILTER_CONTINUE_
        if s.method not in _MODIFY:
            return FILTER_CONTINUE_
        origin = s.get_request_header(b"origin")
        if origin:  # a non-URL origin (`null`) is a missing source; referer is not read
            src = host_and_port(origin)
        else:
            src = host_and_port(s.get_request_header(b"referer") or b"")
        ok = False
        if not src:
            self._inc(self.missing)
        elif src != (s.authority or b"") and not any(m.test(src) for m in pol.additional):
            self._inc(self.invalid)
        else:
            ok = True
        if ok:
            self._inc(self.valid)
            return FILTER_CONTINUE_
        if not enabled:
            return FILTER_CONTINUE_  # shadow mode: counted only
        s.send_local_reply(403, b"Invalid origin")
        return FILTER_STOP_


def compile_config(typed_config: Any, context: dict) -> CsrfPolicy:
    from envoy.extensions.filters.http.csrf.v3 import csrf_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    path = context.get("path", "")
    msg = csrf_pb2.CsrfPolicy()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {TYPE_URL}")
    return CsrfPolicy(msg, path)


def factory(typed_config: Any, context: dict) -> CsrfFilter:
    return CsrfFilter(
        compile_config(typed_config, context),
        context["stats"],
        context.get("stat_prefix", ""),
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
