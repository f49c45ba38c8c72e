"""Priority levels and localities of a cluster's endpoints (docs/ENVOY_CONFORMANCE.md).

    ClusterLoadAssignment
      .policy.overprovisioning_factor ----------------> Cluster.overprovisioning
      .endpoints[i] (LocalityLbEndpoints)
         .priority, .locality, .load_balancing_weight --> Host.priority, .locality,
         .lb_endpoints[j].endpoint                          .locality_weight
            .hostname ---------------------------------> Host.hostname
            .health_check_config.port_value -----------> Host.hc_port
    Cluster.common_lb_config.locality_weighted_lb_config -> Cluster.locality_weighted

The per-request choice (a level by Envoy's priority load, a locality by its effective
weight, then a host) is upstream.pyx's Cluster._choose_level; this module only reads
config, once per update.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.upstream import Host

ENVOY_OVERPROVISIONING = 140  # ClusterLoadAssignment.Policy.overprovisioning_factor default


def locality_key(loc: Any) -> str:
    return f"{loc.region}/{loc.zone}/{loc.sub_zone}"


def endpoint_attrs(e: Any, lbe: Any) -> tuple[int, str, int, str, int]:
    """(priority, locality, locality weight, Endpoint.hostname, health check port) of one
    LbEndpoint within its LocalityLbEndpoints."""
    lw = e.load_balancing_weight.value if e.HasField("load_balancing_weight") else 0
    ep = lbe.endpoint
    return (
        e.priority,
        locality_key(e.locality),
        lw,
        ep.hostname,
        ep.health_check_config.port_value,
    )


def make_host(address: str, port: int, weight: int, attrs: tuple, dns_name: str = "") -> Host:
    """A Host with its endpoint's level and locality. Its hostname is Endpoint.hostname,
    else the DNS name it was resolved from (Envoy's STRICT_DNS)."""
    prio, loc, lw, hostname, hc_port = attrs
    h = Host(address, port, weight, hostname or dns_name)
    h.priority = prio
    h.locality = loc
    h.locality_weight = lw
    h.hc_port = hc_port
    return h


def overprovisioning(cla: Any) -> int:
    """A ClusterLoadAssignment's overprovisioning factor (percent)."""
    p = cla.policy
    if p.HasField("overprovisioning_factor"):
        return int(p.overprovisioning_factor.value)
    return ENVOY_OVERPROVISIONING


def configure(cl: Any, c: Any) -> None:
    """A cluster's locality weighting and (static load_assignment) overprovisioning, then
    its levels rebuilt over the hosts it has."""
    cl.locality_weighted = c.common_lb_config.HasField("locality_weighted_lb_config")
    cl.overprovisioning = overprovisioning(c.load_assignment)
    cl._build_levels()
    cl.update_health()


def set_assignment(cl: Any, cla: Any, hosts: list) -> None:
    """An EDS update: the assignment's overprovisioning factor, then its hosts."""
    cl.overprovisioning = overprovisioning(cla)
    cl.set_hosts(hosts)
