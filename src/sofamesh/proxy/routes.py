"""Compiles an Envoy v3 RouteConfiguration into sofamesh's immutable route tables."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from sofamesh._core import router as R
from sofamesh._core import xds_wire
from sofamesh.proxy.errors import UnsupportedConfig

DEFAULT_TIMEOUT_S = 15.0
# RouteAction.ClusterNotFoundResponseCode -> status
_CLUSTER_NOT_FOUND = {0: 503, 1: 404, 2: 500}
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}

log = logging.getLogger("sofamesh.config")


def _dur(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def string_matcher(m: Any, path: str) -> R.StringMatcher:
    kind = m.WhichOneof("match_pattern")
    ic = bool(m.ignore_case)
    if kind == "exact":
        return R.StringMatcher(R.S_EXACT, m.exact, ic)
    if kind == "prefix":
        return R.StringMatcher(R.S_PREFIX, m.prefix, ic)
    if kind == "suffix":
        return R.StringMatcher(R.S_SUFFIX, m.suffix, ic)
    if kind == "contains":
        return R.StringMatcher(R.S_CONTAINS, m.contains, ic)
    if kind == "safe_regex":
        return R.StringMatcher(R.S_REGEX, m.safe_regex.regex, False)
    raise UnsupportedConfig(f"{path}: string matcher {kind!r} is not supported")


def header_matcher(h: Any, path: str) -> R.HeaderMatcher:
    kind = h.WhichOneof("header_match_specifier")
    inv = bool(h.invert_match)
    if kind is None:
        return R.HeaderMatcher(h.name, None, True, inv)
    if kind == "present_match":
        return R.HeaderMatcher(h.name, None, bool(h.present_match), inv)
    if kind == "exact_match":
        return R.HeaderMatcher(h.name, R.StringMatcher(R.S_EXACT, h.exact_match), True, inv)
    if kind == "prefix_match":
        return R.HeaderMatcher(h.name, R.StringMatcher(R.S_PREFIX, h.prefix_match), True, inv)
    if kind == "suffix_match":
        return R.HeaderMatcher(h.name, R.StringMatcher(R.S_SUFFIX, h.suffix_match), True, inv)
    if kind == "contains_match":
        return R.HeaderMatcher(h.name, R.StringMatcher(R.S_CONTAINS, h.contains_match), True, inv)
    if kind == "safe_regex_match":
        return R.HeaderMatcher(
            h.name, R.StringMatcher(R.S_REGEX, h.safe_regex_match.regex), True, inv
        )
    if kind == "range_match":
        sm = R.StringMatcher(R.S_RANGE, b"", False, h.range_match.start, h.range_match.end)
        return R.HeaderMatcher(h.name, sm, True, inv)
    if kind == "string_match":
        return R.HeaderMatcher(
            h.name, string_matcher(h.string_match, f"{path}.string_match"), True, inv
        )
    raise UnsupportedConfig(f"{path}: header matcher {kind!r} is not supported")


def query_matcher(q: Any, path: str) -> R.QueryMatcher:
    kind = q.WhichOneof("query_parameter_match_specifier")
    if kind == "string_match":
        return R.QueryMatcher(q.name, string_matcher(q.string_match, f"{path}.string_match"))
    return R.QueryMatcher(q.name, None)


# Envoy's header value command operators that sofamesh evaluates (per request, in Python:
# configs that use them pay for it, others do not).
FORMAT_OPERATORS = frozenset(
    {
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "PROTOCOL",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_HOST",
        "UPSTREAM_REMOTE_ADDRESS",
        "REQ",
        "HOSTNAME",
    }
)
_FORMAT = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?%|%%")


def parse_format(value: str, path: str) -> list | None:
    """None for a plain value; else parts: bytes literals and (operator, argument)."""
    if "%" not in value:
        return None
    parts: list = []
    pos = 0
    for m in _FORMAT.finditer(value):
        if m.start() > pos:
            parts.append(value[pos : m.start()].encode("latin-1"))
        pos = m.end()
        if m.group(0) == "%%":
            parts.append(b"%")
            continue
        op = m.group(1)
        if op not in FORMAT_OPERATORS:
            raise UnsupportedConfig(f"{path}: header value operator %{op}% is not supported")
        parts.append((op, m.group(2) or ""))
    if pos < len(value):
        parts.append(value[pos:].encode("latin-1"))
    if all(isinstance(p, bytes) for p in parts):
        return None
    return parts


def split_dynamic(adds: list, path: str) -> tuple[list, list]:
    """(plain (key, value) pairs, (key bytes, parts) pairs with command operators)."""
    plain, dyn = [], []
    for key, value in adds:
        parts = parse_format(value, path)
        if parts is None:
            plain.append((key, value.replace("%%", "%")))
        else:
            dyn.append((key.encode("latin-1"), tuple(parts)))
    return plain, dyn


def header_ops(adds: Any, removes: Any) -> tuple[list, list, list]:
    """(always-add lines, names to remove, add-if-absent) from HeaderValueOption lists."""
    add, remove, if_absent = [], list(removes), []
    for hv in adds:
        action = hv.append_action
        if hv.HasField("append") and not hv.append.value:
            action = 2  # OVERWRITE_IF_EXISTS_OR_ADD
        key, value = hv.header.key, hv.header.value or hv.header.raw_value.decode("latin-1")
        if action == 1:  # ADD_IF_ABSENT
            if_absent.append((key, value))
        elif action == 2 or action == 3:
            remove.append(key)
            add.append((key, value))
        else:
            add.append((key, value))
    return add, remove, if_absent


# Retry conditions Envoy 1.40 knows that sofamesh does not act on yet: valid config, so they
# are refused as a gap, never as invalid (the gRPC ones arrive with HTTP/2, issue 9).
RETRY_ON_NOT_IMPLEMENTED = frozenset(
    {
        "reset-before-request",
        "envoy-ratelimited",
        "retriable-headers",
        "http3-post-connect-failure",
    }
)


def compile_route_config(
    rc: Any,
    *,
    clusters: set[str] | None = None,
    per_filter: Callable[[str, Any, str], Any] | None = None,
    path: str = "route_config",
    strip_port: bool = False,
    reuse: dict[bytes, tuple] | None = None,
    stats: Any = None,
    parts: list[bytes] | None = None,
    plain: bool = False,
) -> R.RouteTable:
    """RouteTable from envoy.config.route.v3.RouteConfiguration (see compile_vhosts).
    The port of the host is left out of domain matching with the HCM's strip_any_host_port
    (which also rewrites the header) or the route config's ignore_port_in_host_matching
    (which does not)."""
    vhosts = compile_vhosts(
        rc,
        clusters=clusters,
        per_filter=per_filter,
        path=path,
        reuse=reuse,
        stats=stats,
        parts=parts,
        plain=plain,
    )
    return R.RouteTable(vhosts, strip_port or rc.ignore_port_in_host_matching)


def compile_vhosts(
    rc: Any,
    *,
    clusters: set[str] | None = None,
    per_filter: Callable[[str, Any, str], Any] | None = None,
    path: str = "route_config",
    reuse: dict[bytes, tuple] | None = None,
    stats: Any = None,
    parts: list[bytes] | None = None,
    plain: bool = False,
) -> list[tuple[list[str], R.VirtualHost]]:
    """(domains, VirtualHost) of each virtual host of a RouteConfiguration.

    clusters: when given, a route to a cluster not in the set is a config error (Envoy's
    validate_clusters for static routes). per_filter(name, Any, path) compiles a
    typed_per_filter_config entry. reuse: compiled virtual hosts of the previous version
    by their bytes (read, then refilled with this version's), for xDS updates. stats: the
    Store counting cluster specifier plugins' script failures (proxy/lua_cluster.py).
    parts: the virtual hosts' bytes as received (xds_wire.repeated), one per host; plain:
    with them, the config's bytes hold nothing but its name and hosts."""
    # a route config of a name and hosts only (its bytes say so): nothing config-wide
    bare = parts is not None and plain
    g_add: list[Any] = []
    g_rm: list[Any] = []
    g_abs: list[Any] = []
    g_radd: list[Any] = []
    g_rrm: list[Any] = []
    if not bare:
        g_add, g_rm, g_abs = header_ops(rc.request_headers_to_add, rc.request_headers_to_remove)
        g_radd, g_rrm, _ = header_ops(rc.response_headers_to_add, rc.response_headers_to_remove)
    # PERF(benchmarks/xds_scale.py): one new service at 10,000 resends a route config of
    # 10,000 virtual hosts; compiling them all took ~1 s. A virtual host whose bytes did not
    # change is the same compiled object (tables are immutable), unless config-wide header
    # operations or per-filter configs (compiled per call) apply to it.
    old: dict[bytes, tuple] = {}
    # named cluster specifier plugins are compiled per version: a vhost naming one is not reused
    plugins = {} if bare else _plugins(rc, path, stats)
    if (
        reuse is not None
        and clusters is None
        and not (g_add or g_rm or g_abs or g_radd or g_rrm or plugins)
    ):
        old = dict(reuse)
        reuse.clear()
    else:
        reuse = None
    vhosts = []
    for vi in range(len(rc.virtual_hosts)):
        key = b""
        shape = None
        if reuse is not None and parts is not None:
            # its bytes as received: the same host as the last version's, else maybe a host
            # of a shape compiled already (xds_wire.vhost_shape: one pass over the bytes)
            key = parts[vi]
            got = old.get(key)
            if got is not None:
                reuse[key] = got
                vhosts.append(got)
                continue
            info = xds_wire.vhost_shape(key, True)
            if info is not None:
                shape = info[2]
                kws = _SHAPES.get(shape)
                if kws is not None:
                    entry = (info[1], _vhost_from_shape(info[0], info[3], kws))
                    reuse[key] = entry
                    vhosts.append(entry)
                    continue
        vh = rc.virtual_hosts[vi]
        if reuse is not None and vh.typed_per_filter_config:
            key = b""  # per-filter configs are compiled per version: not reused
        elif reuse is not None and parts is None:
            key = vh.SerializeToString(deterministic=True)
            got = old.get(key)
            if got is not None:
                reuse[key] = got
                vhosts.append(got)
                continue
        vpath = f"{path}.virtual_hosts[{vi}]"
        if vh.require_tls:
            raise UnsupportedConfig(f"{vpath}.require_tls is not supported")
        v_add, v_rm, v_abs = header_ops(vh.request_headers_to_add, vh.request_headers_to_remove)
        v_radd, v_rrm, _ = header_ops(vh.response_headers_to_add, vh.response_headers_to_remove)
        v_pf = {}
        for name, anycfg in vh.typed_per_filter_config.items():
            if per_filter is not None:
                c = per_filter(name, anycfg, f"{vpath}.typed_per_filter_config[{name}]")
                if c is not None:  # None: a passed-through (Istio) filter's config
                    v_pf[name] = c
        if len(vh.rate_limits):  # read by envoy.filters.http.ratelimit
            from sofamesh.filters.http import ratelimit

            v_pf[ratelimit.VH_KEY] = ratelimit.compile_rate_limits(
                vh.rate_limits, f"{vpath}.rate_limits"
            )
        if vh.HasField("cors"):  # deprecated; read by the CORS filter without a policy
            from sofamesh.filters.http import cors

            v_pf[cors.LEGACY_KEY] = cors.compile_legacy(vh.cors, f"{vpath}.cors")
        # x-envoy-attempt-count on each upstream attempt / the downstream response
        vh_kw = {
            "attempt_count": vh.include_request_attempt_count,
            "attempt_count_resp": vh.include_attempt_count_in_response,
        }
        kws = []
        for ri, r in enumerate(vh.routes):
            rpath = f"{vpath}.routes[{ri}]"
            kws.append(
                _route_kw(
                    r,
                    rpath,
                    vh.name,
                    clusters,
                    per_filter,
                    v_pf,
                    (v_add + g_add, v_rm + g_rm, v_abs + g_abs),
                    (v_radd + g_radd, v_rrm + g_rrm),
                    (plugins, stats),
                    vh_kw,
                )
            )
        entry = (list(vh.domains), R.VirtualHost(vh.name, [R.Route(**kw) for kw in kws]))
        if key and not any(r.typed_per_filter_config for r in vh.routes):
            reuse[key] = entry  # type: ignore[index]
            if shape is not None and not v_pf and not any(kw["filter_config"] for kw in kws):
                if len(_SHAPES) >= 1024:
                    _SHAPES.pop(next(iter(_SHAPES)))
                _SHAPES[shape] = kws
        vhosts.append(entry)
    return vhosts


# A virtual host's shape (xds_wire.vhost_shape: its bytes without its name, domains and
# each route's name and cluster) -> the keyword arguments of each of its routes, for hosts
# without per-filter configs (nothing compiled in them is shared). PERF(benchmarks/
# xds_scale.py): a route config of 10,000 hosts that differ only in names compiled each
# host's routes from scratch, two thirds of applying it.
_SHAPES: dict[bytes, list[dict[str, Any]]] = {}


def _vhost_from_shape(
    name: str, routes: list[tuple[str, str | None]], kws: list[dict[str, Any]]
) -> R.VirtualHost:
    """The VirtualHost named `name` whose shape compiled to `kws`, with each route's own
    (name, cluster) put back."""
    out = []
    for (rname, cluster), kw in zip(routes, kws, strict=True):
        kw = dict(kw, name=rname, vhost_name=name)
        if cluster is not None and kw.get("action") == R.ACTION_CLUSTER:
            kw["cluster"] = cluster
        out.append(R.Route(**kw))
    return R.VirtualHost(name, out)


def _route_kw(
    r, rpath, vh_name, clusters, per_filter, v_pf, req_ops, resp_ops, plugin_ctx, vh_kw=None
) -> dict[str, Any]:
    """The keyword arguments of route `r`'s R.Route."""
    m = r.match
    kw: dict[str, Any] = {"name": r.name, "vhost_name": vh_name, **(vh_kw or {})}
    spec = m.WhichOneof("path_specifier")
    if spec == "prefix":
        kw.update(path_kind=R.PATH_PREFIX, path=m.prefix)
    elif spec == "path":
        kw.update(path_kind=R.PATH_EXACT, path=m.path)
    elif spec == "safe_regex":
        kw.update(path_kind=R.PATH_REGEX, path=m.safe_regex.regex)
    elif spec == "path_separated_prefix":
        kw.update(path_kind=R.PATH_SEPARATED_PREFIX, path=m.path_separated_prefix)
    elif spec == "connect_matcher":
        # CONNECT requests only (HTTP/1.1 CONNECT has no path; Envoy's only way to match it)
        kw.update(path_kind=R.PATH_CONNECT, path=b"")
    else:
        raise UnsupportedConfig(f"{rpath}.match: path specifier {spec!r} is not supported")
    if m.HasField("case_sensitive"):
        kw["case_sensitive"] = m.case_sensitive.value
    if m.HasField("runtime_fraction"):
        raise UnsupportedConfig(f"{rpath}.match.runtime_fraction is not supported")
    kw["headers"] = [
        header_matcher(h, f"{rpath}.match.headers[{i}]") for i, h in enumerate(m.headers)
    ]
    if r.HasField("decorator"):
        if r.decorator.HasField("propagate") and not r.decorator.propagate.value:
            raise UnsupportedConfig(f"{rpath}.decorator.propagate: only true is implemented")
        kw["decorator"] = r.decorator.operation
    if m.HasField("grpc"):
        # `grpc: {}`: a gRPC request (Envoy: content-type application/grpc, alone or
        # followed by + or ;)
        kw["headers"].append(
            R.HeaderMatcher(
                "content-type",
                R.StringMatcher(R.S_REGEX, r"application/grpc([+;].*)?"),
                True,
                False,
            )
        )
    kw["queries"] = [
        query_matcher(q, f"{rpath}.match.query_parameters[{i}]")
        for i, q in enumerate(m.query_parameters)
    ]
    r_add, r_rm, r_abs = header_ops(r.request_headers_to_add, r.request_headers_to_remove)
    rr_add, rr_rm, _ = header_ops(r.response_headers_to_add, r.response_headers_to_remove)
    req_plain, req_dyn = split_dynamic(r_add + req_ops[0], f"{rpath}.request_headers_to_add")
    resp_plain, resp_dyn = split_dynamic(rr_add + resp_ops[0], f"{rpath}.response_headers_to_add")
    kw.update(
        req_add=req_plain,
        req_remove=r_rm + req_ops[1],
        req_add_if_absent=r_abs + req_ops[2],
        resp_add=resp_plain,
        resp_remove=rr_rm + resp_ops[1],
        req_dyn=req_dyn,
        resp_dyn=resp_dyn,
    )
    pf = dict(v_pf)
    for name, anycfg in r.typed_per_filter_config.items():
        if per_filter is not None:
            c = per_filter(name, anycfg, f"{rpath}.typed_per_filter_config[{name}]")
            if c is not None:  # None: a passed-through (Istio) filter's config
                if hasattr(c, "under") and name in pf:
                    c = c.under(pf[name])  # a policy the virtual host's fills in (CORS)
                pf[name] = c
    if r.WhichOneof("action") == "route" and r.route.HasField("cors"):
        from sofamesh.filters.http import cors

        c = cors.compile_legacy(r.route.cors, f"{rpath}.route.cors")
        pf[cors.LEGACY_KEY] = c.under(pf.get(cors.LEGACY_KEY))
    if r.WhichOneof("action") == "route" and (
        len(r.route.rate_limits) or r.route.HasField("include_vh_rate_limits")
    ):
        from sofamesh.filters.http import ratelimit

        pf[ratelimit.ROUTE_KEY] = ratelimit.compile_route(r.route, f"{rpath}.route")
    kw["filter_config"] = pf
    action = r.WhichOneof("action")
    if action == "route":
        _route_action(r.route, f"{rpath}.route", kw, clusters, plugin_ctx)
    elif action == "direct_response":
        d = r.direct_response
        body = b""
        if d.HasField("body"):
            src = d.body.WhichOneof("specifier")
            if src == "inline_string":
                body = d.body.inline_string.encode()
            elif src == "inline_bytes":
                body = d.body.inline_bytes
            elif src == "filename":
                with open(d.body.filename, "rb") as f:
                    body = f.read()
        kw.update(action=R.ACTION_DIRECT, status=d.status, body=body)
    elif action == "redirect":
        d = r.redirect
        kw.update(action=R.ACTION_REDIRECT, status=REDIRECT_CODES.get(d.response_code, 301))
        if d.https_redirect:
            kw["location_scheme"] = "https"
        elif d.scheme_redirect:
            kw["location_scheme"] = d.scheme_redirect
        if d.host_redirect:
            kw["location_host"] = d.host_redirect
        if d.port_redirect:
            kw["location_port"] = str(d.port_redirect)
        rw = d.WhichOneof("path_rewrite_specifier")
        if rw == "path_redirect":
            kw["location_path"] = d.path_redirect
        elif rw == "prefix_rewrite":
            kw["location_prefix"] = d.prefix_rewrite
        elif rw is not None:
            raise UnsupportedConfig(f"{rpath}.redirect.{rw} is not supported")
        kw["strip_query"] = d.strip_query
    else:
        raise UnsupportedConfig(f"{rpath}: route action {action!r} is not supported")
    return kw


def _plugins(rc: Any, path: str, stats: Any) -> dict[str, Any]:
    """RouteConfiguration.cluster_specifier_plugins compiled, by extension name."""
    out: dict[str, Any] = {}
    for i, p in enumerate(rc.cluster_specifier_plugins):
        from sofamesh.proxy.lua_cluster import compile_plugin

        out[p.extension.name] = compile_plugin(
            p.extension, f"{path}.cluster_specifier_plugins[{i}]", stats
        )
    return out


def _route_action(a, apath, kw, clusters, plugin_ctx=({}, None)) -> None:
    spec = a.WhichOneof("cluster_specifier")
    if spec == "cluster":
        kw.update(action=R.ACTION_CLUSTER, cluster=a.cluster)
        names = [a.cluster]
    elif spec == "weighted_clusters":
        w = [(c.name, c.weight.value) for c in a.weighted_clusters.clusters]
        kw.update(action=R.ACTION_WEIGHTED, cluster=w[0][0] if w else None, weighted=w)
        names = [n for n, _ in w]
    elif spec == "inline_cluster_specifier_plugin":  # the plugin names the cluster
        from sofamesh.proxy.lua_cluster import compile_plugin

        plugin = compile_plugin(
            a.inline_cluster_specifier_plugin.extension, f"{apath}.{spec}", plugin_ctx[1]
        )
        kw.update(action=R.ACTION_PLUGIN, cluster=plugin.default, plugin=plugin)
        names = []
    elif spec == "cluster_specifier_plugin":
        plugin = plugin_ctx[0].get(a.cluster_specifier_plugin)
        if plugin is None:
            raise UnsupportedConfig(
                f"{apath}.{spec}: Unknown cluster specifier plugin name: "
                f"{a.cluster_specifier_plugin} is used in the route"
            )
        kw.update(action=R.ACTION_PLUGIN, cluster=plugin.default, plugin=plugin)
        names = []
    else:
        raise UnsupportedConfig(f"{apath}: cluster specifier {spec!r} is not supported")
    if clusters is not None:
        for n in names:
            if n not in clusters:
                raise UnsupportedConfig(f"{apath}: route refers to unknown cluster {n!r}")
    if a.prefix_rewrite:
        kw["prefix_rewrite"] = a.prefix_rewrite
    if a.HasField("regex_rewrite"):
        kw["regex_rewrite"] = a.regex_rewrite.pattern.regex
        kw["regex_substitution"] = a.regex_rewrite.substitution
    hr = a.WhichOneof("host_rewrite_specifier")
    if hr == "host_rewrite_literal":
        kw["host_rewrite"] = a.host_rewrite_literal
    elif hr == "auto_host_rewrite":
        kw["auto_host"] = a.auto_host_rewrite.value
    elif hr == "host_rewrite_header":
        kw["host_rewrite_header"] = a.host_rewrite_header
    elif hr is not None:
        raise UnsupportedConfig(f"{apath}.{hr} is not supported")
    kw["timeout"] = _dur(a.timeout) if a.HasField("timeout") else DEFAULT_TIMEOUT_S
    if a.HasField("max_stream_duration"):
        # Envoy's "new timeouts": the route timeout no longer applies (nor is announced in
        # x-envoy-expected-rq-timeout-ms); the stream's max duration does
        kw["timeout"] = 0.0
        msd = a.max_stream_duration
        if msd.HasField("grpc_timeout_header_max"):
            kw["grpc_timeout_max"] = _dur(msd.grpc_timeout_header_max)
        if msd.HasField("grpc_timeout_header_offset"):
            kw["grpc_timeout_offset"] = _dur(msd.grpc_timeout_header_offset)
    elif a.HasField("max_grpc_timeout"):
        # the deprecated form (istiod sets 0s): a gRPC request's grpc-timeout is the route
        # timeout (http_grpc.grpc_route_timeout); ignored under max_stream_duration (Envoy)
        kw["max_grpc_timeout"] = _dur(a.max_grpc_timeout)
        if a.HasField("grpc_timeout_offset"):
            kw["grpc_offset"] = _dur(a.grpc_timeout_offset)
    if a.HasField("retry_policy"):
        rp = a.retry_policy
        bits = 0
        for tok in rp.retry_on.split(","):
            tok = tok.strip()
            if not tok:
                continue
            if tok in R.RETRY_ON:
                bits |= R.RETRY_ON[tok]
            elif tok in RETRY_ON_NOT_IMPLEMENTED:
                raise UnsupportedConfig(
                    f"{apath}.retry_policy.retry_on: {tok!r} is not implemented by sofamesh "
                    "(a valid Envoy retry condition)"
                )
            else:  # Envoy ignores a condition it does not know; so does sofamesh, aloud
                log.warning("%s.retry_policy.retry_on: unknown condition %r ignored", apath, tok)
        kw["retry_on"] = bits
        kw["num_retries"] = rp.num_retries.value if rp.HasField("num_retries") else 1
        kw["retry_statuses"] = list(rp.retriable_status_codes)
        if rp.HasField("per_try_timeout"):
            kw["per_try_timeout"] = _dur(rp.per_try_timeout)
        if rp.HasField("retry_back_off"):
            kw["retry_base"] = _dur(rp.retry_back_off.base_interval)
            if rp.retry_back_off.HasField("max_interval"):
                kw["retry_max"] = _dur(rp.retry_back_off.max_interval)
        for i, pred in enumerate(rp.retry_host_predicate):
            if pred.typed_config.type_url != PREVIOUS_HOSTS:
                raise UnsupportedConfig(
                    f"{apath}.retry_policy.retry_host_predicate[{i}]: {pred.name} "
                    f"({pred.typed_config.type_url.rsplit('/', 1)[-1]}) is not implemented by "
                    "sofamesh (only envoy.retry_host_predicates.previous_hosts)"
                )
            # a retry re-chooses a host already tried, up to this many times (Envoy's default 1)
            kw["prev_hosts"] = rp.host_selection_retry_max_attempts or 1
    if a.cluster_not_found_response_code:  # SERVICE_UNAVAILABLE (0) is the default 503
        kw["cluster_not_found"] = _CLUSTER_NOT_FOUND[a.cluster_not_found_response_code]
    if a.request_mirror_policies:
        kw["mirrors"] = _mirrors(a, apath, clusters)
    if a.hash_policy:
        hh = []
        for i, hp in enumerate(a.hash_policy):
            kind = hp.WhichOneof("policy_specifier")
            if kind != "header":
                raise UnsupportedConfig(f"{apath}.hash_policy[{i}].{kind} is not supported")
            if hp.header.HasField("regex_rewrite"):
                raise UnsupportedConfig(
                    f"{apath}.hash_policy[{i}].header.regex_rewrite is not supported"
                )
            hh.append((hp.header.header_name, hp.terminal))
        kw["hash_headers"] = hh
    ups = []
    for i, u in enumerate(a.upgrade_configs):
        if not u.HasField("enabled") or u.enabled.value:
            ups.append(u.upgrade_type)
            if u.upgrade_type.lower() == "connect" and u.HasField("connect_config"):
                # terminated here (tcp_upstream); without connect_config the CONNECT
                # request goes upstream as HTTP (Envoy)
                cc = u.connect_config
                if cc.HasField("proxy_protocol_config"):
                    raise UnsupportedConfig(
                        f"{apath}.upgrade_configs[{i}].connect_config.proxy_protocol_config "
                        "is not implemented by sofamesh"
                    )
                if cc.allow_post:
                    raise UnsupportedConfig(
                        f"{apath}.upgrade_configs[{i}].connect_config.allow_post "
                        "is not implemented by sofamesh"
                    )
                kw["connect_term"] = True
    kw["upgrades"] = ups


# FractionalPercent denominators (HUNDRED, TEN_THOUSAND, MILLION) as parts per million
_PER_MILLION = {0: 10_000, 1: 100, 2: 1}


def _mirrors(a, apath, clusters) -> list:
    """request_mirror_policies -> [(cluster, share per million, disable_shadow_host_suffix_append,
    cluster_header)]: with cluster_header (lower-case bytes; cluster None) the first value of
    that request header names the mirror cluster, and a request without it, or naming no
    cluster, is not mirrored (Envoy). runtime_fraction uses its default_value (sofamesh has
    no runtime layer); trace_sampled has no effect without tracing, as in Envoy without a
    tracer."""
    out = []
    for i, mp in enumerate(a.request_mirror_policies):
        mpath = f"{apath}.request_mirror_policies[{i}]"
        for name in ("host_rewrite_literal",):
            if hasattr(mp, name) and getattr(mp, name):
                raise UnsupportedConfig(f"{mpath}.{name} is not supported")
        if hasattr(mp, "request_headers_mutations") and len(mp.request_headers_mutations):
            raise UnsupportedConfig(f"{mpath}.request_headers_mutations is not supported")
        hdr = mp.cluster_header.lower().encode("latin-1") if mp.cluster_header else None
        if not mp.cluster and hdr is None:
            raise UnsupportedConfig(f"{mpath}.cluster: a mirror cluster is required")
        if hdr is None and clusters is not None and mp.cluster not in clusters:
            raise UnsupportedConfig(f"{mpath}: route refers to unknown cluster {mp.cluster!r}")
        share = 1_000_000
        if mp.HasField("runtime_fraction"):
            dv = mp.runtime_fraction.default_value
            share = min(1_000_000, dv.numerator * _PER_MILLION.get(dv.denominator, 1))
        out.append((mp.cluster or None, share, bool(mp.disable_shadow_host_suffix_append), hdr))
    return out
