"""Edge sidecars (pilot/edge.py): what the sidecars' endpoints and the edge's listener become
when a peer cluster is reached through the edges, and the catalog's `edge` field."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from sofamesh.pilot.edge import EdgeGenerator, EdgeView, edge_sni, parse_hostport
from sofamesh.pilot.generate import CDS, CLUSTER_LABEL, EDS, LDS, Generator
from sofamesh.pilot.model import Instance
from sofamesh.pilot.sync import CatalogError, parse_catalog

VIEW = EdgeView("c1", "10.61.1.1", 15443, frozenset({"c2"}))


def inst(iid: str, ip: str, owner: str | None = None, **kw) -> Instance:
    labels = ((CLUSTER_LABEL, owner),) if owner else ()
    return Instance("b", iid, ip, 8080, labels=labels, **kw)


def decode(res, msg):
    return msg.FromString(res.message().value)


def endpoints(cla) -> list[tuple[int, str, int, dict]]:
    return [
        (
            lle.priority,
            e.endpoint.address.socket_address.address,
            e.load_balancing_weight.value,
            dict(e.metadata.filter_metadata["envoy.transport_socket_match"]),
        )
        for lle in cla.endpoints
        for e in lle.lb_endpoints
    ]


def test_remote_instances_become_the_local_edge_behind_the_local_ones():
    g = Generator()
    g.edge = VIEW
    insts = [
        inst("here", "10.61.1.5"),
        inst("there1", "10.62.1.2", "c2", weight=2),
        inst("there2", "10.62.1.3", "c2", weight=3),
        inst("flat", "10.63.1.2", "c3"),  # c3: no edge named, reached directly
    ]
    g.update({}, {"b": insts})
    cla = decode(g.all[EDS]["outbound|8080||b"], endpoint_pb2.ClusterLoadAssignment)
    assert sorted(endpoints(cla)) == [
        (0, "10.61.1.5", 1, {}),
        (0, "10.63.1.2", 1, {}),
        (1, "10.61.1.1", 5, {"sofamesh-edge": "c2"}),
    ]
    c = decode(g.all[CDS]["outbound|8080||b"], cluster_pb2.Cluster)
    (m,) = c.transport_socket_matches
    assert m.name == "edge-c2" and dict(m.match) == {"sofamesh-edge": "c2"}
    up = tls_pb2.UpstreamTlsContext.FromString(m.transport_socket.typed_config.value)
    assert up.sni == "outbound_.8080_._.b.c2.edge" == edge_sni("b", 8080, "c2")
    assert up.common_tls_context.tls_certificate_sds_secret_configs[0].name == "default"
    assert up.common_tls_context.validation_context_sds_secret_config.name == "ROOTCA"


def test_only_remote_instances_take_priority_zero_and_health_follows_them():
    g = Generator()
    g.edge = VIEW
    g.update({}, {"b": [inst("x", "10.62.1.2", "c2", healthy=False)]})
    cla = decode(g.all[EDS]["outbound|8080||b"], endpoint_pb2.ClusterLoadAssignment)
    assert [(p, a) for p, a, _, _ in endpoints(cla)] == [(0, "10.61.1.1")]
    assert cla.endpoints[0].lb_endpoints[0].health_status == 2  # UNHEALTHY


def test_a_service_without_remote_instances_is_untouched_by_the_edge():
    plain, edged = Generator(), Generator()
    edged.edge = VIEW
    for g in (plain, edged):
        g.update({}, {"b": [inst("here", "10.61.1.5")]})
    for t in (CDS, EDS):
        assert plain.all[t]["outbound|8080||b"].version == edged.all[t]["outbound|8080||b"].version


def test_the_edge_view_changing_rebuilds_the_remote_services():
    g = Generator()
    insts = {"b": [inst("there", "10.62.1.2", "c2")]}
    g.update({}, insts)
    cla = decode(g.all[EDS]["outbound|8080||b"], endpoint_pb2.ClusterLoadAssignment)
    assert endpoints(cla)[0][1] == "10.62.1.2"
    g.edge = VIEW
    ch = g.update({}, insts)
    assert "outbound|8080||b" in ch.changed[EDS] and "outbound|8080||b" in ch.changed[CDS]
    cla = decode(g.all[EDS]["outbound|8080||b"], endpoint_pb2.ClusterLoadAssignment)
    assert endpoints(cla)[0][1] == "10.61.1.1"


def test_edge_listener_ends_tls_for_local_services_and_relays_the_rest():
    g = EdgeGenerator("c1", 15443)
    g.hops = {"c2": ("10.69.0.2", 15443)}
    insts = [inst("here", "10.61.1.5"), inst("there", "10.62.1.2", "c2")]
    ch = g.update({}, {"b": insts})
    assert set(g.all[CDS]) == {"edge_in|8080||b", "edge_out|c2"}
    assert ch.changed[LDS] == {"edge_15443"}
    cla = decode(g.all[EDS]["edge_in|8080||b"], endpoint_pb2.ClusterLoadAssignment)
    assert endpoints(cla) == [(0, "10.61.1.5", 1, {})]  # only what lives here
    out = decode(g.all[CDS]["edge_out|c2"], cluster_pb2.Cluster)
    sa = out.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert out.type == cluster_pb2.Cluster.STATIC and (sa.address, sa.port_value) == (
        "10.69.0.2",
        15443,
    )
    lst = decode(g.all[LDS]["edge_15443"], listener_pb2.Listener)
    assert lst.address.socket_address.port_value == 15443
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {}
    for fc in lst.filter_chains:
        tp = tcp_proxy_pb2.TcpProxy.FromString(fc.filters[0].typed_config.value)
        chains[tuple(fc.filter_chain_match.server_names)] = (
            tp.cluster,
            fc.HasField("transport_socket"),
        )
    assert chains == {
        ("outbound_.8080_._.b.c1.edge",): ("edge_in|8080||b", True),
        ("*.c2.edge",): ("edge_out|c2", False),
    }
    # an unchanged model changes nothing; a hop gone takes its chain and cluster with it
    assert g.update({}, {"b": insts}).empty()
    g.hops = {}
    ch = g.update({}, {"b": insts})
    assert "edge_out|c2" in ch.removed[CDS] and "edge_out|c2" not in g.all[CDS]


def catalog(**extra) -> dict:
    own = {"cluster": "c2", "path": ["c2"], "services": []}
    return {"cluster": "c2", "version": "1", "owners": [own], **extra}


def test_catalog_edge_read_and_checked():
    assert parse_catalog(catalog(), "", "c1")[3] is None
    assert parse_catalog(catalog(edge="10.69.0.2:15443"), "", "c1")[3] == ("10.69.0.2", 15443)
    assert parse_catalog(catalog(edge="[fd00::2]:15443"), "", "c1")[3] == ("fd00::2", 15443)
    for bad in ("edge.example:15443", "10.0.0.1", "10.0.0.1:0", 15443, "10.0.0.1:x"):
        with pytest.raises(CatalogError, match="edge"):
            parse_catalog(catalog(edge=bad), "", "c1")


def test_parse_hostport_names_the_flag():
    with pytest.raises(ValueError, match="--edge 'nope'"):
        parse_hostport("nope", "--edge")
