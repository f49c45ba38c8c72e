"""envoy.filters.http.rbac: role-based access control, Envoy's semantics.

`rules` (envoy.config.rbac.v3.RBAC: action ALLOW / DENY / LOG, policies of permissions and
principals) are enforced: a denied request gets a local 403 `RBAC: access denied`.
`shadow_rules` are checked and counted only. A route's or virtual host's
`typed_per_filter_config` (RBACPerRoute) replaces both rule sets there; an RBACPerRoute
without `rbac` turns the filter off. Stats: `http.<stat_prefix>.rbac.<rules_stat_prefix>
{allowed,denied}` and `...rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`.

The same compiler (`compile_rbac`) serves the network filter and the RPC filter
(sofamesh.filters.network.rbac). Permissions: any, header, url_path, destination_ip,
destination_port, destination_port_range, and_rules, or_rules, not_rule,
requested_server_name (the TLS SNI; empty for plaintext). Principals: any, direct_remote_ip,
remote_ip, source_ip, header, url_path, and_ids, or_ids, not_id, authenticated (a verified
peer certificate; principal_name against its URI SAN, else DNS SAN, else subject),
metadata (principal and permission: the request's dynamic metadata, e.g. set_metadata's or
RBAC's own), filter_state (the stream's, from set_filter_state, else the connection's, from
the network set_filter_state or Istio's istio_authn: `io.istio.peer_principal`). Refused
at start-up, by path: filter_state address_match, sourced_metadata, matchers,
conditions (CEL), audit logging, per-rule stats. The `matcher` / `shadow_matcher` form
(xds matcher lists on request headers) is rbac_matcher.py's.
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.http import rbac_matcher  # noqa: F401  (registers its extensions)
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.http.rbac"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"

_ACTIONS = {0: "ALLOW", 1: "DENY", 2: "LOG"}


class _Compiler:
    """One RBAC message into an RbacEngine; records the header names rules read."""

    def __init__(self) -> None:
        self.header_names: set[str] = set()

    def engine(self, rules: Any, path: str) -> Any:
        from sofamesh._core import rbac as C

        if rules.audit_logging_options.ByteSize():
            raise UnsupportedConfig(
                f"{path}.audit_logging_options: RBAC audit logging is not implemented by sofamesh"
            )
        action = {0: C.ACTION_ALLOW, 1: C.ACTION_DENY, 2: C.ACTION_LOG}.get(rules.action)
        if action is None:
            raise UnsupportedConfig(f"{path}.action: unknown action {rules.action}")
        policies = []
        for name in sorted(rules.policies):
            pol = rules.policies[name]
            ppath = f"{path}.policies[{name!r}]"
            for f in ("condition", "checked_condition", "cel_config"):
                if pol.HasField(f):
                    raise UnsupportedConfig(
                        f"{ppath}.{f}: RBAC conditions (CEL) are not implemented by sofamesh"
                    )
            perms = [
                self.permission(p, f"{ppath}.permissions[{i}]")
                for i, p in enumerate(pol.permissions)
            ]
            who = [
                self.principal(p, f"{ppath}.principals[{i}]") for i, p in enumerate(pol.principals)
            ]
            if not perms or not who:
                raise UnsupportedConfig(f"{ppath}: a policy needs permissions and principals")
            policies.append((name, perms, who))
        return C.RbacEngine(action, policies, sorted(self.header_names))

    def _header(self, h: Any, path: str, each_value: bool = True) -> Any:
        """A header rule: on a header sent more than once it holds when one value matches
        (a permission's or principal's, as Envoy's); `each_value` False: the values joined
        by "," are matched (an xds matcher's HttpRequestHeaderMatchInput)."""
        from sofamesh._core import rbac as C
        from sofamesh.proxy.routes import header_matcher

        for f in ("treat_missing_header_as_empty",):
            if getattr(h, f, False):
                raise UnsupportedConfig(f"{path}.{f} is not implemented by sofamesh")
        self.header_names.add(h.name.lower())
        return C.HeaderRule(header_matcher(h, path), each_value)

    def _path(self, pm: Any, path: str) -> Any:
        from sofamesh._core import rbac as C
        from sofamesh.proxy.routes import string_matcher

        if pm.WhichOneof("rule") != "path":
            raise UnsupportedConfig(f"{path}: only PathMatcher.path is implemented by sofamesh")
        return C.PathRule(string_matcher(pm.path, f"{path}.path"))

    def _cidr(self, which: int, c: Any, path: str) -> Any:
        from sofamesh._core import rbac as C

        plen = c.prefix_len.value if c.HasField("prefix_len") else 0
        try:
            return C.IpRule(which, c.address_prefix, plen)
        except ValueError as e:
            raise UnsupportedConfig(f"{path}: {e}") from None

    def permission(self, p: Any, path: str) -> Any:
        from sofamesh._core import rbac as C
        from sofamesh.proxy.routes import string_matcher

        kind = p.WhichOneof("rule")
        kpath = f"{path}.{kind}"
        if kind == "any":
            return C.AnyRule()
        if kind == "header":
            return self._header(p.header, kpath)
        if kind == "url_path":
            return self._path(p.url_path, kpath)
        if kind == "destination_ip":
            return self._cidr(C.ADDRESS_LOCAL, p.destination_ip, kpath)
        if kind == "destination_port":
            return C.PortRule(p.destination_port, p.destination_port + 1)
        if kind == "destination_port_range":
            return C.PortRule(p.destination_port_range.start, p.destination_port_range.end)
        if kind == "and_rules":
            return C.AndRule(
                [self.permission(x, f"{kpath}.rules[{i}]") for i, x in enumerate(p.and_rules.rules)]
            )
        if kind == "or_rules":
            return C.OrRule(
                [self.permission(x, f"{kpath}.rules[{i}]") for i, x in enumerate(p.or_rules.rules)]
            )
        if kind == "not_rule":
            return C.NotRule(self.permission(p.not_rule, kpath))
        if kind == "requested_server_name":
            # the TLS SNI (proxy/tls.py records it); empty for plaintext connections
            return C.ServerNameRule(string_matcher(p.requested_server_name, kpath))
        if kind == "metadata":
            return _metadata(p.metadata, kpath)
        raise UnsupportedConfig(f"{kpath}: Permission.{kind} is not implemented by sofamesh")

    def principal(self, p: Any, path: str) -> Any:
        from sofamesh._core import rbac as C

        kind = p.WhichOneof("identifier")
        kpath = f"{path}.{kind}"
        if kind == "any":
            return C.AnyRule()
        if kind == "direct_remote_ip" or kind == "source_ip":
            return self._cidr(C.ADDRESS_DIRECT, getattr(p, kind), kpath)
        if kind == "remote_ip":
            return self._cidr(C.ADDRESS_REMOTE, p.remote_ip, kpath)
        if kind == "header":
            return self._header(p.header, kpath)
        if kind == "url_path":
            return self._path(p.url_path, kpath)
        if kind == "and_ids":
            return C.AndRule(
                [self.principal(x, f"{kpath}.ids[{i}]") for i, x in enumerate(p.and_ids.ids)]
            )
        if kind == "or_ids":
            return C.OrRule(
                [self.principal(x, f"{kpath}.ids[{i}]") for i, x in enumerate(p.or_ids.ids)]
            )
        if kind == "not_id":
            return C.NotRule(self.principal(p.not_id, kpath))
        if kind == "authenticated":
            # a verified peer certificate (mTLS); principal_name: its URI SAN, else DNS
            # SAN, else subject (Envoy's order)
            from sofamesh.proxy.routes import string_matcher

            a = p.authenticated
            if a.HasField("principal_name"):
                return C.AuthenticatedRule(
                    string_matcher(a.principal_name, kpath + ".principal_name")
                )
            return C.AuthenticatedRule()
        if kind == "metadata":
            return _metadata(p.metadata, kpath)
        if kind == "filter_state":
            from sofamesh.proxy.routes import string_matcher

            fs = p.filter_state
            if fs.WhichOneof("matcher") != "string_match":
                raise UnsupportedConfig(
                    f"{kpath}.address_match: FilterStateMatcher.address_match is not "
                    "implemented by sofamesh"
                )
            return C.FilterStateRule(
                fs.key, string_matcher(fs.string_match, kpath + ".string_match")
            )
        raise UnsupportedConfig(f"{kpath}: Principal.{kind} is not implemented by sofamesh")


def _metadata(m: Any, path: str) -> Any:
    """A `metadata` principal or permission: the request's dynamic metadata (HTTP; a
    connection or RPC call has none, so only an inverted matcher can hold there)."""
    from sofamesh._core import rbac as C
    from sofamesh.proxy.metadata_match import MetadataMatch

    return C.MetadataRule(MetadataMatch(m, path))


def compile_rbac(msg: Any, path: str, matchers: bool = False) -> Any:
    """RbacPolicies (enforced, shadow) from any message with `rules` / `shadow_rules`
    (the HTTP or network filter's RBAC). With `matchers` (HTTP), a `matcher` /
    `shadow_matcher` takes the place of the rules, as in Envoy (rbac_matcher.py); without,
    they are refused by path."""
    from sofamesh._core.rbac import RbacPolicies

    engines = []
    for rf, mf in (("rules", "matcher"), ("shadow_rules", "shadow_matcher")):
        if msg.HasField(mf):
            if not matchers:
                raise UnsupportedConfig(
                    f"{path}.{mf}: RBAC matchers are not implemented by sofamesh for this "
                    "filter (use rules)"
                )
            from sofamesh.filters.http.rbac_matcher import compile_matcher

            engines.append(compile_matcher(getattr(msg, mf), f"{path}.{mf}"))
        elif msg.HasField(rf):
            engines.append(_Compiler().engine(getattr(msg, rf), f"{path}.{rf}"))
        else:
            engines.append(None)
    return RbacPolicies(engines[0], engines[1])


def _unpack(typed_config: Any, path: str) -> Any:
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

    msg = rbac_pb2.RBAC()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    return msg


def factory(typed_config: Any, context: dict) -> Any:
    from sofamesh._core.rbac_http import RbacFilter

    path = context.get("path", NAME)
    msg = _unpack(typed_config, path)
    if msg.track_per_rule_stats:
        raise UnsupportedConfig(
            f"{path}.typed_config.track_per_rule_stats is not implemented by sofamesh"
        )
    policies = compile_rbac(msg, f"{path}.typed_config", matchers=True)
    return RbacFilter(
        policies,
        context["stats"],
        context.get("stat_prefix", ""),
        msg.rules_stat_prefix,
        msg.shadow_rules_stat_prefix,
        context.get("name") or NAME,
    )


def route_config(typed_config: Any, context: dict) -> Any:
    """RBACPerRoute: its `rbac` replaces the filter's rules (both sets); none turns it off."""
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

    from sofamesh._core.rbac import RbacPolicies

    path = context.get("path", NAME)
    msg = rbac_pb2.RBACPerRoute()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {PER_ROUTE_TYPE_URL}")
    if not msg.HasField("rbac"):
        return RbacPolicies(None, None)
    return compile_rbac(msg.rbac, f"{path}.rbac", matchers=True)


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": route_config, "per_route_type_urls": (PER_ROUTE_TYPE_URL,)},
    )
)
