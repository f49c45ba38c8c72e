"""envoy.filters.http.ext_authz: a call to an external authorization service per request
(`envoy.service.auth.v3.Authorization/Check` over gRPC, or a plain HTTP request with
`http_service`: filters/http/ext_authz_http.py), as Envoy 1.40 makes it; Istio generates it
for CUSTOM AuthorizationPolicies (with `filter_enabled_metadata` on its RBAC shadow policy).

    decode_headers -> route, per-route `disabled`, `filter_enabled(_metadata)`: skip or
                      `disabled` (+ deny_at_disable: status_on_error)
                   -> with_request_body: buffer (decode_data) up to max_request_bytes
                      (413 over it, unless allow_partial_message: the call goes then)
                   -> Check (async, `timeout`), this stream stopped, others go on
    answer OK     -> continue: ok_response headers set / appended / removed on the upstream
                     request, response_headers_to_add on the client's response
           other  -> local reply: denied_response status (403), its headers and body
           error  -> failure_mode_allow: continue (+ x-envoy-auth-failure-mode-allowed:
                     true with failure_mode_allow_header_add), else status_on_error (403)

Stats as Envoy 1.40's: `http.<hcm stat_prefix>.ext_authz.[<stat_prefix>.]{ok,denied,error,
failure_mode_allowed,disabled,...}` (a timeout counts as an error: Envoy 1.40 has no timeout
counter) and, in the scope of the route's target cluster, `cluster.<cluster>.ext_authz.
[<stat_prefix>.]{ok,denied,error,failure_mode_allowed}`; a denial also counts as a response
of its status there (`upstream_rq_<code>`, `upstream_rq_<class>xx`, `upstream_rq_completed`),
as Envoy's chargeResponseStat (charge_cluster_response_stats).

The gRPC call goes on sofamesh's own HTTP/2 client (proxy/grpc_unary.py), one connection
per filter and host of the `envoy_grpc` cluster, as envoy.filters.http.ratelimit's.

Refused at start-up by path (not listed in config/implemented_filters.py, or checked here):
google_grpc, clear_route_cache, validate_mutations, include_peer_certificate,
include_tls_session, route_metadata_context_namespaces, typed and route typed metadata
namespaces, bootstrap_metadata_labels_key, encode_raw_headers, decoder_header_mutation_rules,
enable_dynamic_metadata_ingestion, filter_metadata, emit_filter_state_stats,
max_denied_response_body_bytes, enforce_response_header_limits, http_service.retry_policy,
authorization_response.dynamic_metadata_from_headers, per-route check_settings
with_request_body / grpc_service / http_service. Not applied: an answer's
query_parameters_to_set / _to_remove (the request path is settable in the compiled header
map only: _core/headers.pyx). Per-route config is the most specific one (Envoy merges the
virtual host's and the route's context_extensions). With with_request_body, a request body
that ends with trailers never shows its end to decode_data: such a request waits for the
stream's timeouts (filters get no decode_trailers yet).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.grpc_unary import ChannelCache, cluster_target

log = logging.getLogger("sofamesh.ext_authz")

NAME = "envoy.filters.http.ext_authz"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_METHOD_B = b"/envoy.service.auth.v3.Authorization/Check"
_META_NS = "envoy.filters.http.ext_authz"  # the dynamic metadata an answer sets
# Envoy 1.40's filter stats, all created with the filter (they show as 0)
STAT_NAMES = (
    "ok",
    "denied",
    "error",
    "disabled",
    "failure_mode_allowed",
    "invalid",
    "ignored_dynamic_metadata",
    "filter_state_name_collision",
    "omitted_response_headers",
    "request_header_limits_reached",
    "response_header_limits_reached",
    "shadow_denied",
    "shadow_error",
)
# what an answer's header does to the request (or response): Envoy's lists of the answer
H_SET, H_ADD, H_APPEND = range(3)
# headers an answer may not remove (Envoy's isRemovableHeader): the request stays well formed
_UNREMOVABLE = frozenset((b"host",))
_FAILURE_HEADER = b"x-envoy-auth-failure-mode-allowed"


def _unsupported(msg: str) -> Exception:
    from sofamesh.proxy.errors import UnsupportedConfig

    return UnsupportedConfig(msg)


def _inc(c: Any) -> None:
    c.value += 1
    c.used = True


# -- filter_enabled_metadata -----------------------------------------------------------------
class MetadataMatch:
    """envoy.type.matcher.v3.MetadataMatcher on the request's dynamic metadata (what filters
    set: RBAC's shadow policy id, set_metadata's): string_match, present_match, bool_match."""

    __slots__ = ("invert", "keys", "kind", "namespace", "value")

    def __init__(self, m: Any, path: str) -> None:
        from sofamesh.proxy.routes import string_matcher

        self.namespace = m.filter
        keys = []
        for i, seg in enumerate(m.path):
            if seg.WhichOneof("segment") != "key":
                raise _unsupported(f"{path}.path[{i}]: only key segments")
            keys.append(seg.key)
        self.keys = tuple(keys)
        self.invert = m.invert
        kind = m.value.WhichOneof("match_pattern")
        self.kind = kind
        if kind == "string_match":
            self.value: Any = string_matcher(m.value.string_match, f"{path}.value.string_match")
        elif kind == "present_match":
            self.value = m.value.present_match
        elif kind == "bool_match":
            self.value = m.value.bool_match
        else:
            raise _unsupported(f"{path}.value.{kind}: not implemented by sofamesh")

    def test(self, s: Any) -> bool:
        fs = s.filter_state
        v = fs.get(("metadata", self.namespace)) if fs else None
        for k in self.keys:
            v = v.get(k) if isinstance(v, dict) else None
        if self.kind == "string_match":
            ok = isinstance(v, str) and self.value.test(v.encode())
        elif self.kind == "present_match":
            ok = v is not None and self.value  # Envoy's: present_match false never matches
        else:
            ok = isinstance(v, bool) and v == self.value
        return ok != self.invert


def _percent(fp: Any) -> float:
    """A FractionalPercent as a share of 1."""
    den = {0: 100, 1: 10_000, 2: 1_000_000}.get(fp.denominator, 100)
    return min(fp.numerator / den, 1.0)


# -- per route ---------------------------------------------------------------------------------
class PerRoute:
    """ExtAuthzPerRoute, compiled: disabled, or check_settings' context_extensions and
    disable_request_body_buffering."""

    __slots__ = ("context_extensions", "disabled", "no_body")

    def __init__(self, msg: Any, path: str) -> None:
        self.disabled = msg.disabled
        cs = msg.check_settings
        for f in ("with_request_body", "grpc_service", "http_service"):
            if cs.HasField(f):
                raise _unsupported(f"{path}.check_settings.{f} is not implemented by sofamesh")
        self.context_extensions = dict(cs.context_extensions)
        self.no_body = cs.disable_request_body_buffering


def compile_per_route(typed_config: Any, context: dict) -> PerRoute:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    path = context.get("path", "")
    msg = ext_authz_pb2.ExtAuthzPerRoute()
    if not typed_config.Unpack(msg):
        raise _unsupported(f"{path}: expected {PER_ROUTE_URL}")
    return PerRoute(msg, path)


# -- per stream -------------------------------------------------------------------------------
class _Stream:
    """One stream's check: its body while buffered, what the answer adds to the response."""

    __slots__ = ("body", "buffering", "calling", "deny_headers", "resp_ops", "route_cluster")

    def __init__(self) -> None:
        self.body: bytearray | None = None
        self.buffering = False
        self.calling = False
        self.resp_ops: list[tuple[int, bytes, bytes]] | None = None  # OK: response headers
        self.deny_headers: list[tuple[bytes, bytes]] | None = None  # a denial's, set
        self.route_cluster = ""


def header_op(h: Any) -> int:
    """What an answer's HeaderValueOption does (Envoy 1.40's CheckResponse parsing): the
    deprecated `append` true appends to a present header, anything else overwrites
    (`append_action` is not read: tests/integration/http_filters/test_ext_authz.py)."""
    return H_APPEND if h.HasField("append") and h.append.value else H_SET


def response_header_op(h: Any) -> int:
    """An answer's response_headers_to_add entry: `append` false overwrites the response's
    header, else it is added beside it."""
    return H_SET if h.HasField("append") and not h.append.value else H_ADD


def apply_request_ops(s: Any, ops: list[tuple[int, bytes, bytes]]) -> None:
    """Header changes of an allowing answer, on the request the upstream gets: sets, adds,
    then appends (Envoy's order)."""
    for op, k, v in ops:
        if op == H_SET:
            s.remove_request_header(k)
            s.add_request_header(k, v)
    for op, k, v in ops:
        if op == H_ADD:  # http_service's allowed_upstream_headers_to_append
            s.add_request_header(k, v)
    for op, k, v in ops:
        if op == H_APPEND and s.get_request_header(k) is not None:
            # Envoy appends to a present header only, its values comma-joined
            joined = b",".join([x for n, x in s.request_headers() if n == k] + [v])
            s.remove_request_header(k)
            s.add_request_header(k, joined)


class ExtAuthzFilter(HttpFilter):
    def __init__(self, cfg: Any, context: dict, name: str = NAME) -> None:
        super().__init__(name, wants_data=cfg.HasField("with_request_body"), wants_encode=True)
        path = context.get("path", "")
        self.path = path
        self.loop = context["loop"]
        self.stats = context["stats"]
        self.clusters = context.get("clusters") or {}
        self.fail_open = cfg.failure_mode_allow
        self.fail_header = cfg.failure_mode_allow_header_add
        self.error_status = (
            cfg.status_on_error.code
            if cfg.HasField("status_on_error") and cfg.status_on_error.code
            else 403
        )
        wb = cfg.with_request_body
        self.with_body = cfg.HasField("with_request_body")
        self.max_body = wb.max_request_bytes
        self.partial = wb.allow_partial_message
        self.pack_bytes = wb.pack_as_bytes
        self.enabled_metadata = (
            MetadataMatch(
                cfg.filter_enabled_metadata, f"{path}.typed_config.filter_enabled_metadata"
            )
            if cfg.HasField("filter_enabled_metadata")
            else None
        )
        self.enabled_share = (
            _percent(cfg.filter_enabled.default_value) if cfg.HasField("filter_enabled") else 1.0
        )
        self.deny_at_disable = (
            cfg.deny_at_disable.default_value.value if cfg.HasField("deny_at_disable") else False
        )
        self.metadata_namespaces = tuple(cfg.metadata_context_namespaces)
        self.allowed = _header_matchers(cfg.allowed_headers, f"{path}.typed_config.allowed_headers")
        self.disallowed = _header_matchers(
            cfg.disallowed_headers, f"{path}.typed_config.disallowed_headers"
        )
        self.charge_cluster = (
            cfg.charge_cluster_response_stats.value
            if cfg.HasField("charge_cluster_response_stats")
            else True
        )
        # ext_authz.[<stat_prefix>.]: under the connection manager's and the cluster's scopes
        self.own_prefix = "ext_authz." + (cfg.stat_prefix + "." if cfg.stat_prefix else "")
        base = f"http.{context.get('stat_prefix', '')}.{self.own_prefix}"
        self.st = {n: self.stats.counter(base + n) for n in STAT_NAMES}
        self._cluster_counters: dict[str, Any] = {}
        self.client = _client(cfg, self, path)

    # -- per request -----------------------------------------------------------------------
    def decode_headers(self, s: Any, end_stream: bool) -> int:
        route = s.route
        if route is None:
            return FILTER_CONTINUE_  # Envoy: no route, no check
        per_route = s.route_filter_config(self.name)
        if per_route is not None and per_route.disabled:
            return FILTER_CONTINUE_
        if not self._enabled(s):
            _inc(self.st["disabled"])
            if self.deny_at_disable:
                s.send_local_reply(self.error_status, b"", (), "UAEX")
                return FILTER_STOP_
            return FILTER_CONTINUE_
        st = _Stream()
        st.route_cluster = route.cluster or "" if route.action == 0 else ""
        if s.filter_state is None:
            s.filter_state = {}
        s.filter_state[self] = st
        if (
            self.with_body
            and not end_stream
            and not (per_route is not None and per_route.no_body)
            and s.get_request_header(b"upgrade") is None
        ):
            st.buffering = True
            st.body = bytearray()
            return FILTER_STOP_
        self._check(s, st, per_route)
        return FILTER_STOP_

    def decode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        fs = s.filter_state
        st = fs.get(self) if fs else None
        if st is None or not st.buffering:
            return FILTER_CONTINUE_
        body = st.body
        body += data
        if not self.partial and len(body) > self.max_body:
            # Envoy's decoder buffer limit (max_request_bytes) overflowing
            st.buffering = False
            st.body = None
            s.send_local_reply(413, b"Payload Too Large")
            return FILTER_STOP_
        if end_stream or (self.partial and len(body) >= self.max_body):
            st.buffering = False
            self._check(s, st, s.route_filter_config(self.name))
        return FILTER_CONTINUE_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        fs = s.filter_state
        st = fs.get(self) if fs else None
        if st is None:
            return FILTER_CONTINUE_
        if st.deny_headers is not None:
            for k, _ in st.deny_headers:
                s.remove_response_header(k)
            for k, v in st.deny_headers:  # all kept (set-cookie twice, say)
                s.add_response_header(k, v)
        elif st.resp_ops is not None:
            for op, k, v in st.resp_ops:
                if op == H_SET:
                    s.set_response_header(k, v)
                else:
                    s.add_response_header(k, v)
        return FILTER_CONTINUE_

    def _enabled(self, s: Any) -> bool:
        if self.enabled_share < 1.0 and random.random() >= self.enabled_share:
            return False
        m = self.enabled_metadata
        return m is None or m.test(s)

    # -- the check -------------------------------------------------------------------------
    def _check(self, s: Any, st: _Stream, per_route: PerRoute | None) -> None:
        st.calling = True
        token = st

        def done(result: Any) -> None:
            fs = s.filter_state
            if fs is None or fs.get(self) is not token or not s.busy():
                return  # the stream ended meanwhile (reset, timeout): nothing to answer
            st.calling = False
            self._complete(s, st, result)

        self.client.check(s, st, per_route, done)

    def _cluster_counter(self, cluster: str, name: str) -> Any:
        key = f"cluster.{cluster}.{name}"
        c = self._cluster_counters.get(key)
        if c is None:
            if len(self._cluster_counters) > 4096:
                self._cluster_counters.clear()
            c = self._cluster_counters[key] = self.stats.counter(key)
        return c

    def _count(self, st: _Stream, name: str) -> None:
        _inc(self.st[name])
        if st.route_cluster and name != "disabled":
            _inc(self._cluster_counter(st.route_cluster, self.own_prefix + name))

    def _complete(self, s: Any, st: _Stream, result: Any) -> None:
        """result: Allow, Deny, or None (the service's error: down, slow, garbage)."""
        if result is None:
            self._count(st, "error")
            if self.fail_open:
                self._count(st, "failure_mode_allowed")
                if self.fail_header:
                    s.add_request_header(_FAILURE_HEADER, b"true")
                s.continue_decoding()
                return
            s.send_local_reply(self.error_status, b"", (), "UAEX")
            return
        if result.allowed:
            if result.metadata:
                _set_metadata(s, result.metadata)
            if result.request_ops:
                apply_request_ops(s, result.request_ops)
            for k in result.remove:
                if not k.startswith(b":") and k not in _UNREMOVABLE:
                    s.remove_request_header(k)
            if result.response_ops:
                st.resp_ops = result.response_ops
            self._count(st, "ok")
            s.continue_decoding()
            return
        if result.metadata:
            _set_metadata(s, result.metadata)
        self._count(st, "denied")
        status = result.status
        if st.route_cluster and self.charge_cluster:
            c = st.route_cluster
            _inc(self._cluster_counter(c, f"upstream_rq_{status}"))
            _inc(self._cluster_counter(c, f"upstream_rq_{status // 100}xx"))
            _inc(self._cluster_counter(c, "upstream_rq_completed"))
        st.deny_headers = result.headers
        s.send_local_reply(status, result.body, (), "UAEX")

    def close(self) -> None:
        self.client.close()


class Result:
    """An answer of the authorization service, protocol-neutral."""

    __slots__ = (
        "allowed",
        "body",
        "headers",
        "metadata",
        "remove",
        "request_ops",
        "response_ops",
        "status",
    )

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.request_ops: list[tuple[int, bytes, bytes]] = []
        self.remove: list[bytes] = []
        self.response_ops: list[tuple[int, bytes, bytes]] = []
        self.status = 403
        self.body = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.metadata: dict | None = None


def _set_metadata(s: Any, meta: dict) -> None:
    if s.filter_state is None:
        s.filter_state = {}
    old = s.filter_state.get(("metadata", _META_NS))
    if old is None:
        s.filter_state[("metadata", _META_NS)] = dict(meta)
    else:
        old.update(meta)


def _header_matchers(patterns: Any, path: str) -> tuple | None:
    """A ListStringMatcher's string matchers, or None when it has none."""
    from sofamesh.proxy.routes import string_matcher

    if not len(patterns.patterns):
        return None
    return tuple(
        string_matcher(p, f"{path}.patterns[{i}]") for i, p in enumerate(patterns.patterns)
    )


def header_allowed(f: ExtAuthzFilter, name: bytes) -> bool:
    if f.allowed is not None and not any(m.test(name) for m in f.allowed):
        return False
    return f.disallowed is None or not any(m.test(name) for m in f.disallowed)


# -- the gRPC client ---------------------------------------------------------------------------
class GrpcClient:
    """Check calls to the `envoy_grpc` cluster's hosts, one HTTP/2 connection per host."""

    def __init__(self, cfg: Any, f: ExtAuthzFilter) -> None:
        gs = cfg.grpc_service
        self.f = f
        self.cluster = gs.envoy_grpc.cluster_name
        self.authority = gs.envoy_grpc.authority or self.cluster  # Envoy's default
        # Envoy's ext_authz default deadline: 200ms
        self.timeout = gs.timeout.ToNanoseconds() / 1e9 if gs.HasField("timeout") else 0.2
        self._channels = ChannelCache(f.loop, lambda: f.clusters, self.cluster, self.authority)

    def _target(self) -> tuple[str, int] | None:
        return cluster_target(self.f.clusters, self.cluster)

    def check(self, s: Any, st: _Stream, per_route: PerRoute | None, done: Any) -> None:
        f = self.f

        def answered(status: int, data: bytes | None) -> None:
            result = None
            if status == 0 and data is not None:
                try:
                    result = _grpc_result(data)
                except Exception as e:  # noqa: BLE001 (a malformed answer is the service's error)
                    log.debug("%s: unreadable CheckResponse: %r", f.path, e)
            else:
                log.debug("%s: authorization service: grpc-status %d", f.path, status)
            done(result)

        addr = self._target()
        if addr is None:  # no host to ask: the service's error, answered on the next turn
            f.loop.call_soon(answered, 14, None)
            return
        req = check_request(f, s, st, per_route)
        self._channels.get(addr).call(_METHOD_B, req.SerializeToString(), self.timeout, answered)

    def close(self) -> None:
        self._channels.close()


def _grpc_result(data: bytes) -> Result:
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import json_format

    resp = external_auth_pb2.CheckResponse.FromString(data)
    r = Result(resp.status.code == 0)
    if resp.HasField("dynamic_metadata"):
        r.metadata = json_format.MessageToDict(resp.dynamic_metadata)
    if r.allowed:
        ok = resp.ok_response
        if ok.HasField("dynamic_metadata") and r.metadata is None:
            r.metadata = json_format.MessageToDict(ok.dynamic_metadata)
        r.request_ops = [
            (header_op(h), h.header.key.lower().encode(), _value(h.header)) for h in ok.headers
        ]
        r.remove = [k.lower().encode() for k in ok.headers_to_remove]
        r.response_ops = [
            (response_header_op(h), h.header.key.lower().encode(), _value(h.header))
            for h in ok.response_headers_to_add
        ]
        return r
    d = resp.denied_response
    if d.status.code:
        r.status = d.status.code
    r.body = d.body.encode()
    r.headers = [(h.header.key.lower().encode(), _value(h.header)) for h in d.headers]
    return r


def _value(h: Any) -> bytes:
    return h.raw_value if h.raw_value else h.value.encode()


def check_request(f: ExtAuthzFilter, s: Any, st: _Stream, per_route: PerRoute | None) -> Any:
    """The CheckRequest Envoy builds (check_request_utils.cc): peers, the request's
    attributes and headers as the filter sees them, body, context extensions."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import struct_pb2

    from sofamesh._core.log_fields import local_address

    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    ip, port = s.downstream_remote_address
    src = a.source.address.socket_address
    src.address, src.port_value = ip, port
    svc = s.get_request_header(b"x-envoy-downstream-service-cluster")
    if svc:
        a.source.service = svc.decode("latin-1")
    local = local_address(s)
    if local is not None:
        dst = a.destination.address.socket_address
        dst.address, dst.port_value = local[0], local[1]
    else:
        a.destination.SetInParent()
    r = a.request
    r.time.FromNanoseconds(time.time_ns())
    h = r.http
    h.id = str(random.getrandbits(63))  # Envoy's stream id: a random number
    method = s.method.decode("latin-1")
    path = s.path.decode("latin-1")
    host = s.authority.decode("latin-1")
    scheme_b = s.config.scheme or b"http"
    h.method, h.path, h.host, h.scheme = method, path, host, scheme_b.decode()
    h.protocol = s.protocol
    hdrs = h.headers
    for k, v in (
        (":authority", host),
        (":path", path),
        (":method", method),
        (":scheme", h.scheme),
    ):
        if header_allowed(f, k.encode()):
            hdrs[k] = v
    for k, v in s.request_headers():
        if k == b"host" or not header_allowed(f, k):
            continue
        name = k.decode("latin-1")
        val = v.decode("latin-1")
        hdrs[name] = hdrs[name] + "," + val if name in hdrs else val
    # the connection manager's own headers, which Envoy's filters see already
    if "x-forwarded-proto" not in hdrs and header_allowed(f, b"x-forwarded-proto"):
        hdrs["x-forwarded-proto"] = h.scheme
    if "x-request-id" not in hdrs and s.config.generate_request_id:
        rid = str(uuid.uuid4())
        s.add_request_header(b"x-request-id", rid)  # kept by the router: the same id upstream
        if header_allowed(f, b"x-request-id"):
            hdrs["x-request-id"] = rid
    if st.body is not None:
        whole = st.body
        st.body = None
        body = bytes(whole[: f.max_body])
        if header_allowed(f, b"x-envoy-auth-partial-body"):
            hdrs["x-envoy-auth-partial-body"] = "true" if len(whole) > len(body) else "false"
        h.size = len(whole)  # what arrived so far (Envoy: the bytes received)
        if f.pack_bytes:
            h.raw_body = body
        else:
            h.body = body.decode("utf-8", "replace")
    if per_route is not None and per_route.context_extensions:
        a.context_extensions.update(per_route.context_extensions)
    a.metadata_context.SetInParent()
    a.route_metadata_context.SetInParent()
    fs = s.filter_state
    for ns in f.metadata_namespaces:
        v = fs.get(("metadata", ns)) if fs else None
        if isinstance(v, dict):
            st_ = struct_pb2.Struct()
            st_.update(v)
            a.metadata_context.filter_metadata[ns].CopyFrom(st_)
    return req


def _client(cfg: Any, f: ExtAuthzFilter, path: str) -> Any:
    if cfg.HasField("http_service"):
        from sofamesh.filters.http.ext_authz_http import HttpClient

        return HttpClient(cfg.http_service, f, f"{path}.typed_config.http_service")
    return GrpcClient(cfg, f)


# -- config ------------------------------------------------------------------------------------
_REFUSED_BOOLS = (
    "clear_route_cache",
    "validate_mutations",
    "include_peer_certificate",
    "include_tls_session",
    "encode_raw_headers",
    "emit_filter_state_stats",
    "enforce_response_header_limits",
)


def _unpack(typed_config: Any, path: str) -> Any:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    cfg = ext_authz_pb2.ExtAuthz()
    if not typed_config.Unpack(cfg):
        raise _unsupported(f"{path}.typed_config: expected {TYPE_URL}")
    tpath = f"{path}.typed_config"
    for f in _REFUSED_BOOLS:
        if getattr(cfg, f):
            raise _unsupported(f"{tpath}.{f} is not implemented by sofamesh")
    if cfg.transport_api_version not in (0, 2):  # AUTO, V3
        raise _unsupported(f"{tpath}.transport_api_version: only V3")
    which = cfg.WhichOneof("services")
    if which == "grpc_service":
        gs = cfg.grpc_service
        if gs.WhichOneof("target_specifier") != "envoy_grpc":
            raise _unsupported(f"{tpath}.grpc_service: only envoy_grpc is implemented by sofamesh")
    elif which is None:
        raise _unsupported(f"{tpath}: grpc_service or http_service is required")
    if cfg.HasField("filter_enabled") and cfg.filter_enabled.runtime_key:
        log.debug("%s.filter_enabled.runtime_key: no runtime layer, default_value used", tpath)
    if cfg.HasField("with_request_body") and cfg.with_request_body.max_request_bytes == 0:
        raise _unsupported(f"{tpath}.with_request_body.max_request_bytes: must be above 0")
    return cfg


def factory(typed_config: Any, context: dict) -> ExtAuthzFilter:
    """The filter; its service cluster may come later (CDS): Envoy's ext_authz skips the
    cluster check at load, and a check finding no cluster is the service's error."""
    path = context.get("path", "")
    cfg = _unpack(typed_config, path)
    return ExtAuthzFilter(cfg, context, context.get("name") or NAME)


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_per_route},
    )
)
