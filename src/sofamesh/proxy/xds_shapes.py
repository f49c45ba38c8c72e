"""What xDS resources hold, read for the dynamic config (proxy/dynamic.py): an endpoint
assignment as hosts, and which of a listener's connection managers take their routes by RDS."""

from __future__ import annotations

import socket
from typing import Any

from sofamesh._core.upstream import Host
from sofamesh.proxy import internal_listener, localities
from sofamesh.proxy.errors import UnsupportedConfig

_HCM_URL = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)


def hosts_from_assignment(cla: Any) -> list[Host]:
    """Hosts of an envoy.config.endpoint.v3.ClusterLoadAssignment. UNHEALTHY, DRAINING and
    TIMEOUT endpoints are kept but not chosen (as Server.set_endpoints)."""
    hosts = []
    for ei, e in enumerate(cla.endpoints):
        for hi, lbe in enumerate(e.lb_endpoints):
            sa = lbe.endpoint.address.socket_address
            # an internal listener's address (proxy/internal_listener.py), or an IP
            addr = internal_listener.host_address(lbe.endpoint.address)
            if addr is None:
                try:
                    socket.inet_pton(
                        socket.AF_INET6 if ":" in sa.address else socket.AF_INET, sa.address
                    )
                except OSError:
                    raise UnsupportedConfig(
                        f"endpoints[{ei}].lb_endpoints[{hi}].endpoint.address.socket_address"
                        f".address: malformed IP address: {sa.address}"
                    ) from None
                addr = (sa.address, sa.port_value)
            w = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            h = localities.make_host(addr[0], addr[1], w, localities.endpoint_attrs(e, lbe))
            h.healthy = lbe.health_status not in (2, 3, 4)  # UNHEALTHY, DRAINING, TIMEOUT
            hosts.append(h)
    return hosts


def _chain_entries(lst: Any) -> list[tuple[int, Any, str]]:
    """(index, FilterChain, path) of each filter chain; the default_filter_chain is -1."""
    out = [(i, ch, f"filter_chains[{i}]") for i, ch in enumerate(lst.filter_chains)]
    if lst.HasField("default_filter_chain"):
        out.append((-1, lst.default_filter_chain, "default_filter_chain"))
    return out


def _terminal_hcm(ch: Any) -> Any:
    """The HttpConnectionManager of a filter chain whose terminal filter is one, else None."""
    from sofamesh.config import protos

    if not ch.filters or ch.filters[-1].typed_config.type_url != _HCM_URL:
        return None
    return protos.unpack_any(ch.filters[-1].typed_config)


def rds_chains(lst: Any) -> list[tuple[int, str, Any, str]]:
    """(chain index, route config name, HttpConnectionManager, the filter's path) of each
    filter chain whose terminal filter is an HCM with rds (Envoy: each subscribes to its
    own route config; chains naming the same one share it). Index -1: the default chain."""
    out = []
    for i, ch, path in _chain_entries(lst):
        hcm = _terminal_hcm(ch)
        if hcm is not None and hcm.HasField("rds"):
            out.append(
                (i, hcm.rds.route_config_name, hcm, f"{path}.filters[{len(ch.filters) - 1}]")
            )
    return out


def single_hcm(lst: Any) -> Any:
    """The HCM of a listener with one filter chain (and no default chain) ending in one."""
    if len(lst.filter_chains) != 1 or lst.HasField("default_filter_chain"):
        return None
    return _terminal_hcm(lst.filter_chains[0])


def nested_rds_path(lst: Any) -> str | None:
    """The path of a filter hiding an HCM with rds (e.g. the auto filter's list), if any:
    rds is applied to a chain's terminal HCM only."""
    for _, ch, path in _chain_entries(lst):
        last = len(ch.filters) - 1
        for fi, f in enumerate(ch.filters):
            if fi == last and f.typed_config.type_url == _HCM_URL:
                continue
            if _nested_rds(f):
                return f"{path}.filters[{fi}]"
    return None


def _scoped_of(hcm: Any) -> bool:
    return hcm is not None and hcm.HasField("scoped_routes")


def _nested_rds(msg: Any) -> bool:
    """Whether an HCM with rds hides inside a message (e.g. the auto filter's list)."""
    from sofamesh.config import protos

    for fd, val in msg.ListFields():
        if fd.message_type is None:
            continue
        items = val if fd.is_repeated else [val]
        for v in items:
            if fd.message_type.full_name == "google.protobuf.Any":
                inner = protos.unpack_any(v)
                if inner is None:
                    continue
                if v.type_url == _HCM_URL and inner.HasField("rds"):
                    return True
                if _nested_rds(inner):
                    return True
            elif not fd.message_type.GetOptions().map_entry and _nested_rds(v):
                return True
    return False
