"""Zone-aware routing (Envoy's ZoneAwareLoadBalancerBase), the part done per update.

    Bootstrap.cluster_manager.local_cluster_name --> the local cluster: where this proxy's
                                                     peers are, by locality
    Bootstrap.node.locality ------------------------> the local locality
    Cluster.common_lb_config.zone_aware_lb_config
        .routing_enabled (percent, 100) ------------> ZoneRouting.routing_enabled
        .min_cluster_size (6) ----------------------> Regen.min_size
        .fail_traffic_on_panic ---------------------> ZoneRouting.fail_on_panic

As in Envoy, a local cluster turns zone-aware routing on for every ROUND_ROBIN,
LEAST_REQUEST and RANDOM cluster (zone_aware_lb_config only tunes it), over priority 0.
Each time the cluster's hosts or health change, or the local cluster's, Regen recomputes
(regenerateLocalityRoutingStructures) and installs a new state in the cluster's
_core.zone_aware.ZoneRouting, which chooses a locality per request:

- no routing (earlyExitNonLocalityRouting): fewer than two upstream localities, fewer
  than two local ones, the local cluster has no host in the local locality
  (lb_local_cluster_not_ok), or fewer healthy upstream hosts than min_cluster_size
  (lb_zone_cluster_too_small);
- direct: the local locality holds at least the share of the upstream's healthy hosts
  that it holds of the local cluster's (lb_zone_routing_all_directly per request);
- residual: that ratio of requests stays local (lb_zone_routing_sampled), the others go
  to the localities with more upstream than local share, in proportion to the excess
  (lb_zone_routing_cross_zone). Shares are integers of 10000, as in Envoy.

Localities are in Envoy's order: the local one first, then by (region, zone, sub_zone).
The runtime keys upstream.zone_routing.enabled and .min_cluster_size take the config's
values (sofamesh acts on no runtime value).
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.upstream import LB_POLICIES, Cluster, HostSet
from sofamesh._core.zone_aware import DIRECT, NO_ROUTING, RESIDUAL, ZoneRouting
from sofamesh.proxy import localities

# cluster.<name>.<stat>: counted per update (the first three) or per request
COUNTERS = (
    "lb_recalculate_zone_structures",
    "lb_zone_cluster_too_small",
    "lb_local_cluster_not_ok",
    "lb_zone_routing_all_directly",
    "lb_zone_routing_sampled",
    "lb_zone_routing_cross_zone",
    "lb_zone_no_capacity_left",
)
ENVOY_MIN_CLUSTER_SIZE = 6


def _bump(c: Any) -> None:
    c.value += 1
    c.used = True


def _order(keys: Any, local: str | None) -> list[str]:
    """Envoy's HostsPerLocality order: the local locality first (when present), then the
    others by (region, zone, sub_zone) (keys are localities.locality_key's
    "region/zone/sub_zone": a name holding "/" may sort otherwise than in Envoy)."""
    rest = sorted((k for k in keys if k != local), key=lambda k: tuple(k.split("/")))
    return ([local] if local is not None and local in keys else []) + rest


def _by_locality(hosts: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for h in hosts:
        if h.priority == 0:
            out.setdefault(h.locality, []).append(h)
    return out


def plan(
    upstream: dict[str, list[Any]],
    local_hosts: dict[str, list[Any]],
    me: str | None,
    min_size: int,
) -> tuple[int, int, list[int], list[str], str]:
    """Envoy's regenerateLocalityRoutingStructures over priority 0's hosts and the local
    cluster's, by locality: (state, local percent of 10000, cumulative residual capacity,
    localities in order, the stat counted or ""). Hosts need `.healthy`."""
    order = _order(upstream, me)
    if len(order) < 2 or len(local_hosts) < 2:
        return NO_ROUTING, 0, [], order, ""
    if me is None or me not in local_hosts:
        return NO_ROUTING, 0, [], order, "lb_local_cluster_not_ok"
    healthy = [sum(1 for h in upstream[k] if h.healthy) for k in order]
    if sum(healthy) < min_size:
        return NO_ROUTING, 0, [], order, "lb_zone_cluster_too_small"
    local_ok = {k: sum(1 for h in hs if h.healthy) for k, hs in local_hosts.items()}
    total_local, total_up = sum(local_ok.values()), sum(healthy)
    pct = []  # (local, upstream) shares of 10000
    for k, n in zip(order, healthy, strict=True):
        if n == 0:
            pct.append((0, 0))
            continue
        lp = 10000 * local_ok.get(k, 0) // total_local if total_local else 0
        pct.append((lp, 10000 * n // total_up))
    has_local = me in upstream
    if has_local and pct[0][1] > 0 and pct[0][1] >= pct[0][0]:
        return DIRECT, 0, [], order, ""
    local_percent = pct[0][1] * 10000 // pct[0][0] if has_local and pct[0][0] > 0 else 0
    residual, last = [], 0
    for i, (lp, up) in enumerate(pct):
        if not (i == 0 and has_local) and up > lp:
            last += up - lp
        residual.append(last)
    return RESIDUAL, local_percent, residual, order, ""


class Regen:
    """Recomputes one cluster's zone routing (a watcher of the cluster and of the local
    cluster: upstream.pyx Cluster.update_health calls it)."""

    def __init__(
        self, cl: Cluster, z: ZoneRouting, server: Any, local_name: str, me: str | None, n: int
    ) -> None:
        self.cl = cl
        self.z = z
        self.server = server
        self.local_name = local_name
        self.me = me
        self.min_size = n
        self.ran = False
        self.key = f"zone:{cl.name}:{id(cl)}"
        grp = server.stats.group(f"cluster.{cl.name}.", COUNTERS)
        self.c = dict(zip(COUNTERS, grp.c, strict=True))
        z.all_directly = self.c["lb_zone_routing_all_directly"]
        z.sampled = self.c["lb_zone_routing_sampled"]
        z.cross_zone = self.c["lb_zone_routing_cross_zone"]
        z.local_not_ok = self.c["lb_local_cluster_not_ok"]
        z.no_capacity_left = self.c["lb_zone_no_capacity_left"]

    def local(self) -> Cluster | None:
        if self.cl.name == self.local_name:
            return self.cl
        return self.server.clusters.get(self.local_name)

    def __call__(self) -> None:
        lc = self.local()
        if lc is None:  # static clusters before the local one: link() runs it after
            return
        self.ran = True
        _bump(self.c["lb_recalculate_zone_structures"])
        up = _by_locality(self.cl.hosts)
        lh = _by_locality(lc.hosts)
        state, lpct, residual, order, stat = plan(up, lh, self.me, self.min_size)
        if stat:
            _bump(self.c[stat])
        locs = tuple(HostSet(tuple(h for h in up[k] if h.healthy)) for k in order)
        n = sum(len(v) for v in lh.values())
        ok = sum(1 for v in lh.values() for h in v if h.healthy)
        local_panic = (100.0 * ok / n if n else 0.0) < min(100.0, self.cl.panic_threshold)
        self.z.install(state, lpct, residual, locs, local_panic)


def configure(server: Any, cl: Cluster, c: Any) -> None:
    """Gives a cluster its ZoneRouting (before its levels are built: proxy/localities.py)
    when the bootstrap names a local cluster or the cluster has zone_aware_lb_config."""
    local_name = server.bootstrap.cluster_manager.local_cluster_name
    lb = c.common_lb_config
    za = lb.zone_aware_lb_config if lb.HasField("zone_aware_lb_config") else None
    if cl.lb_policy == LB_POLICIES["RING_HASH"] or (not local_name and za is None):
        return
    enabled, min_size, fail = 100, ENVOY_MIN_CLUSTER_SIZE, False
    if za is not None:
        if za.HasField("routing_enabled"):  # Envoy rounds the percent to an integer
            enabled = int(za.routing_enabled.value + 0.5)
        if za.HasField("min_cluster_size"):
            min_size = za.min_cluster_size.value
        fail = za.fail_traffic_on_panic
    z = cl.zone = ZoneRouting(enabled, fail)
    if not local_name:  # fail_traffic_on_panic only
        return
    node = server.bootstrap.node
    me = localities.locality_key(node.locality) if node.HasField("locality") else None
    regen = Regen(cl, z, server, local_name, me, min_size)
    cl.watchers = {"zone": regen}
    lc = regen.local()
    if lc is not None and lc is not cl:  # a CDS cluster: the local one is built
        _watch(lc, regen)


def _watch(local: Cluster, regen: Any) -> None:
    if local.watchers is None:
        local.watchers = {}
    local.watchers[regen.key] = regen


def link(server: Any) -> None:
    """After the static clusters are built: each cluster's zone routing watches the local
    cluster, and is computed if it could not be while the local cluster was missing."""
    local_name = server.bootstrap.cluster_manager.local_cluster_name
    lc = server.clusters.get(local_name) if local_name else None
    if lc is None:
        return
    for cl in list(server.clusters.values()):
        regen = (cl.watchers or {}).get("zone")
        if regen is None:
            continue
        if cl is not lc:
            _watch(lc, regen)
        if not regen.ran:
            regen()


def forget(server: Any, cl: Cluster) -> None:
    """A replaced or removed cluster stops watching the local cluster."""
    regen: Any = (cl.watchers or {}).get("zone")
    lc = server.clusters.get(server.bootstrap.cluster_manager.local_cluster_name or "")
    if regen is not None and lc is not None and lc.watchers:
        lc.watchers.pop(regen.key, None)


def state(cl: Cluster) -> dict[str, Any] | None:
    """A cluster's zone routing state (tests, admin), or None."""
    z = cl.zone
    if z is None:
        return None
    names = {NO_ROUTING: "no_routing", DIRECT: "direct", RESIDUAL: "residual"}
    return {
        "state": names[z.state],
        "local_percent": z.local_percent,
        "residual": z.residual_capacity(),
        "localities": [len(s.hosts) for s in z.localities],
        "local_panic": z.local_panic,
    }
