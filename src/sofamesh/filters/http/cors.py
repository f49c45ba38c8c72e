"""envoy.filters.http.cors: Cross-Origin Resource Sharing, as Envoy 1.40 does it.

The filter itself has no options (`Cors {}`); the policy is a `CorsPolicy` in a virtual
host's or route's `typed_per_filter_config` under the filter's name. A route's policy is
read first and the virtual host's fills the fields the route's leaves unset (Envoy's
getAllPerFilterConfig, most specific first); `filter_enabled` is the first policy's alone.

A request with an `origin` header is a CORS request when the origin matches one of
`allow_origin_string_match` (a matcher that matches "*" allows every origin):
`http.<stat_prefix>.cors.origin_valid`, else `...origin_invalid` and the request passes
untouched. A valid CORS OPTIONS request with `access-control-request-method` (a preflight)
is answered by the proxy, 200 with `access-control-allow-origin` (the origin),
`-allow-credentials: true`, `-allow-methods` (the request's method for "*"),
`-allow-headers` (the requested ones for "*"), `-max-age` and, with
`allow_private_network_access` and `access-control-request-private-network: true`,
`-allow-private-network: true`. A preflight whose origin does not match is forwarded
upstream, or with `forward_not_matching_preflights: false` answered 200 without CORS
headers. Any other valid CORS request is proxied and its response gets
`access-control-allow-origin`, `-allow-credentials` and `-expose-headers`, replacing the
upstream's. `shadow_enabled` alone counts the stats and changes nothing. The response
headers are added to a later filter's local reply too, as Envoy's encode path does; a
direct_response or redirect route is no CORS route (Envoy: no route entry). The route's and virtual host's `cors` fields (deprecated since
v3.0) are read when no typed_per_filter_config policy applies, as Envoy does. Runtime
keys of filter_enabled / shadow_enabled keep their default_value: there is no runtime layer.
"""

from __future__ import annotations

import random
from typing import Any

from sofamesh._core import router as R
from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.cors"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
LEGACY_KEY = "envoy.config.route.v3.CorsPolicy"  # route.filter_config key of `cors` fields
_NOT_PROXIED = (R.ACTION_DIRECT, R.ACTION_REDIRECT)
_PER_MILLION = {0: 10_000, 1: 100, 2: 1}  # FractionalPercent HUNDRED, TEN_THOUSAND, MILLION
_RESPONSE_NAMES = (
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
    b"access-control-expose-headers",
)


def _ppm(rfp: Any) -> int:
    d = rfp.default_value
    return min(1_000_000, d.numerator * _PER_MILLION.get(d.denominator, 1))


def _hit(ppm: int) -> bool:
    return ppm >= 1_000_000 or (ppm > 0 and random.randrange(1_000_000) < ppm)


class CorsPolicy:
    """One compiled CorsPolicy (filter or route package: both have the same fields). Unset
    fields are None/empty so a less specific policy can fill them."""

    __slots__ = (
        "allow_credentials",
        "allow_headers",
        "allow_methods",
        "allow_pna",
        "enabled_ppm",
        "expose_headers",
        "forward_unmatched",
        "max_age",
        "origins",
        "parent",
        "shadow_ppm",
    )

    def __init__(self, msg: Any, path: str) -> None:
        from sofamesh.proxy.routes import string_matcher

        self.origins = [
            string_matcher(m, f"{path}.allow_origin_string_match[{i}]")
            for i, m in enumerate(msg.allow_origin_string_match)
        ]
        self.allow_methods = msg.allow_methods.encode("latin-1")
        self.allow_headers = msg.allow_headers.encode("latin-1")
        self.expose_headers = msg.expose_headers.encode("latin-1")
        self.max_age = msg.max_age.encode("latin-1")
        self.allow_credentials = (
            msg.allow_credentials.value if msg.HasField("allow_credentials") else None
        )
        self.allow_pna = (
            msg.allow_private_network_access.value
            if msg.HasField("allow_private_network_access")
            else None
        )
        self.forward_unmatched = (
            msg.forward_not_matching_preflights.value
            if msg.HasField("forward_not_matching_preflights")
            else None
        )
        self.enabled_ppm = _ppm(msg.filter_enabled) if msg.HasField("filter_enabled") else 1_000_000
        self.shadow_ppm = _ppm(msg.shadow_enabled) if msg.HasField("shadow_enabled") else 0
        self.parent: CorsPolicy | None = None

    def under(self, parent: Any) -> CorsPolicy:
        """This (route) policy with the virtual host's behind it (proxy/routes.py)."""
        if not isinstance(parent, CorsPolicy) or parent is self:
            return self
        child = object.__new__(CorsPolicy)
        for k in CorsPolicy.__slots__:
            setattr(child, k, getattr(self, k))
        child.parent = parent
        return child


def _chain(p: CorsPolicy) -> list[CorsPolicy]:
    out = [p]
    while out[-1].parent is not None and len(out) < 3:
        out.append(out[-1].parent)  # type: ignore[arg-type]
    return out


def _first(policies: list[CorsPolicy], attr: str) -> Any:
    for p in policies:
        v = getattr(p, attr)
        if v:
            return v
    return None


def _first_set(policies: list[CorsPolicy], attr: str, default: bool) -> bool:
    for p in policies:
        v = getattr(p, attr)
        if v is not None:
            return v
    return default


def _origin_allowed(policies: list[CorsPolicy], origin: bytes) -> bool:
    for m in _first(policies, "origins") or ():
        if m.test(origin) or m.test(b"*"):
            return True
    return False


class CorsFilter(HttpFilter):
    def __init__(self, stats: Any, stat_prefix: str, name: str = NAME) -> None:
        super().__init__(name, wants_encode=True)
        p = f"http.{stat_prefix}.cors."
        self.valid = stats.counter(p + "origin_valid")
        self.invalid = stats.counter(p + "origin_invalid")

    def _policies(self, s: Any) -> list[CorsPolicy]:
        r = s.route
        if r is None or r.action in _NOT_PROXIED:
            return []  # Envoy: a route without a route entry (direct response, redirect)
        p = s.route_filter_config(self.name)
        if p is None:
            p = s.route_filter_config(LEGACY_KEY)
        return _chain(p) if isinstance(p, CorsPolicy) else []

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        policies = self._policies(s)
        if not policies:
            return FILTER_CONTINUE_
        enabled = _hit(policies[0].enabled_ppm)
        if not enabled and not _hit(policies[0].shadow_ppm):
            return FILTER_CONTINUE_
        origin = s.get_request_header(b"origin")
        if not origin:
            return FILTER_CONTINUE_
        allowed = _origin_allowed(policies, origin)
        c = self.valid if allowed else self.invalid
        c.value += 1
        c.used = True
        if not enabled:
            return FILTER_CONTINUE_
        preflight = s.method == b"OPTIONS" and bool(
            s.get_request_header(b"access-control-request-method")
        )
        if not allowed and (not preflight or _first_set(policies, "forward_unmatched", True)):
            return FILTER_CONTINUE_
        if not preflight:
            # the response's CORS headers; added to local replies too (resp_add_extra)
            if s.filter_state is None:
                s.filter_state = {}
            s.filter_state[self.name] = True
            s.add_response_header(b"access-control-allow-origin", origin)
            if _first_set(policies, "allow_credentials", False):
                s.add_response_header(b"access-control-allow-credentials", b"true")
            expose = _first(policies, "expose_headers")
            if expose:
                s.add_response_header(b"access-control-expose-headers", expose)
            return FILTER_CONTINUE_
        # a preflight: answered here (without allow-origin and expose-headers when the origin
        # does not match and forward_not_matching_preflights is false)
        hdrs: list[tuple[bytes, bytes]] = []
        if allowed:
            hdrs.append((b"access-control-allow-origin", origin))
        if _first_set(policies, "allow_credentials", False):
            hdrs.append((b"access-control-allow-credentials", b"true"))
        methods = _first(policies, "allow_methods")
        if methods:
            if methods == b"*":
                methods = s.get_request_header(b"access-control-request-method")
            hdrs.append((b"access-control-allow-methods", methods))
        allow = _first(policies, "allow_headers")
        if allow == b"*":
            allow = s.get_request_header(b"access-control-request-headers")
        if allow:
            hdrs.append((b"access-control-allow-headers", allow))
        expose = _first(policies, "expose_headers")
        if expose and allowed:  # Envoy's own encode path adds it to the preflight answer too
            hdrs.append((b"access-control-expose-headers", expose))
        max_age = _first(policies, "max_age")
        if max_age:
            hdrs.append((b"access-control-max-age", max_age))
        if _first_set(policies, "allow_pna", False) and (
            s.get_request_header(b"access-control-request-private-network") == b"true"
        ):
            hdrs.append((b"access-control-allow-private-network", b"true"))
        s.send_local_reply(200, b"", hdrs)
        return FILTER_STOP_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        st = s.filter_state
        if st and st.get(self.name):
            # Envoy sets (replaces) these: the upstream's own copies go, ours are added
            for n in _RESPONSE_NAMES:
                s.remove_response_header(n)
        return FILTER_CONTINUE_


def compile_config(typed_config: Any, context: dict) -> CorsPolicy:
    from envoy.extensions.filters.http.cors.v3 import cors_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    path = context.get("path", "")
    msg = cors_pb2.CorsPolicy()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {POLICY_URL}")
    return CorsPolicy(msg, path)


def compile_legacy(msg: Any, path: str) -> CorsPolicy:
    """A route's or virtual host's (deprecated) `cors` field: the same fields."""
    return CorsPolicy(msg, path)


def factory(typed_config: Any, context: dict) -> CorsFilter:
    return CorsFilter(context["stats"], context.get("stat_prefix", ""), context.get("name") or NAME)


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_config, "per_route_type_urls": (POLICY_URL,)},
    )
)
