"""Clusters from their config: `build_cluster(server, c, path, shape)` makes the runtime
Cluster (_core/upstream.pyx) of an Envoy v3 Cluster, static at start-up or from CDS
(Server._build_cluster, proxy/dynamic.py), with its hosts or DNS targets, circuit breakers,
HTTP protocol options, health checks, transport (TLS, internal addresses), source binding,
zone and locality routing and outlier detection; what it does not implement is refused by
path (UnsupportedConfig)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from sofamesh._core.upstream import Cluster
from sofamesh.proxy import dns, internal_listener, localities, upstream_bind, zone_aware
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.http_options import dur as _dur
from sofamesh.proxy.http_options import upstream_common as _upstream_common
from sofamesh.proxy.http_options import upstream_h2 as _upstream_h2
from sofamesh.proxy.http_options import upstream_trailers as _upstream_trailers


@dataclass
class ClusterRuntime:
    cluster: Cluster
    dns_task: Any = None
    dns_targets: list = field(default_factory=list)
    dns_cfg: Any = None  # proxy.dns.ResolverConfig: its own resolver, else getaddrinfo
    dns_ttl: float = 0.0  # the last answer's TTL (respect_dns_ttl), 0: unknown


def build_cluster(server: Any, c: Any, path: str, shape: bytes | None = None) -> ClusterRuntime:
    """One cluster, not yet in `server.clusters` (static ones at start-up, CDS ones when
    they arrive). EDS clusters start with no hosts (sofamesh.proxy.dynamic fills them).

    `shape`: the cluster's bytes without its name and EDS service name (CDS). A shape
    whose cluster came out as a bare Cluster (no hosts, health checks, outlier detection,
    transport or DNS of its own) is built the same way again from what the first build
    decided. PERF(benchmarks/xds_scale.py): at 10,000 services the checks and decisions
    of each cluster were a third of applying the CDS response."""
    if shape is not None:
        recipe = server._cluster_recipes.get(shape)
        if recipe is not None:
            return _from_recipe(server, c, *recipe)
    from envoy.config.cluster.v3 import cluster_pb2

    ctype = cluster_pb2.Cluster.DiscoveryType.Name(c.type)
    if c.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise UnsupportedConfig(f"{path}.cluster_type: custom clusters are not supported")
    if ctype not in ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"):
        raise UnsupportedConfig(f"{path}.type: {ctype} clusters are not supported")
    if ctype == "EDS":  # ads, api_config_source or a path (sofamesh.xds.settings)
        from sofamesh.xds.settings import source_spec, static_targets

        source_spec(
            c.eds_cluster_config.eds_config,
            f"{path}.eds_cluster_config.eds_config",
            static_targets(server.bootstrap),
        )
    lb = cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)
    original = ctype == "ORIGINAL_DST" or lb == "CLUSTER_PROVIDED"
    if original:
        from sofamesh.proxy.original_dst import check_cluster

        check_cluster(c, ctype, lb, path)
    elif lb not in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH"):
        raise UnsupportedConfig(f"{path}.lb_policy: {lb} is not supported")
    # an ORIGINAL_DST cluster's hosts are made per destination (OriginalDstHosts.pick)
    kw: dict[str, Any] = {"lb_policy": "ROUND_ROBIN" if original else lb, "config": c}
    if lb == "RING_HASH" and c.ring_hash_lb_config.HasField("minimum_ring_size"):
        kw["ring_size"] = min(c.ring_hash_lb_config.minimum_ring_size.value, 1 << 20)
    if c.HasField("connect_timeout"):
        kw["connect_timeout"] = _dur(c.connect_timeout)
    for t in c.circuit_breakers.thresholds:
        if t.priority != 0:
            continue
        if t.HasField("max_connections"):
            kw["max_connections"] = t.max_connections.value
        if t.HasField("max_pending_requests"):
            kw["max_pending"] = t.max_pending_requests.value
        if t.HasField("max_requests"):
            kw["max_requests"] = t.max_requests.value
        if t.HasField("max_retries"):
            kw["max_retries"] = t.max_retries.value
    if c.HasField("per_connection_buffer_limit_bytes"):
        kw["per_connection_buffer_limit"] = c.per_connection_buffer_limit_bytes.value
    # idle_timeout, max_connection_duration, max_requests_per_connection
    kw.update(_upstream_common(c))
    if _upstream_trailers(c):
        kw["enable_trailers"] = True
    h2 = _upstream_h2(c)
    if h2 is not None:
        kw["h2"] = h2
    if c.HasField("least_request_lb_config") and c.least_request_lb_config.HasField("choice_count"):
        kw["choice_count"] = c.least_request_lb_config.choice_count.value
    hc = None
    if c.health_checks:
        from sofamesh.proxy import health_check

        hc = health_check.parse(c, path)
    hosts, targets = _endpoints(c, ctype, path)
    if ctype == "EDS":
        hosts, targets = [], []  # an EDS cluster's inline load_assignment is unused (Envoy)
    if lb == "RING_HASH" and any(e.priority for e in c.load_assignment.endpoints):
        raise UnsupportedConfig(
            f"{path}.load_assignment: priority levels with RING_HASH are not implemented "
            "by sofamesh"
        )
    cl: Cluster
    if hc is not None:
        if server.health_link is None:
            server.health_link = health_check.LocalLink(server.stats)
        cl = health_check.CheckedCluster(
            c.name, server.stats, hosts=hosts, hc=hc, link=server.health_link, **kw
        )
    else:
        cl = Cluster(c.name, server.stats, hosts=hosts, **kw)
    if original:
        from sofamesh.proxy.original_dst import OriginalDstHosts

        cl.original_dst = OriginalDstHosts(cl, c, server._loop)
    from sofamesh.proxy import outlier, tls

    # transport_socket(_matches); an HTTP/2 cluster offers ALPN h2 unless configured (Envoy)
    alpn_h2 = kw.get("h2") is not None
    # internal addresses / internal_upstream (proxy/internal_listener.py), else TLS or None
    cl.tls = internal_listener.cluster_transport(c, server, path, alpn_h2)
    if cl.tls is None:
        cl.tls = tls.upstream_transport(c, server.stats, path, server, h2=alpn_h2)
    upstream_bind.configure(cl, c, server.upstream_bind, path)
    lb = c.common_lb_config
    if lb.HasField("healthy_panic_threshold"):  # else Envoy's 50%
        cl.panic_threshold = lb.healthy_panic_threshold.value
        cl.update_health()
    zone_aware.configure(server, cl, c)  # local_cluster_name, zone_aware_lb_config
    localities.configure(cl, c)  # priority levels, locality weights
    od = outlier.parse(c, path)  # outlier_detection (proxy/outlier.py)
    if od is not None:
        if server.outlier_link is not None:  # a pool's worker
            cl.outlier = outlier.WorkerDetector(cl, od, server.outlier_link)
        else:
            cl.outlier = outlier.Detector(cl, od, server.stats, _outlier_events(server))
        cl.outlier.hosts_changed()
    if isinstance(cl.tls, internal_listener.InternalTransport) and hc is not None:
        raise UnsupportedConfig(
            f"{path}.health_checks: health checks of a cluster of internal addresses are "
            "not implemented by sofamesh"
        )
    if cl.tls is not None and hc is not None:
        raise UnsupportedConfig(
            f"{path}.health_checks: health checks of a TLS cluster are not implemented by sofamesh"
        )
    rc = dns.config_of(c, server.bootstrap, path) if targets else None
    if shape is not None and not (hosts or targets or hc or original or od or cl.tls or cl.dialer):
        if len(server._cluster_recipes) >= 1024:
            server._cluster_recipes.pop(next(iter(server._cluster_recipes)))
        kw["config"] = cluster_pb2.Cluster.FromString(shape)  # shared: see Cluster.config
        panic = lb.healthy_panic_threshold.value if lb.HasField("healthy_panic_threshold") else None
        server._cluster_recipes[shape] = (kw, panic, cl.locality_weighted, cl.overprovisioning)
    return ClusterRuntime(cl, dns_targets=targets, dns_cfg=rc)


def _from_recipe(
    server: Any, c: Any, kw: dict[str, Any], panic: Any, weighted: bool, over: int
) -> ClusterRuntime:
    """What build_cluster does for such a shape, its decisions taken from the recipe
    (a cluster without hosts: levels and health change only with zone or locality
    routing)."""
    cl = Cluster(c.name, server.stats, **kw)
    cl.locality_weighted = weighted
    cl.overprovisioning = over
    if panic is not None:
        cl.panic_threshold = panic
    zone_aware.configure(server, cl, c)
    if weighted or cl.zone is not None:
        cl._build_levels()
        cl.update_health()
    return ClusterRuntime(cl)


def _outlier_events(server: Any) -> Any:
    """The bootstrap's cluster_manager.outlier_detection.event_log_path, shared by
    every cluster's detector (or None)."""
    path = server.bootstrap.cluster_manager.outlier_detection.event_log_path
    if not path:
        return None
    if server._outlier_log is None:
        from sofamesh.proxy.outlier import EventLog

        server._outlier_log = EventLog(path)
    return server._outlier_log


def _endpoints(c: Any, ctype: str, path: str) -> tuple[list, list]:
    """The cluster's inline endpoints: hosts (STATIC addresses, internal listeners) and DNS
    targets (address, port, weight, attributes) for the others; pipes (a gRPC service's
    cluster) are skipped."""
    hosts: list = []
    targets: list = []
    for ei, e in enumerate(c.load_assignment.endpoints):
        for li, lbe in enumerate(e.lb_endpoints):
            sa = lbe.endpoint.address.socket_address
            epath = f"{path}.load_assignment.endpoints[{ei}].lb_endpoints[{li}]"
            w = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            internal = internal_listener.host_address(lbe.endpoint.address)
            if internal is not None:  # envoy_internal_address: an internal listener
                if ctype != "STATIC":
                    raise UnsupportedConfig(
                        f"{epath}.endpoint.address.envoy_internal_address: internal "
                        f"addresses in {ctype} clusters are not implemented by sofamesh"
                    )
                attrs = localities.endpoint_attrs(e, lbe)
                hosts.append(localities.make_host(internal[0], internal[1], w, attrs))
                continue
            if lbe.endpoint.address.HasField("pipe"):
                # a gRPC service's cluster (config/validate.py allows pipes nowhere else):
                # the xDS client dials it as unix:<path> (xds/settings.py static_targets)
                continue
            if not sa.address:
                raise UnsupportedConfig(
                    f"{epath}.endpoint.address: only socket addresses are supported"
                )
            attrs = localities.endpoint_attrs(e, lbe)
            if ctype == "STATIC":
                try:
                    socket.inet_pton(
                        socket.AF_INET6 if ":" in sa.address else socket.AF_INET, sa.address
                    )
                except OSError:
                    raise UnsupportedConfig(
                        f"{epath}.endpoint.address.socket_address.address: STATIC "
                        f"clusters need IP addresses, got {sa.address!r}"
                    ) from None
                hosts.append(localities.make_host(sa.address, sa.port_value, w, attrs))
            else:
                targets.append((sa.address, sa.port_value, w, attrs))
    return hosts, targets
