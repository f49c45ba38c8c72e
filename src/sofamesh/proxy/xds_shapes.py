"""What xDS resources hold, read for the dynamic config (proxy/dynamic.py): an endpoint
assignment as hosts, and whether a listener's connection manager takes its routes by RDS."""

from __future__ import annotations

import socket
from typing import Any

from sofamesh._core.upstream import Host
from sofamesh.proxy import localities
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
            try:
                socket.inet_pton(
                    socket.AF_INET6 if ":" in sa.address else socket.AF_INET, sa.address
                )
            except OSError:
                raise UnsupportedConfig(
                    f"endpoints[{ei}].lb_endpoints[{hi}].endpoint.address.socket_address"
                    f".address: malformed IP address: {sa.address}"
                ) from None
            w = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            h = localities.make_host(
                sa.address, sa.port_value, w, localities.endpoint_attrs(e, lbe)
            )
            h.healthy = lbe.health_status not in (2, 3, 4)  # UNHEALTHY, DRAINING, TIMEOUT
            hosts.append(h)
    return hosts


def _rds_of(lst: Any) -> tuple[str | None, Any]:
    """(route config name, HttpConnectionManager) when the listener's terminal filter is
    an HCM with rds; (None, hcm or None) otherwise."""
    from sofamesh.config import protos

    if len(lst.filter_chains) != 1 or not lst.filter_chains[0].filters:
        return None, None
    f = lst.filter_chains[0].filters[-1]
    if f.typed_config.type_url != _HCM_URL:
        return None, None
    hcm = protos.unpack_any(f.typed_config)
    if hcm is not None and hcm.HasField("rds"):
        return hcm.rds.route_config_name, hcm
    return None, hcm


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
