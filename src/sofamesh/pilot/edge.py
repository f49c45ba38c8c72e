"""Edge sidecars: calls to a cluster that this cluster's workloads cannot reach.

`sofamesh pilot --cluster c1 --peer URL --edge 10.1.0.1:15443 --edge-public 10.9.0.1:15443`
names this cluster's edge sidecar: where its workloads reach it (`--edge`) and where the
peers' edges reach it (`--edge-public`, default the same), told to peers in the catalog
(pilot/sync.py). A service instance owned by a peer cluster whose catalog named an edge is
then, in every sidecar's endpoints, not its own address (unreachable from here) but:

    sidecar --TLS, SNI outbound_.<port>_._.<service>.<owner>.edge--> local edge
      local edge: SNI *.<owner>.edge -> tcp_proxy, bytes untouched -> the next edge
      owner's edge: that exact SNI -> TLS ends (mutual, the pilots' shared root)
                    -> tcp_proxy -> an instance of <service> on <port> in its cluster

One endpoint per owner cluster (weight: its healthy instances' weights), at priority 1 behind
the local instances: a service with instances here is served here and fails over to the
other cluster when they are gone (EDS priorities), as Istio's east-west gateway with
AUTO_PASSTHROUGH, with the hop through the caller's own edge added. Any TCP protocol
crosses (HTTP/1.1, HTTP/2, gRPC, Dubbo, Bolt): the edges route by SNI, never by content.

A relaying cluster (c1 - c2 - c3, c1 and c3 not linked) takes c3's services from c2's
catalog with c2's edge as the next hop, so c1's edge sends `*.c3.edge` to c2's edge, which
sends it on to c3's. Edge sidecars are nodes of type `router` (Istio's gateway node id
`router~IP~POD.NS~NS.svc.cluster.local`): the pilot serves them `EdgeGenerator`'s
resources instead of a sidecar's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from sofamesh.pilot.generate import (
    _MATCH_NS,
    _TCP_URL,
    _UPSTREAM_TLS_URL,
    CDS,
    CLUSTER_LABEL,
    EDS,
    LDS,
    Changes,
    Generator,
    Resource,
    _ads,
    _any,
    _endpoint_ok,
    _res,
    assign_ports,
    build_load_assignment,
)
from sofamesh.pilot.model import Instance, Service

EDGE_MATCH = "sofamesh-edge"  # endpoint metadata: the owner cluster, reached through the edge
_DOWNSTREAM_TLS_URL = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_TLS_INSPECTOR_URL = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)


def edge_sni(service: str, port: int, owner: str) -> str:
    """The server name a sidecar sends for `service`:`port` in cluster `owner`."""
    return f"outbound_.{port}_._.{service}.{owner}.edge".lower()


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """IP:PORT (an IPv6 address in brackets), or ValueError naming `what`."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        n = int(port)
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected IP:PORT") from None
    if not sep or not 0 < n < 65536:
        raise ValueError(f"{what} {text!r}: expected IP:PORT")
    return host, n


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _owner(inst: Instance) -> str | None:
    for k, v in inst.labels:
        if k == CLUSTER_LABEL:
            return v
    return None


def _tls_common(common: tls_pb2.CommonTlsContext) -> None:
    """The pilot's SDS identity (`default`) and root (`ROOTCA`), over ADS."""
    cert = common.tls_certificate_sds_secret_configs.add(name="default")
    cert.sds_config.CopyFrom(_ads())
    common.validation_context_sds_secret_config.name = "ROOTCA"
    common.validation_context_sds_secret_config.sds_config.CopyFrom(_ads())


@dataclass(frozen=True)
class EdgeView:
    """What a sidecar's endpoints need: the local edge and the clusters behind it."""

    cluster: str  # this pilot's cluster
    address: str  # the local edge, as this cluster's sidecars reach it
    port: int
    owners: frozenset[str]  # peer clusters reached through the edges

    def concerns(self, instances: list[Instance]) -> bool:
        return any(_owner(i) in self.owners for i in instances)

    def split(self, instances: list[Instance]) -> tuple[list[Instance], dict[str, list]]:
        """(instances reached directly, {owner: instances reached through the edges})."""
        local: list[Instance] = []
        remote: dict[str, list[Instance]] = {}
        for i in instances:
            o = _owner(i)
            if o in self.owners:
                remote.setdefault(o, []).append(i)  # type: ignore[arg-type]
            else:
                local.append(i)
        return local, remote

    def add_endpoints(
        self,
        cla: endpoint_pb2.ClusterLoadAssignment,
        remote: dict[str, list[Instance]],
        priority: int,
    ) -> None:
        for owner in sorted(remote):
            insts = remote[owner]
            healthy = [i for i in insts if i.healthy]
            weight = max(1, min(sum(max(1, int(i.weight)) for i in healthy or insts), 128))
            lle = cla.endpoints.add(priority=priority)
            lle.locality.CopyFrom(base_pb2.Locality(region=owner))
            lle.load_balancing_weight.value = weight
            ep = lle.lb_endpoints.add()
            sa = ep.endpoint.address.socket_address
            sa.address, sa.port_value = self.address, self.port
            ep.health_status = (
                health_check_pb2.HealthStatus.HEALTHY
                if healthy
                else health_check_pb2.HealthStatus.UNHEALTHY
            )
            ep.load_balancing_weight.value = weight
            ep.metadata.filter_metadata[_MATCH_NS].update({EDGE_MATCH: owner})
            ep.metadata.filter_metadata["sofamesh"].update({"cluster": owner, "edge": True})

    def add_sockets(
        self, c: cluster_pb2.Cluster, service: str, port: int, instances: list, h2: bool
    ) -> None:
        """A transport socket match per owner: mutual TLS to the owner's edge, named by SNI."""
        _, remote = self.split(instances)
        for owner in sorted(remote):
            up = tls_pb2.UpstreamTlsContext(sni=edge_sni(service, port, owner))
            _tls_common(up.common_tls_context)
            if h2:
                up.common_tls_context.alpn_protocols.append("h2")
            tm = c.transport_socket_matches.add(name=f"edge-{owner}")
            tm.match.update({EDGE_MATCH: owner})
            tm.transport_socket.name = "envoy.transport_sockets.tls"
            tm.transport_socket.typed_config.CopyFrom(_any(_UPSTREAM_TLS_URL, up))


class EdgeGenerator(Generator):
    """The edge sidecar's resources: one listener on the edge port, TLS inspected, a filter
    chain per local service port (TLS ends, tcp_proxy to its local instances) and one per
    peer cluster reached through this edge (tcp_proxy, TLS untouched, to the next edge)."""

    def __init__(self, cluster: str, port: int):
        super().__init__()
        self.cluster = cluster
        self.port = port
        self.hops: dict[str, tuple[str, int]] = {}  # owner -> the next edge towards it

    def update(self, services: dict[str, Service], instances: dict[str, list[Instance]]) -> Changes:
        # PERF: rebuilt whole on every model change (an edge serves each service once); the
        # resources that did not change keep their versions and are not pushed
        want: dict[str, dict[str, Resource]] = {CDS: {}, EDS: {}, LDS: {}}
        lst = listener_pb2.Listener(name=f"edge_{self.port}")
        lst.address.socket_address.address = "0.0.0.0"
        lst.address.socket_address.port_value = self.port
        lf = lst.listener_filters.add(name="envoy.filters.listener.tls_inspector")
        lf.typed_config.CopyFrom(_any(_TLS_INSPECTOR_URL, tls_inspector_pb2.TlsInspector()))
        bad: list[str] = []
        for name in sorted(set(services) | {n for n, v in instances.items() if v}):
            local = [i for i in instances.get(name) or () if _owner(i) in (None, self.cluster)]
            if not local:
                continue
            svc = services.get(name) or Service(name=name)
            for port, members in assign_ports(svc, local):
                cname = f"edge_in|{port.number}||{name}"
                good = [i for i in members if _endpoint_ok(i, bad)]
                c = cluster_pb2.Cluster(name=cname, type=cluster_pb2.Cluster.EDS)
                c.connect_timeout.FromMilliseconds(5000)
                c.eds_cluster_config.eds_config.CopyFrom(_ads())
                c.common_lb_config.healthy_panic_threshold.value = 0
                want[CDS][cname] = _res(cname, CDS, c)
                want[EDS][cname] = _res(cname, EDS, build_load_assignment(cname, good))
                self._chain(lst, [edge_sni(name, port.number, self.cluster)], cname, True)
        for owner in sorted(self.hops):
            host, hport = self.hops[owner]
            cname = f"edge_out|{owner}"
            c = cluster_pb2.Cluster(name=cname, type=cluster_pb2.Cluster.STATIC)
            c.connect_timeout.FromMilliseconds(5000)
            ep = c.load_assignment.endpoints.add().lb_endpoints.add()
            ep.endpoint.address.socket_address.address = host
            ep.endpoint.address.socket_address.port_value = hport
            c.load_assignment.cluster_name = cname
            want[CDS][cname] = _res(cname, CDS, c)
            self._chain(lst, [f"*.{owner}.edge".lower()], cname, False)
        want[LDS][lst.name] = _res(lst.name, LDS, lst)
        ch = Changes()
        for t, res in want.items():
            for n in [n for n in self.all[t] if n not in res]:
                self._del(t, n, ch)
            for r in res.values():
                self._set(t, r, True, ch)
        return ch

    @staticmethod
    def _chain(lst: listener_pb2.Listener, names: list[str], cluster: str, ends_tls: bool) -> None:
        fc = lst.filter_chains.add(name=f"{'in' if ends_tls else 'relay'}:{names[0]}")
        fc.filter_chain_match.server_names.extend(names)
        if ends_tls:
            down = tls_pb2.DownstreamTlsContext()
            down.require_client_certificate.value = True
            _tls_common(down.common_tls_context)
            down.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
            fc.transport_socket.name = "envoy.transport_sockets.tls"
            fc.transport_socket.typed_config.CopyFrom(_any(_DOWNSTREAM_TLS_URL, down))
        f = fc.filters.add(name="envoy.filters.network.tcp_proxy")
        tp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
        f.typed_config.CopyFrom(_any(_TCP_URL, tp))


class Edges:
    """This cluster's edge (`--edge`, `--edge-public`) and the peers' edges as the registry
    sync learns them: before each model rebuild, `refresh` gives the sidecars' generator its
    EdgeView and the edge's generator its next hops."""

    def __init__(self, cluster: str, local: tuple[str, int], public: tuple[str, int], sync):
        self.cluster = cluster
        self.local = local
        self.public = public
        self.sync = sync  # sync.PeerSync
        sync.edge = format_hostport(*public)
        self.gen = EdgeGenerator(cluster, local[1])

    def refresh(self, sidecars: Generator) -> None:
        hops = self.sync.edge_hops()
        self.gen.hops = hops
        sidecars.edge = (
            EdgeView(self.cluster, self.local[0], self.local[1], frozenset(hops)) if hops else None
        )
