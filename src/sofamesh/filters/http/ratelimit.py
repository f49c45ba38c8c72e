"""envoy.filters.http.ratelimit: a call to a rate-limit service
(`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, e.g. `sofamesh mixer`) per
request, for drop-in compatibility with Envoy configs. (The mesh's own quota design is
`rate_limit_quota`, which decides locally; this filter pays a remote call per request.)

    decode_headers -> descriptors from the route's (and virtual host's) rate_limits actions
                   -> none: continue       some: ShouldRateLimit (async task, `timeout`)
                      and stop this stream only; other streams go on meanwhile
    answer OK          -> continue (RLS request headers added; x-ratelimit-* on the response)
           OVER_LIMIT  -> local reply `rate_limited_status` (429) + x-envoy-ratelimited: true
           error/timeout -> failure_mode_deny: local reply `status_on_error` (500), else
                          continue and count failure_mode_allowed

Descriptors as Envoy builds them (router_ratelimit.cc): each `rate_limits` entry whose
`stage` is the filter's gives one descriptor when every action yields its entry (a
`request_headers` action with an absent header drops the descriptor, unless
`skip_if_absent`). The route's entries apply; the virtual host's too with
`include_vh_rate_limits`, or when the route's gave none (RateLimitPerRoute.vh_rate_limits
OVERRIDE, the default; INCLUDE and IGNORE as Envoy). Filter-level `rate_limits` replace both.

Stats as Envoy's, in the scope of the route's target cluster:
`cluster.<cluster>.ratelimit.{ok,over_limit,error,failure_mode_allowed}`; an over-limit
answer also counts as a 429 of that cluster (`upstream_rq_429`, `upstream_rq_4xx`).

The call is made on one HTTP/2 connection per filter and host of the `envoy_grpc` cluster
(`proxy/grpc_unary.py`, sofamesh's own HTTP/2 codec: grpc.aio cost ~250 us of CPU a call).

Implemented actions: source_cluster, destination_cluster, request_headers, remote_address,
masked_remote_address, generic_key, header_value_match, query_parameters. Refused by path
at start-up: dynamic_metadata, metadata, extension, query_parameter_value_match, `limit`,
`hits_addend`, `apply_on_stream_done`, `disable_key`, `filter_enabled`,
`filter_enforced`, `failure_mode_deny_percent`, `stat_prefix`,
`rate_limited_as_resource_exhausted`, `google_grpc`.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import parse_qsl

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.grpc_unary import ChannelCache, cluster_target

log = logging.getLogger("sofamesh.ratelimit")

NAME = "envoy.filters.http.ratelimit"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
_METHOD_B = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
# keys of the compiled route / virtual host rate_limits in Route.filter_config
# (proxy/routes.py puts them there)
ROUTE_KEY = "envoy.config.route.v3.RouteAction.rate_limits"
VH_KEY = "envoy.config.route.v3.VirtualHost.rate_limits"
VH_OVERRIDE, VH_INCLUDE, VH_IGNORE = 0, 1, 2  # RateLimitPerRoute.VhRateLimitsOptions
# RateLimitResponse.RateLimit.Unit -> seconds (x-ratelimit-limit's w=)
_WINDOW = {1: 1, 2: 60, 3: 3600, 4: 86400, 7: 604800, 5: 2592000, 6: 31536000}
_OK, _OVER_LIMIT = 1, 2  # RateLimitResponse.Code


def _unsupported(msg: str) -> Exception:
    from sofamesh.proxy.errors import UnsupportedConfig

    return UnsupportedConfig(msg)


# -- descriptor actions (compiled once per route config) -------------------------------------
# Each action is (kind, key, value, extra); `_entry` evaluates it for a stream:
# None drops the whole descriptor, () adds no entry, (key, value) adds one.
A_SOURCE, A_DEST, A_HEADER, A_REMOTE, A_GENERIC, A_HEADER_MATCH, A_QUERY, A_MASKED = range(8)


def _compile_action(a: Any, path: str) -> tuple:
    which = a.WhichOneof("action_specifier")
    if which == "source_cluster":
        return (A_SOURCE, "source_cluster", "", None)
    if which == "destination_cluster":
        return (A_DEST, "destination_cluster", "", None)
    if which == "request_headers":
        rh = a.request_headers
        return (A_HEADER, rh.descriptor_key, rh.skip_if_absent, rh.header_name.lower().encode())
    if which == "remote_address":
        return (A_REMOTE, "remote_address", "", None)
    if which == "generic_key":
        g = a.generic_key
        return (A_GENERIC, g.descriptor_key or "generic_key", g.descriptor_value, None)
    if which == "header_value_match":
        from sofamesh.proxy.routes import header_matcher

        hv = a.header_value_match
        matchers = tuple(
            header_matcher(h, f"{path}.header_value_match.headers[{i}]")
            for i, h in enumerate(hv.headers)
        )
        expect = hv.expect_match.value if hv.HasField("expect_match") else True
        return (
            A_HEADER_MATCH,
            hv.descriptor_key or "header_match",
            hv.descriptor_value,
            (matchers, expect),
        )
    if which == "masked_remote_address":
        m = a.masked_remote_address
        v4 = m.v4_prefix_mask_len.value if m.HasField("v4_prefix_mask_len") else 32
        v6 = m.v6_prefix_mask_len.value if m.HasField("v6_prefix_mask_len") else 128
        return (A_MASKED, "masked_remote_address", "", (v4, v6))
    if which == "query_parameters":
        q = a.query_parameters
        return (A_QUERY, q.descriptor_key, q.skip_if_absent, q.query_parameter_name)
    raise _unsupported(f"{path}.{which}: this rate limit action is not implemented by sofamesh")


def compile_rate_limits(limits: Any, path: str) -> tuple:
    """envoy.config.route.v3.RateLimit entries -> ((stage, (action, ...)), ...)."""
    out = []
    for i, rl in enumerate(limits):
        rpath = f"{path}[{i}]"
        for f in ("limit", "hits_addend"):
            # hits_addend: Envoy 1.40 sends neither a descriptor's nor the request's
            # hits_addend for it (tests/integration/mixer/test_ratelimit_differential.py)
            if rl.HasField(f):
                raise _unsupported(f"{rpath}.{f} is not implemented by sofamesh")
        if rl.apply_on_stream_done:
            raise _unsupported(f"{rpath}.apply_on_stream_done is not implemented by sofamesh")
        if rl.disable_key:
            raise _unsupported(f"{rpath}.disable_key: sofamesh has no runtime layer")
        actions = tuple(
            _compile_action(a, f"{rpath}.actions[{j}]") for j, a in enumerate(rl.actions)
        )
        out.append((rl.stage.value if rl.HasField("stage") else 0, actions))
    return tuple(out)


def compile_route(route_action: Any, path: str) -> tuple[tuple, bool]:
    """A RouteAction's (rate_limits compiled, include_vh_rate_limits)."""
    limits = compile_rate_limits(route_action.rate_limits, f"{path}.rate_limits")
    include = route_action.include_vh_rate_limits.value
    return limits, include


def _query(s: Any) -> dict[str, str]:
    path = s.path or b""
    i = path.find(b"?")
    if i < 0:
        return {}
    q = path[i + 1 :].split(b"#", 1)[0].decode("latin-1")
    out: dict[str, str] = {}
    for k, v in parse_qsl(q, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def _entry(act: tuple, s: Any, local_cluster: str, dest: str) -> tuple | None:
    kind, key, value, extra = act
    if kind == A_HEADER:
        v = s.get_request_header(extra)
        if v is None:
            return () if value else None  # value: skip_if_absent
        return (key, v.decode("latin-1"))
    if kind == A_GENERIC:
        return (key, value)
    if kind == A_DEST:
        return (key, dest)
    if kind == A_SOURCE:
        return (key, local_cluster)
    if kind == A_REMOTE:
        ip = s.remote_ip
        return (key, ip.decode()) if ip else None
    if kind == A_HEADER_MATCH:
        matchers, expect = extra
        head = s.request_head
        if all(m.test(head) for m in matchers) == expect:
            return (key, value)
        return None
    if kind == A_MASKED:
        ip = s.remote_ip
        if not ip:
            return None
        addr = ip.decode()
        n = extra[1] if ":" in addr else extra[0]
        return (key, str(ipaddress.ip_network(f"{addr}/{n}", strict=False)))
    if kind == A_QUERY:
        v = _query(s).get(extra)
        if v is None:
            return () if value else None
        return (key, v)
    return None


def descriptors(limits: tuple, stage: int, s: Any, local_cluster: str, dest: str) -> list:
    """The descriptors (lists of (key, value)) of the entries of `stage` for a stream."""
    out = []
    for st, actions in limits:
        if st != stage:
            continue
        entries = []
        for act in actions:
            e = _entry(act, s, local_cluster, dest)
            if e is None:
                break
            if e:
                entries.append(e)
        else:
            if entries:
                out.append(entries)
    return out


# -- the filter ----------------------------------------------------------------------------------
class PerRoute:
    """RateLimitPerRoute, compiled."""

    __slots__ = ("domain", "limits", "vh_option")

    def __init__(self, msg: Any, path: str) -> None:
        if msg.override_option:
            raise _unsupported(f"{path}.override_option is not implemented by sofamesh")
        self.vh_option = msg.vh_rate_limits
        self.domain = msg.domain
        self.limits = (
            compile_rate_limits(msg.rate_limits, f"{path}.rate_limits")
            if len(msg.rate_limits)
            else None
        )


class _ClusterStats:
    __slots__ = ("error", "failure_mode_allowed", "ok", "over_limit", "rq_4xx", "rq_429")

    def __init__(self, stats: Any, cluster: str) -> None:
        p = f"cluster.{cluster}."
        self.ok = stats.counter(p + "ratelimit.ok")
        self.over_limit = stats.counter(p + "ratelimit.over_limit")
        self.error = stats.counter(p + "ratelimit.error")
        self.failure_mode_allowed = stats.counter(p + "ratelimit.failure_mode_allowed")
        self.rq_429 = stats.counter(p + "upstream_rq_429")
        self.rq_4xx = stats.counter(p + "upstream_rq_4xx")


def _inc(c: Any) -> None:
    c.value += 1
    c.used = True


class RateLimitFilter(HttpFilter):
    def __init__(self, cfg: Any, context: dict, name: str = NAME) -> None:
        super().__init__(name)
        path = context.get("path", "")
        self.domain = cfg.domain
        self.stage = cfg.stage
        self.request_type = cfg.request_type or "both"
        self.timeout = cfg.timeout.ToNanoseconds() / 1e9 if cfg.HasField("timeout") else 0.020
        self.deny = cfg.failure_mode_deny
        self.x_headers = cfg.enable_x_ratelimit_headers == 1
        self.x_envoy_header = not cfg.disable_x_envoy_ratelimited_header
        self.limited_status = (
            cfg.rate_limited_status.code
            if cfg.HasField("rate_limited_status") and cfg.rate_limited_status.code >= 400
            else 429
        )
        self.error_status = (
            cfg.status_on_error.code
            if cfg.HasField("status_on_error") and cfg.status_on_error.code
            else 500
        )
        self.limited_headers = tuple(
            (h.header.key.lower().encode(), h.header.value.encode())
            for h in cfg.response_headers_to_add
        )
        self.filter_limits = (
            compile_rate_limits(cfg.rate_limits, f"{path}.typed_config.rate_limits")
            if len(cfg.rate_limits)
            else None
        )
        self.cluster = cfg.rate_limit_service.grpc_service.envoy_grpc.cluster_name
        self.authority = cfg.rate_limit_service.grpc_service.envoy_grpc.authority  # if set
        self.clusters = context.get("clusters") or {}
        self.local_cluster = context.get("local_cluster", "")
        self.loop = context["loop"]
        self.stats = context["stats"]
        self._by_cluster: dict[str, _ClusterStats] = {}
        self._channels = ChannelCache(
            self.loop, lambda: self.clusters, self.cluster, self.authority
        )
        self.path = path

    # -- per request -----------------------------------------------------------------------------
    def decode_headers(self, s: Any, end_stream: bool) -> int:
        if self.request_type != "both":
            internal = s.get_request_header(b"x-envoy-internal") == b"true"
            if internal != (self.request_type == "internal"):
                return FILTER_CONTINUE_
        route = s.route
        if route is None or route.action != 0:  # a route to one cluster (RA_CLUSTER) only
            return FILTER_CONTINUE_
        dest = route.cluster
        if dest not in self.clusters:
            return FILTER_CONTINUE_  # Envoy: no cluster info, no call
        per_route = s.route_filter_config(self.name)
        domain = (per_route.domain if per_route is not None else "") or self.domain
        descs = self._descriptors(s, route, per_route, dest)
        if not descs:
            return FILTER_CONTINUE_
        token = object()
        if s.filter_state is None:
            s.filter_state = {}
        s.filter_state[self] = token
        self._call(s, token, domain, descs, dest)
        return FILTER_STOP_

    def _descriptors(self, s: Any, route: Any, per_route: Any, dest: str) -> list:
        lc, stage = self.local_cluster, self.stage
        if self.filter_limits is not None:
            return descriptors(self.filter_limits, stage, s, lc, dest)
        fc = route.filter_config
        r = fc.get(ROUTE_KEY)
        limits, include = r if r is not None else ((), False)
        if per_route is not None and per_route.limits is not None:
            limits = per_route.limits
        out = descriptors(limits, stage, s, lc, dest) if limits else []
        if include:
            option = VH_INCLUDE
        else:
            option = per_route.vh_option if per_route is not None else VH_OVERRIDE
        if option == VH_IGNORE or (option == VH_OVERRIDE and out):
            return out
        vh = fc.get(VH_KEY)
        if vh:
            out += descriptors(vh, stage, s, lc, dest)
        return out

    def _cluster_stats(self, name: str) -> _ClusterStats:
        st = self._by_cluster.get(name)
        if st is None:
            st = self._by_cluster[name] = _ClusterStats(self.stats, name)
        return st

    def _target(self) -> tuple[str, int] | None:
        return cluster_target(self.clusters, self.cluster, spread=False)

    def _call(self, s: Any, token: object, domain: str, descs: list, dest: str) -> None:
        from envoy.service.ratelimit.v3 import rls_pb2

        def done(status: int, data: bytes | None) -> None:
            resp = None
            if status == 0 and data is not None:
                try:
                    resp = rls_pb2.RateLimitResponse.FromString(data)
                except Exception:  # noqa: BLE001 (a malformed answer is the service's error)
                    resp = None
            elif addr is not None:
                log.debug("%s: rate limit service %s:%s: grpc-status %d", self.path, *addr, status)
            st = s.filter_state
            if st is None or st.get(self) is not token or not s.busy():
                return  # the stream ended meanwhile (reset, timeout): nothing to answer
            del st[self]
            self._complete(s, resp, dest)

        addr = self._target()
        if addr is None:  # no host to ask: the service's error, answered on the next turn
            self.loop.call_soon(done, 14, None)
            return
        req = rls_pb2.RateLimitRequest(domain=domain)
        for entries in descs:
            d = req.descriptors.add()
            for k, v in entries:
                d.entries.add(key=k, value=v)
        self._channels.get(addr).call(_METHOD_B, req.SerializeToString(), self.timeout, done)

    def _complete(self, s: Any, resp: Any, dest: str) -> None:
        cs = self._cluster_stats(dest)
        if resp is None or resp.overall_code not in (_OK, _OVER_LIMIT):
            _inc(cs.error)
            if self.deny:
                s.send_local_reply(self.error_status, b"", (), "RLSE")
                return
            _inc(cs.failure_mode_allowed)
            s.continue_decoding()
            return
        headers = [(h.key.lower(), h.value) for h in resp.response_headers_to_add]
        if self.x_headers:
            headers += _x_ratelimit_headers(resp.statuses)
        if resp.overall_code == _OVER_LIMIT:
            _inc(cs.over_limit)
            _inc(cs.rq_429)
            _inc(cs.rq_4xx)
            extra = list(self.limited_headers) + headers
            if self.x_envoy_header:
                extra.append((b"x-envoy-ratelimited", b"true"))
            s.send_local_reply(self.limited_status, resp.raw_body, extra, "RL")
            return
        _inc(cs.ok)
        for h in resp.request_headers_to_add:
            s.add_request_header(h.key, h.value)
        for k, v in headers:
            s.add_response_header(k, v)
        s.continue_decoding()

    def close(self) -> None:
        self._channels.close()


def _x_ratelimit_headers(statuses: Any) -> list[tuple[str, str]]:
    """DRAFT_VERSION_03's x-ratelimit-limit / -remaining / -reset from the descriptor with the
    fewest requests remaining; the limit header lists every limit's quota policy."""
    best = None
    policy = ""
    for st in statuses:
        if not st.HasField("current_limit"):
            continue
        if best is None or st.limit_remaining < best.limit_remaining:
            best = st
        w = _WINDOW.get(st.current_limit.unit, 0)
        if w:
            policy += f", {st.current_limit.requests_per_unit};w={w}"
            if st.current_limit.name:
                policy += f';name="{st.current_limit.name}"'
    if best is None:
        return []
    return [
        ("x-ratelimit-limit", f"{best.current_limit.requests_per_unit}{policy}"),
        ("x-ratelimit-remaining", str(best.limit_remaining)),
        ("x-ratelimit-reset", str(best.duration_until_reset.seconds)),
    ]


def _unpack(typed_config: Any, path: str) -> Any:
    from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2

    cfg = rate_limit_pb2.RateLimit()
    if not typed_config.Unpack(cfg):
        raise _unsupported(f"{path}.typed_config: expected {TYPE_URL}")
    tpath = f"{path}.typed_config"
    for f in ("filter_enabled", "filter_enforced", "failure_mode_deny_percent"):
        if cfg.HasField(f):
            raise _unsupported(f"{tpath}.{f}: sofamesh has no runtime layer")
    if cfg.stat_prefix:
        raise _unsupported(f"{tpath}.stat_prefix is not implemented by sofamesh")
    if cfg.rate_limited_as_resource_exhausted:
        raise _unsupported(
            f"{tpath}.rate_limited_as_resource_exhausted is not implemented by sofamesh"
        )
    if cfg.request_type not in ("", "both", "internal", "external"):
        raise _unsupported(f"{tpath}.request_type: one of internal, external, both")
    gs = cfg.rate_limit_service.grpc_service
    if gs.WhichOneof("target_specifier") != "envoy_grpc":
        raise _unsupported(f"{tpath}.rate_limit_service.grpc_service: only envoy_grpc is supported")
    return cfg


def factory(typed_config: Any, context: dict) -> RateLimitFilter:
    path = context.get("path", "")
    cfg = _unpack(typed_config, path)
    cluster = cfg.rate_limit_service.grpc_service.envoy_grpc.cluster_name
    clusters = context.get("clusters")
    if clusters is not None and cluster not in clusters:
        raise _unsupported(
            f"{path}.typed_config.rate_limit_service.grpc_service.envoy_grpc: unknown "
            f"cluster {cluster!r}"
        )
    return RateLimitFilter(cfg, context, context.get("name") or NAME)


def compile_per_route(typed_config: Any, context: dict) -> PerRoute:
    from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2

    path = context.get("path", "")
    msg = rate_limit_pb2.RateLimitPerRoute()
    if not typed_config.Unpack(msg):
        raise _unsupported(f"{path}: expected {PER_ROUTE_URL}")
    return PerRoute(msg, path)


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_per_route},
    )
)
