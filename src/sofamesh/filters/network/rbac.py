"""envoy.filters.network.rbac, and the same policies for Dubbo and Bolt calls.

Network filter (Envoy's semantics): placed before a terminal network filter (tcp_proxy,
dubbo_proxy, bolt_proxy, auto), it checks a connection once, when its first bytes arrive
(ONE_TIME_ON_FIRST_BYTE), on addresses only (direct_remote_ip / remote_ip / source_ip are
the peer; destination_ip / destination_port the local end); a denied connection is closed
without flushing. Stats: `<stat_prefix>.rbac.{allowed,denied}` and
`<stat_prefix>.rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`. Not yet: in
front of an http_connection_manager (use envoy.filters.http.rbac there), CONTINUOUS
enforcement, delay_deny.

RPC (`sofamesh.filters.rpc.rbac`, which Envoy has no counterpart for): an entry of
DubboProxy `dubbo_filters` or BoltProxy `bolt_filters` whose `config` is this same
`envoy.extensions.filters.network.rbac.v3.RBAC` message checks every request before it is
routed. `header` rules read the call: `:service` (the interface), `:method`, `:version`,
`:group`, and any other name is a Dubbo attachment / Bolt header; IP and port rules read
the client connection. A denied call is answered with the protocol's own error and the
client's request id: Dubbo status 70 SERVICE_ERROR (what a Dubbo provider answers when its
own filters refuse a call, e.g. TokenFilter) with `RBAC: access denied`, Bolt status
SERVER_EXCEPTION. Stats as the network filter's.
"""

from __future__ import annotations

from typing import Any

from sofamesh.config.support import register_extension
from sofamesh.filters.http.rbac import compile_rbac
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.network.rbac"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
RPC_FILTER_NAME = "sofamesh.filters.rpc.rbac"
# other RPC filters, built by their own modules: build_rpc_filters passes over them
RPC_OTHER_FILTERS = {
    "sofamesh.filters.rpc.tracing",  # proxy/rpc_tracing.py
    "sofamesh.filters.rpc.local_ratelimit",  # filters/network/rpc_quota.py
    "sofamesh.filters.rpc.rate_limit_quota",  # filters/network/rpc_quota.py
}


def _network_rbac(typed_config: Any, store: Any, path: str) -> Any:
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2

    from sofamesh._core.rbac import NetworkRbac

    msg = rbac_pb2.RBAC()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {TYPE_URL}")
    if msg.enforcement_type != 0:
        raise UnsupportedConfig(
            f"{path}.enforcement_type: only ONE_TIME_ON_FIRST_BYTE is implemented by sofamesh"
        )
    if msg.HasField("delay_deny"):
        raise UnsupportedConfig(f"{path}.delay_deny is not implemented by sofamesh")
    if not msg.stat_prefix:
        raise UnsupportedConfig(f"{path}.stat_prefix: required")
    policies = compile_rbac(msg, path)
    return NetworkRbac(policies, store, msg.stat_prefix, msg.shadow_rules_stat_prefix)


def _no_headers(rule: Any, path: str) -> None:
    """Envoy refuses header rules in the network filter (a connection has no headers)."""
    kind = rule.WhichOneof("rule" if hasattr(rule, "not_rule") else "identifier")
    if kind == "header":
        raise UnsupportedConfig(
            f"{path}.header: Found header({rule.header.name}) rule,not supported by RBAC "
            "network filter"
        )
    for nest in ("and_rules", "or_rules"):
        if kind == nest:
            for i, r in enumerate(getattr(rule, nest).rules):
                _no_headers(r, f"{path}.{nest}.rules[{i}]")
    for nest in ("and_ids", "or_ids"):
        if kind == nest:
            for i, r in enumerate(getattr(rule, nest).ids):
                _no_headers(r, f"{path}.{nest}.ids[{i}]")
    if kind in ("not_rule", "not_id"):
        _no_headers(getattr(rule, kind), f"{path}.{kind}")


def factory(typed_config: Any, context: dict) -> Any:
    """A NetworkRbac; the Server wraps the terminal filter's protocols with `.wrap()`."""
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2

    path = context.get("path", NAME)
    msg = rbac_pb2.RBAC()
    if typed_config.Unpack(msg):
        for field in ("rules", "shadow_rules"):
            for name, pol in getattr(msg, field).policies.items():
                ppath = f"{path}.typed_config.{field}.policies[{name!r}]"
                for i, p in enumerate(pol.permissions):
                    _no_headers(p, f"{ppath}.permissions[{i}]")
                for i, p in enumerate(pol.principals):
                    _no_headers(p, f"{ppath}.principals[{i}]")
    return _network_rbac(typed_config, context["stats"], f"{path}.typed_config")


def build_rpc_filters(filters: Any, router_names: tuple[str, ...], store: Any, path: str) -> Any:
    """The NetworkRbac of a DubboProxy `dubbo_filters` / BoltProxy `bolt_filters` list, or
    None: RBAC entries (before the router), then the router, nothing else."""
    found = None
    for i, f in enumerate(filters):
        fpath = f"{path}[{i}]"
        if f.name in router_names:
            if i != len(filters) - 1:
                raise UnsupportedConfig(f"{fpath}: the router must be the last filter")
            continue
        if f.name in RPC_OTHER_FILTERS:
            continue
        if f.name != RPC_FILTER_NAME:
            raise UnsupportedConfig(f"{fpath}: filter {f.name!r} is not supported")
        if found is not None:
            raise UnsupportedConfig(f"{fpath}: one {RPC_FILTER_NAME} per proxy is supported")
        found = _network_rbac(f.config, store, f"{fpath}.config")
    return found


# The RPC filter's config is this message in an Any that config validation walks.
register_extension(TYPE_URL, __name__)

SPEC = register(
    FilterSpec(
        kind="network", names=(NAME,), type_urls=(TYPE_URL,), factory=factory, extra={"wraps": True}
    )
)
