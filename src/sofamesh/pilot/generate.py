"""Service model -> Envoy v3 resources (clusters, endpoints, listeners, routes), cached per service.

Each resource is built once when its service changes and kept as the serialized
`google.protobuf.Any` plus the wire chunks the ADS server splices into responses, so a push
to many clients never re-serializes a message. Versions are content hashes: two pilots with
the same model serve byte-identical resources under identical versions.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2

from sofamesh.pilot.model import Instance, Port, Service
from sofamesh.pilot.policy import Resolved

if TYPE_CHECKING:
    from sofamesh.pilot.edge import EdgeView

log = logging.getLogger("sofamesh.pilot.generate")

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SRDS = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
TYPES = (CDS, EDS, LDS, SRDS, RDS)  # make-before-break push order
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", SRDS: "srds", RDS: "rds"}

HTTP_PROTOCOLS = ("http", "http2", "grpc")
H2_PROTOCOLS = ("http2", "grpc")
_HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_H2_OPTS_URL = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Host names Envoy accepts as virtual host domains (no wildcards from registries).
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]{0,251}[A-Za-z0-9_])?$")


# --- protobuf wire helpers: responses are spliced from cached chunks --------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld_field(num: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, sub-messages)."""
    return varint(num << 3 | 2) + varint(len(data)) + data


class Resource:
    """One xDS resource: its name, content-hash version and the serialized Any."""

    __slots__ = ("_delta", "_sotw", "any", "name", "type_url", "version")

    def __init__(self, name: str, type_url: str, body: bytes):
        self.name = name
        self.type_url = type_url
        self.any = ld_field(1, type_url.encode()) + ld_field(2, body)
        self.version = hashlib.blake2b(self.any, digest_size=8).hexdigest()
        self._sotw: bytes | None = None
        self._delta: bytes | None = None

    def sotw_chunk(self) -> bytes:
        """`DiscoveryResponse.resources` (field 2) entry."""
        if self._sotw is None:
            self._sotw = ld_field(2, self.any)
        return self._sotw

    def delta_chunk(self) -> bytes:
        """`DeltaDiscoveryResponse.resources` (field 2) entry: a `Resource{name, version, any}`."""
        if self._delta is None:
            inner = ld_field(3, self.name.encode()) + ld_field(1, self.version.encode())
            self._delta = ld_field(2, inner + ld_field(2, self.any))
        return self._delta

    def message(self):
        """The decoded Any (tests, debug endpoints)."""
        return any_pb2.Any.FromString(self.any)

    def __repr__(self) -> str:
        return f"Resource({SHORT.get(self.type_url, self.type_url)}:{self.name}@{self.version})"


def _res(name: str, type_url: str, msg) -> Resource:
    return Resource(name, type_url, msg.SerializeToString(deterministic=True))


def _any(type_url: str, msg) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=msg.SerializeToString(deterministic=True))


def cluster_name(service: str, port: int) -> str:
    return f"outbound|{port}||{service}"


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


# --- per-service generation ------------------------------------------------------------------


def _most_common(values: list) -> object:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def assign_ports(svc: Service, instances: list[Instance]) -> list[tuple[Port, list[Instance]]]:
    """Each service port with the instances behind it.

    Declared ports: an instance serves port p if its `service_port` is p, or if its
    `service_port` is 0 and the service has one port or the instance listens on p.
    No declared ports: instances with a `service_port` group by it; the others join the
    group of their own port if there is one, else all of them share one port, the port most
    of them listen on (ties: the lowest), as a registry without service ports (the REST API,
    Consul, ZooKeeper) means "these instances are the service"."""
    if svc.ports:
        single = len(svc.ports) == 1
        return [
            (
                p,
                [
                    i
                    for i in instances
                    if i.service_port == p.number
                    or (i.service_port == 0 and (single or i.port == p.number))
                ],
            )
            for p in svc.ports
        ]
    groups: dict[int, list[Instance]] = {}
    for i in instances:
        if i.service_port:
            groups.setdefault(i.service_port, []).append(i)
    rest = []
    for i in instances:
        if not i.service_port:
            if i.port in groups:
                groups[i.port].append(i)
            else:
                rest.append(i)
    if rest:
        groups.setdefault(int(_most_common([i.port for i in rest])), []).extend(rest)  # type: ignore[call-overload]
    return [
        (Port(n, str(_most_common([i.protocol for i in groups[n]]))), groups[n])
        for n in sorted(groups)
    ]


def build_cluster(name: str, protocol: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
    c.connect_timeout.FromMilliseconds(5000)
    c.eds_cluster_config.eds_config.CopyFrom(_ads())
    # A registry's "unhealthy" is a verdict, not a hint: no panic mode (Envoy's default sends
    # to every host once under half are healthy).
    c.common_lb_config.healthy_panic_threshold.value = 0
    if protocol in H2_PROTOCOLS:
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(_any(_H2_OPTS_URL, opts))
    return c


TLS_MODE = "tlsMode"  # an instance label: "istio" = its sidecar takes mutual TLS (Istio's)
_MATCH_NS = "envoy.transport_socket_match"
CLUSTER_LABEL = "topology.istio.io/cluster"  # an instance label: the cluster it lives in (Istio's)
_UPSTREAM_TLS_URL = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
_RAW_URL = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"


def mesh_tls_params(common) -> None:
    """TLS 1.2 to 1.3 between sidecars (Envoy's clients stop at 1.2 unless told): with 1.3
    the certificates, and so the identities, cross the wire encrypted."""
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2

    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    common.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3


def mtls_sockets(c: cluster_pb2.Cluster, sans: list[str], h2: bool) -> None:
    """Istio's auto mTLS on a cluster: endpoints labelled `tlsMode: istio` get mutual TLS
    with the identity the pilot's CA gave the caller (SDS `default` and `ROOTCA` over ADS),
    the destination's SPIFFE ids checked; other endpoints stay plaintext."""
    from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    up = tls_pb2.UpstreamTlsContext()
    common = up.common_tls_context
    mesh_tls_params(common)
    cert = common.tls_certificate_sds_secret_configs.add(name="default")
    cert.sds_config.CopyFrom(_ads())
    cvc = common.combined_validation_context
    for san in sans:
        m = cvc.default_validation_context.match_typed_subject_alt_names.add()
        m.san_type = 3  # URI
        m.matcher.exact = san
    cvc.validation_context_sds_secret_config.name = "ROOTCA"
    cvc.validation_context_sds_secret_config.sds_config.CopyFrom(_ads())
    if h2:
        common.alpn_protocols.append("h2")
    tm = c.transport_socket_matches.add(name="tlsMode-istio")
    tm.match.update({TLS_MODE: "istio"})
    tm.transport_socket.name = "envoy.transport_sockets.tls"
    tm.transport_socket.typed_config.CopyFrom(_any(_UPSTREAM_TLS_URL, up))
    raw = c.transport_socket_matches.add(name="tlsMode-disabled")
    raw.transport_socket.name = "envoy.transport_sockets.raw_buffer"
    raw.transport_socket.typed_config.CopyFrom(_any(_RAW_URL, raw_buffer_pb2.RawBuffer()))


def service_sans(trust_domain: str, svc: str, instances: list[Instance]) -> list[str]:
    """The SPIFFE ids a service's mTLS endpoints may present: each instance's namespace and
    `serviceAccount` label (else the service's name, what a sofamesh sidecar's node says)."""
    out = set()
    for i in instances:
        sa = dict(i.labels).get("serviceAccount") or svc
        out.add(f"spiffe://{trust_domain}/ns/{i.namespace}/sa/{sa}")
    return sorted(out)


def build_load_assignment(
    name: str, instances: list[Instance], edge: EdgeView | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by locality; each locality carries `load_balancing_weight` (the sum of
    its endpoints' weights) because grpc's xDS client ignores localities without one.
    edge: instances owned by a cluster reached through the edges become one endpoint per
    owner, the local edge, at priority 1 behind the local instances (pilot/edge.py)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if edge is not None:
        instances, remote = edge.split(instances)
        if remote:
            edge.add_endpoints(cla, remote, priority=1 if instances else 0)
    by_loc: dict[tuple[str, str, str], list[Instance]] = {}
    for inst in instances:
        loc = inst.locality
        by_loc.setdefault((loc.region, loc.zone, loc.sub_zone), []).append(inst)
    for key in sorted(by_loc):
        insts = sorted(by_loc[key], key=lambda i: (i.address, i.port, i.instance_id))
        lle = cla.endpoints.add()
        lle.locality.CopyFrom(base_pb2.Locality(region=key[0], zone=key[1], sub_zone=key[2]))
        total = 0
        for inst in insts:
            w = max(1, min(int(inst.weight), 128))
            total += w
            ep = lle.lb_endpoints.add()
            sa = ep.endpoint.address.socket_address
            sa.address = inst.address
            sa.port_value = inst.port
            ep.health_status = (
                health_check_pb2.HealthStatus.HEALTHY
                if inst.healthy
                else health_check_pb2.HealthStatus.UNHEALTHY
            )
            ep.load_balancing_weight.value = w
            labels = dict(inst.labels)
            mode = labels.get(TLS_MODE)
            if mode:  # which of the cluster's transport_socket_matches applies (auto mTLS)
                ep.metadata.filter_metadata[_MATCH_NS].update({TLS_MODE: mode})
            owner = labels.get(CLUSTER_LABEL)
            if owner:  # synced from a peer pilot (pilot/sync.py): the cluster it lives in
                ep.metadata.filter_metadata["sofamesh"].update({"cluster": owner})
        lle.load_balancing_weight.value = total
    return cla


def build_vhost(
    svc: str, port: Port, cluster: str, bare_name: bool, policy: Resolved | None = None
) -> route_components_pb2.VirtualHost:
    domains = [f"{svc}:{port.number}"]
    if bare_name:
        domains.insert(0, svc)
    vh = route_components_pb2.VirtualHost(name=f"{svc}:{port.number}", domains=domains)
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster
    if port.protocol in H2_PROTOCOLS:
        r.route.timeout.FromSeconds(0)  # streams: no whole-request timeout
    if policy is not None and policy.allow_ips is not None:
        from sofamesh.pilot.policy_xds import vhost_access

        name, cfg = vhost_access(policy)
        vh.typed_per_filter_config[name].CopyFrom(cfg)
    return vh


def _hcm(
    stat_prefix: str, route_name: str, scoped: bool = False, policies: tuple = ()
) -> hcm_pb2.HttpConnectionManager:
    """policies: (any access policy, ((service, requests/s), ...)) when some exist."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    if scoped:
        # Scoped RDS: the scope is the Host header's name (before ":"), one scope and one
        # route config per service (ScopedRouteConfiguration over ADS, then RDS by name)
        sr = hcm.scoped_routes
        sr.name = route_name
        hv = sr.scope_key_builder.fragments.add().header_value_extractor
        hv.name = ":authority"
        hv.element_separator = ":"
        hv.index = 0
        sr.rds_config_source.CopyFrom(_ads())
        sr.scoped_rds.scoped_rds_config_source.CopyFrom(_ads())
    else:
        hcm.rds.config_source.CopyFrom(_ads())
        hcm.rds.route_config_name = route_name
    if policies:
        from sofamesh.pilot.policy_xds import add_quota_filter, add_rbac_filter

        access, rates = policies
        if access:
            add_rbac_filter(hcm)
        for service, rps in rates:
            add_quota_filter(hcm, service, rps)
    f = hcm.http_filters.add()
    f.name = "envoy.filters.http.router"
    f.typed_config.CopyFrom(_any(_ROUTER_URL, router_pb2.Router()))
    return hcm


def build_api_listener(name: str, route_name: str) -> listener_pb2.Listener:
    """For proxyless gRPC (grpcio's xDS client): a listener it asks for by target name."""
    lst = listener_pb2.Listener(name=name)
    lst.api_listener.CopyFrom(api_listener_pb2.ApiListener())
    lst.api_listener.api_listener.CopyFrom(_any(_HCM_URL, _hcm(name, route_name)))
    return lst


def build_http_listener(
    address: str, port: int, route_name: str, scoped: bool = False, policies: tuple = ()
) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=f"{address}_{port}")
    lst.address.socket_address.address = address
    lst.address.socket_address.port_value = port
    fc = lst.filter_chains.add()
    f = fc.filters.add()
    f.name = "envoy.filters.network.http_connection_manager"
    hcm = _hcm(f"outbound_{port}", route_name, scoped, policies)
    f.typed_config.CopyFrom(_any(_HCM_URL, hcm))
    return lst


def scope_name(route_name: str, service: str) -> str:
    """The scope and route config of one service under the outbound listener's routes."""
    return f"{route_name}|{service}"


def build_scope(name: str, service: str) -> scoped_route_pb2.ScopedRouteConfiguration:
    sc = scoped_route_pb2.ScopedRouteConfiguration(name=name, route_configuration_name=name)
    sc.key.fragments.add().string_key = service
    return sc


def build_tcp_listener(
    address: str, port: int, cluster: str, policy: Resolved | None = None
) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=f"{address}_{port}")
    lst.address.socket_address.address = address
    lst.address.socket_address.port_value = port
    fc: listener_components_pb2.FilterChain = lst.filter_chains.add()
    if policy is not None and policy.allow_ips is not None:
        from sofamesh.pilot.policy_xds import network_rbac

        fc.filters.append(network_rbac(cluster, policy))
    f = fc.filters.add()
    f.name = "envoy.filters.network.tcp_proxy"
    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    f.typed_config.CopyFrom(_any(_TCP_URL, tp))
    return lst


@dataclass
class ServiceOutput:
    """What one service contributes; compared per resource to find what changed."""

    key: tuple  # (Service, instances) the output was built from
    src: object = None  # the registry's instance list object (identity fast path)
    svc: object = None  # the Service object given (None: derived from instances)
    clusters: dict[str, Resource] = field(default_factory=dict)
    endpoints: dict[str, Resource] = field(default_factory=dict)
    api_listeners: dict[str, Resource] = field(default_factory=dict)
    routes: dict[str, Resource] = field(default_factory=dict)  # per-service route configs
    scopes: dict[str, Resource] = field(default_factory=dict)  # its scope (scoped routes)
    vhosts: list[tuple[str, bytes]] = field(
        default_factory=list
    )  # (domain set key, VirtualHost bytes)
    vhost_domains: list[list[str]] = field(default_factory=list)
    tcp_ports: list[tuple[int, str]] = field(default_factory=list)  # (port, cluster)
    policy: Resolved | None = None  # the service's operator policies (pilot/policy.py)
    bad: list[str] = field(default_factory=list)  # instances left out, with the reason


def _endpoint_ok(inst: Instance, bad: list[str]) -> bool:
    """Envoy rejects a whole EDS update over one endpoint that is not an IP:port; such an
    instance (a host name from a registry, a port out of range) is left out and reported."""
    if not 0 < inst.port < 65536:
        bad.append(f"{inst.service}/{inst.instance_id}: port {inst.port} out of range")
        return False
    try:
        ipaddress.ip_address(inst.address)
    except ValueError:
        bad.append(f"{inst.service}/{inst.instance_id}: address {inst.address!r} is not an IP")
        return False
    return True


def build_service(
    svc: Service,
    instances: list[Instance],
    route_name: str | None = None,
    trust_domain: str = "",
    policy: Resolved | None = None,
    edge: EdgeView | None = None,
) -> ServiceOutput:
    """route_name: with scoped routes, the outbound route name its scope goes under;
    trust_domain: the pilot's CA (auto mTLS to instances labelled `tlsMode: istio`);
    policy: the operator's access and rate policies of the service;
    edge: the clusters reached through the edge sidecars (pilot/edge.py)."""
    out = ServiceOutput(key=(svc, tuple(instances), policy, edge), policy=policy)
    assigned = assign_ports(svc, instances)
    first_http = first_grpc = True
    for port, members in assigned:
        cname = cluster_name(svc.name, port.number)
        cl = build_cluster(cname, port.protocol)
        good = [i for i in members if _endpoint_ok(i, out.bad)]
        if edge is not None:  # before the tlsMode matches: their last one takes any endpoint
            edge.add_sockets(cl, svc.name, port.number, good, port.protocol in H2_PROTOCOLS)
        tls_members = [i for i in good if dict(i.labels).get(TLS_MODE) == "istio"]
        if trust_domain and tls_members:  # clusters without such instances are unchanged
            mtls_sockets(
                cl,
                service_sans(trust_domain, svc.name, tls_members),
                port.protocol in H2_PROTOCOLS,
            )
        out.clusters[cname] = _res(cname, CDS, cl)
        out.endpoints[cname] = _res(cname, EDS, build_load_assignment(cname, good, edge))
        if port.protocol in HTTP_PROTOCOLS:
            vh = build_vhost(svc.name, port, cname, bare_name=first_http, policy=policy)
            out.vhosts.append((vh.name, vh.SerializeToString(deterministic=True)))
            out.vhost_domains.append(list(vh.domains))
            first_http = False
        if port.protocol == "grpc":
            # proxyless gRPC: listener and route config named after the target authority.
            # PERF (benchmarks/pilot_scale.py): only for gRPC ports, the only ones a gRPC
            # client can call; they were 3 of 5 resources per HTTP service.
            target = f"{svc.name}:{port.number}"
            rc = route_pb2.RouteConfiguration(name=target)
            only = rc.virtual_hosts.add()
            only.CopyFrom(vh)
            only.domains[:] = ["*"]
            out.routes[target] = _res(target, RDS, rc)
            out.api_listeners[target] = _res(target, LDS, build_api_listener(target, target))
            if first_grpc:
                out.api_listeners[svc.name] = _res(
                    svc.name, LDS, build_api_listener(svc.name, target)
                )
            first_grpc = False
        if (
            port.protocol not in HTTP_PROTOCOLS
        ):  # tcp and the RPC protocols (dubbo, bolt, hsf) ride on TCP through Envoy
            out.tcp_ports.append((port.number, cname))
    if route_name is not None and out.vhosts:
        name = scope_name(route_name, svc.name)
        chunks = [ld_field(1, name.encode())]
        chunks += [ld_field(2, vbytes) for _, vbytes in out.vhosts]
        out.routes[name] = Resource(name, RDS, b"".join(chunks))
        out.scopes[name] = _res(name, SRDS, build_scope(name, svc.name))
    return out


_NO_INSTANCES: list[Instance] = []


# --- the whole model -------------------------------------------------------------------------


@dataclass
class Changes:
    """What one `Generator.update` changed: names per type, plus the removed resources
    themselves (kept so a make-before-break push can still include them in phase one)."""

    changed: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TYPES})
    removed: dict[str, dict[str, Resource]] = field(default_factory=lambda: {t: {} for t in TYPES})
    wildcard_changed: dict[str, bool] = field(default_factory=lambda: {t: False for t in TYPES})
    removed_wild: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TYPES})
    # Clusters replaced in place: a replaced Envoy cluster warms again and waits for its
    # endpoints, but its EDS subscription did not change, so no request asks for them.
    clusters_updated: set[str] = field(default_factory=set)

    def empty(self) -> bool:
        return not any(self.changed.values()) and not any(self.removed.values())


class Generator:
    """Holds the current resources; `update(model)` rebuilds only the services that changed."""

    def __init__(
        self,
        outbound_port: int = 15001,
        listener_address: str = "0.0.0.0",
        tcp_port_offset: int = 0,
        scoped_routes: bool = True,
    ):
        self.outbound_port = outbound_port
        # PERF(benchmarks/xds_scale.py): one scope and one route config per service (scoped
        # RDS), so a new service costs each sidecar its own scope and routes, not the whole
        # 0.7 MB route config of a 10,000-service mesh; False: one route config, all hosts.
        self.scoped_routes = scoped_routes
        self.tcp_port_offset = tcp_port_offset
        self.listener_address = listener_address
        self.route_name = str(outbound_port)
        self.services: dict[str, ServiceOutput] = {}
        # type -> name -> Resource. `wild` is what a wildcard subscriber gets (api listeners
        # are served only by name: Envoy must not receive them over LDS).
        self.all: dict[str, dict[str, Resource]] = {t: {} for t in TYPES}
        self.wild: dict[str, dict[str, Resource]] = {t: {} for t in TYPES}
        self.digest: dict[str, int] = {t: 0 for t in TYPES}
        self.skipped: dict[str, int] = {
            "bad_name": 0,
            "duplicate_domain": 0,
            "port_conflict": 0,
            "bad_endpoint": 0,
        }
        self.problems: list[str] = []
        self._bad_names: set[str] = set()
        self.trust_domain = ""  # set when the pilot is a CA: auto mTLS (mtls_sockets)
        # operator policies (pilot/policy.py): instances -> {service: Resolved}; the mixer
        # (HOST, PORT) rate policies' rate_limit_quota filters report to
        self.policy_source = None
        self.mixer: tuple[str, int] | None = None
        self.policies: dict[str, Resolved] = {}
        # pilot/edge.py: the local edge and the clusters reached through it (None: no edge)
        self.edge: EdgeView | None = None

    def version(self, type_url: str) -> str:
        """Type-wide version: a hash over every resource of the type (same model, same string)."""
        return f"{self.digest[type_url]:016x}"

    def _set(self, t: str, res: Resource, wildcard: bool, ch: Changes) -> None:
        old = self.all[t].get(res.name)
        if old is not None and old.version == res.version:
            return
        if old is not None:
            self.digest[t] ^= int(old.version, 16)
            if t == CDS:
                ch.clusters_updated.add(res.name)
        self.digest[t] ^= int(res.version, 16)
        self.all[t][res.name] = res
        if wildcard:
            self.wild[t][res.name] = res
            ch.wildcard_changed[t] = True
        ch.changed[t].add(res.name)
        ch.removed[t].pop(res.name, None)
        ch.removed_wild[t].discard(res.name)

    def _del(self, t: str, name: str, ch: Changes) -> None:
        old = self.all[t].pop(name, None)
        if old is None:
            return
        self.digest[t] ^= int(old.version, 16)
        if self.wild[t].pop(name, None) is not None:
            ch.wildcard_changed[t] = True
            ch.removed_wild[t].add(name)
        ch.removed[t][name] = old
        ch.changed[t].discard(name)

    def update(self, services: dict[str, Service], instances: dict[str, list[Instance]]) -> Changes:
        ch = Changes()
        structural = False  # vhosts or tcp listeners changed: rebuild the shared resources
        names = set(services)
        names.update(n for n, v in instances.items() if v)
        pols: dict[str, Resolved] = (
            self.policy_source(instances) if self.policy_source is not None else {}
        )
        if pols != self.policies:
            structural = True  # the HCM's RBAC / quota filters may change
            self.policies = pols
        for name in names:
            svc = services.get(name)
            insts = instances.get(name) or _NO_INSTANCES
            prev = self.services.get(name)
            pol = pols.get(name)
            # PERF (benchmarks/pilot_scale.py): registries hand back the same list object for
            # an unchanged service, so most services are skipped without comparing instances.
            edge = self.edge if self.edge is not None and self.edge.concerns(insts) else None
            if (
                prev is not None
                and prev.src is insts
                and prev.svc is svc
                and prev.policy == pol
                and prev.key[3] == edge
            ):
                continue
            if not _DOMAIN_RE.match(name):
                if name not in self._bad_names:
                    self._bad_names.add(name)
                    self.skipped["bad_name"] += 1
                    self._problem(f"service name {name!r} is not a valid host name: skipped")
                continue
            svc_ = svc or Service(name=name)
            key = (svc_, tuple(insts), pol, edge)
            if prev is not None and prev.key == key:
                prev.src, prev.svc = insts, svc
                continue
            out = build_service(
                svc_,
                insts,
                self.route_name if self.scoped_routes else None,
                trust_domain=self.trust_domain,
                policy=pol,
                edge=edge,
            )
            out.src, out.svc = insts, svc
            self._apply(prev, out, ch)
            if prev is None or prev.vhosts != out.vhosts or prev.tcp_ports != out.tcp_ports:
                structural = True
            self.services[name] = out
            if out.bad and (prev is None or prev.bad != out.bad):
                self.skipped["bad_endpoint"] += len(out.bad)
                for text in out.bad:
                    self._problem(f"{text}: endpoint left out")
        for name in [n for n in self.services if n not in names]:
            self._apply(self.services.pop(name), None, ch)
            structural = True
        self._bad_names &= names
        if structural or not self.all[LDS]:
            self._build_shared(ch)
        return ch

    def _apply(self, prev: ServiceOutput | None, out: ServiceOutput | None, ch: Changes) -> None:
        pairs = (
            (CDS, "clusters", True),
            (EDS, "endpoints", True),
            (LDS, "api_listeners", False),
            (SRDS, "scopes", True),
            (RDS, "routes", True),
        )
        for t, attr, wildcard in pairs:
            new = getattr(out, attr) if out is not None else {}
            if prev is not None:
                for n in getattr(prev, attr):
                    if n not in new:
                        self._del(t, n, ch)
            for res in new.values():
                self._set(t, res, wildcard, ch)

    def _build_shared(self, ch: Changes) -> None:
        """The outbound HTTP listener, the route config of all services' vhosts (named by
        the outbound port), and one tcp_proxy listener per TCP service port."""
        seen_domains: set[str] = set()
        chunks = [ld_field(1, self.route_name.encode())]
        tcp: dict[int, tuple[str, Resolved | None]] = {}
        for name in sorted(self.services):
            out = self.services[name]
            for (vname, vbytes), domains in zip(out.vhosts, out.vhost_domains):
                low = [d.lower() for d in domains]
                if any(d in seen_domains for d in low):
                    self.skipped["duplicate_domain"] += 1
                    self._problem(f"virtual host {vname}: domain already taken: skipped")
                    continue
                seen_domains.update(low)
                chunks.append(ld_field(2, vbytes))  # RouteConfiguration.virtual_hosts
            for port, cname in out.tcp_ports:
                port += self.tcp_port_offset
                if port == self.outbound_port or port in tcp or not 0 < port < 65536:
                    self.skipped["port_conflict"] += 1
                    self._problem(f"tcp port {port} of {cname} already in use: no listener")
                    continue
                tcp[port] = (cname, out.policy)
        # with scoped routes, still served to whoever asks for it by name (a sidecar with a
        # static listener and rds, e.g. `sofamesh demo`); the generated listener does not
        self._set(RDS, Resource(self.route_name, RDS, b"".join(chunks)), True, ch)
        listeners = {}
        http = build_http_listener(
            self.listener_address,
            self.outbound_port,
            self.route_name,
            self.scoped_routes,
            self._hcm_policies(ch),
        )
        listeners[http.name] = _res(http.name, LDS, http)
        for port, (cname, pol) in sorted(tcp.items()):
            lst = build_tcp_listener(self.listener_address, port, cname, pol)
            listeners[lst.name] = _res(lst.name, LDS, lst)
        for n in [n for n in self.wild[LDS] if n not in listeners]:
            self._del(LDS, n, ch)
        for res in listeners.values():
            self._set(LDS, res, True, ch)

    def _hcm_policies(self, ch: Changes) -> tuple:
        """What the outbound HCM needs for the policies of the services it routes to: the
        RBAC filter (any access policy) and a quota filter per rate policy (with --mixer);
        the mixer's cluster is served (or withdrawn) with them."""
        from sofamesh.pilot.policy_xds import MIXER_CLUSTER, mixer_cluster

        live = {n: p for n, p in self.policies.items() if n in self.services}
        access = any(p.allow_ips is not None for p in live.values())
        rates: tuple = ()
        if self.mixer is not None:
            rates = tuple(
                (n, p.requests_per_second)
                for n, p in sorted(live.items())
                if p.requests_per_second is not None
            )
        elif any(p.requests_per_second is not None for p in live.values()):
            self._problem("rate policies need the pilot's --mixer: not enforced")
        for n, p in sorted(live.items()):
            ports = [port for port, _ in self.services[n].tcp_ports]
            if p.requests_per_second is not None and ports:
                # tcp_proxy sees connections, not requests: said, not silently ignored
                self._problem(
                    f"rate policy of {n}: not enforced on its TCP port(s) "
                    f"{', '.join(map(str, ports))} (tcp_proxy has no requests to count)"
                )
        if rates and self.mixer is not None:
            self._set(CDS, _res(MIXER_CLUSTER, CDS, mixer_cluster(*self.mixer)), True, ch)
        else:
            self._del(CDS, MIXER_CLUSTER, ch)
        return (access, rates) if access or rates else ()

    def _problem(self, text: str) -> None:
        log.warning("%s", text)
        self.problems.append(text)
        del self.problems[:-100]
